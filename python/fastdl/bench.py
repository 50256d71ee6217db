"""Benchmark problems (shapes, FLOP formulas) and the timing harness behind ``fastdl bench`` and
``bench/bench_*.py``.

Every problem is timed for fastdl and for each reference available in the same process (NumPy,
PyTorch), interleaved, best of several repeats, and reported as GFLOP/s, the ratio to each
reference, and the share of the machine's measured FMA peak for the ISA in use.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np

from . import kernels
from .backend import _C, cpu_capability, get_num_threads, set_num_threads


@dataclasses.dataclass
class Problem:
    family: str
    name: str
    flops: float
    # Each builds the callables to time: name -> zero-argument function (inputs already made).
    make: Callable[[], dict[str, Callable[[], object]]]
    dtype: str = "float32"
    # Sequence problems (lstm): time steps per call; rows then also show µs per step.
    steps: int = 0


def best_times(impls: dict[str, Callable[[], object]], repeats: int = 5, min_time: float = 0.02,
               clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Seconds per call for each implementation: calls are batched to last ``min_time``, the
    implementations interleaved within each repeat, and the best repeat kept (noise only adds).

    ``clock``: wall time by default; ``time.thread_time`` (CPU time of the calling thread) for
    one-thread runs, where every implementation computes in the calling thread, so time the thread
    spent descheduled by other processes does not count."""
    loops = {}
    for name, fn in impls.items():
        fn()  # warm-up: page faults, packing buffers, lazy imports
        n, elapsed = 1, 0.0
        while True:
            t0 = clock()
            for _ in range(n):
                fn()
            elapsed = clock() - t0
            if elapsed >= min_time or n >= 1 << 20:
                break
            n = max(2 * n, int(n * min_time / max(elapsed, 1e-9)))
        loops[name] = n
    best = {name: float("inf") for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            n = loops[name]
            t0 = clock()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (clock() - t0) / n)
    return best


def _torch():
    try:
        import torch
    except Exception:
        return None
    return torch


# ---- GEMM ---------------------------------------------------------------------------------------

def gemm_problems(full: bool = False) -> list[Problem]:
    """Square sizes 64…1024 (…4096 with ``full``), skinny shapes, M = 1, and a batch of small
    products; float32, plus float64 at the square sizes from 512 up."""
    shapes = [(n, n, n, 1) for n in (64, 128, 256, 512, 1024)]
    if full:
        shapes += [(n, n, n, 1) for n in (2048, 4096)]
    shapes += [(4096, 64, 4096, 1), (64, 4096, 4096, 1), (1, 4096, 4096, 1), (32, 32, 32, 32)]
    problems = [_gemm_problem(m, n, k, b, "float32") for m, n, k, b in shapes]
    problems += [_gemm_problem(n, n, n, 1, "float64") for n in ((512, 1024, 2048) if full else (512, 1024))]
    return problems


def _gemm_problem(M: int, N: int, K: int, batch: int, dtype: str) -> Problem:
    name = f"{M}x{N}x{K}" if batch == 1 else f"{batch}x({M}x{N}x{K})"

    def make():
        rng = np.random.default_rng(0)
        shape_a = (M, K) if batch == 1 else (batch, M, K)
        shape_b = (K, N) if batch == 1 else (batch, K, N)
        a = rng.standard_normal(shape_a).astype(dtype)
        b = rng.standard_normal(shape_b).astype(dtype)
        impls = {"fastdl": lambda: kernels.matmul(a, b), "numpy": lambda: np.matmul(a, b)}
        torch = _torch()
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            impls["torch"] = lambda: torch.matmul(ta, tb)
        return impls

    return Problem("gemm", name, 2.0 * M * N * K * batch, make, dtype)


# ---- per-op overhead (tensor branch) ---------------------------------------------------------------
# Not FLOP problems: microseconds per call of tiny ops, where Python dispatch and graph bookkeeping
# dominate (Problem.flops = 0 marks them; rows report µs and the ratio fastdl / reference).

def overhead_problems(full: bool = False) -> list[Problem]:
    """Single small ops (add of two 8×8 tensors, a 32×32 matmul) and a Linear(64, 64) layer on a
    batch of 32: its forward (graph recorded, as in training) and forward + backward (ReLU, sum)."""
    return [Problem("overhead", name, 0.0, make) for name, make in (
        ("add 8x8", _overhead_add), ("matmul 32x32", _overhead_matmul),
        ("linear 64->64 fwd", lambda: _overhead_linear(False)), ("linear 64->64 fwd+bwd", lambda: _overhead_linear(True)),
    )]


def _overhead_add():
    import fastdl

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 8, 8)).astype(np.float32)
    fa, fb = fastdl.tensor(a), fastdl.tensor(b)
    impls = {"fastdl": lambda: fa + fb, "numpy": lambda: a + b}
    torch = _torch()
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        impls["torch"] = lambda: ta + tb
    return impls


def _overhead_matmul():
    import fastdl

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 32, 32)).astype(np.float32)
    fa, fb = fastdl.tensor(a), fastdl.tensor(b)
    impls = {"fastdl": lambda: fa @ fb, "numpy": lambda: a @ b}
    torch = _torch()
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        impls["torch"] = lambda: ta @ tb
    return impls


