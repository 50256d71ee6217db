"""The raw-array API: fastdl's native kernels on NumPy and CuPy arrays, without autodiff.

Each function checks its arguments (a ValueError/TypeError naming the op and the shapes), allocates
its output from Python (NumPy, or CuPy's memory pool on the GPU) and calls ``fastdl._C`` with the
GIL released; GPU kernels run on CuPy's current stream and device.

>>> import numpy as np
>>> from fastdl import kernels
>>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
>>> kernels.gemm(a, a, trans_b=True)
array([[ 5., 14.],
       [14., 50.]], dtype=float32)
"""
from __future__ import annotations

import numpy as np

from . import backend
from .backend import _C, is_cuda_array

__all__ = ["gemm", "matmul"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _float_array(op: str, name: str, x) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        if hasattr(x, "__cuda_array_interface__"):
            raise TypeError(f"{op}: {name} is a GPU array; fastdl was asked for a CPU kernel")
        x = np.asarray(x)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32 or float64, got {x.dtype} {x.shape}")
    return x


def _same_dtype(op: str, a: np.ndarray, b: np.ndarray) -> None:
    if a.dtype != b.dtype:
        raise TypeError(
            f"{op}: dtypes differ: a {a.dtype} {a.shape}, b {b.dtype} {b.shape} "
            "(convert one with .astype; fastdl does not promote silently)"
        )


def gemm(a, b, out=None, *, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0):
    """BLAS GEMM: ``out = alpha * op(a) @ op(b) + beta * out`` with ``op(x) = x.T`` when asked.

    a: (M, K), or (K, M) with ``trans_a``; b: (K, N), or (N, K) with ``trans_b``; out: (M, N).
    float32 or float64, any strides (transposed and sliced views are read without a copy).
    ``beta`` needs ``out``; with ``beta == 0`` the old contents of ``out`` are not read.
    CuPy arrays (float32, float64, float16, bfloat16) run on the GPU; see :func:`_gemm_cuda`.

    >>> import numpy as np
    >>> c = np.ones((2, 2))
    >>> gemm(np.eye(2), np.full((2, 2), 3.0), c, alpha=2.0, beta=1.0)
    array([[7., 7.],
           [7., 7.]])
    """
    if is_cuda_array(a) or is_cuda_array(b) or is_cuda_array(out):
        return _gemm_cuda(a, b, out, trans_a, trans_b, alpha, beta)
    a = _float_array("gemm", "a", a)
    b = _float_array("gemm", "b", b)
    _same_dtype("gemm", a, b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm: a and b must be 2-D, got a {a.shape}, b {b.shape}")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != Kb:
        raise ValueError(
            f"gemm: inner dimensions differ: op(a) is ({M}, {K}) and op(b) is ({Kb}, {N}) "
            f"for a {a.shape}, b {b.shape}"
        )
    if out is None:
        if beta != 0:
            raise ValueError("gemm: beta != 0 needs out (the C that beta scales)")
        out = np.empty((M, N), dtype=a.dtype)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"gemm: out must be a NumPy array, got {type(out).__name__}")
        if out.dtype != a.dtype:
            raise TypeError(f"gemm: out must be {a.dtype}, got {out.dtype} {out.shape}")
        if out.shape != (M, N):
            raise ValueError(f"gemm: out must have shape {(M, N)}, got {out.shape} for a {a.shape}, b {b.shape}")
        if np.may_share_memory(out, a) or np.may_share_memory(out, b):
            a, b = a.copy(), b.copy()
    _C.gemm(a, b, out, trans_a, trans_b, alpha, beta)
    return out


def matmul(a, b, out=None):
    """``a @ b`` with NumPy's rules, computed by fastdl's GEMM.

    (..., M, K) @ (..., K, N) → (..., M, N) with the batch dimensions broadcast; a 1-D ``a`` is a
    row (K,) and a 1-D ``b`` a column (K,), their dimension removed from the result.

    >>> import numpy as np
    >>> matmul(np.ones((4, 2, 3)), np.ones(3)).shape
    (4, 2)
    """
    if (
        out is None
        and type(a) is np.ndarray
        and type(b) is np.ndarray
        and a.ndim == 2
        and b.ndim == 2
        and a.dtype == b.dtype
        and a.dtype in _FLOAT_DTYPES
        and a.shape[1] == b.shape[0]
    ):
        # The common 2-D case with nothing to convert: the native call checks everything else.
        result = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
        _C.gemm(a, b, result, False, False, 1.0, 0.0)
        return result
    if is_cuda_array(a) or is_cuda_array(b) or is_cuda_array(out):
        return _matmul_cuda(a, b, out)
    a = _float_array("matmul", "a", a)
    b = _float_array("matmul", "b", b)
    _same_dtype("matmul", a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least one dimension, got a {a.shape}, b {b.shape}")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul: inner dimensions differ: a {a.shape} has {a2.shape[-1]}, b {b.shape} has {b2.shape[-2]}"
        )
    M, N = a2.shape[-2], b2.shape[-1]
    if a2.ndim == 2 and b2.ndim == 2:
        result = np.empty((M, N), dtype=a.dtype)
        _C.gemm(a2, b2, result, False, False, 1.0, 0.0)
    else:
        try:
            batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        except ValueError:
            raise ValueError(f"matmul: batch dimensions do not broadcast: a {a.shape}, b {b.shape}") from None
        result = np.empty(batch + (M, N), dtype=a.dtype)
        if result.size:
            _C.matmul_batched(
                np.broadcast_to(a2, batch + a2.shape[-2:]), np.broadcast_to(b2, batch + b2.shape[-2:]), result
            )
    if a.ndim == 1:
        result = result[..., 0, :]
    if b.ndim == 1:
        result = result[..., 0]
    if out is not None:
        if not isinstance(out, np.ndarray) or out.shape != result.shape or out.dtype != result.dtype:
            raise ValueError(
                f"matmul: out must be a {result.dtype} array of shape {result.shape}, got "
                f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
            )
        out[...] = result
        return out
    return result


# ---- lstm ---------------------------------------------------------------------------------------

__all__ += ["lstm_forward", "lstm_backward"]

_LSTM_GRADS = ("x", "h0", "c0", "w_ih", "w_hh", "b")


def _lstm_inputs(x, w_ih, w_hh, b_ih, b_hh, h0, c0):
    """The arrays checked (one float dtype, shapes consistent) and C-contiguous, plus T, B, I, H."""
    x = _float_array("lstm", "input", x)
    w_ih = _float_array("lstm", "w_ih", w_ih)
    w_hh = _float_array("lstm", "w_hh", w_hh)
    if x.ndim != 3:
        raise ValueError(f"lstm: input must be 3-D (T, B, I), got {x.shape}")
    T, B, I = x.shape
    if T < 1 or B < 1 or I < 1:
        raise ValueError(f"lstm: input (T, B, I) must have positive sizes, got {x.shape}")
    if w_hh.ndim != 2 or w_hh.shape[0] != 4 * w_hh.shape[1] or w_hh.shape[1] < 1:
        raise ValueError(f"lstm: w_hh must be (4H, H), got {w_hh.shape}")
    H = w_hh.shape[1]
    if w_ih.shape != (4 * H, I):
        raise ValueError(
            f"lstm: w_ih must be (4H, I) = ({4 * H}, {I}) for input {x.shape} and w_hh {w_hh.shape}, got {w_ih.shape}"
        )
    arrays = {"input": x, "w_ih": w_ih, "w_hh": w_hh}
    for name, a, shape in (("b_ih", b_ih, (4 * H,)), ("b_hh", b_hh, (4 * H,)), ("h0", h0, (B, H)), ("c0", c0, (B, H))):
        if a is None:
            arrays[name] = None
            continue
        a = _float_array("lstm", name, a)
        if a.shape != shape:
            where = f"input {x.shape} and w_hh {w_hh.shape}"
            raise ValueError(f"lstm: {name} must be {shape} for {where}, got {a.shape}")
        arrays[name] = a
    for name, a in arrays.items():
        if a is not None and a.dtype != x.dtype:
            raise TypeError(
                f"lstm: dtypes differ: input {x.dtype} {x.shape}, {name} {a.dtype} {a.shape} "
                "(convert one with .astype; fastdl does not promote silently)"
            )
    return {k: (None if a is None else np.ascontiguousarray(a)) for k, a in arrays.items()}, (T, B, I, H)


def lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, training: bool = False,
                 path: str = "auto"):
    """One LSTM layer over a whole sequence (PyTorch's equations and gate order i, f, g, o).

    x (T, B, I) time-major; w_ih (4H, I), w_hh (4H, H); b_ih, b_hh (4H,) and h0, c0 (B, H)
    optional (None: zero). Returns ``(y, h_n, c_n, saved)``: y (T, B, H) every step's h, h_n and
    c_n (B, H) the last state, and ``saved`` the arrays :func:`lstm_backward` needs (the activated
    gates (T, B, 4H) and every cell state (T, B, H)) when ``training``, else None. float32 or
    float64, one dtype for all; non-contiguous inputs are copied. ``path``: "auto" (the fused
    kernel for T > 1), "fused" or "stepwise" (the per-step reference).

    >>> import numpy as np
    >>> from fastdl.kernels import lstm_forward
    >>> x = np.ones((5, 2, 3), np.float32)
    >>> y, h_n, c_n, _ = lstm_forward(x, np.full((8, 3), 0.1, np.float32), np.zeros((8, 2), np.float32))
    >>> y.shape, h_n.shape, bool(np.allclose(y[-1], h_n))
    ((5, 2, 2), (2, 2), True)
    """
    a, (T, B, I, H) = _lstm_inputs(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    dtype = a["input"].dtype
    y = np.empty((T, B, H), dtype)
    h_n = np.empty((B, H), dtype)
    c_n = np.empty((B, H), dtype)
    gates = np.empty((T, B, 4 * H), dtype)
    cell = np.empty((T, B, H), dtype) if training else None
    _C.lstm_forward(a["input"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"], y, h_n, c_n, gates,
                    cell, path)
    return y, h_n, c_n, ((gates, cell) if training else None)


def lstm_backward(grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, h0, c0, y, saved, *, grads=_LSTM_GRADS,
                  path: str = "auto"):
    """Backward through time of :func:`lstm_forward` (called with ``training=True``).

    grad_y (T, B, H), grad_h_n and grad_c_n (B, H) are the gradients of the forward's outputs
    (None: zero); x, w_ih, w_hh, h0, c0 the forward's inputs, y and ``saved`` its outputs. Returns
    ``(grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b)`` with grad_b (4H,) the gradient of
    b_ih and of b_hh alike; an entry is None when its name is not in ``grads`` (names "x", "h0",
    "c0", "w_ih", "w_hh", "b") or when h0/c0 was None.

    >>> import numpy as np
    >>> from fastdl.kernels import lstm_backward, lstm_forward
    >>> x = np.ones((4, 1, 2))
    >>> w_ih, w_hh = np.full((12, 2), 0.2), np.full((12, 3), -0.1)
    >>> y, h_n, c_n, saved = lstm_forward(x, w_ih, w_hh, training=True)
    >>> gx, _, _, gw_ih, gw_hh, gb = lstm_backward(np.ones_like(y), None, None, x, w_ih, w_hh, None, None, y, saved)
    >>> gx.shape, gw_ih.shape, gw_hh.shape, gb.shape
    ((4, 1, 2), (12, 2), (12, 3), (12,))
    """
    unknown = set(grads) - set(_LSTM_GRADS)
    if unknown:
        raise ValueError(f"lstm_backward: unknown gradient names {sorted(unknown)}; choose from {_LSTM_GRADS}")
    if saved is None:
        raise ValueError("lstm_backward: saved is None; run lstm_forward with training=True")
    a, (T, B, I, H) = _lstm_inputs(x, w_ih, w_hh, None, None, h0, c0)
    dtype = a["input"].dtype
    gates, cell = saved
    given = {}
    for name, g, shape in (("grad_y", grad_y, (T, B, H)), ("grad_h_n", grad_h_n, (B, H)),
                           ("grad_c_n", grad_c_n, (B, H))):
        if g is None:
            given[name] = None
            continue
        g = _float_array("lstm_backward", name, g)
        if g.shape != shape or g.dtype != dtype:
            raise ValueError(f"lstm_backward: {name} must be {dtype} {shape}, got {g.dtype} {g.shape}")
        given[name] = np.ascontiguousarray(g)

    def out(name, shape, present=True):
        return np.empty(shape, dtype) if name in grads and present else None

    result = (out("x", (T, B, I)), out("h0", (B, H), h0 is not None), out("c0", (B, H), c0 is not None),
              out("w_ih", (4 * H, I)), out("w_hh", (4 * H, H)), out("b", (4 * H,)))
    _C.lstm_backward(given["grad_y"], given["grad_h_n"], given["grad_c_n"], a["input"], a["w_ih"], a["w_hh"],
                     a["h0"], a["c0"], y, gates, cell, *result, np.empty((T, B, 4 * H), dtype), path)
    return result


# ---- CUDA (cuda branch) ---------------------------------------------------------------------------
# CuPy arrays: the same checks, outputs from CuPy's memory pool, launch on CuPy's current stream of
# the operands' device. float32 uses CUDA cores unless fastdl.backends.allow_tf32 is set; float16 and
# bfloat16 always use tensor cores (float32 accumulation, result rounded to the input dtype).

_CUDA_DTYPES = ("float32", "float64", "float16", "bfloat16")


def _cuda_operand(op: str, name: str, x):
    if not is_cuda_array(x):
        raise TypeError(
            f"{op}: {name} is a CPU {type(x).__name__} but another operand is on CUDA; "
            "move it with cupy.asarray (fastdl does not copy between devices silently)"
        )
    if x.dtype.name not in _CUDA_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float64, float16 or bfloat16, got {x.dtype} {x.shape}")
    return x


def _same_device(op: str, **arrays) -> int:
    devices = {name: x.device.id for name, x in arrays.items()}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{name} {arrays[name].shape} on cuda:{d}" for name, d in devices.items())
        raise ValueError(f"{op}: operands are on different GPUs: {where}")
    return next(iter(devices.values()))


def _unit_stride(cp, x):
    """``x`` itself when one of its last two dimensions has unit stride (what the kernels read),
    else a C-contiguous copy."""
    item = x.dtype.itemsize
    if x.ndim < 2 or x.strides[-1] == item or x.strides[-2] == item or 1 in x.shape[-2:]:
        return x
    return cp.ascontiguousarray(x)


def _gemm_cuda(a, b, out, trans_a, trans_b, alpha, beta):
    cp = backend.require_cuda("gemm")
    a, b = _cuda_operand("gemm", "a", a), _cuda_operand("gemm", "b", b)
    if a.dtype != b.dtype:
        raise TypeError(f"gemm: dtypes differ: a {a.dtype} {a.shape}, b {b.dtype} {b.shape}")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm: a and b must be 2-D, got a {a.shape}, b {b.shape}")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != Kb:
        raise ValueError(
            f"gemm: inner dimensions differ: op(a) is ({M}, {K}) and op(b) is ({Kb}, {N}) for a {a.shape}, b {b.shape}"
        )
    operands = {"a": a, "b": b} if out is None else {"a": a, "b": b, "out": _cuda_operand("gemm", "out", out)}
    device = _same_device("gemm", **operands)
    with cp.cuda.Device(device):
        if out is None:
            if beta != 0:
                raise ValueError("gemm: beta != 0 needs out (the C that beta scales)")
            out = cp.empty((M, N), dtype=a.dtype)
        else:
            if out.dtype != a.dtype:
                raise TypeError(f"gemm: out must be {a.dtype}, got {out.dtype} {out.shape}")
            if out.shape != (M, N):
                raise ValueError(f"gemm: out must have shape {(M, N)}, got {out.shape} for a {a.shape}, b {b.shape}")
            if cp.may_share_memory(out, a) or cp.may_share_memory(out, b):
                a, b = a.copy(), b.copy()
        _C.gemm_cuda(_unit_stride(cp, a), _unit_stride(cp, b), out, trans_a, trans_b, alpha, beta,
                     bool(backend.allow_tf32), cp.cuda.get_current_stream().ptr)
    return out


def _matmul_cuda(a, b, out):
    cp = backend.require_cuda("matmul")
    a, b = _cuda_operand("matmul", "a", a), _cuda_operand("matmul", "b", b)
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: dtypes differ: a {a.dtype} {a.shape}, b {b.dtype} {b.shape}")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least one dimension, got a {a.shape}, b {b.shape}")
    device = _same_device("matmul", a=a, b=b)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul: inner dimensions differ: a {a.shape} has {a2.shape[-1]}, b {b.shape} has {b2.shape[-2]}"
        )
    try:
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch dimensions do not broadcast: a {a.shape}, b {b.shape}") from None
    M, N = a2.shape[-2], b2.shape[-1]
    with cp.cuda.Device(device):
        result = cp.empty(batch + (M, N), dtype=a.dtype)
        if result.size:
            stream = cp.cuda.get_current_stream().ptr
            tf32 = bool(backend.allow_tf32)
            if not batch:
                _C.gemm_cuda(_unit_stride(cp, a2), _unit_stride(cp, b2), result, False, False, 1.0, 0.0, tf32, stream)
            else:
                a3 = cp.broadcast_to(_unit_stride(cp, a2), batch + a2.shape[-2:])
                b3 = cp.broadcast_to(_unit_stride(cp, b2), batch + b2.shape[-2:])
                _C.matmul_batched_cuda(a3, b3, result, tf32, stream)
        if a.ndim == 1:
            result = result[..., 0, :]
        if b.ndim == 1:
            result = result[..., 0]
        if out is not None:
            out = _cuda_operand("matmul", "out", out)
            if out.shape != result.shape or out.dtype != result.dtype:
                raise ValueError(
                    f"matmul: out must be a {result.dtype} array of shape {result.shape}, got {out.dtype} {out.shape}"
                )
            _same_device("matmul", a=a, out=out)
            out[...] = result
            return out
    return result


