"""Cases that run on every rank under ``mpirun -n 2`` (launched by tests/test_distributed.py).

    mpirun -n 2 python tests/mpi_cases.py CASE [CASE ...]

Each case checks its results with asserts on every rank; a failing assert aborts the job through
fastdl.distributed's exception hook, naming the rank. Rank 0 prints ``CASE-OK <name>`` after a case
passed on all ranks, which the launching test looks for.
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastdl.distributed as dist  # noqa: E402
from helpers import assert_close, tol  # noqa: E402

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def rank_data(rank, shape, dtype):
    """Rank ``rank``'s deterministic input: every rank can rebuild every other rank's data."""
    rng = np.random.default_rng(1000 + rank)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 100, shape).astype(dtype)
    return rng.integers(-1000, 1000, shape).astype(dtype)


SHAPES = [(0,), (1,), (7,), (3, 5), (2, 3, 4), (257,)]
DTYPES = ["float32", "float64", "float16", "int32", "int64", "uint8"]


def reference(op, arrays):
    stacked = np.stack([a.astype(np.float64) for a in arrays])
    if op == "sum":
        return stacked.sum(0)
    if op == "mean":
        return stacked.mean(0)
    return stacked.max(0)


@case
def collectives():
    rank, world = dist.get_rank(), dist.get_world_size()
    assert (rank, world) == (dist.get_rank(), 2) and dist.get_backend() == "mpi"
    for dtype in DTYPES:
        for shape in SHAPES:
            for op in ("sum", "mean", "max"):
                if op == "mean" and np.dtype(dtype).kind != "f":
                    continue
                inputs = [rank_data(r, shape, dtype) for r in range(world)]
                expected = reference(op, inputs)
                # contiguous, transposed and sliced views: all reduced in place
                base = rank_data(rank, shape, dtype)
                dist.all_reduce(base, op=op)
                wide = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
                view = wide[..., ::2]
                view[...] = inputs[rank]
                dist.all_reduce(view, op=op)
                assert not wide[..., 1::2].any(), "all_reduce wrote outside the view"
                k = world if op != "max" else 1
                for got in (base, view):
                    if np.dtype(dtype).kind == "f":
                        # float16 is summed in float32 and rounded once
                        rel = tol(np.float32 if dtype == "float16" else dtype, k)
                        bound = max(rel, np.finfo(np.float16).eps if dtype == "float16" else 0)
                        scale = max(float(np.abs(expected).max(initial=0)), 1.0)
                        err = float(np.abs(got.astype(np.float64) - expected).max(initial=0))
                        assert err <= bound * scale, (dtype, shape, op, err)
                    else:
                        np.testing.assert_array_equal(got, expected.astype(dtype))
                    assert got.dtype == np.dtype(dtype) and got.shape == shape
    # a 2-D transposed view
    t = rank_data(rank, (4, 6), "float64").T
    dist.all_reduce(t)
    assert_close(t, sum(rank_data(r, (4, 6), "float64") for r in range(world)).T, np.float64, world)

    for src in range(world):
        for dtype in DTYPES + ["bool"]:
            x = rank_data(rank, (3, 4), dtype) if dtype != "bool" else (rank_data(rank, (3, 4), "int32") > 0)
            want = rank_data(src, (3, 4), dtype) if dtype != "bool" else (rank_data(src, (3, 4), "int32") > 0)
            dist.broadcast(x, src=src)
            np.testing.assert_array_equal(x, want)
            y = np.zeros((4, 6), dtype)[:, ::2].T
            y[...] = rank_data(rank, (3, 4), dtype) if dtype != "bool" else 0
            dist.broadcast(y, src=src)
            if dtype != "bool":
                np.testing.assert_array_equal(y, want)

    for dtype in DTYPES:
        x = rank_data(rank, (2, 5), dtype)
        outs = [np.zeros((2, 5), dtype) for _ in range(world)]
        dist.all_gather(outs, x)
        for r in range(world):
            np.testing.assert_array_equal(outs[r], rank_data(r, (2, 5), dtype))

    # async_op: Work.wait() completes, is_completed() eventually turns true
    x = rank_data(rank, (1000,), "float64")
    work = dist.all_reduce(x, op="mean", async_op=True)
    work.wait()
    assert work.is_completed()
    assert_close(x, reference("mean", [rank_data(r, (1000,), "float64") for r in range(world)]), np.float64, world)
    y = rank_data(rank, (5,), "int64")
    work = dist.broadcast(y, src=1, async_op=True)
    while not work.is_completed():
        pass
    np.testing.assert_array_equal(y, rank_data(1, (5,), "int64"))
    outs = [np.zeros(3, np.float32) for _ in range(world)]
    dist.all_gather(outs, np.full(3, rank, np.float32), async_op=True).wait()
    assert [o.tolist() for o in outs] == [[r] * 3 for r in range(world)]
    objs = [None] * world
    dist.all_gather_object(objs, {"rank": rank, "text": "x" * rank})
    assert objs == [{"rank": r, "text": "x" * r} for r in range(world)]
    dist.barrier()


@case
def collectives_on_tensors():
    import fastdl

    rank, world = dist.get_rank(), dist.get_world_size()
    t = fastdl.tensor(rank_data(rank, (3, 4), "float32"))
    dist.all_reduce(t, op="mean")
    assert_close(t.numpy(), reference("mean", [rank_data(r, (3, 4), "float32") for r in range(world)]),
                 np.float32, world)
    b = fastdl.tensor(rank_data(rank, (5,), "float64"))
    dist.broadcast(b, src=1)
    np.testing.assert_array_equal(b.numpy(), rank_data(1, (5,), "float64"))
    outs = [fastdl.zeros(2, dtype=fastdl.int64) for _ in range(world)]
    dist.all_gather(outs, fastdl.tensor(np.full(2, rank, np.int64)))
    assert [o.tolist() for o in outs] == [[r, r] for r in range(world)]


@case
def bad_arguments():
    """The same bad calls raise the same errors on every rank (before any communication)."""
    import pytest

    world = dist.get_world_size()
    table = [
        (lambda: dist.all_reduce(np.ones(3), op="min"), ValueError, "op must be one of"),
        (lambda: dist.all_reduce(np.arange(3), op="mean"), TypeError, "needs a floating-point"),
        (lambda: dist.all_reduce([1.0, 2.0]), TypeError, "expected a fastdl Tensor or an array"),
        (lambda: dist.all_reduce(np.ones(3, np.complex64)), TypeError, r"complex64 \(3,\) is not supported"),
        (lambda: dist.all_reduce(np.ones(3, object)), TypeError, "object array"),
        (lambda: dist.all_reduce(np.broadcast_to(np.ones(1), (3,))), ValueError, "read-only"),
        (lambda: dist.broadcast(np.ones(3), src=world), ValueError, "src must be a rank in 0..1"),
        (lambda: dist.broadcast(np.ones(3), src=-1), ValueError, "src must be a rank"),
        (lambda: dist.all_gather([np.ones(3)], np.ones(3)), ValueError, "world_size = 2 tensors, got 1"),
        (lambda: dist.all_gather([np.ones(3), np.ones(4)], np.ones(3)), ValueError,
         r"tensor_list\[1\] is float64 \(4,\)"),
        (lambda: dist.all_gather([np.ones(3), np.ones(3, np.float32)], np.ones(3)), ValueError,
         r"tensor_list\[1\] is float32"),
        (lambda: dist.all_gather_object([None], 1), ValueError, "world_size = 2 entries, got 1"),
        (lambda: dist.init_process_group("mpi"), RuntimeError, "already initialized"),
    ]
    for fn, exc, words in table:
        with pytest.raises(exc, match=words):
            fn()
    dist.barrier()


@case
def timeout_names_the_rank():
    """Rank 1 never reaches the all_reduce: rank 0's watchdog aborts the job after the timeout."""
    if dist.get_rank() == 1:
        time.sleep(60)
    dist.all_reduce(np.ones(4))


