"""Map-style datasets: ``Dataset``, ``TensorDataset``, ``Subset``, ``ConcatDataset``, ``random_split``.

A dataset maps an index ``0 <= i < len(ds)`` to a sample (a tuple of NumPy arrays or numbers). A
dataset may also define ``get_batch(indices) -> tuple of arrays`` that returns the stacked batch in
one call; :class:`~fastdl.data.DataLoader` uses it with the default collation, which makes loading an
in-memory dataset one fancy-indexing operation per array instead of one Python call per sample.
"""
from __future__ import annotations

import bisect
import math
from typing import Sequence

import numpy as np

from .seeding import resolve_generator

__all__ = ["Dataset", "TensorDataset", "Subset", "ConcatDataset", "random_split"]


class Dataset:
    """Base class of map-style datasets: subclasses define ``__getitem__`` and ``__len__``.

    ``a + b`` concatenates two datasets.

    >>> class Squares(Dataset):
    ...     def __len__(self): return 4
    ...     def __getitem__(self, i): return i * i
    >>> len(Squares() + Squares()), (Squares() + Squares())[5]
    (8, 1)
    """

    def __getitem__(self, index):
        raise TypeError(f"{type(self).__name__} must define __getitem__")

    def __len__(self):
        raise TypeError(f"{type(self).__name__} must define __len__")

    def __add__(self, other: "Dataset") -> "ConcatDataset":
        return ConcatDataset([self, other])


def _as_array(x):
    """The NumPy array behind a fastdl Tensor (CPU) or any array-like."""
    data = getattr(x, "data", None)
    if isinstance(data, np.ndarray):
        return data
    if hasattr(x, "__cuda_array_interface__") or hasattr(data, "__cuda_array_interface__"):
        raise TypeError("TensorDataset: GPU arrays are not accepted; keep datasets on the CPU and "
                        "move each batch with .to(device)")
    return np.asarray(x)


def _check_index(name: str, index, length: int) -> int:
    if not isinstance(index, (int, np.integer)):
        raise TypeError(f"{name}: index must be an integer, got {type(index).__name__}")
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"{name}: index {index} out of range for a dataset of {length} samples")
    return index


class TensorDataset(Dataset):
    """Samples are the rows of equally long arrays: ``ds[i] == (a[i], b[i], ...)``.

    arrays: NumPy arrays or fastdl Tensors, each (N, ...), all with the same N. A sample is a tuple
    of NumPy arrays (views, no copy); :class:`~fastdl.data.DataLoader` turns batches into Tensors.
    ``transform`` (a function or a :mod:`fastdl.data.transforms` object) is applied to the first
    array: per sample in ``ds[i]``, once per batch in ``get_batch``.

    >>> import numpy as np
    >>> ds = TensorDataset(np.arange(6.0).reshape(3, 2), np.array([0, 1, 0]))
    >>> len(ds), ds[1]
    (3, (array([2., 3.]), np.int64(1)))
    >>> [a.shape for a in ds.get_batch(np.array([2, 0]))]
    [(2, 2), (2,)]
    """

    def __init__(self, *arrays, transform=None):
        if not arrays:
            raise ValueError("TensorDataset: needs at least one array")
        self.arrays = tuple(_as_array(a) for a in arrays)
        for a in self.arrays:
            if a.ndim == 0:
                raise ValueError("TensorDataset: arrays must have a leading sample dimension, got a scalar")
        lengths = [a.shape[0] for a in self.arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"TensorDataset: arrays differ in length: shapes {[a.shape for a in self.arrays]}")
        self.transform = transform

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    def __getitem__(self, index):
        index = _check_index("TensorDataset", index, len(self))
        sample = tuple(a[index] for a in self.arrays)
        if self.transform is not None:
            sample = (self.transform(sample[0]),) + sample[1:]
        return sample

    def get_batch(self, indices) -> tuple:
        """The stacked samples at ``indices`` (an int array), transform applied to the batch."""
        batch = tuple(a[indices] for a in self.arrays)
        if self.transform is not None:
            apply = getattr(self.transform, "batch", None)
            first = apply(batch[0]) if apply is not None else np.stack([self.transform(x) for x in batch[0]])
            batch = (first,) + batch[1:]
        return batch


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order.

    >>> import numpy as np
    >>> s = Subset(TensorDataset(np.arange(5)), [4, 0])
    >>> len(s), s[0]
    (2, (np.int64(4),))
    """

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(dataset)
        if self.indices.size and (self.indices.min() < -n or self.indices.max() >= n):
            raise IndexError(f"Subset: indices out of range for a dataset of {n} samples")

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index):
        return self.dataset[int(self.indices[_check_index("Subset", index, len(self))])]

    def __getattr__(self, name):
        # Only get_batch is forwarded, and only when the wrapped dataset has it.
        if name == "get_batch" and hasattr(self.__dict__.get("dataset"), "get_batch"):
            return lambda indices: self.dataset.get_batch(self.indices[indices])
        raise AttributeError(name)


class ConcatDataset(Dataset):
    """Several datasets one after another.

    >>> import numpy as np
    >>> c = ConcatDataset([TensorDataset(np.zeros(2)), TensorDataset(np.ones(3))])
    >>> len(c), c[2]
    (5, (np.float64(1.0),))
    """

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: needs at least one dataset")
        self.cumulative_sizes = np.cumsum([len(d) for d in self.datasets]).tolist()

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, index):
        index = _check_index("ConcatDataset", index, len(self))
        which = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][index - start]


def random_split(dataset, lengths: Sequence, generator: np.random.Generator | None = None, seed: int | None = None):
    """Split ``dataset`` into non-overlapping random :class:`Subset` s of the given lengths.

    lengths: integers summing to ``len(dataset)``, or fractions summing to 1 (the remainder of
    the rounding goes to the first splits, one sample each, as in PyTorch). The permutation comes
    from ``generator``, else from ``seed``, else from fastdl's global generator.

    >>> import numpy as np
    >>> train, val = random_split(TensorDataset(np.arange(10)), [0.8, 0.2], seed=0)
    >>> len(train), len(val), sorted(np.concatenate([train.indices, val.indices])) == list(range(10))
    (8, 2, True)
    """
    n = len(dataset)
    lengths = list(lengths)
    if lengths and all(isinstance(x, float) for x in lengths) and math.isclose(sum(lengths), 1.0) \
            and sum(lengths) != n:
        if any(x < 0 for x in lengths):
            raise ValueError(f"random_split: fractions must be non-negative, got {lengths}")
        sizes = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(sizes)):
            sizes[i % len(sizes)] += 1
    else:
        sizes = [int(x) for x in lengths]
        if any(x < 0 for x in sizes) or sum(sizes) != n or any(int(x) != x for x in lengths):
            raise ValueError(f"random_split: lengths {lengths} must be non-negative integers summing to "
                             f"the dataset's length {n}, or fractions summing to 1")
    perm = resolve_generator(generator, seed).permutation(n)
    offsets = np.cumsum([0] + sizes)
    return [Subset(dataset, perm[offsets[i]:offsets[i + 1]]) for i in range(len(sizes))]
