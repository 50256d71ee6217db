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


def _recurrent_inputs(op: str, gates: int, x, w_ih, w_hh, **optional):
    """The arrays of a recurrent layer with ``gates`` gates (LSTM 4, GRU 3) checked (one float dtype,
    shapes consistent) and C-contiguous, plus T, B, I, H. ``optional``: b_ih and b_hh (gates·H,),
    h0 and c0 (B, H), each None or an array."""
    x = _float_array(op, "input", x)
    w_ih = _float_array(op, "w_ih", w_ih)
    w_hh = _float_array(op, "w_hh", w_hh)
    if x.ndim != 3:
        raise ValueError(f"{op}: input must be 3-D (T, B, I), got {x.shape}")
    T, B, I = x.shape
    if T < 1 or B < 1 or I < 1:
        raise ValueError(f"{op}: input (T, B, I) must have positive sizes, got {x.shape}")
    if w_hh.ndim != 2 or w_hh.shape[0] != gates * w_hh.shape[1] or w_hh.shape[1] < 1:
        raise ValueError(f"{op}: w_hh must be ({gates}H, H), got {w_hh.shape}")
    H = w_hh.shape[1]
    if w_ih.shape != (gates * H, I):
        raise ValueError(
            f"{op}: w_ih must be ({gates}H, I) = ({gates * H}, {I}) for input {x.shape} and w_hh {w_hh.shape}, "
            f"got {w_ih.shape}"
        )
    arrays = {"input": x, "w_ih": w_ih, "w_hh": w_hh}
    shapes = {"b_ih": (gates * H,), "b_hh": (gates * H,), "h0": (B, H), "c0": (B, H)}
    for name, a in optional.items():
        if a is None:
            arrays[name] = None
            continue
        a = _float_array(op, name, a)
        if a.shape != shapes[name]:
            raise ValueError(f"{op}: {name} must be {shapes[name]} for input {x.shape} and w_hh {w_hh.shape}, "
                             f"got {a.shape}")
        arrays[name] = a
    for name, a in arrays.items():
        if a is not None and a.dtype != x.dtype:
            raise TypeError(
                f"{op}: dtypes differ: input {x.dtype} {x.shape}, {name} {a.dtype} {a.shape} "
                "(convert one with .astype; fastdl does not promote silently)"
            )
    return {k: (None if a is None else np.ascontiguousarray(a)) for k, a in arrays.items()}, (T, B, I, H)


def _lstm_inputs(x, w_ih, w_hh, b_ih, b_hh, h0, c0):
    return _recurrent_inputs("lstm", 4, x, w_ih, w_hh, b_ih=b_ih, b_hh=b_hh, h0=h0, c0=c0)


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


# ---- gru (lstm family) -------------------------------------------------------------------------

__all__ += ["gru_forward", "gru_backward"]

_GRU_GRADS = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")


def _gru_inputs(x, w_ih, w_hh, b_ih, b_hh, h0):
    return _recurrent_inputs("gru", 3, x, w_ih, w_hh, b_ih=b_ih, b_hh=b_hh, h0=h0)


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


# ---- attention ----------------------------------------------------------------------------------

__all__ += ["attention_forward", "attention_backward"]

