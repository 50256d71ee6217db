"""Random streams for data loading: where shuffling and augmentation draw their numbers.

Reproducibility rule: a :class:`~fastdl.data.DataLoader` draws, per epoch, a permutation and a
``base_seed`` from its own generator. Batch ``b`` of that epoch is loaded with the generator
``default_rng([base_seed, b])``, which :func:`rng` returns while that batch is being loaded, in the
main process or in whichever worker loads it. So the same seed gives the same batches, augmentations
included, whatever the number of workers; and different batches (and workers) never share a stream.
Outside a loader, :func:`rng` is fastdl's global generator (``fastdl.manual_seed``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["rng", "get_worker_info", "WorkerInfo", "resolve_generator", "global_generator"]


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """What :func:`get_worker_info` returns inside a DataLoader worker process."""

    id: int
    num_workers: int
    seed: int
    dataset: object


class _State:
    worker: WorkerInfo | None = None
    batch_seed: tuple[int, int] | None = None
    batch_generator: np.random.Generator | None = None


def global_generator() -> np.random.Generator:
    """fastdl's global generator (seeded by ``fastdl.manual_seed``)."""
    from ..random import generator

    return generator()


def get_worker_info() -> WorkerInfo | None:
    """``WorkerInfo(id, num_workers, seed, dataset)`` in a DataLoader worker, ``None`` elsewhere.

    >>> get_worker_info() is None
    True
    """
    return _State.worker


def rng() -> np.random.Generator:
    """The generator random transforms and datasets should draw from (see the module docstring).

    >>> import numpy as np
    >>> isinstance(rng(), np.random.Generator)
    True
    """
    if _State.batch_seed is None:
        return global_generator()
    if _State.batch_generator is None:
        _State.batch_generator = np.random.default_rng(_State.batch_seed)
    return _State.batch_generator


def _begin_batch(base_seed: int, batch_index: int) -> None:
    # The generator is made lazily: most batches of most datasets never ask for one.
    _State.batch_seed = (int(base_seed), int(batch_index))
    _State.batch_generator = None


def _end_batch() -> None:
    _State.batch_seed = None
    _State.batch_generator = None


def _set_worker(info: WorkerInfo | None) -> None:
    _State.worker = info


def resolve_generator(generator: np.random.Generator | None = None, seed: int | None = None) -> np.random.Generator:
    """``generator`` if given, else a new generator from ``seed``, else the global generator."""
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if generator is not None:
        if not isinstance(generator, np.random.Generator):
            raise TypeError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
        return generator
    if seed is not None:
        return np.random.default_rng(seed)
    return global_generator()