def _overhead_linear(backward: bool):
    import fastdl
    from fastdl import functional as F

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    w = (rng.standard_normal((64, 64)) / 8).astype(np.float32)
    b = np.zeros(64, np.float32)
    fx, fw, fb = fastdl.tensor(x), fastdl.tensor(w, requires_grad=True), fastdl.tensor(b, requires_grad=True)

    def fastdl_step():
        if not backward:
            return F.linear(fx, fw, fb)
        fw.grad = fb.grad = None
        F.linear(fx, fw, fb).relu().sum().backward()

    impls = {"fastdl": fastdl_step}
    torch = _torch()
    if torch is not None:
        tx = torch.from_numpy(x)
        tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)

        def torch_step():
            if not backward:
                return torch.nn.functional.linear(tx, tw, tb)
            tw.grad = tb.grad = None
            torch.nn.functional.linear(tx, tw, tb).relu().sum().backward()

        impls["torch"] = torch_step
    return impls


PROBLEMS: dict[str, Callable[..., list[Problem]]] = {"gemm": gemm_problems, "overhead": overhead_problems}
# Families reported in µs per call (their problems have flops = 0) rather than GFLOP/s.
TIME_FAMILIES: tuple = ("overhead",)


# ---- LSTM ----------------------------------------------------------------------------------------

# (T, B, I, H): a mid-size training shape, PTB "medium" (Zaremba et al. 2014), batch-1 inference.
LSTM_SHAPES = [(100, 32, 128, 256), (35, 20, 650, 650), (50, 1, 64, 128)]
# nn.LSTMCell steps called from Python, (B, I, H).
LSTM_CELL_SHAPES = [(1, 64, 128), (32, 128, 256)]


def lstm_problems(full: bool = False) -> list[Problem]:
    """One LSTM layer over a sequence, forward (inference) and forward+backward (all gradients),
    against ``torch.nn.LSTM`` (oneDNN); and one ``nn.LSTMCell`` step called from Python against
    ``torch.nn.LSTMCell``. float32, plus float64 with ``full``. FLOPs: forward 2·T·B·4H·(I+H), the
    backward twice that."""
    dtypes = ("float32", "float64") if full else ("float32",)
    problems = [_lstm_problem(*shape, phase, dtype) for dtype in dtypes for shape in LSTM_SHAPES
                for phase in ("fwd", "fwd+bwd")]
    if _has_lstm_cell():
        problems += [_lstm_cell_problem(*shape) for shape in LSTM_CELL_SHAPES]
    return problems


def _has_lstm_cell() -> bool:
    try:
        from .nn import LSTMCell  # noqa: F401
    except ImportError:
        return False
    return True


def _lstm_problem(T: int, B: int, I: int, H: int, phase: str, dtype: str) -> Problem:
    def make():
        rng = np.random.default_rng(0)
        k = 1 / np.sqrt(H)
        x = rng.standard_normal((T, B, I)).astype(dtype)
        w_ih, w_hh = (rng.uniform(-k, k, (4 * H, n)).astype(dtype) for n in (I, H))
        b_ih, b_hh = (rng.uniform(-k, k, 4 * H).astype(dtype) for _ in range(2))
        grad_y = rng.standard_normal((T, B, H)).astype(dtype)

        def fastdl_fwd():
            return kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh)

        def fastdl_fwd_bwd():
            y, _, _, saved = kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, training=True)
            return kernels.lstm_backward(grad_y, None, None, x, w_ih, w_hh, None, None, y, saved)

        impls = {"fastdl": fastdl_fwd if phase == "fwd" else fastdl_fwd_bwd}
        torch = _torch()
        if torch is not None:
            lstm = torch.nn.LSTM(I, H).to(getattr(torch, dtype))
            with torch.no_grad():
                for name, a in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih),
                                ("bias_hh_l0", b_hh)):
                    getattr(lstm, name).copy_(torch.from_numpy(a))
            tx, tgy = torch.from_numpy(x), torch.from_numpy(grad_y)
            tx_grad = tx.clone().requires_grad_()

            def torch_fwd():
                with torch.no_grad():
                    return lstm(tx)

            def torch_fwd_bwd():
                lstm.zero_grad(set_to_none=True)
                tx_grad.grad = None
                y, _ = lstm(tx_grad)
                y.backward(tgy)

            impls["torch"] = torch_fwd if phase == "fwd" else torch_fwd_bwd
        return impls

    flops = 2.0 * T * B * 4 * H * (I + H) * (1 if phase == "fwd" else 3)
    return Problem("lstm", f"{phase} {T}x{B}x{I}x{H}", flops, make, dtype, steps=T)


def _lstm_cell_problem(B: int, I: int, H: int, dtype: str = "float32") -> Problem:
    def make():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((B, I)).astype(dtype)
        h = rng.standard_normal((B, H)).astype(dtype)
        c = rng.standard_normal((B, H)).astype(dtype)
        from . import nn
        from .tensor import Tensor, no_grad

        cell = nn.LSTMCell(I, H)
        state = (Tensor(h), Tensor(c))
        fx = Tensor(x)

        def fastdl_step():
            with no_grad():
                return cell(fx, state)

        impls = {"fastdl": fastdl_step}
        torch = _torch()
        if torch is not None:
            tcell = torch.nn.LSTMCell(I, H)
            tstate = (torch.from_numpy(h), torch.from_numpy(c))
            tx = torch.from_numpy(x)

            def torch_step():
                with torch.no_grad():
                    return tcell(tx, tstate)

            impls["torch"] = torch_step
        return impls

    return Problem("lstm", f"LSTMCell step {B}x{I}x{H}", 2.0 * B * 4 * H * (I + H), make, dtype, steps=1)


