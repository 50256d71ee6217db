"""Benchmark problems (shapes, FLOP formulas) and the timing harness behind ``fastdl bench`` and
``bench/bench_*.py``.

Every problem is timed for fastdl and for each reference available in the same process (NumPy,
PyTorch), interleaved, best of several repeats, and reported as GFLOP/s, the ratio to each
reference, and the share of the machine's measured FMA peak for the ISA in use.
"""
from __future__ import annotations

import dataclasses
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
    """``nn.LSTM`` over a sequence, forward (inference, no grad) and forward+backward (gradients of
    the input and every parameter), against ``torch.nn.LSTM`` (oneDNN) with the same weights; the
    same for ``nn.GRU`` on two shapes; and one ``nn.LSTMCell`` step called from Python (no grad)
    against ``torch.nn.LSTMCell``. float32, plus float64 with ``full``. FLOPs: forward
    2·T·B·gates·H·(I+H) (4 gates for the LSTM, 3 for the GRU), the backward twice that."""
    dtypes = ("float32", "float64") if full else ("float32",)
    problems = [_lstm_problem(*shape, phase, dtype) for dtype in dtypes for shape in LSTM_SHAPES
                for phase in ("fwd", "fwd+bwd")]
    problems += [_lstm_problem(*shape, phase, "float32", "GRU") for shape in (LSTM_SHAPES[0], LSTM_SHAPES[2])
                 for phase in ("fwd", "fwd+bwd")]
    return problems + [_lstm_cell_problem(*shape) for shape in LSTM_CELL_SHAPES]


def _lstm_problem(T: int, B: int, I: int, H: int, phase: str, dtype: str, mode: str = "LSTM") -> Problem:
    def make():
        from . import nn
        from .tensor import Tensor, no_grad

        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, I)).astype(dtype)
        grad_y = rng.standard_normal((T, B, H)).astype(dtype)
        lstm = getattr(nn, mode)(I, H, dtype=np.dtype(dtype))
        fx, fx_grad, fgy = Tensor(x), Tensor(x.copy(), requires_grad=True), Tensor(grad_y)

        def fastdl_fwd():
            with no_grad():
                return lstm(fx)

        def fastdl_fwd_bwd():
            lstm.zero_grad(set_to_none=True)
            fx_grad.grad = None
            y, _ = lstm(fx_grad)
            y.backward(fgy)

        impls = {"fastdl": fastdl_fwd if phase == "fwd" else fastdl_fwd_bwd}
        torch = _torch()
        if torch is not None:
            tlstm = getattr(torch.nn, mode)(I, H).to(getattr(torch, dtype))
            tlstm.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in lstm.state_dict().items()})
            tx, tgy = torch.from_numpy(x), torch.from_numpy(grad_y)
            tx_grad = tx.clone().requires_grad_()

            def torch_fwd():
                with torch.no_grad():
                    return tlstm(tx)

            def torch_fwd_bwd():
                tlstm.zero_grad(set_to_none=True)
                tx_grad.grad = None
                y, _ = tlstm(tx_grad)
                y.backward(tgy)

            impls["torch"] = torch_fwd if phase == "fwd" else torch_fwd_bwd
        return impls

    gates = 4 if mode == "LSTM" else 3
    flops = 2.0 * T * B * gates * H * (I + H) * (1 if phase == "fwd" else 3)
    name = f"{phase} {T}x{B}x{I}x{H}" if mode == "LSTM" else f"{mode} {phase} {T}x{B}x{I}x{H}"
    return Problem("lstm", name, flops, make, dtype, steps=T)


def _lstm_cell_problem(B: int, I: int, H: int, dtype: str = "float32") -> Problem:
    def make():
        from . import nn
        from .tensor import Tensor, no_grad

        rng = np.random.default_rng(0)
        x = rng.standard_normal((B, I)).astype(dtype)
        h = rng.standard_normal((B, H)).astype(dtype)
        c = rng.standard_normal((B, H)).astype(dtype)
        cell = nn.LSTMCell(I, H, dtype=np.dtype(dtype))
        state = (Tensor(h), Tensor(c))
        fx = Tensor(x)

        def fastdl_step():
            with no_grad():
                return cell(fx, state)

        impls = {"fastdl": fastdl_step}
        torch = _torch()
        if torch is not None:
            tcell = torch.nn.LSTMCell(I, H).to(getattr(torch, dtype))
            tcell.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in cell.state_dict().items()})
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
