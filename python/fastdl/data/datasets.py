"""Bundled real data that needs no download, each returned as train/validation(/test) splits.

- :func:`digits`: scikit-learn's handwritten digits (1,797 images of 8×8 pixels, 10 classes; shipped
  inside scikit-learn: ``pip install 'fastdl[data]'``), as 8×8 images or upsampled to 28×28 like
  MNIST (bilinear to 20×20, centred in a 28×28 frame). Pixels scaled to [0, 1]; stratified splits.
- :func:`char_corpus`: a character corpus made from Python standard library source files (the list
  :data:`CORPUS_FILES`, read from this interpreter's ``Lib/`` in that order, joined with a header
  line per file; tabs become four spaces and characters outside printable ASCII become ``?``). The
  text is fixed for a given Python version; its SHA-256 is reported. The last ``val_fraction`` of
  the characters is the validation split.
- :func:`karate_club`: Zachary's karate club graph (34 members, 78 friendships, the two factions
  after the split), written out in code.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import os
import sysconfig

import numpy as np

from .dataset import TensorDataset
from .text import CharTokenizer

__all__ = ["Splits", "digits", "CharCorpus", "char_corpus", "CORPUS_FILES", "Graph", "karate_club"]


@dataclasses.dataclass
class Splits:
    """Datasets of one source: ``train``, ``val`` and, where asked for, ``test`` (else None)."""

    train: object
    val: object
    test: object = None

    def __iter__(self):
        return iter((self.train, self.val) if self.test is None else (self.train, self.val, self.test))


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bilinear interpolation with half-pixel centres (align_corners=False)."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def _stratified_split(labels: np.ndarray, fractions, seed: int) -> list[np.ndarray]:
    """Index arrays, one per fraction, each holding about that fraction of every class."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in fractions]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.round(np.cumsum([0.0] + list(fractions)) * idx.size).astype(int)
        for k in range(len(fractions)):
            parts[k].append(idx[bounds[k]:bounds[k + 1]])
    return [np.sort(np.concatenate(p)) for p in parts]


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    # Read scikit-learn's data file directly: importing sklearn itself takes seconds.
    spec = importlib.util.find_spec("sklearn")
    path = None if spec is None else os.path.join(spec.submodule_search_locations[0], "datasets", "data",
                                                  "digits.csv.gz")
    if path is None or not os.path.exists(path):
        raise ImportError("fastdl.data.digits needs scikit-learn, which ships the data: "
                          "pip install 'fastdl[data]'")
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",")
    images = table[:, :64].reshape(-1, 8, 8) / 16.0
    images.flags.writeable = False
    labels = table[:, 64].astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def digits(size: int = 8, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
           flatten: bool = False, transform=None) -> Splits:
    """scikit-learn's digits as ``Splits`` of ``TensorDataset(images, labels)``.

    images: float32 in [0, 1], (N, 1, size, size), or (N, size*size) with ``flatten``; size 8 or 28.
    labels: int64 in 0..9. Splits are stratified by class and fixed by ``seed``; ``test`` is None
    when ``test_fraction`` is 0. ``transform`` (augmentation) applies to the training split only.

    >>> s = digits(size=28)  # doctest: +SKIP
    >>> len(s.train), len(s.val), len(s.test), s.train[0][0].shape  # doctest: +SKIP
    (1257, 270, 270, (1, 28, 28))
    """
    if size not in (8, 28):
        raise ValueError(f"digits: size must be 8 or 28, got {size}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"digits: val_fraction {val_fraction} and test_fraction {test_fraction} must be "
                         ">= 0 and leave some training data")
    images, labels = _digits_raw()
    if size == 28:
        m = _bilinear_matrix(8, 20)
        up = np.einsum("ij,njk,lk->nil", m, images, m)
        images = np.zeros((images.shape[0], 28, 28))
        images[:, 4:24, 4:24] = up
    images = images.astype(np.float32)[:, None]
    if flatten:
        images = images.reshape(images.shape[0], -1)
    fractions = [1.0 - val_fraction - test_fraction, val_fraction] + ([test_fraction] if test_fraction else [])
    parts = _stratified_split(labels, fractions, seed)
    sets = [TensorDataset(images[p], labels[p], transform=transform if k == 0 else None)
            for k, p in enumerate(parts)]
    return Splits(*sets)


CORPUS_FILES = (
    "textwrap.py", "string.py", "functools.py", "heapq.py", "bisect.py", "fractions.py", "calendar.py",
    "difflib.py", "argparse.py", "contextlib.py", "copy.py", "shlex.py", "random.py", "statistics.py",
    "queue.py", "pprint.py", "collections/__init__.py",
)


