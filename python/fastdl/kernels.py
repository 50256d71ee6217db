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

import numpy as np

from .backend import _C

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