def _per_step(row: dict) -> str:
    """µs per time step of fastdl and torch, appended to a sequence problem's row."""
    us = {k: t / row["steps"] * 1e6 for k, t in row["seconds"].items()}
    cells = " ".join(f"{name} {us[name]:.1f}" for name in ("fastdl", "torch") if name in us)
    return f"   µs/step: {cells}"


PROBLEMS["lstm"] = lstm_problems


# ---- optim: one optimizer step --------------------------------------------------------------------

def optim_problems(full: bool = False) -> list[Problem]:
    """One optimizer step, in µs: Adam, AdamW and SGD-momentum on a 1M-parameter MLP
    (Linear(512, 1024) + Linear(1024, 512): 4 tensors, 1,050,112 parameters), and Adam on
    1M parameters split into 100 tensors (the per-parameter overhead). Against
    ``torch.optim`` with ``foreach=True`` and a per-parameter NumPy Adam (the loop it replaces)."""
    mlp = [(1024, 512), (1024,), (512, 1024), (512,)]
    many = [(10_000,)] * 100
    problems = [
        _optim_problem("adam", "mlp-1M", mlp),
        _optim_problem("adam", "100x10k", many),
        _optim_problem("adamw", "mlp-1M", mlp),
        _optim_problem("sgd", "mlp-1M", mlp),
    ]
    if full:
        problems.append(_optim_problem("adam", "mlp-1M", mlp, "float64"))
    return problems