__all__ += ["gru_forward", "gru_backward"]

_GRU_GRADS = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")


def _gru_inputs(x, w_ih, w_hh, b_ih, b_hh, h0):
    """The arrays checked (one float dtype, shapes consistent) and C-contiguous, plus T, B, I, H."""
    x = _float_array("gru", "input", x)
    w_ih = _float_array("gru", "w_ih", w_ih)
    w_hh = _float_array("gru", "w_hh", w_hh)
    if x.ndim != 3:
        raise ValueError(f"gru: input must be 3-D (T, B, I), got {x.shape}")
    T, B, I = x.shape
    if T < 1 or B < 1 or I < 1:
        raise ValueError(f"gru: input (T, B, I) must have positive sizes, got {x.shape}")
    if w_hh.ndim != 2 or w_hh.shape[0] != 3 * w_hh.shape[1] or w_hh.shape[1] < 1:
        raise ValueError(f"gru: w_hh must be (3H, H), got {w_hh.shape}")
    H = w_hh.shape[1]
    if w_ih.shape != (3 * H, I):
        raise ValueError(
            f"gru: w_ih must be (3H, I) = ({3 * H}, {I}) for input {x.shape} and w_hh {w_hh.shape}, got {w_ih.shape}"
        )
    arrays = {"input": x, "w_ih": w_ih, "w_hh": w_hh}
    for name, a, shape in (("b_ih", b_ih, (3 * H,)), ("b_hh", b_hh, (3 * H,)), ("h0", h0, (B, H))):
        if a is None:
            arrays[name] = None
            continue
        a = _float_array("gru", name, a)
        if a.shape != shape:
            raise ValueError(f"gru: {name} must be {shape} for input {x.shape} and w_hh {w_hh.shape}, got {a.shape}")
        arrays[name] = a
    for name, a in arrays.items():
        if a is not None and a.dtype != x.dtype:
            raise TypeError(
                f"gru: dtypes differ: input {x.dtype} {x.shape}, {name} {a.dtype} {a.shape} "
                "(convert one with .astype; fastdl does not promote silently)"
            )
    return {k: (None if a is None else np.ascontiguousarray(a)) for k, a in arrays.items()}, (T, B, I, H)