@case
def raising_rank_aborts_the_job():
    """Rank 1 raises before the collective: the exception hook aborts every rank at once, although
    rank 0 waits in all_reduce with a long timeout."""
    if dist.get_rank() == 1:
        raise ValueError("rank-one failure on purpose")
    dist.all_reduce(np.ones(4))


# ---- DistributedDataParallel ---------------------------------------------------------------------

STEPS, GLOBAL_BATCH, N_SAMPLES = 10, 12, 120


def mlp(seed, dtype="float64"):
    import fastdl
    from fastdl import nn

    fastdl.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).to(dtype)


def mse(out, target):
    return ((out - target) ** 2).mean()


def regression_data(dtype="float64"):
    rng = np.random.default_rng(7)
    return rng.standard_normal((N_SAMPLES, 7)).astype(dtype), rng.standard_normal((N_SAMPLES, 3)).astype(dtype)


def train_single(steps, batch, make_optimizer):
    """The reference: one process, global batches of ``batch`` samples, rank 0's initial weights."""
    import fastdl
    from fastdl import nn

    model = mlp(100)
    opt = make_optimizer(model.parameters())
    x, y = regression_data()
    for step in range(steps):
        sl = slice(step * batch, (step + 1) * batch)
        loss = mse(model(fastdl.tensor(x[sl])), fastdl.tensor(y[sl]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def train_ddp(steps, global_batch, make_optimizer, bucket_cap_mb):
    """Each rank starts from different weights (rank 0's are broadcast) and trains on its share of
    every global batch, chosen by DistributedSampler (no shuffle: rank r holds samples r, r + R, ...)."""
    import fastdl
    from fastdl import nn
    from fastdl.data.distributed import DistributedSampler

    rank, world = dist.get_rank(), dist.get_world_size()
    ddp = nn.parallel.DistributedDataParallel(mlp(100 + rank), bucket_cap_mb=bucket_cap_mb)
    opt = make_optimizer(ddp.parameters())
    x, y = regression_data()
    mine = DistributedSampler(range(N_SAMPLES), shuffle=False).indices()
    local = global_batch // world
    for step in range(steps):
        idx = mine[step * local:(step + 1) * local]
        loss = mse(ddp(fastdl.tensor(x[idx])), fastdl.tensor(y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ddp


def assert_same_parameters(a, b, k):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        scale = max(float(np.abs(q.numpy()).max()), 1.0)
        err = float(np.abs(p.numpy() - q.numpy()).max())
        assert err <= tol(np.float64, k) * scale * 64, (name, err)


@case
def ddp_matches_single_process():
    from fastdl import optim

    optimizers = {
        "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
        "adam": lambda ps: optim.Adam(ps, lr=0.01),
    }
    for name, make in optimizers.items():
        reference = train_single(STEPS, GLOBAL_BATCH, make)
        for cap in (25, 0.0002):  # one bucket; one bucket per parameter
            ddp = train_ddp(STEPS, GLOBAL_BATCH, make, cap)
            assert len(ddp.bucket_sizes) == (1 if cap == 25 else 6), ddp.bucket_sizes
            assert_same_parameters(ddp.module, reference, GLOBAL_BATCH * STEPS)
            # the replicas are identical, bit for bit
            for p in ddp.parameters():
                copy = p.numpy().copy()
                dist.broadcast(copy, src=0)
                np.testing.assert_array_equal(copy, p.numpy())


@case
def ddp_buckets_fire_during_backward():
    """Instrumented: a marker Function between layers logs when backward reaches it, and the
    all-reduce launches are logged too. Each layer's bucket must start before backward has gone
    below that layer, i.e. while the earlier layers' gradients are still being computed."""
    import fastdl
    from fastdl import nn
    from fastdl.tensor import Function

    events = []

    class Marker(Function):
        @staticmethod
        def forward(ctx, x, label):
            ctx.label = label
            return x.copy()

        @staticmethod
        def backward(ctx, g):
            events.append(("backward reaches", ctx.label))
            return g, None

    class Marked(nn.Module):
        def __init__(self, layer, label):
            super().__init__()
            self.layer, self.label = layer, label

        def forward(self, x):
            return self.layer(Marker.apply(x, self.label))

    fastdl.manual_seed(0)
    model = nn.Sequential(*[Marked(nn.Linear(8, 8).double(), f"layer {i}") for i in range(4)])
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.0006)  # one Linear (576 B) per bucket
    assert len(ddp.bucket_sizes) == 4, ddp.bucket_sizes
    real = dist.all_reduce

    def logged(tensor, op="sum", async_op=False):
        events.append(("all_reduce starts", tensor.size))
        return real(tensor, op=op, async_op=async_op)

    dist.all_reduce = logged
    try:
        x = fastdl.tensor(rank_data(dist.get_rank(), (5, 8), "float64"), requires_grad=True)
        ddp(x).sum().backward()
    finally:
        dist.all_reduce = real
    starts = [i for i, e in enumerate(events) if e[0] == "all_reduce starts"]
    assert len(starts) == 4, events
    for k in range(4):  # layer 3's bucket starts before backward reaches layer 3's input, and so on
        assert starts[k] < events.index(("backward reaches", f"layer {3 - k}")), events
    # the averaged gradients arrived
    grads = [p.grad.numpy().copy() for p in ddp.parameters()]
    for g in grads:
        other = g.copy()
        dist.broadcast(other, src=1)
        np.testing.assert_array_equal(other, g)


@case
def ddp_no_sync_accumulates():
    """Two micro-batches under no_sync, a third synchronised: the gradients equal the single-process
    gradient of the sum of the three global-batch losses; inside no_sync they stay local."""
    import fastdl
    from fastdl import nn

    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = regression_data()
    reference = mlp(100)
    for m in range(3):
        sl = slice(m * GLOBAL_BATCH, (m + 1) * GLOBAL_BATCH)
        mse(reference(fastdl.tensor(x[sl])), fastdl.tensor(y[sl])).backward()
    ddp = nn.parallel.DistributedDataParallel(mlp(100 + rank))
    local = GLOBAL_BATCH // world

    def micro(m):
        idx = np.arange(m * GLOBAL_BATCH + rank, (m + 1) * GLOBAL_BATCH, world)
        assert len(idx) == local
        mse(ddp(fastdl.tensor(x[idx])), fastdl.tensor(y[idx])).backward()

    with ddp.no_sync():
        micro(0)
        micro(1)
    g = ddp.module[0].weight.grad.numpy().copy()
    gathered = [np.zeros_like(g) for _ in range(world)]
    dist.all_gather(gathered, g)
    assert not np.allclose(gathered[0], gathered[1]), "no_sync all-reduced"
    micro(2)
    for (name, p), q in zip(ddp.module.named_parameters(), reference.parameters()):
        assert_close(p.grad.numpy(), q.grad.numpy(), np.float64, 3 * GLOBAL_BATCH * 16)


@case
def ddp_errors():
    import pytest

    import fastdl
    from fastdl import nn

    rank = dist.get_rank()
    with pytest.raises(ValueError, match="bucket_cap_mb must be a positive number"):
        nn.parallel.DistributedDataParallel(mlp(0), bucket_cap_mb=0)
    with pytest.raises(TypeError, match="must be a fastdl.nn.Module"):
        nn.parallel.DistributedDataParallel(lambda x: x)
    # a different model on rank 1: refused on every rank, before any broadcast
    model = mlp(0) if rank == 0 else nn.Sequential(nn.Linear(7, 3)).double()
    with pytest.raises(ValueError, match=r"ranks \[1\] wrap a different model than rank 0"):
        nn.parallel.DistributedDataParallel(model)

    # a parameter without gradient: named by the next forward
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()

        def forward(self, x):
            return self.used(x)

    ddp = nn.parallel.DistributedDataParallel(TwoHeads(), bucket_cap_mb=0.0001)
    x = fastdl.tensor(np.ones((2, 3)))
    ddp(x).sum().backward()
    with pytest.raises(RuntimeError, match=r"unused.weight"):
        ddp(x)


@case
def fit_under_the_launcher():
    """fit() unchanged on a DDP model: identical averaged logs on every rank, the validation loss
    equal to a single process's over the whole set, output and checkpoints on rank 0 only. Rank 0
    leaves the final weights in FASTDL_TEST_DIR for the launching test, which reloads the
    checkpoint without MPI."""
    import fastdl
    from fastdl import nn, optim, train
    from fastdl.data import DataLoader, DistributedSampler, TensorDataset

    rank, world = dist.get_rank(), dist.get_world_size()
    out = os.environ["FASTDL_TEST_DIR"]
    x, y = regression_data()
    train_set, val_set = TensorDataset(x[:80], y[:80]), TensorDataset(x[80:], y[80:])
    ddp = nn.parallel.DistributedDataParallel(mlp(100 + rank))
    train_loader = DataLoader(train_set, batch_size=5, sampler=DistributedSampler(train_set, seed=1), seed=0)
    val_loader = DataLoader(val_set, batch_size=8, sampler=DistributedSampler(val_set, shuffle=False))
    saves = []
    real_save = fastdl.save

    def recording_save(obj, path):
        saves.append(path)
        real_save(obj, path)

    fastdl.save = recording_save
    try:
        history = train.fit(ddp, mse, optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9), train_loader, val_loader,
                            epochs=2, callbacks=[train.ModelCheckpoint(os.path.join(out, "ckpt-{epoch}.safetensors"))],
                            verbose=1)
    finally:
        fastdl.save = real_save
    assert (len(saves) == 2) if rank == 0 else not saves, saves
    logs = np.array(history["loss"] + history["val_loss"])
    gathered = [np.zeros_like(logs) for _ in range(world)]
    dist.all_gather(gathered, logs)
    np.testing.assert_array_equal(gathered[0], gathered[1])
    whole = train.evaluate(ddp.module, mse, DataLoader(val_set, batch_size=len(val_set)))
    assert abs(whole["loss"] - history["val_loss"][-1]) <= tol(np.float64, 40) * max(whole["loss"], 1.0), \
        (whole, history["val_loss"])
    if rank == 0:
        np.savez(os.path.join(out, "final.npz"), **{k: v.numpy() for k, v in ddp.module.state_dict().items()})


@case
def nccl_collectives():
    """backend='nccl' on CuPy arrays, on as many ranks as GPUs (one rank works on one GPU)."""
    import cupy

    rank, world = dist.get_rank(), dist.get_world_size()
    assert dist.get_backend() == "nccl"
    for dtype in ("float32", "float64", "float16", "int32", "int64", "uint8"):
        for op in ("sum", "mean", "max"):
            if op == "mean" and np.dtype(dtype).kind != "f":
                continue
            expected = reference(op, [rank_data(r, (3, 5), dtype) for r in range(world)])
            x = cupy.asarray(rank_data(rank, (3, 5), dtype))
            dist.all_reduce(x, op=op)
            view = cupy.zeros((3, 10), dtype)[:, ::2]
            view[...] = cupy.asarray(rank_data(rank, (3, 5), dtype))
            dist.all_reduce(view, op=op, async_op=True).wait()
            for got in (x, view):
                np.testing.assert_allclose(cupy.asnumpy(got).astype(np.float64), expected,
                                           rtol=1e-3 if dtype == "float16" else 1e-6)
    b = cupy.asarray(rank_data(rank, (4,), "float64"))
    dist.broadcast(b, src=0)
    np.testing.assert_array_equal(cupy.asnumpy(b), rank_data(0, (4,), "float64"))
    outs = [cupy.zeros(3, cupy.float32) for _ in range(world)]
    dist.all_gather(outs, cupy.full(3, rank, cupy.float32))
    assert [cupy.asnumpy(o).tolist() for o in outs] == [[r] * 3 for r in range(world)]
    dist.barrier()


def main(names):
    timeout = float(os.environ.get("FASTDL_TEST_TIMEOUT", "60"))
    dist.init_process_group(os.environ.get("FASTDL_TEST_BACKEND", "mpi"), timeout=timeout)
    for name in names:
        CASES[name]()
        dist.barrier()
        if dist.get_rank() == 0:
            print(f"CASE-OK {name}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