@dataclasses.dataclass
class CharCorpus:
    """A character corpus: its ``text``, the ``tokenizer`` over its characters, the token ids of the
    ``train`` and ``val`` parts (int64, 1-D), the ``files`` it was made from and its ``sha256``."""

    text: str
    tokenizer: CharTokenizer
    train: np.ndarray
    val: np.ndarray
    files: tuple
    sha256: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def _clean(text: str) -> str:
    text = text.replace("\t", "    ")
    return "".join(c if c == "\n" or " " <= c <= "~" else "?" for c in text)


def char_corpus(val_fraction: float = 0.1, max_chars: int | None = None) -> CharCorpus:
    """The standard-library character corpus (see the module docstring), split in two at
    ``1 - val_fraction`` of its length; ``max_chars`` keeps only its beginning.

    >>> c = char_corpus(max_chars=10_000)
    >>> len(c.text), c.train.size + c.val.size, c.tokenizer.decode(c.train[:3])
    (10000, 10000, '# t')
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"char_corpus: val_fraction must be in (0, 1), got {val_fraction}")
    lib = sysconfig.get_paths()["stdlib"]
    pieces = []
    for name in CORPUS_FILES:
        path = os.path.join(lib, name)
        try:
            with open(path, encoding="utf-8") as fh:
                pieces.append(f"# {name}\n" + fh.read())
        except OSError as exc:
            raise FileNotFoundError(f"char_corpus: this Python has no standard library source {path} "
                                    f"({exc}); the corpus is built from {', '.join(CORPUS_FILES)}") from None
    text = _clean("\n".join(pieces))
    if max_chars is not None:
        text = text[:int(max_chars)]
    tokenizer = CharTokenizer(text)
    ids = tokenizer.encode(text)
    cut = int(round(ids.size * (1 - val_fraction)))
    return CharCorpus(text, tokenizer, ids[:cut], ids[cut:], CORPUS_FILES,
                      hashlib.sha256(text.encode()).hexdigest())


@dataclasses.dataclass
class Graph:
    """A small graph for node classification: ``edges`` (E, 2) int64 undirected, ``labels`` (N,)
    int64, ``num_nodes``; ``adjacency(self_loops)`` gives the dense (N, N) float32 matrix."""

    edges: np.ndarray
    labels: np.ndarray
    num_nodes: int

    def adjacency(self, self_loops: bool = True) -> np.ndarray:
        a = np.zeros((self.num_nodes, self.num_nodes), np.float32)
        a[self.edges[:, 0], self.edges[:, 1]] = 1
        a[self.edges[:, 1], self.edges[:, 0]] = 1
        if self_loops:
            a[np.arange(self.num_nodes), np.arange(self.num_nodes)] = 1
        return a


# Zachary (1977), "An information flow model for conflict and fission in small groups", 1-based
# member pairs as published; the label is the club each member joined after the split (0: the instructor's,
# member 1; 1: the administrator's, member 34).
_KARATE_EDGES = """
2 1 3 1 3 2 4 1 4 2 4 3 5 1 6 1 7 1 7 5 7 6 8 1 8 2 8 3 8 4 9 1 9 3 10 3 11 1 11 5 11 6 12 1
13 1 13 4 14 1 14 2 14 3 14 4 17 6 17 7 18 1 18 2 20 1 20 2 22 1 22 2 26 24 26 25 28 3 28 24
28 25 29 3 30 24 30 27 31 2 31 9 32 1 32 25 32 26 32 29 33 3 33 9 33 15 33 16 33 19 33 21 33 23
33 24 33 30 33 31 33 32 34 9 34 10 34 14 34 15 34 16 34 19 34 20 34 21 34 23 34 24 34 27 34 28
34 29 34 30 34 31 34 32 34 33
"""
_KARATE_FACTION_1 = {10, 15, 16, 19, 21, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34}


def karate_club() -> Graph:
    """Zachary's karate club: 34 nodes, 78 edges, two classes (the factions after the split).

    >>> g = karate_club()
    >>> g.num_nodes, g.edges.shape, int(g.labels.sum())
    (34, (78, 2), 17)
    """
    edges = np.array(_KARATE_EDGES.split(), dtype=np.int64).reshape(-1, 2) - 1
    labels = np.array([1 if i + 1 in _KARATE_FACTION_1 else 0 for i in range(34)], dtype=np.int64)
    return Graph(edges, labels, 34)