def gru_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, training: bool = False):
    """One GRU layer over a whole sequence (PyTorch's equations and gate order r, z, n), on the
    same fused native kernels as the LSTM.

    x (T, B, I) time-major; w_ih (3H, I), w_hh (3H, H); b_ih, b_hh (3H,) and h0 (B, H) optional
    (None: zero). Returns ``(y, h_n, saved)``: y (T, B, H), h_n (B, H), and ``saved`` the arrays
    :func:`gru_backward` needs (the gates r, z, n (T, B, 3H) and W_hn·h + b_hn (T, B, H)) when
    ``training``, else None.

    >>> import numpy as np
    >>> from fastdl.kernels import gru_forward
    >>> y, h_n, _ = gru_forward(np.ones((5, 2, 3)), np.full((6, 3), 0.1), np.zeros((6, 2)))
    >>> y.shape, bool(np.allclose(y[-1], h_n))
    ((5, 2, 2), True)
    """
    a, (T, B, I, H) = _gru_inputs(x, w_ih, w_hh, b_ih, b_hh, h0)
    dtype = a["input"].dtype
    y = np.empty((T, B, H), dtype)
    h_n = np.empty((B, H), dtype)
    gates = np.empty((T, B, 3 * H), dtype)
    hn = np.empty((T, B, H), dtype) if training else None
    _C.gru_forward(a["input"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], y, h_n, gates, hn)
    return y, h_n, ((gates, hn) if training else None)


