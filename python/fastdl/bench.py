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
    measure_memory: bool = False  # also record each implementation's peak extra memory


def best_times(impls: dict[str, Callable[[], object]], repeats: int = 5, min_time: float = 0.02,
               clock: Callable[[], float] = time.perf_counter, settle: float = 0.0) -> dict[str, float]:
    """Seconds per call for each implementation: calls are batched to last ``min_time``, the
    implementations interleaved within each repeat, and the best repeat kept (noise only adds).

    ``clock``: wall time by default; ``time.thread_time`` (CPU time of the calling thread) for
    one-thread runs, where every implementation computes in the calling thread, so time the thread
    spent descheduled by other processes does not count.
    ``settle``: seconds to sleep before each timed batch, so that the worker threads of the
    implementation timed before (OpenBLAS, PyTorch's and fastdl's OpenMP teams) have stopped
    spinning and do not take cores from the next one."""
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
            if settle:
                time.sleep(settle)
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


PROBLEMS["conv2d"] = conv2d_problems
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


PROBLEMS["attention"] = attention_problems
# Families whose table differs from GEMM's: family -> (header, row formatter).
FORMATS: dict[str, tuple[Callable[[], str], Callable[[dict], str]]] = {
    "attention": (format_attention_header, format_attention_row),
}



def peak_gflops(dtype: str, threads: int) -> float:
    """The measured FMA peak for the ISA in use, in GFLOP/s, on ``threads`` cores."""
    return _C.measure_peak_gflops(cpu_capability(), dtype == "float64", threads, 0.1)


def clock_for(threads: int) -> Callable[[], float]:
    """The timer for a run on ``threads`` threads: the calling thread's CPU time for one thread
    (robust to other processes on a shared machine), wall time otherwise."""
    return time.thread_time if threads == 1 else time.perf_counter


def settle_for(threads: int) -> float:
    """The pause before each timed batch (see ``best_times``): none on one thread, where no team
    spins; on more, longer than OpenBLAS's idle spin (2^28 cycles, about 0.1 s)."""
    return 0.0 if threads == 1 else 0.15


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
                    impls = problem.make()
                    times = best_times(impls, repeats=repeats, clock=clock_for(threads), settle=settle_for(threads))
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
                    if problem.measure_memory:
                        row["peak_mb"] = {name: peak_extra_memory_mb(fn) for name, fn in impls.items()}
                    rows.append(row)
                    printer(format_row(row))
    finally:
        set_num_threads(saved)
    return rows


def format_header(family: str = "gemm") -> str:
    if family in FORMATS:
        return FORMATS[family][0]()
    if family in TIME_FAMILIES:
        return (f"{'problem':>22} {'dtype':>7} {'thr':>3} {'fastdl us':>10} {'numpy us':>10} {'torch us':>10} "
                f"{'x numpy':>8} {'x torch':>8}")
    return (
        f"{'problem':>22} {'dtype':>7} {'thr':>3} {'fastdl':>9} {'numpy':>9} {'torch':>9} "
        f"{'x numpy':>8} {'x torch':>8} {'% peak':>7}"
    )


def format_row(row: dict) -> str:
    if row.get("family") in FORMATS:
        return FORMATS[row["family"]][1](row)
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
    printer(f"\ncost model, fitted here: α = {alpha * 1e6:.2f} µs per ring step, bus bandwidth "
            f"{busbw / 1e9:.2f} GB/s; LeNet-5 all-reduce {predicted['exposed'] * 1e3:.3f} ms → predicted speed-up "
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
