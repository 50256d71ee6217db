"""matmul and linear on the native GEMM (``fastdl._C.gemm``), both gradients through the same kernel.

MatmulFn covers every case of ``torch.matmul``: 1-D·1-D (dot), 2-D·1-D, 1-D·2-D, 2-D·2-D and
batched with broadcast batch dims. Its backward forms dA = G·Bᵀ and dB = Aᵀ·G with transposed
*views* (the kernel reads any strides, so no transpose is copied) and sums over the batch dims that
broadcasting added. When B is a matrix shared by a batch of A (x (…, K) @ W (K, N)), the batch is
folded into M so that dB = A_flatᵀ·G_flat is one GEMM instead of a batched GEMM and a sum.

GemmFn is ``F.linear``: y = x·Wᵀ + b for x (…, in), W (out, in), b (out,). The bias is written into
y first and the GEMM accumulates on it (beta = 1); backward is dx = G·W, dW = Gᵀ·x (trans_a, no
copy), db = Σ G.

float32 and float64 run the native kernel; float16 and integer tensors use NumPy's matmul, a
declared fallback reported by ``fastdl.backend_info()``.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import _C, array_module, declare_fallback, note_fallback
from ..tensor import Function, _sum_to_shape

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_NATIVE = (_F32, _F64)
_CUDA_HALF = ("float16", "bfloat16")
declare_fallback("gemm", "float16/integer matmul", "numpy.matmul (the native GEMM is float32/float64)")


def gemm(a, b, out=None, trans_a=False, trans_b=False, beta=0.0):
    """``out = op(a)·op(b) + beta·out`` on the native kernel (inputs already checked)."""
    if a.__class__ is not np.ndarray:
        return kernels.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, beta=beta)
    if out is None:
        out = np.empty((a.shape[1] if trans_a else a.shape[0], b.shape[0] if trans_b else b.shape[1]), a.dtype)
    _C.gemm(a, b, out, trans_a, trans_b, 1.0, beta)
    return out


def matmul(a, b):
    """``a @ b`` with NumPy's rules: native for float32/float64 (and float16/bfloat16 on CUDA, on
    tensor cores), NumPy's matmul otherwise."""
    if (a.dtype is _F32 or a.dtype is _F64 or a.dtype in _NATIVE
            or (a.__class__ is not np.ndarray and a.dtype.name in _CUDA_HALF)):
        if a.ndim == 2 and b.ndim == 2 and a.__class__ is np.ndarray:
            return gemm(a, b)
        return kernels.matmul(a, b)
    note_fallback("gemm", "float16/integer matmul")
    return array_module(a).matmul(a, b)


def _swap(x):
    return x.swapaxes(-1, -2)


class MatmulFn(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return matmul(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad
        if a.ndim == 1 and b.ndim == 1:
            return (g * b if need_a else None), (g * a if need_b else None)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        # The gradient with the dimension that a 1-D operand dropped put back.
        g2 = g[..., None, :] if a.ndim == 1 else (g[..., None] if b.ndim == 1 else g)
        ga = gb = None
        if b2.ndim == 2 and a2.ndim > 2 and a2.dtype in _NATIVE:
            # Batch folded into M: one GEMM per gradient.
            K, N = b2.shape
            g_flat = g2.reshape(-1, N)
            if need_a:
                ga = gemm(g_flat, b2, trans_b=True).reshape(a2.shape)
            if need_b:
                gb = gemm(a2.reshape(-1, K), g_flat, trans_a=True)
        else:
            if need_a:
                ga = _sum_to_shape(matmul(g2, _swap(b2)), a2.shape)
            if need_b:
                gb = _sum_to_shape(matmul(_swap(a2), g2), b2.shape)
        if ga is not None:
            ga = ga.reshape(a.shape)
        if gb is not None:
            gb = gb.reshape(b.shape)
        return ga, gb


class GemmFn(Function):
    """linear: x (…, in) · W (out, in)ᵀ + b (out,) → (…, out)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        out_features, in_features = w.shape
        x2 = x if x.ndim == 2 else x.reshape(-1, in_features)
        if x.dtype not in _NATIVE or x.__class__ is not np.ndarray:
            out = matmul(x2, w.T)
            if b is not None:
                out = out + b
        else:
            out = np.empty((x2.shape[0], out_features), x.dtype)
            if b is not None:
                out[...] = b
            _C.gemm(x2, w, out, False, True, 1.0, 0.0 if b is None else 1.0)
        return out if x.ndim == 2 else out.reshape(x.shape[:-1] + (out_features,))

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        out_features, in_features = w.shape
        g2 = g if g.ndim == 2 else g.reshape(-1, out_features)
        native = x.dtype in _NATIVE
        gx = gw = gb = None
        if need_x:
            gx = (gemm(g2, w) if native else matmul(g2, w)).reshape(x.shape)
        if need_w:
            x2 = x if x.ndim == 2 else x.reshape(-1, in_features)
            gw = gemm(g2, x2, trans_a=True) if native else matmul(g2.T, x2)
        if need_b:
            gb = g2.sum(axis=0)
        return gx, gw, gb