def gru_backward(grad_y, grad_h_n, x, w_ih, w_hh, h0, y, saved, *, grads=_GRU_GRADS):
    """Backward through time of :func:`gru_forward` (called with ``training=True``).

    grad_y (T, B, H) and grad_h_n (B, H) may be None (zero). Returns ``(grad_x, grad_h0, grad_w_ih,
    grad_w_hh, grad_b_ih, grad_b_hh)``; an entry is None when its name is not in ``grads`` (names
    "x", "h0", "w_ih", "w_hh", "b_ih", "b_hh") or when h0 was None.

    >>> import numpy as np
    >>> from fastdl.kernels import gru_backward, gru_forward
    >>> x, w_ih, w_hh = np.ones((4, 1, 2)), np.full((9, 2), 0.2), np.full((9, 3), -0.1)
    >>> y, h_n, saved = gru_forward(x, w_ih, w_hh, training=True)
    >>> [g.shape for g in gru_backward(np.ones_like(y), None, x, w_ih, w_hh, None, y, saved) if g is not None]
    [(4, 1, 2), (9, 2), (9, 3), (9,), (9,)]
    """
    unknown = set(grads) - set(_GRU_GRADS)
    if unknown:
        raise ValueError(f"gru_backward: unknown gradient names {sorted(unknown)}; choose from {_GRU_GRADS}")
    if saved is None:
        raise ValueError("gru_backward: saved is None; run gru_forward with training=True")
    a, (T, B, I, H) = _gru_inputs(x, w_ih, w_hh, None, None, h0)
    dtype = a["input"].dtype
    given = {}
    for name, g, shape in (("grad_y", grad_y, (T, B, H)), ("grad_h_n", grad_h_n, (B, H))):
        if g is None:
            given[name] = None
            continue
        g = _float_array("gru_backward", name, g)
        if g.shape != shape or g.dtype != dtype:
            raise ValueError(f"gru_backward: {name} must be {dtype} {shape}, got {g.dtype} {g.shape}")
        given[name] = np.ascontiguousarray(g)

    def out(name, shape, present=True):
        return np.empty(shape, dtype) if name in grads and present else None

    result = (out("x", (T, B, I)), out("h0", (B, H), h0 is not None), out("w_ih", (3 * H, I)),
              out("w_hh", (3 * H, H)), out("b_ih", (3 * H,)), out("b_hh", (3 * H,)))
    _C.gru_backward(given["grad_y"], given["grad_h_n"], a["input"], a["w_ih"], a["w_hh"], a["h0"], y, *saved,
                    *result, np.empty((T, B, 3 * H), dtype), np.empty((T, B, 3 * H), dtype))
    return result
