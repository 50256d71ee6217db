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


def best_times(impls: dict[str, Callable[[], object]], repeats: int = 5, min_time: float = 0.02) -> dict[str, float]:
    """Seconds per call for each implementation: calls are batched to last ``min_time``, the
    implementations interleaved within each repeat, and the best repeat kept (noise only adds)."""
    loops = {}
    for name, fn in impls.items():
        fn()  # warm-up: page faults, packing buffers, lazy imports
        n, elapsed = 1, 0.0
        while True:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time or n >= 1 << 20:
                break
            n = max(2 * n, int(n * min_time / max(elapsed, 1e-9)))
        loops[name] = n
    best = {name: float("inf") for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            n = loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
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


# ---- conv2d ---------------------------------------------------------------------------------------

# (name, N, C_in, H, C_out, K, stride, padding, groups): LeNet-5 (MNIST, padded first layer),
# ResNet-18 layers at batch 8 and 32, a MobileNet-style depthwise 3×3.
CONV2D_LAYERS = [
    ("lenet-c1 b64", 64, 1, 28, 6, 5, 1, 2, 1),
    ("lenet-c2 b64", 64, 6, 14, 16, 5, 1, 0, 1),
] + [
    (f"{name} b{n}", n, c_in, h, c_out, k, s, p, 1)
    for n in (8, 32)
    for name, c_in, h, c_out, k, s, p in (
        ("stem7x7s2", 3, 224, 64, 7, 2, 3),
        ("3x3s1-64", 64, 56, 64, 3, 1, 1),
        ("3x3s2-128", 64, 56, 128, 3, 2, 1),
        ("1x1s2-128", 64, 56, 128, 1, 2, 0),
    )
] + [
    ("dw3x3-128 b8", 8, 128, 56, 128, 3, 1, 1, 128),
]
# --full adds the deeper ResNet-18 bodies.
CONV2D_LAYERS_FULL = [
    (f"{name} b{n}", n, c, h, c, 3, 1, 1, 1)
    for n in (8, 32)
    for name, c, h in (("3x3s1-128", 128, 28), ("3x3s1-256", 256, 14), ("3x3s1-512", 512, 7))
]


def conv2d_problems(full: bool = False) -> list[Problem]:
    """Each layer forward, and forward + backward (grad of input, weight and bias: 3× the FLOPs),
    float32, against torch.nn.functional.conv2d (oneDNN) when installed."""
    layers = CONV2D_LAYERS + (CONV2D_LAYERS_FULL if full else [])
    return [_conv2d_problem(layer, backward) for layer in layers for backward in (False, True)]


def _conv2d_problem(layer, backward: bool) -> Problem:
    name, N, C_in, H, C_out, K, stride, padding, groups = layer
    OH = kernels.conv2d_output_size(H, K, stride, padding)
    flops = 2.0 * N * C_out * (C_in // groups) * K * K * OH * OH * (3 if backward else 1)

    def make():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N, C_in, H, H)).astype(np.float32)
        w = (rng.standard_normal((C_out, C_in // groups, K, K)) * 0.1).astype(np.float32)
        b = rng.standard_normal(C_out).astype(np.float32)
        dy = rng.standard_normal((N, C_out, OH, OH)).astype(np.float32)
        args = (stride, padding, 1, groups)

        def fastdl_fwd():
            return kernels.conv2d_forward(x, w, b, *args)

        def fastdl_fwd_bwd():
            kernels.conv2d_forward(x, w, b, *args)
            kernels.conv2d_backward_input(dy, w, x.shape, *args)
            return kernels.conv2d_backward_weight(dy, x, w.shape, *args)

        impls = {"fastdl": fastdl_fwd_bwd if backward else fastdl_fwd}
        torch = _torch()
        if torch is not None:
            conv = torch.nn.functional.conv2d
            tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
            if backward:
                tx, tw, tb = (t.clone().requires_grad_() for t in (tx, tw, tb))

                def torch_fwd_bwd():
                    conv(tx, tw, tb, stride, padding, 1, groups).backward(tdy)
                    tx.grad = tw.grad = tb.grad = None

                impls["torch"] = torch_fwd_bwd
            else:
                impls["torch"] = lambda: conv(tx, tw, tb, stride, padding, 1, groups)
        return impls

    return Problem("conv2d", f"{name} {'fwd+bwd' if backward else 'fwd'}", flops, make)


PROBLEMS: dict[str, Callable[..., list[Problem]]] = {"gemm": gemm_problems, "conv2d": conv2d_problems}


def peak_gflops(dtype: str, threads: int) -> float:
    """The measured FMA peak for the ISA in use, in GFLOP/s, on ``threads`` cores."""
    return _C.measure_peak_gflops(cpu_capability(), dtype == "float64", threads, 0.1)


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
                    if problem.dtype not in peaks:
                        peaks[problem.dtype] = peak_gflops(problem.dtype, threads)
                    times = best_times(problem.make(), repeats=repeats)
                    row = {
                        "family": family,
                        "problem": problem.name,
                        "dtype": problem.dtype,
                        "threads": threads,
                        "gflops": {k: problem.flops / t / 1e9 for k, t in times.items()},
                        "seconds": times,
                        "peak_gflops": peaks[problem.dtype],
                    }
                    rows.append(row)
                    printer(format_row(row))
    finally:
        set_num_threads(saved)
    return rows


def format_header() -> str:
    return (
        f"{'problem':>22} {'dtype':>7} {'thr':>3} {'fastdl':>9} {'numpy':>9} {'torch':>9} "
        f"{'x numpy':>8} {'x torch':>8} {'% peak':>7}"
    )


def format_row(row: dict) -> str:
    g = row["gflops"]
    fd, npy, tch = g.get("fastdl"), g.get("numpy"), g.get("torch")

    def cell(v, width=9, fmt="{:.1f}"):
        return f"{fmt.format(v) if v is not None else '-':>{width}}"

    return (
        f"{row['problem']:>22} {row['dtype']:>7} {row['threads']:>3} {cell(fd)} {cell(npy)} {cell(tch)} "
        f"{cell(fd / npy if npy else None, 8, '{:.2f}')} {cell(fd / tch if tch else None, 8, '{:.2f}')} "
        f"{cell(100 * fd / row['peak_gflops'], 7, '{:.0f}')}"
    )


def openblas_description() -> str:
    """Which OpenBLAS kernel NumPy runs (threadpoolctl's 'architecture'), for the results table."""
    import threadpoolctl

    for lib in threadpoolctl.threadpool_info():
        if lib.get("internal_api") == "openblas":
            return f"OpenBLAS {lib.get('version')} ({lib.get('architecture')} kernel)"
    return "NumPy BLAS: " + ", ".join(lib.get("internal_api", "?") for lib in threadpoolctl.threadpool_info())
