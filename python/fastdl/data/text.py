"""Text → token ids: a character tokenizer (built in), a subword tokenizer (BPE or WordPiece trained
on the corpus, through the optional ``tokenizers`` library), a word splitter, and the datasets a
language model trains on (``SequenceDataset``: next-token windows).

The path a course draws: text → token ids (a tokenizer) → embedding vectors (``nn.Embedding`` maps
id ``i`` to row ``i`` of its weight), so ``vocab_size`` of the tokenizer is the embedding's
``num_embeddings``.

>>> tok = CharTokenizer("hello world")
>>> ids = tok.encode("hello")
>>> ids.tolist(), tok.decode(ids), tok.vocab_size
([3, 2, 4, 4, 5], 'hello', 8)
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from .dataset import Dataset

__all__ = ["CharTokenizer", "SubwordTokenizer", "words", "SequenceDataset"]


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters of ``text``.

    encode(str) → int64 array of ids; decode(ids) → str. Encoding a character that is not in the
    vocabulary raises ValueError naming it.
    """

    def __init__(self, text: str):
        if not isinstance(text, str) or not text:
            raise ValueError("CharTokenizer: needs a non-empty string to build its vocabulary")
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._table = np.array([ord(c) for c in self.chars])

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        pos = np.searchsorted(self._table, codes)
        pos = np.minimum(pos, len(self._table) - 1)
        bad = self._table[pos] != codes
        if bad.any():
            c = text[int(np.argmax(bad))]
            raise ValueError(f"CharTokenizer.encode: character {c!r} is not in the vocabulary of "
                             f"{self.vocab_size} characters")
        return pos.astype(np.int64)

    def decode(self, ids) -> str:
        ids = np.asarray(getattr(ids, "data", ids)).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"CharTokenizer.decode: ids must be in [0, {self.vocab_size}), got "
                             f"[{ids.min()}, {ids.max()}]")
        return "".join(self.chars[i] for i in ids.tolist())

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class SubwordTokenizer:
    """A subword tokenizer trained on a corpus: byte-pair encoding (``"bpe"``) or WordPiece
    (``"wordpiece"``), through Hugging Face's ``tokenizers`` (``pip install 'fastdl[text]'``).

    Words are split on whitespace and punctuation first; frequent character sequences become
    tokens, so common words are one token and rare ones a few. ``[UNK]`` (id 0) stands for what the
    vocabulary cannot spell.

    >>> tok = SubwordTokenizer.train(["the cat sat on the mat"] * 10, vocab_size=40)  # doctest: +SKIP
    >>> tok.decode(tok.encode("the cat"))  # doctest: +SKIP
    'the cat'
    """

    UNK = "[UNK]"

    def __init__(self, tokenizer, model: str):
        self._tok = tokenizer
        self.model = model

    @classmethod
    def train(cls, texts, vocab_size: int = 1000, model: str = "bpe", min_frequency: int = 2):
        """Learn a vocabulary of at most ``vocab_size`` tokens from ``texts`` (a string or an
        iterable of strings)."""
        try:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        except ImportError:
            raise ImportError("SubwordTokenizer needs the tokenizers library: pip install 'fastdl[text]'") from None
        if isinstance(texts, str):
            texts = [texts]
        if model == "bpe":
            tok = Tokenizer(models.BPE(unk_token=cls.UNK))
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                          special_tokens=[cls.UNK], end_of_word_suffix="</w>",
                                          show_progress=False)
            tok.decoder = decoders.BPEDecoder(suffix="</w>")
        elif model == "wordpiece":
            tok = Tokenizer(models.WordPiece(unk_token=cls.UNK))
            trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                                special_tokens=[cls.UNK], show_progress=False)
            tok.decoder = decoders.WordPiece()
        else:
            raise ValueError(f"SubwordTokenizer.train: model must be 'bpe' or 'wordpiece', got {model!r}")
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, model)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int64)

    def tokens(self, text: str) -> list[str]:
        """The token strings ``text`` splits into (what the ids stand for)."""
        return self._tok.encode(text).tokens

    def decode(self, ids) -> str:
        ids = np.asarray(getattr(ids, "data", ids)).reshape(-1)
        return self._tok.decode(ids.tolist())

    def __repr__(self):
        return f"SubwordTokenizer(model={self.model!r}, vocab_size={self.vocab_size})"


_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def words(text: str, min_count: int = 1, lower: bool = True):
    """Split ``text`` into words (identifiers: letters, digits, underscores) and build a
    vocabulary of those seen at least ``min_count`` times, most frequent first.

    Returns ``(ids, vocab, counts)``: the int64 ids of the kept words in order of appearance, the
    list of words (id → word) and their counts.

    >>> ids, vocab, counts = words("a b a c a b")
    >>> ids.tolist(), vocab, counts.tolist()
    ([0, 1, 0, 2, 0, 1], ['a', 'b', 'c'], [3, 2, 1])
    """
    tokens = _WORD.findall(text.lower() if lower else text)
    counter = Counter(tokens)
    vocab = sorted((w for w, c in counter.items() if c >= min_count), key=lambda w: (-counter[w], w))
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.fromiter((index[t] for t in tokens if t in index), dtype=np.int64)
    return ids, vocab, np.array([counter[w] for w in vocab], dtype=np.int64)


class SequenceDataset(Dataset):
    """Next-token prediction windows over a 1-D array of token ids.

    Sample ``i`` is ``(ids[s:s+seq_len], ids[s+1:s+seq_len+1])`` with ``s = i * stride`` (stride
    defaults to ``seq_len``: non-overlapping windows).

    >>> import numpy as np
    >>> ds = SequenceDataset(np.arange(7), seq_len=3)
    >>> len(ds), [a.tolist() for a in ds[1]]
    (2, [[3, 4, 5], [4, 5, 6]])
    """

    def __init__(self, ids, seq_len: int, stride: int | None = None):
        self.ids = np.asarray(getattr(ids, "data", ids))
        if self.ids.ndim != 1:
            raise ValueError(f"SequenceDataset: ids must be 1-D, got shape {self.ids.shape}")
        self.seq_len = int(seq_len)
        self.stride = int(stride) if stride is not None else self.seq_len
        if self.seq_len < 1 or self.stride < 1:
            raise ValueError(f"SequenceDataset: seq_len and stride must be >= 1, got {seq_len}, {stride}")
        if self.ids.size < self.seq_len + 1:
            raise ValueError(f"SequenceDataset: {self.ids.size} ids are too few for windows of "
                             f"{self.seq_len} + 1")
        self._n = (self.ids.size - self.seq_len - 1) // self.stride + 1

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        x, y = self.get_batch(np.array([index]))
        return x[0], y[0]

    def get_batch(self, indices):
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= self._n):
            raise IndexError(f"SequenceDataset: index out of range for {self._n} windows")
        starts = indices[:, None] * self.stride + np.arange(self.seq_len)
        return self.ids[starts], self.ids[starts + 1]
