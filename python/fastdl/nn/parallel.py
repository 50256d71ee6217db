"""``DistributedDataParallel``: data-parallel training with gradient all-reduce overlapped with the
backward pass (the design of PyTorch's DDP, Li et al., VLDB 2020).

At construction rank 0's parameters and buffers are broadcast, so every replica starts equal. The
parameters that need gradients are packed, in reverse registration order (roughly the order in
which backward produces their gradients), into buckets of at most ``bucket_cap_mb`` megabytes, one
dtype and device per bucket. Each parameter gets a post-accumulate-grad hook; when the last
gradient of a bucket has been accumulated, the bucket's gradients are copied into one flat buffer
and a non-blocking all-reduce of it starts, while backward goes on computing the gradients of the
earlier layers. Buckets start strictly in index order (every rank must issue the collectives in the
same order). When the last bucket has started, backward ends by waiting for all of them and writing
the averaged gradients back into ``.grad``. On MPI the requests are tested in every hook, which
drives the library's progress between backward ops; on NCCL everything is enqueued on the current
CUDA stream and nothing blocks the host.
"""
from __future__ import annotations

import contextlib

from .. import distributed as dist
from ..distributed import bucket_assignment
from ..backend import array_module
from ..tensor import Tensor, no_grad
from .module import Module

__all__ = ["DistributedDataParallel"]