class _AttentionPlan:
    """Inputs of one attention call as the 4-D views the native kernel takes.

    query (..., L, E), key (..., S, E), value (..., S, Ev) with broadcast batch dimensions (and,
    with grouped-query attention, query heads a multiple of key/value heads) become
    q4 (B, H, L, E), k4 (B, Hk, S, E), v4 (B, Hk, S, Ev) and mask4 (B, H, L, S), as strided views
    (zero strides for broadcast dimensions) wherever NumPy can express them without a copy.
    """

    def __init__(self, op, query, key, value, attn_mask, enable_gqa):
        q = _float_array(op, "query", query)
        k = _float_array(op, "key", key)
        v = _float_array(op, "value", value)
        shapes = f"query {q.shape}, key {k.shape}, value {v.shape}"
        if not (q.dtype == k.dtype == v.dtype):
            raise TypeError(f"{op}: dtypes differ: query {q.dtype}, key {k.dtype}, value {v.dtype} for {shapes}")
        if min(q.ndim, k.ndim, v.ndim) < 2:
            raise ValueError(f"{op}: query, key and value need at least 2 dimensions (..., L, E), got {shapes}")
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(f"{op}: query and key embedding sizes differ: {shapes}")
        if k.shape[-2] != v.shape[-2]:
            raise ValueError(f"{op}: key and value lengths differ: {shapes}")
        self.L, self.S, self.E, self.Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
        self.query_shape, self.key_shape, self.value_shape = q.shape, k.shape, v.shape
        gqa = enable_gqa and min(q.ndim, k.ndim, v.ndim) >= 3 and q.shape[-3] != k.shape[-3]
        if enable_gqa and min(q.ndim, k.ndim, v.ndim) >= 3 and (
            k.shape[-3] != v.shape[-3] or q.shape[-3] % k.shape[-3] != 0
        ):
            raise ValueError(
                f"{op}: enable_gqa needs equal key/value heads that divide the query heads (dimension -3): {shapes}"
            )
        try:
            if gqa:
                batch = np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
                self.out_batch = batch + (q.shape[-3],)
                kv_batch = batch + (k.shape[-3],)
            else:
                batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
                self.out_batch = kv_batch = batch
        except ValueError:
            raise ValueError(f"{op}: batch dimensions do not broadcast: {shapes}") from None
        self.kv_batch = kv_batch
        self.q4 = self._as_4d(np.broadcast_to(q, self.out_batch + (self.L, self.E)))
        self.k4 = self._as_4d(np.broadcast_to(k, kv_batch + (self.S, self.E)))
        self.v4 = self._as_4d(np.broadcast_to(v, kv_batch + (self.S, self.Ev)))
        self.mask4 = None
        self.mask_shape = None
        if attn_mask is not None:
            m = attn_mask if isinstance(attn_mask, np.ndarray) else np.asarray(attn_mask)
            if m.dtype != np.bool_ and m.dtype != q.dtype:
                raise TypeError(f"{op}: attn_mask must be bool or {q.dtype} (like query), got {m.dtype} {m.shape}")
            full = self.out_batch + (self.L, self.S)
            try:
                fits = m.ndim <= len(full) and np.broadcast_shapes(m.shape, full) == full
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(f"{op}: attn_mask {m.shape} does not broadcast to the scores {full} for {shapes}")
            self.mask_shape = m.shape
            self.mask4 = self._as_4d(np.broadcast_to(m, full))

    @staticmethod
    def _as_4d(x):
        """(..., L, E) → (B, H, L, E) with H the last batch dimension; a view unless dimensions
        that cannot merge without a copy (broadcast in one, not the other) have to."""
        batch = x.shape[:-2]
        heads = batch[-1] if batch else 1
        return x.reshape((int(np.prod(batch[:-1])), heads) + x.shape[-2:])

    def scale(self, scale):
        """``scale``, or PyTorch's default 1/sqrt(E) (1 for E = 0)."""
        if scale is not None:
            return float(scale)
        return 1.0 / float(np.sqrt(self.E)) if self.E > 0 else 1.0


