"""The raw-array API: fastdl's native kernels on NumPy arrays, without autodiff.

Each function checks its arguments (a ValueError/TypeError naming the op and the shapes), allocates
its output from Python and calls ``fastdl._C`` with the GIL released.

>>> import numpy as np
>>> from fastdl import kernels
>>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
>>> kernels.gemm(a, a, trans_b=True)
array([[ 5., 14.],
       [14., 50.]], dtype=float32)
"""
from __future__ import annotations

import math

import numpy as np

from .backend import _C

__all__ = ["gemm", "matmul", "attention_forward", "attention_backward"]

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

    >>> import numpy as np
    >>> c = np.ones((2, 2))
    >>> gemm(np.eye(2), np.full((2, 2), 3.0), c, alpha=2.0, beta=1.0)
    array([[7., 1.],
           [1., 7.]])
    """
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


# ---- attention ----------------------------------------------------------------------------------

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
        return x.reshape((math.prod(batch[:-1]), heads) + x.shape[-2:])

    def scale(self, scale):
        return 1.0 / math.sqrt(self.E) if scale is None else float(scale)


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
