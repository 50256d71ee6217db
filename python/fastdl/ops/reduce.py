"""Reductions and the softmax family: sum, mean, var, max/min (values and indices), logsumexp,
prod, norm, cumsum, softmax, log_softmax.

``dims`` arrive normalised by :mod:`fastdl.functional` (a sorted tuple of non-negative axes, or
None for all). Backward expands the incoming gradient back over the reduced axes (a broadcast view,
no copy) and returns it with the input's exact shape; extrema split the gradient evenly between
tied maxima when reducing without indices (``amax``, ``max()``) and send it to the returned index
otherwise (``max(dim)``), as PyTorch does.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import array_module
from ..tensor import Function


def _expand(g, dims, keepdim, ndim):
    """``g`` with the reduced axes put back as size-1 axes."""
    if keepdim or g.ndim == ndim:
        return g
    if dims is None:
        return g.reshape((1,) * ndim)
    return array_module(g).expand_dims(g, dims)


def _broadcast(g, shape):
    """``g`` stretched to ``shape``: written out when small (cheaper than a broadcast view's
    set-up), a zero-stride view otherwise."""
    xp = array_module(g)
    if math.prod(shape) <= 4096:
        out = xp.empty(shape, g.dtype)
        out[...] = g
        return out
    return xp.broadcast_to(g, shape)


def _count(shape, dims) -> int:
    if dims is None:
        return math.prod(shape)
    return math.prod(shape[d] for d in dims)


def sum_array(x, dims, keepdim):
    """x summed over ``dims`` (NumPy's C reduction directly, skipping ndarray.sum's Python layer)."""
    if x.__class__ is np.ndarray:
        return np.add.reduce(x, axis=dims, keepdims=keepdim)
    return x.sum(axis=dims, keepdims=keepdim)


class SumFn(Function):
    @staticmethod
    def forward(ctx, x, dims, keepdim):
        ctx.shape, ctx.dims, ctx.keepdim = x.shape, dims, keepdim
        return sum_array(x, dims, keepdim)

    @staticmethod
    def backward(ctx, g):
        return _broadcast(_expand(g, ctx.dims, ctx.keepdim, len(ctx.shape)), ctx.shape), None, None


class MeanFn(Function):
    @staticmethod
    def forward(ctx, x, dims, keepdim):
        ctx.shape, ctx.dims, ctx.keepdim = x.shape, dims, keepdim
        return x.mean(axis=dims, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        n = _count(ctx.shape, ctx.dims)
        return _broadcast(_expand(g, ctx.dims, ctx.keepdim, len(ctx.shape)) / max(n, 1), ctx.shape), None, None


class VarFn(Function):
    """Σ(x - mean)² / (n - correction); d/dx = 2(x - mean)/(n - correction)."""

    @staticmethod
    def forward(ctx, x, dims, correction, keepdim):
        ctx.save_for_backward(x)
        ctx.dims, ctx.correction, ctx.keepdim = dims, correction, keepdim
        with np.errstate(divide="ignore", invalid="ignore"):
            return array_module(x).var(x, axis=dims, ddof=correction, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        dof = _count(x.shape, ctx.dims) - ctx.correction
        scale = 2.0 / dof if dof > 0 else math.inf
        g = _expand(g, ctx.dims, ctx.keepdim, x.ndim)
        return g * (scale * (x - x.mean(axis=ctx.dims, keepdims=True))), None, None, None


class AmaxFn(Function):
    """max (or min) over ``dims`` without indices; ties share the gradient evenly."""

    @staticmethod
    def forward(ctx, x, dims, keepdim, largest):
        xp = array_module(x)
        out = (xp.amax if largest else xp.amin)(x, axis=dims, keepdims=True)
        ctx.save_for_backward(x, out)
        ctx.dims, ctx.keepdim = dims, keepdim
        if keepdim:
            return out
        return out.reshape(()) if dims is None else out.squeeze(axis=dims)

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        mask = x == out
        count = mask.sum(axis=ctx.dims, keepdims=True).astype(g.dtype)
        g = _expand(g, ctx.dims, ctx.keepdim, x.ndim)
        return g * mask / count, None, None, None


class MaxDimFn(Function):
    """(values, indices) of the max (or min) along one dim; the gradient goes to the index."""

    @staticmethod
    def forward(ctx, x, dim, keepdim, largest):
        xp = array_module(x)
        idx = (xp.argmax if largest else xp.argmin)(x, axis=dim, keepdims=True)
        values = xp.take_along_axis(x, idx, axis=dim)
        ctx.save_for_backward(idx)
        ctx.shape, ctx.dim, ctx.keepdim = x.shape, dim, keepdim
        if not keepdim:
            values, idx = values.squeeze(axis=dim), idx.squeeze(axis=dim)
        return values, idx.astype(np.int64)

    @staticmethod
    def backward(ctx, g, g_indices):
        (idx,) = ctx.saved_tensors
        xp = array_module(g)
        gx = xp.zeros(ctx.shape, g.dtype)
        if not ctx.keepdim:
            g = xp.expand_dims(g, ctx.dim)
        xp.put_along_axis(gx, idx, g, axis=ctx.dim)
        return gx, None, None, None


class LogsumexpFn(Function):
    """log Σ exp(x), shifted by the max for stability; d/dx = exp(x - out)."""

    @staticmethod
    def forward(ctx, x, dims, keepdim):
        xp = array_module(x)
        m = xp.amax(x, axis=dims, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        with np.errstate(divide="ignore"):
            out = xp.log(xp.exp(x - m).sum(axis=dims, keepdims=True)) + m
        ctx.save_for_backward(x, out)
        ctx.dims, ctx.keepdim = dims, keepdim
        if keepdim:
            return out
        return out.reshape(()) if dims is None else out.squeeze(axis=dims)

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        g = _expand(g, ctx.dims, ctx.keepdim, x.ndim)
        return g * array_module(x).exp(x - out), None, None


def _exclusive_cumprod(x, axis):
    """Products of the elements before each position along ``axis`` (1 at the first)."""
    xp = array_module(x)
    c = xp.cumprod(x, axis=axis)
    head = [slice(None)] * x.ndim
    head[axis] = slice(0, -1)
    ones_shape = list(x.shape)
    ones_shape[axis] = 1
    return xp.concatenate([xp.ones(ones_shape, x.dtype), c[tuple(head)]], axis=axis)


class ProdFn(Function):
    """Π x along one dim (or all); the gradient is the product of the others, computed from
    exclusive prefix and suffix products so that zeros in x are handled exactly."""

    @staticmethod
    def forward(ctx, x, dim, keepdim):
        ctx.save_for_backward(x)
        ctx.dim, ctx.keepdim = dim, keepdim
        return x.prod(axis=dim, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        xp = array_module(x)
        if ctx.dim is None:
            flat = x.reshape(-1)
            others = _exclusive_cumprod(flat, 0) * xp.flip(_exclusive_cumprod(xp.flip(flat), 0))
            return g * others.reshape(x.shape), None, None
        axis = ctx.dim
        others = _exclusive_cumprod(x, axis) * xp.flip(_exclusive_cumprod(xp.flip(x, axis), axis), axis)
        return _expand(g, (axis,), ctx.keepdim, x.ndim) * others, None, None


class NormFn(Function):
    """The vector p-norm over ``dims`` (p = 2 is the Frobenius norm); the gradient at a zero norm
    is 0 (a subgradient), as PyTorch's."""

    @staticmethod
    def forward(ctx, x, p, dims, keepdim):
        xp = array_module(x)
        a = abs(x)
        if p == 2:
            out = xp.sqrt((x * x).sum(axis=dims, keepdims=True))
        elif p == 1:
            out = a.sum(axis=dims, keepdims=True)
        elif p == math.inf:
            out = xp.amax(a, axis=dims, keepdims=True)
        elif p == -math.inf:
            out = xp.amin(a, axis=dims, keepdims=True)
        elif p == 0:
            out = (x != 0).sum(axis=dims, keepdims=True).astype(x.dtype)
        else:
            out = ((a ** p).sum(axis=dims, keepdims=True)) ** (1.0 / p)
        ctx.save_for_backward(x, out)
        ctx.p, ctx.dims, ctx.keepdim = p, dims, keepdim
        if keepdim:
            return out
        return out.reshape(()) if dims is None else out.squeeze(axis=dims)

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        xp = array_module(x)
        p = ctx.p
        g = _expand(g, ctx.dims, ctx.keepdim, x.ndim)
        with np.errstate(divide="ignore", invalid="ignore"):
            if p == 2:
                d = x / (out + (out == 0))  # x is all zero where the norm is: 0, not 0/0
            elif p == 1:
                d = xp.sign(x)
            elif p in (math.inf, -math.inf):
                mask = abs(x) == out
                d = xp.sign(x) * mask / mask.sum(axis=ctx.dims, keepdims=True).astype(x.dtype)
            elif p == 0:
                d = xp.zeros_like(x)
            else:
                d = xp.sign(x) * abs(x) ** (p - 1) / (out + (out == 0)) ** (p - 1)
        return g * d, None, None, None


class CumsumFn(Function):
    @staticmethod
    def forward(ctx, x, dim):
        ctx.dim = dim
        return array_module(x).cumsum(x, axis=dim)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        return xp.flip(xp.cumsum(xp.flip(g, ctx.dim), axis=ctx.dim), ctx.dim), None


class SoftmaxFn(Function):
    """exp(x - max) / Σ exp(x - max) along ``dim``; dx = y·(g - Σ g·y)."""

    @staticmethod
    def forward(ctx, x, dim):
        xp = array_module(x)
        e = xp.exp(x - xp.amax(x, axis=dim, keepdims=True))
        out = e / e.sum(axis=dim, keepdims=True)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return out * (g - (g * out).sum(axis=ctx.dim, keepdims=True)), None


class LogSoftmaxFn(Function):
    """x - max - log Σ exp(x - max) along ``dim``; dx = g - softmax·Σ g."""

    @staticmethod
    def forward(ctx, x, dim):
        xp = array_module(x)
        shifted = x - xp.amax(x, axis=dim, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g - array_module(out).exp(out) * g.sum(axis=ctx.dim, keepdims=True), None