def _sum_to(g, shape):
    """Sum a gradient of a broadcast operand back to the operand's shape."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes).reshape(shape) if axes else g.reshape(shape)


def _check_dropout(op, dropout_p):
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1), got {dropout_p}")


def attention_forward(query, key, value, attn_mask=None, *, is_causal: bool = False, scale=None,
                      dropout_p: float = 0.0, seed: int = 0, enable_gqa: bool = False, _op: str = "attention_forward"):
    """Fused scaled-dot-product attention (FlashAttention-2) on NumPy arrays: ``(out, lse)``.

    query (..., L, E), key (..., S, E), value (..., S, Ev) → out (..., L, Ev) and the row
    log-sum-exp lse (..., L) of the scaled scores, as ``torch.nn.functional.scaled_dot_product_attention``
    computes them: batch dimensions broadcast; ``attn_mask`` broadcasts to (..., L, S) and is boolean
    (True takes part) or additive in the inputs' dtype; ``is_causal`` keeps key j ≤ query i
    (top-left aligned, combined with ``attn_mask`` when both are given); ``enable_gqa`` lets the
    query heads (dimension -3) be a multiple of the key/value heads. A row whose mask removes every
    key gives zeros (and lse = -inf), never NaN. ``dropout_p > 0`` drops probabilities with a mask
    that is a pure function of ``seed`` (pass the same seed to :func:`attention_backward`). The
    L×S score matrix is never stored: extra memory is linear in L and S.

    >>> import numpy as np
    >>> q = np.ones((2, 3, 4), np.float32)
    >>> out, lse = attention_forward(q, q, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    >>> out[0, 0]
    array([4., 5., 6., 7.], dtype=float32)
    >>> lse.shape
    (2, 3)
    """
    plan = _AttentionPlan(_op, query, key, value, attn_mask, enable_gqa)
    _check_dropout(_op, dropout_p)
    q4, k4, v4 = plan.q4, plan.k4, plan.v4
    out = np.empty(q4.shape[:3] + (plan.Ev,), dtype=q4.dtype)
    lse = np.empty(q4.shape[:3], dtype=q4.dtype)
    _C.attention_forward(q4, k4, v4, plan.mask4, out, lse, bool(is_causal), plan.scale(scale), float(dropout_p),
                         int(seed) & (2**64 - 1))
    return out.reshape(plan.out_batch + (plan.L, plan.Ev)), lse.reshape(plan.out_batch + (plan.L,))


def attention_backward(grad_out, query, key, value, out, lse, attn_mask=None, *, is_causal: bool = False, scale=None,
                       dropout_p: float = 0.0, seed: int = 0, enable_gqa: bool = False, mask_grad: bool = False,
                       _op: str = "attention_backward"):
    """Gradients of :func:`attention_forward`: ``(grad_query, grad_key, grad_value)``, plus
    ``grad_mask`` (the gradient of an additive ``attn_mask``) when ``mask_grad``.

    ``out`` and ``lse`` are what :func:`attention_forward` returned for the same arguments (and the
    same ``seed`` when ``dropout_p > 0``); the probabilities are recomputed block by block from
    ``lse``. Each gradient has its input's shape (summed over broadcast dimensions).

    >>> import numpy as np
    >>> q = np.random.default_rng(0).standard_normal((1, 5, 8))
    >>> out, lse = attention_forward(q, q, q)
    >>> gq, gk, gv = attention_backward(np.ones_like(out), q, q, q, out, lse)
    >>> np.allclose(gv.sum(), 5 * 8)
    True
    """
    plan = _AttentionPlan(_op, query, key, value, attn_mask, enable_gqa)
    _check_dropout(_op, dropout_p)
    q4, k4, v4 = plan.q4, plan.k4, plan.v4
    out_shape = plan.out_batch + (plan.L, plan.Ev)
    arrays = {}
    for name, x, shape in (("grad_out", grad_out, out_shape), ("out", out, out_shape),
                           ("lse", lse, plan.out_batch + (plan.L,))):
        x = _float_array(_op, name, x)
        if x.shape != shape or x.dtype != q4.dtype:
            raise ValueError(f"{_op}: {name} must be {q4.dtype} of shape {shape}, got {x.dtype} {x.shape}")
        arrays[name] = np.ascontiguousarray(x).reshape(q4.shape[:3] + shape[len(plan.out_batch) + 1:])
    if mask_grad and (plan.mask4 is None or plan.mask4.dtype == np.bool_):
        raise ValueError(f"{_op}: mask_grad needs an additive (float) attn_mask")
    grad_q = np.empty(q4.shape, q4.dtype)
    grad_k = np.empty(k4.shape, q4.dtype)
    grad_v = np.empty(v4.shape, q4.dtype)
    grad_m = np.empty(q4.shape[:3] + (plan.S,), q4.dtype) if mask_grad else None
    _C.attention_backward(arrays["grad_out"], q4, k4, v4, arrays["out"], arrays["lse"], plan.mask4, grad_q, grad_k,
                          grad_v, grad_m, bool(is_causal), plan.scale(scale), float(dropout_p),
                          int(seed) & (2**64 - 1))
    grads = (
        _sum_to(grad_q.reshape(plan.out_batch + (plan.L, plan.E)), plan.query_shape),
        _sum_to(grad_k.reshape(plan.kv_batch + (plan.S, plan.E)), plan.key_shape),
        _sum_to(grad_v.reshape(plan.kv_batch + (plan.S, plan.Ev)), plan.value_shape),
    )
    if mask_grad:
        grads += (_sum_to(grad_m.reshape(plan.out_batch + (plan.L, plan.S)), plan.mask_shape),)
    return grads


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


# ---- conv2d family: convolution and pooling on NCHW arrays ----------------------------------------
# Every function checks its arguments here (ValueError/TypeError naming the op and the shapes) and
# the native kernel checks them again. Non-contiguous inputs are copied to C order first.

__all__ += [
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_output_size",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "adaptive_avg_pool2d_forward",
    "adaptive_avg_pool2d_backward",
    "pool2d_output_size",
]


def _pair(op: str, name: str, value, minimum: int) -> tuple[int, int]:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {pair}")
    return pair


def _nchw(op: str, name: str, x, dtype=None) -> np.ndarray:
    x = _float_array(op, name, x)
    if x.ndim != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got {x.shape}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{op}: {name} must have the input's dtype {dtype}, got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x)


def conv2d_output_size(size, kernel, stride=1, padding=0, dilation=1) -> int:
    """Output length of a convolution along one axis: ⌊(size + pads − dilation·(kernel − 1) − 1) / stride⌋ + 1.

    ``padding`` is one int (both sides) or a (before, after) pair.

    >>> conv2d_output_size(224, 7, stride=2, padding=3)
    112
    """
    before, after = (padding, padding) if isinstance(padding, (int, np.integer)) else padding
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


def _conv_args(op: str, x_shape, w_shape, stride, padding, dilation, groups):
    """Checked convolution parameters: (stride, (top, left, bottom, right), dilation, groups)."""
    stride = _pair(op, "stride", stride, 1)
    dilation = _pair(op, "dilation", dilation, 1)
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    groups = int(groups)
    N, C_in, H, W = x_shape
    C_out, C_in_g, KH, KW = w_shape
    shapes = f"input {tuple(x_shape)}, weight {tuple(w_shape)}"
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups} for {shapes}")
    if C_in % groups or C_out % groups:
        raise ValueError(f"{op}: groups {groups} must divide the input channels {C_in} and the output channels "
                         f"{C_out} for {shapes}")
    if C_in_g * groups != C_in:
        raise ValueError(f"{op}: input has {C_in} channels but weight expects {C_in_g} x groups {groups} = "
                         f"{C_in_g * groups} for {shapes}")
    if min(C_out, C_in_g, KH, KW) < 1:
        raise ValueError(f"{op}: weight sizes must be positive, got {shapes}")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' needs stride 1, got stride {stride} for {shapes}")
            th, tw = dilation[0] * (KH - 1), dilation[1] * (KW - 1)
            pads = (th // 2, tw // 2, th - th // 2, tw - tw // 2)  # the extra one after, as PyTorch
        else:
            raise ValueError(f"{op}: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
    else:
        ph, pw = _pair(op, "padding", padding, 0)
        pads = (ph, pw, ph, pw)
    eff = (dilation[0] * (KH - 1) + 1, dilation[1] * (KW - 1) + 1)
    if H + pads[0] + pads[2] < eff[0] or W + pads[1] + pads[3] < eff[1]:
        raise ValueError(f"{op}: kernel ({KH}, {KW}) with dilation {dilation} spans {eff}, larger than the "
                         f"padded input ({H + pads[0] + pads[2]}, {W + pads[1] + pads[3]}) for {shapes}")
    return stride, pads, dilation, groups


def _conv_out_hw(x_shape, w_shape, stride, pads, dilation):
    return (conv2d_output_size(x_shape[2], w_shape[2], stride[0], (pads[0], pads[2]), dilation[0]),
            conv2d_output_size(x_shape[3], w_shape[3], stride[1], (pads[1], pads[3]), dilation[1]))


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation, as PyTorch): x (N, C_in, H, W), weight (C_out, C_in/groups,
    KH, KW), bias (C_out,) or None → (N, C_out, OH, OW).

    ``stride``, ``dilation``: int or pair; ``padding``: int, pair, ``"same"`` (stride 1) or ``"valid"``.
    float32 or float64; implicit GEMM on fastdl's GEMM micro-kernels (direct kernel when depthwise).

    >>> import numpy as np
    >>> conv2d_forward(np.ones((1, 1, 4, 4)), np.ones((2, 1, 3, 3)), padding=1)[0, :, 0]
    array([[4., 6., 6., 4.],
           [4., 6., 6., 4.]])
    """
    op = "conv2d"
    x = _nchw(op, "input", x)
    weight = _nchw(op, "weight", weight, x.dtype)
    stride, pads, dilation, groups = _conv_args(op, x.shape, weight.shape, stride, padding, dilation, groups)
    if bias is not None:
        bias = np.ascontiguousarray(_float_array(op, "bias", bias))
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias must have the input's dtype {x.dtype}, got {bias.dtype} {bias.shape}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{op}: bias must be ({weight.shape[0]},) for weight {weight.shape}, got {bias.shape}")
    out = np.empty((x.shape[0], weight.shape[0]) + _conv_out_hw(x.shape, weight.shape, stride, pads, dilation),
                   x.dtype)
    _C.conv2d_forward(x, weight, bias, out, _C.ConvArgs(stride, pads, dilation, groups))
    return out


def _shape4(op: str, name: str, shape) -> tuple:
    shape = tuple(int(v) for v in shape)
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"{op}: {name} must be 4 non-negative sizes (N, C, H, W), got {shape}")
    return shape


