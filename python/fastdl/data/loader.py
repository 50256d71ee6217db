"""``DataLoader``: batches of a dataset as CPU Tensors, shuffled reproducibly, optionally loaded by
worker processes.

Each epoch visits every sample once (the last, shorter batch is kept unless ``drop_last``). The
permutation and the per-batch random streams come from the loader's generator (see
:mod:`fastdl.data.seeding`), so the same seed gives the same batches with any ``num_workers``.
Workers take batches round robin (batch ``b`` goes to worker ``b % num_workers``), and the main
process yields them in order.
"""
from __future__ import annotations

import multiprocessing
import queue
import random
import traceback

import numpy as np

from . import seeding
from .seeding import WorkerInfo, resolve_generator

__all__ = ["DataLoader", "default_collate", "collate_arrays"]

_POLL_SECONDS = 1.0


def collate_arrays(samples: list):
    """Stack a list of samples into NumPy arrays, keeping the samples' structure.

    Tuples and lists collate position by position, dicts key by key; arrays, NumPy scalars and
    Python numbers are stacked (Python floats become float32, ints int64, as ``fastdl.tensor``
    does); fastdl Tensors are stacked by their arrays; strings are returned as a list.

    >>> import numpy as np
    >>> x, y = collate_arrays([(np.zeros(2), 1), (np.ones(2), 0)])
    >>> x.shape, y
    ((2, 2), array([1, 0]))
    """
    if not samples:
        raise ValueError("collate: empty batch")
    first = samples[0]
    if isinstance(first, (tuple, list)):
        if any(len(s) != len(first) for s in samples):
            raise ValueError(f"collate: samples have different lengths: {sorted({len(s) for s in samples})}")
        return tuple(collate_arrays([s[i] for s in samples]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: collate_arrays([s[k] for s in samples]) for k in first}
    if isinstance(first, str):
        return list(samples)
    if isinstance(first, bool):
        return np.array(samples, dtype=np.bool_)
    if isinstance(first, int):
        return np.array(samples, dtype=np.int64)
    if isinstance(first, float):
        return np.array(samples, dtype=np.float32)
    arrays = [s.data if isinstance(getattr(s, "data", None), np.ndarray) else np.asarray(s) for s in samples]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"collate: samples have different shapes {sorted(shapes)}; pass a collate_fn "
                         "that pads them")
    return np.stack(arrays)


def to_tensors(batch):
    """Turn the arrays of a collated batch into CPU fastdl Tensors (no copy for contiguous arrays)."""
    from .. import from_numpy

    if isinstance(batch, tuple):
        return tuple(to_tensors(b) for b in batch)
    if isinstance(batch, dict):
        return {k: to_tensors(v) for k, v in batch.items()}
    if isinstance(batch, np.ndarray):
        return from_numpy(np.ascontiguousarray(batch))
    return batch


def default_collate(samples: list):
    """:func:`collate_arrays`, then each array becomes a fastdl Tensor (what PyTorch's does).

    >>> import numpy as np
    >>> x, y = default_collate([(np.zeros(2, np.float32), 1), (np.ones(2, np.float32), 0)])
    >>> x.shape, y.tolist()
    ((2, 2), [1, 0])
    """
    return to_tensors(collate_arrays(samples))


def _fetch(dataset, collate_fn, indices: np.ndarray):
    """One batch; with the default collation the arrays are returned and made Tensors later, in the
    main process (so workers never send Tensors through a pipe)."""
    if collate_fn is None:
        get_batch = getattr(dataset, "get_batch", None)
        if get_batch is not None:
            return get_batch(indices)
        return collate_arrays([dataset[int(i)] for i in indices])
    return collate_fn([dataset[int(i)] for i in indices])


def _load(dataset, collate_fn, base_seed: int, batch_index: int, indices: np.ndarray):
    seeding._begin_batch(base_seed, batch_index)
    try:
        return _fetch(dataset, collate_fn, indices)
    finally:
        seeding._end_batch()


def _worker_seed(base_seed: int, worker_id: int) -> int:
    return (base_seed + worker_id) % (1 << 63)


def _worker_loop(dataset, collate_fn, index_queue, result_queue, worker_id, num_workers, base_seed,
                 worker_init_fn):
    """A worker process: seeds its random state from (base_seed, worker_id), then loads the batches it
    is sent until it receives ``None``."""
    try:
        from .. import manual_seed, set_num_threads

        # Native kernels in a forked child run single-threaded: the parent's OpenMP pool is not valid here.
        set_num_threads(1)
        seed = _worker_seed(base_seed, worker_id)
        seeding._set_worker(WorkerInfo(worker_id, num_workers, seed, dataset))
        manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        if worker_init_fn is not None:
            worker_init_fn(worker_id)
    except Exception:
        result_queue.put((-1, False, f"worker {worker_id} failed to start:\n{traceback.format_exc()}"))
        return
    while True:
        task = index_queue.get()
        if task is None:
            return
        batch_index, indices = task
        try:
            result_queue.put((batch_index, True, _load(dataset, collate_fn, base_seed, batch_index, indices)))
        except Exception:
            result_queue.put((batch_index, False, traceback.format_exc()))


