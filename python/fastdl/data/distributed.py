"""``DistributedSampler``: each rank of a data-parallel job loads its own share of a dataset.

Every rank draws the same permutation (seeded by ``(seed, epoch)``), pads it by repeating its first
indices (or, with ``drop_last``, trims it) to a multiple of the number of replicas, and keeps every
``num_replicas``-th index starting at its rank. So the ranks' shares are disjoint, equally long, and
together cover the dataset once per epoch (plus at most ``num_replicas - 1`` repeated samples).
Without shuffling, rank r's k-th batch of ``b`` samples holds the samples ``r, r + R, …`` of the
single-process batch of ``R·b`` samples, so data-parallel training on R ranks sees the same global
batches as one process with an R times larger batch.
"""
from __future__ import annotations

import numpy as np

__all__ = ["DistributedSampler"]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"DistributedSampler: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class DistributedSampler:
    """Indices of ``dataset`` for one rank: pass it as ``DataLoader(dataset, sampler=...)``.

    num_replicas, rank: default to the initialised process group's world size and rank
    (``fastdl.distributed``); shuffle: a new permutation every epoch, the same on every rank, from
    ``(seed, epoch)`` (call :meth:`set_epoch` before each epoch; ``fit()`` does); drop_last: drop the
    tail that does not divide evenly instead of padding with repeated samples.
    ``len(sampler)`` is the number of indices this rank gets per epoch.

    >>> sampler = DistributedSampler(range(10), num_replicas=3, rank=1, shuffle=False)
    >>> list(sampler), len(sampler)
    ([1, 4, 7, 0], 4)
    >>> list(DistributedSampler(range(10), num_replicas=3, rank=1, shuffle=False, drop_last=True))
    [1, 4, 7]
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        if num_replicas is None or rank is None:
            from .. import distributed as dist

            if not dist.is_initialized():
                raise RuntimeError("DistributedSampler: pass num_replicas and rank, or call "
                                   "fastdl.distributed.init_process_group() first")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        self.num_replicas = _check_int("num_replicas", num_replicas, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"DistributedSampler: rank {self.rank} is not in 0..{self.num_replicas - 1}")
        self.seed = _check_int("seed", seed, 0)
        try:
            n = len(dataset)
        except TypeError:
            raise TypeError(f"DistributedSampler: dataset must define __len__, got {type(dataset).__name__}") from None
        if drop_last and n < self.num_replicas:
            raise ValueError(f"DistributedSampler: drop_last with {n} samples on {self.num_replicas} replicas "
                             "leaves no sample to any rank")
        self.dataset = dataset
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.num_samples = n // self.num_replicas if self.drop_last else -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` (every rank must pass the same value)."""
        self.epoch = _check_int("epoch", epoch, 0)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, as an int64 array."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.total_size > n:
            order = np.concatenate([order, np.resize(order, self.total_size - n)])
        return order[self.rank:self.total_size:self.num_replicas].astype(np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"DistributedSampler(num_replicas={self.num_replicas}, rank={self.rank}, shuffle={self.shuffle}, "
                f"seed={self.seed}, drop_last={self.drop_last})")