def conv2d_backward_input(grad_output, weight, input_shape, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of :func:`conv2d_forward` with respect to its input: grad_output (N, C_out, OH, OW),
    weight (C_out, C_in/groups, KH, KW) → (N, C_in, H, W) = ``input_shape``.

    Also ``conv_transpose2d``'s forward: ``input_shape`` may exceed the smallest input that gives
    (OH, OW) (its ``output_padding``); input positions no output reads get 0.

    >>> import numpy as np
    >>> conv2d_backward_input(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), (1, 1, 3, 3))[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    op = "conv2d_backward_input"
    grad_output = _nchw(op, "grad_output", grad_output)
    weight = _nchw(op, "weight", weight, grad_output.dtype)
    input_shape = _shape4(op, "input_shape", input_shape)
    stride, pads, dilation, groups = _conv_args(op, input_shape, weight.shape, stride, padding, dilation, groups)
    oh, ow = _conv_out_hw(input_shape, weight.shape, stride, pads, dilation)
    N, C_out, OH, OW = grad_output.shape
    if N != input_shape[0] or C_out != weight.shape[0] or OH > oh or OW > ow:
        raise ValueError(f"{op}: grad_output {grad_output.shape} does not fit input {input_shape}, weight "
                         f"{weight.shape} (the output is at most ({input_shape[0]}, {weight.shape[0]}, {oh}, {ow}))")
    out = np.empty(input_shape, grad_output.dtype)
    if out.size:
        _C.conv2d_backward_input(grad_output, weight, out, _C.ConvArgs(stride, pads, dilation, groups))
    return out


def conv2d_backward_weight(grad_output, x, weight_shape, stride=1, padding=0, dilation=1, groups=1, bias=True):
    """Gradients of :func:`conv2d_forward` with respect to weight (and bias): grad_output (N, C_out,
    OH, OW), x (N, C_in, H, W) → (grad_weight of ``weight_shape``, grad_bias (C_out,) or None).

    >>> import numpy as np
    >>> gw, gb = conv2d_backward_weight(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)), (1, 1, 2, 2))
    >>> gw[0, 0], gb
    (array([[4., 4.],
           [4., 4.]]), array([4.]))
    """
    op = "conv2d_backward_weight"
    grad_output = _nchw(op, "grad_output", grad_output)
    x = _nchw(op, "input", x, grad_output.dtype)
    weight_shape = _shape4(op, "weight_shape", weight_shape)
    stride, pads, dilation, groups = _conv_args(op, x.shape, weight_shape, stride, padding, dilation, groups)
    oh, ow = _conv_out_hw(x.shape, weight_shape, stride, pads, dilation)
    if grad_output.shape[:2] != (x.shape[0], weight_shape[0]) or grad_output.shape[2] > oh or grad_output.shape[3] > ow:
        raise ValueError(f"{op}: grad_output {grad_output.shape} does not fit input {x.shape}, weight "
                         f"{weight_shape} (the output is at most ({x.shape[0]}, {weight_shape[0]}, {oh}, {ow}))")
    grad_weight = np.empty(weight_shape, x.dtype)
    grad_bias = np.empty(weight_shape[0], x.dtype) if bias else None
    if x.shape[0] == 0:
        grad_weight.fill(0)
        if grad_bias is not None:
            grad_bias.fill(0)
    else:
        _C.conv2d_backward_weight(grad_output, x, grad_weight, grad_bias, _C.ConvArgs(stride, pads, dilation, groups))
    return grad_weight, grad_bias


def pool2d_output_size(size, kernel, stride, padding=0, dilation=1, ceil_mode=False) -> int:
    """Output length of a pooling window along one axis, with PyTorch's ceil_mode rule (the last
    window must start inside the input or its left padding).

    >>> pool2d_output_size(5, 2, 2), pool2d_output_size(5, 2, 2, ceil_mode=True)
    (2, 3)
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pool_args(op: str, x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    kernel = _pair(op, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else \
        _pair(op, "stride", stride, 1)
    padding = _pair(op, "padding", padding, 0)
    dilation = _pair(op, "dilation", dilation, 1)
    for d in (0, 1):
        if 2 * padding[d] > dilation[d] * (kernel[d] - 1) + 1:
            raise ValueError(f"{op}: padding {padding} must be at most half the kernel {kernel} "
                             f"(dilation {dilation}) for input {tuple(x_shape)}")
    out = tuple(pool2d_output_size(x_shape[2 + d], kernel[d], stride[d], padding[d], dilation[d], bool(ceil_mode))
                for d in (0, 1))
    if min(out) < 1:
        raise ValueError(f"{op}: kernel {kernel} with dilation {dilation} and padding {padding} is larger than "
                         f"the padded input {tuple(x_shape)}")
    return kernel, stride, padding, dilation, out


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling: x (N, C, H, W) → (out (N, C, OH, OW), indices int64 of the same shape: the flat
    position ih·W + iw of each maximum in its plane; NaN propagates). ``stride`` defaults to
    ``kernel_size``; padding is -inf.

    >>> import numpy as np
    >>> out, idx = max_pool2d_forward(np.arange(16.0).reshape(1, 1, 4, 4), 2)
    >>> out[0, 0], idx[0, 0]
    (array([[ 5.,  7.],
           [13., 15.]]), array([[ 5,  7],
           [13, 15]]))
    """
    op = "max_pool2d"
    x = _nchw(op, "input", x)
    kernel, stride, padding, dilation, (oh, ow) = _pool_args(op, x.shape, kernel_size, stride, padding, dilation,
                                                             ceil_mode)
    out = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    indices = np.empty(out.shape, np.int64)
    if out.size:
        _C.max_pool2d_forward(x, out, indices, kernel, stride, padding, dilation)
    return out, indices


def max_pool2d_backward(grad_output, indices, input_shape, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    """Gradient of :func:`max_pool2d_forward`: grad_output and indices (N, C, OH, OW) → (N, C, H, W),
    each gradient added at its maximum's position.

    >>> import numpy as np
    >>> max_pool2d_backward(np.ones((1, 1, 1, 1)), np.array([[[[3]]]]), (1, 1, 2, 2), 2)[0, 0]
    array([[0., 0.],
           [0., 1.]])
    """
    op = "max_pool2d_backward"
    grad_output = _nchw(op, "grad_output", grad_output)
    input_shape = _shape4(op, "input_shape", input_shape)
    kernel, stride, padding, dilation, out_hw = _pool_args(op, input_shape, kernel_size, stride, padding, dilation,
                                                           ceil_mode)
    indices = np.ascontiguousarray(indices)
    if indices.dtype != np.int64 or indices.shape != grad_output.shape:
        raise TypeError(f"{op}: indices must be int64 shaped like grad_output {grad_output.shape}, got "
                        f"{indices.dtype} {indices.shape}")
    if grad_output.shape != input_shape[:2] + out_hw:
        raise ValueError(f"{op}: grad_output {grad_output.shape} must be {input_shape[:2] + out_hw} for input "
                         f"{input_shape}")
    out = np.empty(input_shape, grad_output.dtype)
    if grad_output.size:
        _C.max_pool2d_backward(grad_output, indices, out, kernel, stride, padding, dilation)
    else:
        out.fill(0)
    return out


def _avg_args(op, x_shape, kernel_size, stride, padding, ceil_mode, divisor_override):
    kernel, stride, padding, _, out_hw = _pool_args(op, x_shape, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is None:
        divisor = 0
    elif isinstance(divisor_override, (bool, np.bool_)) or not isinstance(divisor_override, (int, np.integer)) \
            or divisor_override < 1:
        raise ValueError(f"{op}: divisor_override must be a positive int or None, got {divisor_override!r}")
    else:
        divisor = int(divisor_override)
    return kernel, stride, padding, out_hw, divisor


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                       divisor_override=None):
    """Average pooling: x (N, C, H, W) → (N, C, OH, OW). The divisor is the window size
    (``count_include_pad``: counting the zero padding; else only the input), or ``divisor_override``.

    >>> import numpy as np
    >>> avg_pool2d_forward(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    op = "avg_pool2d"
    x = _nchw(op, "input", x)
    kernel, stride, padding, (oh, ow), divisor = _avg_args(op, x.shape, kernel_size, stride, padding, ceil_mode,
                                                           divisor_override)
    out = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    if out.size:
        _C.avg_pool2d_forward(x, out, kernel, stride, padding, bool(count_include_pad), divisor)
    return out


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """Gradient of :func:`avg_pool2d_forward`: grad_output (N, C, OH, OW) → (N, C, H, W).

    >>> import numpy as np
    >>> avg_pool2d_backward(np.ones((1, 1, 1, 1)), (1, 1, 2, 2), 2)[0, 0]
    array([[0.25, 0.25],
           [0.25, 0.25]])
    """
    op = "avg_pool2d_backward"
    grad_output = _nchw(op, "grad_output", grad_output)
    input_shape = _shape4(op, "input_shape", input_shape)
    kernel, stride, padding, out_hw, divisor = _avg_args(op, input_shape, kernel_size, stride, padding, ceil_mode,
                                                         divisor_override)
    if grad_output.shape != input_shape[:2] + out_hw:
        raise ValueError(f"{op}: grad_output {grad_output.shape} must be {input_shape[:2] + out_hw} for input "
                         f"{input_shape}")
    out = np.empty(input_shape, grad_output.dtype)
    if grad_output.size:
        _C.avg_pool2d_backward(grad_output, out, kernel, stride, padding, bool(count_include_pad), divisor)
    else:
        out.fill(0)
    return out


def _output_size(op: str, output_size, x_shape) -> tuple[int, int]:
    if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, (bool, np.bool_)):
        output_size = (output_size, output_size)
    if not isinstance(output_size, (tuple, list)) or len(output_size) != 2:
        raise TypeError(f"{op}: output_size must be an int or a pair (None keeps that size), got {output_size!r}")
    out = tuple(x_shape[2 + d] if v is None else v for d, v in enumerate(output_size))
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in out):
        raise TypeError(f"{op}: output_size must be an int or a pair (None keeps that size), got {output_size!r}")
    if min(out) < 1:
        raise ValueError(f"{op}: output_size must be positive, got {tuple(output_size)} for input {tuple(x_shape)}")
    return int(out[0]), int(out[1])


def adaptive_avg_pool2d_forward(x, output_size):
    """Adaptive average pooling: x (N, C, H, W) → (N, C, OH, OW); window i covers rows
    ⌊i·H/OH⌋ … ⌈(i+1)·H/OH⌉ − 1 (likewise columns).

    >>> import numpy as np
    >>> adaptive_avg_pool2d_forward(np.arange(6.0).reshape(1, 1, 2, 3), 1)[0, 0]
    array([[2.5]])
    """
    op = "adaptive_avg_pool2d"
    x = _nchw(op, "input", x)
    oh, ow = _output_size(op, output_size, x.shape)
    out = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    if out.size:
        if min(x.shape[2:]) < 1:
            raise ValueError(f"{op}: input {x.shape} has an empty plane")
        _C.adaptive_avg_pool2d_forward(x, out)
    return out


def adaptive_avg_pool2d_backward(grad_output, input_shape):
    """Gradient of :func:`adaptive_avg_pool2d_forward`: grad_output (N, C, OH, OW) → (N, C, H, W).

    >>> import numpy as np
    >>> adaptive_avg_pool2d_backward(np.ones((1, 1, 1, 1)), (1, 1, 1, 2))[0, 0]
    array([[0.5, 0.5]])
    """
    op = "adaptive_avg_pool2d_backward"
    grad_output = _nchw(op, "grad_output", grad_output)
    input_shape = _shape4(op, "input_shape", input_shape)
    if grad_output.shape[:2] != input_shape[:2] or min(input_shape[2:]) < 1:
        raise ValueError(f"{op}: grad_output {grad_output.shape} does not fit input {input_shape}")
    out = np.empty(input_shape, grad_output.dtype)
    if grad_output.size:
        _C.adaptive_avg_pool2d_backward(grad_output, out)
    else:
        out.fill(0)
    return out