class _Bucket:
    """Parameters whose gradients are all-reduced together through one flat buffer."""

    __slots__ = ("index", "params", "offsets", "buffer", "pending", "work")

    def __init__(self, index: int, params: list, xp, dtype):
        self.index = index
        self.params = params
        self.offsets = []
        size = 0
        for p in params:
            self.offsets.append(size)
            size += p.data.size
        self.buffer = xp.empty(size, dtype=dtype)
        self.pending = len(params)
        self.work = None

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training over the initialised process group.

    Each rank runs ``ddp(x)`` on its own share of the batch (see
    :class:`fastdl.data.DistributedSampler`); after ``loss.backward()`` every rank holds the
    gradients averaged over all ranks, so equal optimizer steps keep the replicas identical.

    bucket_cap_mb: the largest bucket, in megabytes (10⁶ bytes); smaller buckets start sooner
    (more overlap) but each pays the all-reduce's latency. broadcast_buffers: broadcast rank 0's
    buffers (e.g. BatchNorm statistics) before every forward. ``no_sync()``: a context in which
    backward only accumulates local gradients (gradient accumulation); the next backward outside it
    all-reduces the accumulated sums.

    Every parameter that requires grad must receive a gradient in each synchronised backward; a
    parameter that did not is named in the error raised by the next forward.

    ``ddp.module`` is the wrapped model; ``state_dict()`` has PyTorch's ``module.`` prefix, and
    ``ddp.module.state_dict()`` is what a single process loads.

    >>> import fastdl, fastdl.distributed as dist
    >>> from fastdl import nn
    >>> nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
    Traceback (most recent call last):
    ...
    RuntimeError: DistributedDataParallel: the process group is not initialized; call fastdl.distributed.init_process_group() first
    """

    def __init__(self, module: Module, bucket_cap_mb: float = 25, broadcast_buffers: bool = True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: module must be a fastdl.nn.Module, got {type(module).__name__}")
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) or not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}")
        if not dist.is_initialized():
            raise RuntimeError("DistributedDataParallel: the process group is not initialized; call "
                               "fastdl.distributed.init_process_group() first")
        self.module = module
        object.__setattr__(self, "world_size", dist.get_world_size())
        object.__setattr__(self, "broadcast_buffers", bool(broadcast_buffers))
        object.__setattr__(self, "bucket_cap_mb", float(bucket_cap_mb))
        object.__setattr__(self, "require_backward_grad_sync", True)
        self._check_same_model()
        with no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t, src=0)
        params = [p for p in module.parameters() if p.requires_grad]
        object.__setattr__(self, "_params", params)
        object.__setattr__(self, "_names", {id(p): name for name, p in module.named_parameters()})
        object.__setattr__(self, "_buckets", self._make_buckets(params, int(self.bucket_cap_mb * 1e6)))
        where = {}
        for bucket in self._buckets:
            for k, p in enumerate(bucket.params):
                where[id(p)] = (bucket, k)
        object.__setattr__(self, "_where", where)
        object.__setattr__(self, "_next_bucket", 0)
        object.__setattr__(self, "_ready", set())
        object.__setattr__(self, "_hooks", [p.register_post_accumulate_grad_hook(self._grad_ready) for p in params])

    # ---- set-up ----------------------------------------------------------------------------------

    def _check_same_model(self) -> None:
        """Every rank must wrap the same architecture: compare parameter shapes and dtypes (gathered
        over MPI) before a broadcast of mismatched sizes could deadlock or corrupt memory."""
        shapes = [(tuple(p.shape), str(p.data.dtype)) for p in self.module.parameters()]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, shapes)
        differ = [r for r, g in enumerate(gathered) if g != gathered[0]]
        if differ:
            raise ValueError(f"DistributedDataParallel: ranks {differ} wrap a different model than rank 0 "
                             f"(parameter shapes or dtypes differ: rank {dist.get_rank()} has {len(shapes)} "
                             f"parameters, {sum(p.data.size for p in self.module.parameters())} elements)")

    @staticmethod
    def _make_buckets(params: list, cap_bytes: int) -> list:
        keys = [(p.data.dtype, getattr(p, "device", "cpu")) for p in params]
        groups = bucket_assignment([p.data.nbytes for p in params], keys, cap_bytes)
        return [_Bucket(i, [params[k] for k in g], array_module(params[g[0]].data), params[g[0]].data.dtype)
                for i, g in enumerate(groups)]

    @property
    def bucket_sizes(self) -> list:
        """Bytes per bucket, in the order they are all-reduced."""
        return [b.nbytes for b in self._buckets]

    # ---- forward -----------------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        if self._ready:
            missing = [self._names.get(id(p), "?") for p in self._params if id(p) not in self._ready]
            self._reset()
            raise RuntimeError(
                "DistributedDataParallel: the previous backward did not produce gradients for parameters "
                f"{missing}, so their buckets were never all-reduced; every parameter that requires grad must "
                "take part in the loss (or set requires_grad=False on the unused ones)")
        if self.broadcast_buffers and self.world_size > 1:
            with no_grad():
                for b in self.module.buffers():
                    dist.broadcast(b, src=0)
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside only accumulate local gradients; the first backward after the
        block all-reduces the accumulated gradients.

        >>> # with ddp.no_sync():
        >>> #     ddp(x1).sum().backward()      # local accumulation
        >>> # ddp(x2).sum().backward()          # all-reduce of the sum of both
        """
        previous = self.require_backward_grad_sync
        object.__setattr__(self, "require_backward_grad_sync", False)
        try:
            yield
        finally:
            object.__setattr__(self, "require_backward_grad_sync", previous)

    # ---- backward: the hooks -----------------------------------------------------------------

    def _grad_ready(self, param: Tensor) -> None:
        if not self.require_backward_grad_sync or self.world_size == 1:
            return
        key = id(param)
        if key in self._ready:
            raise RuntimeError(f"DistributedDataParallel: parameter {self._names.get(key, '?')} received its "
                               "gradient twice in one backward (backward twice without a forward, or retain_graph "
                               "reuse); call forward again before the next backward")
        self._ready.add(key)
        bucket, _ = self._where[key]
        bucket.pending -= 1
        buckets = self._buckets
        while self._next_bucket < len(buckets) and buckets[self._next_bucket].pending == 0:
            self._launch(buckets[self._next_bucket])
            object.__setattr__(self, "_next_bucket", self._next_bucket + 1)
        for b in buckets[:self._next_bucket]:
            if b.work is not None:
                b.work.is_completed()  # drives MPI progress between backward ops
        if self._next_bucket == len(buckets):
            self._finish()

    def _launch(self, bucket: _Bucket) -> None:
        buf = bucket.buffer
        for p, off in zip(bucket.params, bucket.offsets):
            n = p.data.size
            buf[off:off + n] = p.grad.data.reshape(-1)
        bucket.work = dist.all_reduce(buf, op="sum", async_op=True)

    def _finish(self) -> None:
        world = self.world_size
        with no_grad():
            for bucket in self._buckets:
                bucket.work.wait()
                bucket.work = None
                xp = array_module(bucket.buffer)
                for p, off in zip(bucket.params, bucket.offsets):
                    g = p.grad.data
                    flat = bucket.buffer[off:off + g.size].reshape(g.shape)
                    if getattr(g.flags, "writeable", True) and g.flags.c_contiguous:  # CuPy: no writeable flag
                        xp.divide(flat, world, out=g)
                    else:
                        p.grad = Tensor(flat / world)
        self._reset()

    def _reset(self) -> None:
        self._ready.clear()
        object.__setattr__(self, "_next_bucket", 0)
        for bucket in self._buckets:
            bucket.pending = len(bucket.params)
            bucket.work = None

    def extra_repr(self) -> str:
        return (f"world_size={self.world_size}, buckets={len(self._buckets)}, "
                f"bucket_cap_mb={self.bucket_cap_mb:g}")