class DataLoader:
    """Iterate over ``dataset`` in batches of ``batch_size`` samples, as fastdl Tensors.

    shuffle: a new permutation each epoch, drawn from the loader's generator: ``generator`` (a
    ``numpy.random.Generator``), else one made from ``seed``, else fastdl's global generator
    (``fastdl.manual_seed``). The same seed gives the same batches, random transforms included,
    whatever ``num_workers`` is. sampler: instead of shuffle, an iterable of dataset indices with
    ``len()`` that gives each epoch's order (e.g. :class:`~fastdl.data.DistributedSampler`, one rank's
    share). drop_last: drop the last batch when shorter than ``batch_size``.
    collate_fn: turns a list of samples into a batch (default: stack into Tensors; a dataset with
    ``get_batch`` is then indexed once per batch). num_workers: processes loading batches in parallel
    (0: in the main process); worker ``w`` seeds NumPy's and Python's global generators and
    fastdl's with ``base_seed + w`` and then calls ``worker_init_fn(w)``; ``get_worker_info()``
    describes the worker inside it. ``len(loader)`` is the number of batches per epoch.

    >>> import numpy as np
    >>> from fastdl.data import TensorDataset
    >>> ds = TensorDataset(np.arange(10, dtype=np.float32), np.arange(10))
    >>> loader = DataLoader(ds, batch_size=4, shuffle=True, seed=0)
    >>> [tuple(y.shape) for x, y in loader], len(loader)
    ([(4,), (4,), (2,)], 3)
    >>> sorted(int(v) for x, y in loader for v in y.numpy())
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, drop_last: bool = False,
                 collate_fn=None, generator: np.random.Generator | None = None, seed: int | None = None,
                 num_workers: int = 0, worker_init_fn=None, prefetch_factor: int = 2,
                 multiprocessing_context: str | None = None, sampler=None):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ValueError(f"DataLoader: num_workers must be a non-negative integer, got {num_workers!r}")
        if prefetch_factor < 1:
            raise ValueError(f"DataLoader: prefetch_factor must be >= 1, got {prefetch_factor!r}")
        try:
            len(dataset)
        except TypeError as exc:
            raise TypeError(f"DataLoader: dataset must define __len__ and __getitem__ ({exc})") from None
        if sampler is not None:
            if shuffle:
                raise ValueError("DataLoader: sampler and shuffle=True exclude each other (the sampler decides "
                                 "the order)")
            if not hasattr(sampler, "__iter__") or not hasattr(sampler, "__len__"):
                raise TypeError(f"DataLoader: sampler must be an iterable of indices with len(), got "
                                f"{type(sampler).__name__}")
        self.sampler = sampler
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.collate_fn = None if collate_fn is default_collate else collate_fn
        self.generator = None if generator is None and seed is None else resolve_generator(generator, seed)
        self.num_workers = int(num_workers)
        self.worker_init_fn = worker_init_fn
        self.prefetch_factor = int(prefetch_factor)
        self.multiprocessing_context = multiprocessing_context

    def __len__(self) -> int:
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict:
        """The state of the loader's own generator (empty when it uses the global one), so that a
        resumed run draws the same permutations as an uninterrupted one."""
        return {} if self.generator is None else {"generator": self.generator.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            if self.generator is None:
                raise ValueError("DataLoader.load_state_dict: this loader has no generator of its own "
                                 "(pass seed= or generator=)")
            self.generator.bit_generator.state = state["generator"]

    def __iter__(self):
        # The epoch's permutation and base seed are drawn now, not at the first next().
        gen = self.generator if self.generator is not None else seeding.global_generator()
        if self.sampler is not None:
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
            n = len(order)
        else:
            n = len(self.dataset)
            order = gen.permutation(n) if self.shuffle else np.arange(n)
        base_seed = int(gen.integers(1 << 63))
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        batches = [order[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]
        if self.num_workers == 0:
            return self._iter_here(base_seed, batches)
        return self._iter_workers(base_seed, batches)

    def _finish(self, batch):
        return to_tensors(batch) if self.collate_fn is None else batch

    def _iter_here(self, base_seed, batches):
        for b, indices in enumerate(batches):
            yield self._finish(_load(self.dataset, self.collate_fn, base_seed, b, indices))

    def _iter_workers(self, base_seed, batches):
        ctx = multiprocessing.get_context(self.multiprocessing_context)
        n_workers = min(self.num_workers, max(len(batches), 1))
        results = ctx.Queue()
        index_queues, workers = [], []
        try:
            for w in range(n_workers):
                q = ctx.Queue()
                p = ctx.Process(target=_worker_loop, daemon=True,
                                args=(self.dataset, self.collate_fn, q, results, w, n_workers, base_seed,
                                      self.worker_init_fn))
                p.start()
                index_queues.append(q)
                workers.append(p)
            sent, ready = 0, {}
            for b in range(len(batches)):
                while sent < len(batches) and sent < b + self.prefetch_factor * n_workers:
                    index_queues[sent % n_workers].put((sent, batches[sent]))
                    sent += 1
                while b not in ready:
                    try:
                        k, ok, payload = results.get(timeout=_POLL_SECONDS)
                    except queue.Empty:
                        for w, p in enumerate(workers):
                            if not p.is_alive():
                                raise RuntimeError(f"DataLoader: worker {w} exited unexpectedly "
                                                   f"(exit code {p.exitcode}) while loading batch {b}") from None
                        continue
                    if not ok:
                        where = "" if k < 0 else f" on batch {k}"
                        raise RuntimeError(f"DataLoader: a worker failed{where}:\n{payload}")
                    ready[k] = payload
                yield self._finish(ready.pop(b))
        finally:
            for q in index_queues:
                q.put(None)
            for p in workers:
                p.join(timeout=2)
                if p.is_alive():
                    p.terminate()
                    p.join()
            for q in index_queues + [results]:
                q.close()
                q.cancel_join_thread()