def _numpy_adam(params, grads, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam as a per-parameter loop of in-place NumPy operations (the baseline of the fused step)."""
    state = [(np.zeros_like(p), np.zeros_like(p), np.empty_like(p)) for p in params]
    step = [0]

    def run():
        step[0] += 1
        t = step[0]
        step_size = lr / (1 - beta1**t)
        bc2_sqrt = (1 - beta2**t) ** 0.5
        for p, g, (m, v, tmp) in zip(params, grads, state):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            np.multiply(g, g, out=tmp)
            tmp *= 1 - beta2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp /= bc2_sqrt
            tmp += eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp

    return run


def _optim_problem(rule: str, name: str, shapes, dtype: str = "float32") -> Problem:
    def make():
        from . import nn, optim
        from .tensor import Tensor

        rng = np.random.default_rng(0)
        arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
        grads = [rng.standard_normal(s).astype(dtype) * 1e-2 for s in shapes]
        params = [nn.Parameter(Tensor(a.copy())) for a in arrays]
        for p, g in zip(params, grads):
            p.grad = Tensor(g)

        def build(module, ps, **extra):
            if rule == "sgd":
                return module.SGD(ps, lr=1e-3, momentum=0.9, **extra)
            return (module.AdamW if rule == "adamw" else module.Adam)(ps, lr=1e-3, **extra)

        impls = {"fastdl": build(optim, params).step}
        if rule == "adam":
            impls["numpy"] = _numpy_adam([a.copy() for a in arrays], grads)
        torch = _torch()
        if torch is not None:
            tparams = [torch.tensor(a, requires_grad=True) for a in arrays]
            for p, g in zip(tparams, grads):
                p.grad = torch.from_numpy(g)
            impls["torch"] = build(torch.optim, tparams, foreach=True).step
        return impls

    # flops = 0: the row reports µs per step (as the overhead family).
    return Problem("optim", f"{rule}-{name}", 0.0, make, dtype)


PROBLEMS["optim"] = optim_problems
TIME_FAMILIES = TIME_FAMILIES + ("optim",)


def peak_gflops(dtype: str, threads: int) -> float:
    """The measured FMA peak for the ISA in use, in GFLOP/s, on ``threads`` cores."""
    return _C.measure_peak_gflops(cpu_capability(), dtype == "float64", threads, 0.1)


def clock_for(threads: int) -> Callable[[], float]:
    """The timer for a run on ``threads`` threads: the calling thread's CPU time for one thread
    (robust to other processes on a shared machine), wall time otherwise."""
    return time.thread_time if threads == 1 else time.perf_counter


def run(family: str, threads_list=(1, 2), full: bool = False, repeats: int = 5, printer=print) -> list[dict]:
    """Time every problem of ``family`` on each thread count; print and return the rows."""
    import threadpoolctl

    torch = _torch()
    rows = []
    saved = get_num_threads()
    try:
        for threads in threads_list:
            set_num_threads(threads)
            if torch is not None:
                torch.set_num_threads(threads)
            peaks = {}
            with threadpoolctl.threadpool_limits(limits=threads):
                for problem in PROBLEMS[family](full=full):
                    times = best_times(problem.make(), repeats=repeats, clock=clock_for(threads))
                    if not problem.flops:
                        row = {"family": family, "problem": problem.name, "dtype": problem.dtype, "threads": threads,
                               "us": {k: t * 1e6 for k, t in times.items()}, "seconds": times}
                        rows.append(row)
                        printer(format_row(row))
                        continue
                    if problem.dtype not in peaks:
                        peaks[problem.dtype] = peak_gflops(problem.dtype, threads)
                    row = {
                        "family": family,
                        "problem": problem.name,
                        "dtype": problem.dtype,
                        "threads": threads,
                        "gflops": {k: problem.flops / t / 1e9 for k, t in times.items()},
                        "seconds": times,
                        "peak_gflops": peaks[problem.dtype],
                        "steps": problem.steps,
                    }
                    rows.append(row)
                    printer(format_row(row))
    finally:
        set_num_threads(saved)
    return rows


def format_header(family: str = "gemm") -> str:
    if family in TIME_FAMILIES:
        return (f"{'problem':>22} {'dtype':>7} {'thr':>3} {'fastdl us':>10} {'numpy us':>10} {'torch us':>10} "
                f"{'x numpy':>8} {'x torch':>8}")
    return (
        f"{'problem':>22} {'dtype':>7} {'thr':>3} {'fastdl':>9} {'numpy':>9} {'torch':>9} "
        f"{'x numpy':>8} {'x torch':>8} {'% peak':>7}"
    )


def format_row(row: dict) -> str:
    if "us" in row:
        us = row["us"]
        fd, npy, tch = us.get("fastdl"), us.get("numpy"), us.get("torch")
        cells = [f"{v:.2f}" if v is not None else "-" for v in (fd, npy, tch)]
        ratios = [f"{fd / v:.2f}" if v else "-" for v in (npy, tch)]
        return (f"{row['problem']:>22} {row['dtype']:>7} {row['threads']:>3} {cells[0]:>10} {cells[1]:>10} "
                f"{cells[2]:>10} {ratios[0]:>8} {ratios[1]:>8}")
    g = row["gflops"]
    fd, npy, tch = g.get("fastdl"), g.get("numpy"), g.get("torch")

    def cell(v, width=9, fmt="{:.1f}"):
        return f"{fmt.format(v) if v is not None else '-':>{width}}"

    return (
        f"{row['problem']:>22} {row['dtype']:>7} {row['threads']:>3} {cell(fd)} {cell(npy)} {cell(tch)} "
        f"{cell(fd / npy if npy else None, 8, '{:.2f}')} {cell(fd / tch if tch else None, 8, '{:.2f}')} "
        f"{cell(100 * fd / row['peak_gflops'], 7, '{:.0f}')}"
        + (_per_step(row) if row.get("steps") else "")
    )


def openblas_description() -> str:
    """Which OpenBLAS kernel NumPy runs (threadpoolctl's 'architecture'), for the results table."""
    import threadpoolctl

    for lib in threadpoolctl.threadpool_info():
        if lib.get("internal_api") == "openblas":
            return f"OpenBLAS {lib.get('version')} ({lib.get('architecture')} kernel)"
    return "NumPy BLAS: " + ", ".join(lib.get("internal_api", "?") for lib in threadpoolctl.threadpool_info())


# ---- DDP: collectives and data-parallel training on several ranks ------------------------------
# `fastdl bench ddp` launches `mpirun -n RANKS python -c "from fastdl import bench; bench.ddp_worker(...)"`;
# every rank runs the same timed loops, and rank 0 prints the rows (times are the slowest rank's).

DDP_MESSAGE_BYTES = tuple(4 ** k for k in range(2, 14))  # 16 B … 64 MiB


def _ddp_timed(fn, comm, MPI, repeats: int, min_time: float = 0.02) -> float:
    """Seconds per call of the collective ``fn``, identical on every rank: the loop count is agreed
    with an all-reduce (every rank must call the collective equally often), each repeat is timed
    between barriers, the slowest rank's time counts, and the best repeat is kept."""
    fn()
    comm.Barrier()
    t0 = time.perf_counter()
    fn()
    one = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    n = int(min(max(min_time / max(one, 1e-9), 1), 1 << 16))
    best = float("inf")
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, comm.allreduce((time.perf_counter() - t0) / n, op=MPI.MAX))
    return best


def ddp_allreduce_rows(sizes=DDP_MESSAGE_BYTES, repeats: int = 5) -> list[dict]:
    """Inside an initialised process group: fastdl's ``all_reduce`` (sum, float32, in place) against
    mpi4py's raw ``Allreduce`` on the same buffers, for each message size in bytes."""
    from mpi4py import MPI

    from . import distributed as dist

    comm, world = MPI.COMM_WORLD, dist.get_world_size()
    rows = []
    for nbytes in sizes:
        x = np.ones(nbytes // 4, np.float32)
        impls = {"fastdl": lambda: dist.all_reduce(x), "mpi4py": lambda: comm.Allreduce(MPI.IN_PLACE, x)}
        # interleave the implementations repeat by repeat, as best_times does
        times = {k: float("inf") for k in impls}
        for _ in range(repeats):
            for name, fn in impls.items():
                times[name] = min(times[name], _ddp_timed(fn, comm, MPI, 1))
        rows.append({"bench": "allreduce", "bytes": nbytes, "ranks": world, "seconds": times,
                     # bus bandwidth (as nccl-tests): what each link carries in a ring all-reduce
                     "busbw_gbs": {k: 2 * (world - 1) / world * nbytes / t / 1e9 for k, t in times.items()}})
    return rows


def format_ddp_allreduce(row: dict) -> str:
    t, bw = row["seconds"], row["busbw_gbs"]
    size = row["bytes"]
    label = f"{size} B" if size < 1024 else f"{size >> 10} KiB" if size < 1 << 20 else f"{size >> 20} MiB"
    return (f"{label:>9} {row['ranks']:>5} {t['fastdl'] * 1e6:>11.1f} {t['mpi4py'] * 1e6:>11.1f} "
            f"{bw['fastdl']:>10.3f} {bw['mpi4py']:>10.3f} {t['mpi4py'] / t['fastdl']:>8.2f}")


DDP_ALLREDUCE_HEADER = (f"{'message':>9} {'ranks':>5} {'fastdl µs':>11} {'mpi4py µs':>11} "
                        f"{'fastdl GB/s':>10} {'mpi4py GB/s':>10} {'speed':>8}")


def lenet5(nn):
    """LeNet-5 as in examples/lenet_digits.py (28×28 inputs, 61,706 parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def ddp_train_row(local_batch: int = 32, steps: int = 30, warmup: int = 5) -> dict:
    """Inside an initialised process group: LeNet-5 training steps (forward, cross-entropy,
    backward with the DDP all-reduce, Adam) on random 28×28 images, ``local_batch`` per rank (weak
    scaling: the global batch grows with the ranks). Samples per second over the timed steps, from
    the slowest rank's time."""
    from mpi4py import MPI

    from . import distributed as dist
    from . import manual_seed, nn, optim, tensor

    rank, world = dist.get_rank(), dist.get_world_size()
    manual_seed(0)
    model = nn.parallel.DistributedDataParallel(lenet5(nn))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(rank)
    x = tensor(rng.standard_normal((local_batch, 1, 28, 28)).astype(np.float32))
    y = tensor(rng.integers(0, 10, local_batch))
    loss_fn = nn.CrossEntropyLoss()

    def step():
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    for _ in range(warmup):
        step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = MPI.COMM_WORLD.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    return {"bench": "train", "model": "LeNet-5", "ranks": world, "local_batch": local_batch, "steps": steps,
            "seconds_per_step": seconds / steps, "samples_per_s": world * local_batch * steps / seconds}


def ddp_worker(part: str, repeats: int = 5, json_path: str | None = None) -> None:
    """One rank of `fastdl bench ddp`: ``part`` is ``"allreduce"`` or ``"train"``; rank 0 prints
    the all-reduce rows and writes the rows to ``json_path``."""
    import json

    from . import distributed as dist

    dist.init_process_group("mpi")
    rank = dist.get_rank()
    printer = print if rank == 0 else (lambda *a, **k: None)
    rows = []
    if part == "allreduce":
        printer(f"\n## all-reduce (sum, float32, in place): slowest rank's time, best of {repeats}; "
                "bus bandwidth 2(n-1)/n · bytes / time; speed = mpi4py time / fastdl time")
        printer(DDP_ALLREDUCE_HEADER, flush=True)
        for row in ddp_allreduce_rows(repeats=repeats):
            printer(format_ddp_allreduce(row), flush=True)
            rows.append(row)
    elif part == "train":
        best = None
        for _ in range(repeats):
            row = ddp_train_row()
            if best is None or row["samples_per_s"] > best["samples_per_s"]:
                best = row
        rows.append(best)
    else:
        raise ValueError(f"ddp_worker: unknown part {part!r}")
    if rank == 0 and json_path:
        with open(json_path, "w") as fh:
            json.dump(rows, fh, indent=1)
    dist.destroy_process_group()


def mpirun_prefix(ranks: int) -> list[str]:
    """``mpirun -n RANKS`` plus what Open MPI needs to run as root or on fewer cores than ranks."""
    import os
    import shutil
    import subprocess

    launcher = shutil.which("mpirun") or shutil.which("mpiexec")
    if launcher is None:
        raise FileNotFoundError("mpirun not found: apt-get install openmpi-bin libopenmpi-dev")
    cmd = [launcher, "-n", str(ranks)]
    version = subprocess.run([launcher, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        cmd.append("--oversubscribe")
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
    return cmd


def run_ddp(ranks: int = 2, repeats: int = 5, json_prefix: str | None = None, printer=print) -> int:
    """`fastdl bench ddp`: the all-reduce sweep on ``ranks`` ranks, then LeNet-5 training on 1 and
    on ``ranks`` ranks (1 OpenMP thread each) and the speed-up; returns the first non-zero exit
    status of a launch."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part, n in (("allreduce", ranks), ("train", 1), ("train", ranks)):
            path = os.path.join(tmp, f"{part}-{n}.json")
            code = f"from fastdl import bench; bench.ddp_worker({part!r}, {repeats}, {path!r})"
            rc = subprocess.run(mpirun_prefix(n) + [sys.executable, "-c", code], env=env).returncode
            if rc:
                return rc
            with open(path) as fh:
                results[f"{part}-{n}"] = json.load(fh)
    one, many = results["train-1"][0], results[f"train-{ranks}"][0]
    printer(f"\n## LeNet-5 training, {one['local_batch']} samples per rank per step (weak scaling), "
            f"1 thread per rank, best of {repeats} runs of {one['steps']} steps")
    printer(f"{'ranks':>5} {'ms/step':>9} {'samples/s':>10} {'speed-up':>9}")
    for row in (one, many):
        printer(f"{row['ranks']:>5} {row['seconds_per_step'] * 1e3:>9.2f} {row['samples_per_s']:>10.0f} "
                f"{row['samples_per_s'] / one['samples_per_s']:>9.2f}")
    # The cost model on this machine: α and bus bandwidth fitted to the all-reduce sweep predict the
    # speed-up from the 1-rank step time (LeNet-5's gradients are one bucket: nothing overlaps).
    alpha, busbw = fit_alpha_beta(results[f"allreduce-{ranks}"])
    here = Network("this machine", alpha, busbw, alpha, busbw, gpus_per_node=ranks)
    t1 = one["seconds_per_step"]
    predicted = ddp_step_time([4 * DDP_EXAMPLE_MODELS["LeNet-5"]["params"]], t1 / 3, 2 * t1 / 3, 0.0, ranks, here)
    printer(f"\ncost model, fitted here: α = {alpha * 1e6:.2f} µs per ring step, bus bandwidth {busbw / 1e9:.2f} GB/s; "
            f"LeNet-5 all-reduce {predicted['exposed'] * 1e3:.3f} ms → predicted speed-up "
            f"{ranks * t1 / predicted['step']:.2f}, measured {many['samples_per_s'] / one['samples_per_s']:.2f}")
    printer(f"\n## predicted scaling on {H100_CLUSTER.name} (bench/RESULTS.md names the assumptions)")
    ddp_cost_table(printer=printer)
    if json_prefix:
        with open(f"{json_prefix}-ddp.json", "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


@dataclasses.dataclass
class Network:
    """α–β parameters of a ring all-reduce: ``alpha`` seconds per ring step, ``busbw`` bytes/s per
    link (what nccl-tests calls bus bandwidth), ``gpus_per_node`` GPUs joined by the fast link."""

    name: str
    alpha_intra: float
    busbw_intra: float
    alpha_inter: float
    busbw_inter: float
    gpus_per_node: int = 8

    def ring_allreduce(self, nbytes: float, n: int) -> float:
        """2(n−1) steps of α each, plus 2(n−1)/n · bytes over the slowest link of the ring (all ring
        steps run in lockstep, so once the ring leaves the node every step pays the inter-node link)."""
        if n <= 1:
            return 0.0
        inside = n <= self.gpus_per_node
        alpha = self.alpha_intra if inside else self.alpha_inter
        busbw = self.busbw_intra if inside else self.busbw_inter
        return 2 * (n - 1) * alpha + 2 * (n - 1) / n * nbytes / busbw

    def tree_allreduce(self, nbytes: float, n: int) -> float:
        """The alternative NCCL picks at scale for small messages: a reduce up and a broadcast down
        a (double binary) tree, 2·⌈log₂ n⌉ latency steps; bandwidth term as the ring's."""
        if n <= 1:
            return 0.0
        inside = n <= self.gpus_per_node
        alpha = self.alpha_intra if inside else self.alpha_inter
        busbw = self.busbw_intra if inside else self.busbw_inter
        return 2 * math.ceil(math.log2(n)) * alpha + 2 * (n - 1) / n * nbytes / busbw


# The assumptions named in bench/RESULTS.md: H100 SXM nodes of 8 GPUs on NVLink 4, one 400 Gb/s
# NDR InfiniBand port per GPU between nodes.
H100_CLUSTER = Network("8x H100 NVLink nodes, NDR 400 Gb/s per GPU", alpha_intra=1.5e-6, busbw_intra=360e9,
                       alpha_inter=5e-6, busbw_inter=40e9)


def ddp_bucket_sizes(param_bytes: list, cap_bytes: float) -> list:
    """Bucket sizes in bytes, in all-reduce order, as DistributedDataParallel forms them (one dtype)."""
    from .distributed import bucket_assignment

    groups = bucket_assignment(param_bytes, [None] * len(param_bytes), cap_bytes)
    return [sum(param_bytes[k] for k in g) for g in groups]


def ddp_step_time(param_bytes: list, t_forward: float, t_backward: float, t_optimizer: float, n: int,
                  network: Network, bucket_cap_mb: float = 25, algorithm: str = "ring") -> dict:
    """Predicted time of one data-parallel step on ``n`` GPUs (weak scaling: the per-GPU batch is fixed).

    Gradients become ready during backward in reverse parameter order, at a uniform rate in bytes
    (bucket i is ready when backward has produced the bytes of buckets 0..i); buckets are
    all-reduced one after another on one channel, each starting when it is ready and the previous
    one is done; what is left after backward ends is exposed. Returns the step time, the exposed
    communication and the scaling efficiency (1-GPU step time / n-GPU step time).
    """
    buckets = ddp_bucket_sizes(param_bytes, bucket_cap_mb * 1e6)
    total = float(sum(buckets))
    done, produced = 0.0, 0.0
    for nbytes in buckets:
        produced += nbytes
        ready = t_backward * produced / total
        cost = network.ring_allreduce(nbytes, n) if algorithm == "ring" else network.tree_allreduce(nbytes, n)
        done = max(done, ready) + cost
    exposed = max(0.0, done - t_backward) if n > 1 else 0.0
    compute = t_forward + t_backward + t_optimizer
    step = compute + exposed
    return {"n": n, "buckets": len(buckets), "bytes": total, "step": step, "exposed": exposed,
            "efficiency": compute / step}


# The examples' models (per-GPU batch as in each example): parameter count and autograd ops per
# training step (forward, backward, loss, optimizer), from their layer lists. A 25.6 M-parameter
# model (ResNet-50-sized, 161 equal tensors, 15 ms of compute) shows what overlap buys.
DDP_EXAMPLE_MODELS = {
    "MLP digits": {"params": 50_826, "tensors": 6, "ops": 31},
    "LeNet-5": {"params": 61_706, "tensors": 10, "ops": 46},
    "ResNet digits": {"params": 77_754, "tensors": 29, "ops": 100},
    "char-LSTM (vocab 100)": {"params": 325_860, "tensors": 7, "ops": 150},
    "tiny transformer (vocab 100)": {"params": 422_500, "tensors": 30, "ops": 150},
    "ResNet-50-sized reference": {"params": 25_600_000, "tensors": 161, "compute": 15e-3},
}
OP_SECONDS = 10e-6  # one eager op on the GPU: Python dispatch + one kernel launch (launch-bound regime)


def ddp_cost_table(ns=(8, 64, 512), network: Network = H100_CLUSTER, models: dict = DDP_EXAMPLE_MODELS,
                   printer=print) -> list[dict]:
    """Predicted DDP scaling efficiency (weak scaling) of ``models`` on ``ns`` GPUs: the ring model
    with bucket overlap, and at the largest n the tree all-reduce for comparison. Compute per step
    is split 1 : 2 between forward and backward (+ one op for the optimizer)."""
    rows = []
    printer(f"{'model':<30} {'MB':>6} {'step ms':>8} " + " ".join(f"{'E@' + str(n):>7}" for n in ns)
            + f" {'E@' + str(ns[-1]) + ' tree':>11} {'exposed ms@' + str(ns[-1]):>14}")
    for name, m in models.items():
        nbytes = 4 * m["params"]
        compute = m.get("compute", m.get("ops", 0) * OP_SECONDS)
        t_opt = OP_SECONDS
        t_fwd, t_bwd = (compute - t_opt) / 3, 2 * (compute - t_opt) / 3
        sizes = [nbytes / m["tensors"]] * m["tensors"]
        ring = [ddp_step_time(sizes, t_fwd, t_bwd, t_opt, n, network) for n in ns]
        tree = ddp_step_time(sizes, t_fwd, t_bwd, t_opt, ns[-1], network, algorithm="tree")
        row = {"model": name, "bytes": nbytes, "compute": compute, "ring": ring, "tree": tree}
        rows.append(row)
        printer(f"{name:<30} {nbytes / 1e6:>6.2f} {compute * 1e3:>8.2f} "
                + " ".join(f"{r['efficiency']:>7.0%}" for r in ring)
                + f" {tree['efficiency']:>11.0%} {ring[-1]['exposed'] * 1e3:>14.2f}")
    return rows


def fit_alpha_beta(rows: list, impl: str = "fastdl") -> tuple:
    """Least-squares α (s per ring step) and bus bandwidth (bytes/s) from measured all-reduce rows
    of one rank count: time = 2(n−1)·α + 2(n−1)/n · bytes / busbw."""
    n = rows[0]["ranks"]
    x = np.array([2 * (n - 1) / n * r["bytes"] for r in rows])
    t = np.array([r["seconds"][impl] for r in rows])
    # relative errors: small messages (which fix α) weigh as much as large ones (which fix β)
    a = np.stack([np.full_like(x, 2 * (n - 1)), x], axis=1) / t[:, None]
    (alpha, inv_bw), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    return max(float(alpha), 0.0), 1.0 / max(float(inv_bw), 1e-30)


# ---- GEMM on the GPU (cuda branch) ------------------------------------------------------------------
# fastdl's CUDA GEMM next to cuBLAS (through cupy.matmul) and PyTorch when it has CUDA, timed with
# CUDA events after a warm-up, as TFLOP/s, ratios, and % of the GPU's dense peak for the format.

# Dense peaks of the H100 SXM (TFLOP/s): CUDA-core float32/float64, tensor-core TF32/BF16/FP16.
_GPU_PEAKS = {
    "H100": {"float32": 67.0, "float64": 34.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
}


def gpu_peak_tflops(name: str, kind: str) -> float | None:
    """The GPU's dense peak for ``kind`` (float32, float64, tf32, bfloat16, float16), if known."""
    for key, peaks in _GPU_PEAKS.items():
        if key in name:
            return peaks.get(kind)
    return None


def cuda_best_times(impls: dict[str, Callable[[], object]], repeats: int = 5, min_ms: float = 20.0) -> dict[str, float]:
    """Seconds per call of each implementation on the GPU: CUDA events on the current stream around
    a batch of calls lasting ``min_ms``, after a warm-up; implementations interleaved, best repeat."""
    from .backend import require_cuda

    cp = require_cuda("bench")
    start, end = cp.cuda.Event(), cp.cuda.Event()

    def timed(fn, n):
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end)  # milliseconds

    loops = {}
    for name, fn in impls.items():
        fn()
        cp.cuda.Device().synchronize()
        loops[name] = max(1, int(min_ms / max(timed(fn, 1), 1e-3)))
    best = {name: float("inf") for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            best[name] = min(best[name], timed(fn, loops[name]) / loops[name] / 1e3)
    return best


def _cupy_tf32(cp, enabled: bool) -> bool:
    """Switch cupy.matmul's float32 compute type to TF32 (or back); False where CuPy cannot."""
    try:
        from cupy._core import _routines_linalg as linalg

        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT)
        return True
    except Exception:
        return False


def cuda_gemm_problems(full: bool = False) -> list[tuple[int, int, int, str]]:
    """(M, N, K, kind) for kind in float32 (CUDA cores), tf32, bfloat16, float16, float64: square
    1024…4096 (…8192 with ``full``) and skinny shapes."""
    squares = (1024, 2048, 4096) + ((8192,) if full else ())
    skinny = [(4096, 64, 4096), (64, 4096, 4096), (1, 4096, 4096), (16384, 1024, 256)]
    problems = []
    for kind in ("float32", "tf32", "bfloat16", "float16"):
        problems += [(n, n, n, kind) for n in squares] + [(m, n, k, kind) for m, n, k in skinny]
    problems += [(n, n, n, "float64") for n in (1024, 2048)]
    return problems


def run_cuda(full: bool = False, repeats: int = 5, printer=print) -> list[dict]:
    """Time the CUDA GEMM problems; print and return the rows."""
    from . import backend
    from .backend import require_cuda

    cp = require_cuda("bench")
    torch = _torch()
    torch_cuda = torch is not None and torch.cuda.is_available()
    name = _C.cuda_info()["devices"][cp.cuda.runtime.getDevice()]["name"]
    rows = []
    saved_tf32 = backend.allow_tf32
    try:
        for M, N, K, kind in cuda_gemm_problems(full):
            dtype = {"tf32": "float32"}.get(kind, kind)
            if dtype == "bfloat16":
                try:
                    import ml_dtypes

                    np_dtype = np.dtype(ml_dtypes.bfloat16)
                    cp.zeros(1, np_dtype)
                except Exception:
                    printer(f"{M}x{N}x{K} bfloat16: skipped (CuPy here has no bfloat16; pip install ml_dtypes)")
                    continue
            else:
                np_dtype = np.dtype(dtype)
            rng = cp.random.default_rng(0)
            a = rng.standard_normal((M, K), dtype=cp.float32).astype(np_dtype)
            b = rng.standard_normal((K, N), dtype=cp.float32).astype(np_dtype)
            backend.allow_tf32 = kind == "tf32"
            cupy_tf32 = _cupy_tf32(cp, kind == "tf32")
            impls = {"fastdl": lambda: kernels.matmul(a, b), "cublas": lambda: cp.matmul(a, b)}
            if torch_cuda:
                ta = torch.as_tensor(a.astype(cp.float32), device="cuda").to(getattr(torch, dtype))
                tb = torch.as_tensor(b.astype(cp.float32), device="cuda").to(getattr(torch, dtype))
                torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
                impls["torch"] = lambda: torch.matmul(ta, tb)
            times = cuda_best_times(impls, repeats=repeats)
            _cupy_tf32(cp, False)
            flops = 2.0 * M * N * K
            row = {
                "family": "gemm", "device": name, "problem": f"{M}x{N}x{K}", "kind": kind,
                "tflops": {k: flops / t / 1e12 for k, t in times.items()}, "seconds": times,
                "peak_tflops": gpu_peak_tflops(name, kind),
                "cublas_tf32": cupy_tf32 if kind == "tf32" else None,
                "path": _C.cuda_gemm_path(dtype, kind == "tf32", M, N, 1),
            }
            rows.append(row)
            printer(format_cuda_row(row))
    finally:
        backend.allow_tf32 = saved_tf32
        _cupy_tf32(cp, False)
    return rows


def format_cuda_header() -> str:
    return (f"{'problem':>18} {'kind':>8} {'fastdl':>8} {'cuBLAS':>8} {'torch':>8} {'x cuBLAS':>8} {'x torch':>8} "
            f"{'% peak':>7}  kernel")


def format_cuda_row(row: dict) -> str:
    t = row["tflops"]
    fd, cb, tch = t.get("fastdl"), t.get("cublas"), t.get("torch")

    def cell(v, width=8, fmt="{:.1f}"):
        return f"{fmt.format(v) if v is not None else '-':>{width}}"

    peak = row["peak_tflops"]
    note = " (cuBLAS ran float32: CuPy could not switch it to TF32)" if row["cublas_tf32"] is False else ""
    return (f"{row['problem']:>18} {row['kind']:>8} {cell(fd)} {cell(cb)} {cell(tch)} "
            f"{cell(fd / cb if cb else None, 8, '{:.2f}')} {cell(fd / tch if tch else None, 8, '{:.2f}')} "
            f"{cell(100 * fd / peak if peak else None, 7, '{:.0f}')}  {row['path']}{note}")
