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
    measure_memory: bool = False  # also record each implementation's peak extra memory


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


# ---- attention ----------------------------------------------------------------------------------

def attention_problems(full: bool = False) -> list[Problem]:
    """Self-attention (1, B·H, L, D) in float32: B·H = 12 (and 32 with ``full``), D = 64 and 128,
    L = S in 256…2048 (…4096 with ``full``), causal and not, forward and forward+backward; plus the
    memory row 12×4096×64. fastdl's fused kernel next to PyTorch's ``scaled_dot_product_attention``
    and the naive composed formula softmax(Q·Kᵀ·scale)·V (fastdl matmuls + NumPy softmax, which
    stores the L×S scores)."""
    heads = (12, 32) if full else (12,)
    lengths = (256, 512, 1024, 2048, 4096) if full else (256, 512, 1024, 2048)
    problems = [
        _attention_problem(bh, L, D, causal, backward)
        for bh in heads for D in (64, 128) for L in lengths for causal in (False, True) for backward in (False, True)
    ]
    if not full:
        problems.append(_attention_problem(12, 4096, 64, False, False))
    return problems


def _naive_attention(q, k, v, scale, causal_bias, grad_out=None):
    """softmax(q·kᵀ·scale + bias)·v composed from whole-matrix ops; with ``grad_out`` also the
    backward (dq, dk, dv) through the stored probabilities."""
    s = kernels.matmul(q, np.swapaxes(k, -1, -2))
    s *= scale
    if causal_bias is not None:
        s += causal_bias
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    out = kernels.matmul(s, v)
    if grad_out is None:
        return out
    dv = kernels.matmul(np.swapaxes(s, -1, -2), grad_out)
    dp = kernels.matmul(grad_out, np.swapaxes(v, -1, -2))
    dp -= (dp * s).sum(axis=-1, keepdims=True)
    dp *= s
    dq = kernels.matmul(dp, k) * scale
    dk = kernels.matmul(np.swapaxes(dp, -1, -2), q) * scale
    return out, dq, dk, dv


# The naive formula runs only while its L×S matrices (2 forward, 4 forward+backward) fit in this.
_NAIVE_MAX_BYTES = 3 << 30


def _attention_problem(bh: int, L: int, D: int, causal: bool, backward: bool) -> Problem:
    name = f"{bh}x{L}x{D}{' causal' if causal else ''} {'fwd+bwd' if backward else 'fwd'}"
    flops = 4.0 * bh * L * L * D * (0.5 if causal else 1.0) * (3.5 if backward else 1.0)

    def make():
        rng = np.random.default_rng(0)
        q, k, v, grad_out = (rng.standard_normal((1, bh, L, D), dtype=np.float32) for _ in range(4))
        scale = 1.0 / np.sqrt(D)
        impls = {}
        if backward:
            def fastdl_fb():
                out, lse = kernels.attention_forward(q, k, v, is_causal=causal)
                return kernels.attention_backward(grad_out, q, k, v, out, lse, is_causal=causal)
            impls["fastdl"] = fastdl_fb
        else:
            impls["fastdl"] = lambda: kernels.attention_forward(q, k, v, is_causal=causal)
        torch = _torch()
        if torch is not None:
            sdpa = torch.nn.functional.scaled_dot_product_attention
            if backward:
                tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
                tgrad = torch.from_numpy(grad_out)

                def torch_fb():
                    tq.grad = tk.grad = tv.grad = None
                    sdpa(tq, tk, tv, is_causal=causal).backward(tgrad)
                impls["torch"] = torch_fb
            else:
                tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))

                def torch_f():
                    with torch.no_grad():
                        return sdpa(tq, tk, tv, is_causal=causal)
                impls["torch"] = torch_f
        if (4 if backward else 2) * bh * L * L * 4 <= _NAIVE_MAX_BYTES:
            bias = np.triu(np.full((L, L), -np.inf, np.float32), 1) if causal else None
            impls["naive"] = lambda: _naive_attention(q, k, v, scale, bias, grad_out if backward else None)
        return impls

    return Problem("attention", name, flops, make, "float32", measure_memory=True)


def peak_extra_memory_mb(fn) -> float | None:
    """Peak resident memory one call of ``fn`` adds, in MB (Linux: the RSS high-water mark reset
    through /proc/self/clear_refs after returning freed heap pages with malloc_trim); None elsewhere."""
    import ctypes

    def status(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise OSError(key)

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = status("VmRSS")
        fn()
        return (status("VmHWM") - base) / 2**20
    except OSError:
        return None


def format_attention_header() -> str:
    return (
        f"{'problem':>26} {'thr':>3} {'fastdl':>8} {'torch':>8} {'naive':>8} {'x torch':>7} {'x naive':>7} "
        f"{'% peak':>6} {'MB fastdl':>9} {'MB torch':>8} {'MB naive':>8}"
    )


def format_attention_row(row: dict) -> str:
    g, mem = row["gflops"], row.get("peak_mb", {})
    fd, tch, nv = g.get("fastdl"), g.get("torch"), g.get("naive")

    def cell(v, width, fmt="{:.1f}"):
        return f"{fmt.format(v) if v is not None else '-':>{width}}"

    return (
        f"{row['problem']:>26} {row['threads']:>3} {cell(fd, 8)} {cell(tch, 8)} {cell(nv, 8)} "
        f"{cell(fd / tch if tch else None, 7, '{:.2f}')} {cell(fd / nv if nv else None, 7, '{:.2f}')} "
        f"{cell(100 * fd / row['peak_gflops'], 6, '{:.0f}')} {cell(mem.get('fastdl'), 9, '{:.0f}')} "
        f"{cell(mem.get('torch'), 8, '{:.0f}')} {cell(mem.get('naive'), 8, '{:.0f}')}"
    )


PROBLEMS: dict[str, Callable[..., list[Problem]]] = {"gemm": gemm_problems, "attention": attention_problems}
# Families whose table differs from GEMM's: family -> (header, row formatter).
FORMATS: dict[str, tuple[Callable[[], str], Callable[[dict], str]]] = {
    "attention": (format_attention_header, format_attention_row),
}


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
                    impls = problem.make()
                    times = best_times(impls, repeats=repeats)
                    row = {
                        "family": family,
                        "problem": problem.name,
                        "dtype": problem.dtype,
                        "threads": threads,
                        "gflops": {k: problem.flops / t / 1e9 for k, t in times.items()},
                        "seconds": times,
                        "peak_gflops": peaks[problem.dtype],
                    }
                    if problem.measure_memory:
                        row["peak_mb"] = {name: peak_extra_memory_mb(fn) for name, fn in impls.items()}
                    rows.append(row)
                    printer(FORMATS.get(family, (format_header, format_row))[1](row))
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
