"""Shape ops: views (reshape, permute, expand), copies (repeat, cat, stack, pad, flip), splits,
indexing (``x[key]``, gather, scatter_add, index_select, masked_fill) and triangles.

Views return NumPy views where NumPy can (reshape of a contiguous array, permute, expand as a
zero-stride broadcast, flip); the backward of a view is the inverse view of the gradient. Indexing
with integer arrays scatter-adds in backward (``xp.add.at``) so that repeated indices accumulate.
Arguments arrive validated and normalised by :mod:`fastdl.functional`.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..tensor import Function, _sum_to_shape


def index_add(target, key, values) -> None:
    """``target[key] += values`` with repeated indices accumulating (in place)."""
    array_module(target).add.at(target, key, values)


def full_index(index, dim):
    """The advanced-index tuple that picks ``x[i_0, …, index[i], …]`` along ``dim`` (gather's)."""
    xp = array_module(index)
    parts = []
    for d in range(index.ndim):
        if d == dim:
            parts.append(index)
        else:
            shape = [1] * index.ndim
            shape[d] = index.shape[d]
            parts.append(xp.arange(index.shape[d]).reshape(shape))
    return tuple(parts)


class ReshapeFn(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape), None


class PermuteFn(Function):
    @staticmethod
    def forward(ctx, x, dims):
        ctx.inverse = tuple(np.argsort(dims))
        return x.transpose(dims)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(ctx.inverse), None


class ExpandFn(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return array_module(x).broadcast_to(x, shape)

    @staticmethod
    def backward(ctx, g):
        return _sum_to_shape(g, ctx.shape), None


class RepeatFn(Function):
    """``xp.tile``; the gradient sums the copies: g viewed as (r0, s0, r1, s1, …) summed over r."""

    @staticmethod
    def forward(ctx, x, repeats):
        shape = (1,) * (len(repeats) - x.ndim) + x.shape
        ctx.shape, ctx.padded, ctx.repeats = x.shape, shape, repeats
        return array_module(x).tile(x.reshape(shape), repeats)

    @staticmethod
    def backward(ctx, g):
        split = []
        for r, s in zip(ctx.repeats, ctx.padded):
            split += [r, s]
        g = g.reshape(split).sum(axis=tuple(range(0, len(split), 2)))
        return g.reshape(ctx.shape), None


class ContiguousFn(Function):
    @staticmethod
    def forward(ctx, x):
        return array_module(x).ascontiguousarray(x)

    @staticmethod
    def backward(ctx, g):
        return g


class CatFn(Function):
    @staticmethod
    def forward(ctx, dim, *xs):
        ctx.dim = dim
        ctx.bounds = np.cumsum([x.shape[dim] for x in xs])[:-1]
        return array_module(xs[0]).concatenate(xs, axis=dim)

    @staticmethod
    def backward(ctx, g):
        parts = array_module(g).split(g, ctx.bounds, axis=ctx.dim)
        n = ctx.needs_input_grad
        return (None,) + tuple(p if n[i + 1] else None for i, p in enumerate(parts))


class StackFn(Function):
    @staticmethod
    def forward(ctx, dim, *xs):
        ctx.dim = dim
        return array_module(xs[0]).stack(xs, axis=dim)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        n = ctx.needs_input_grad
        return (None,) + tuple(
            xp.take(g, i, axis=ctx.dim) if n[i + 1] else None for i in range(g.shape[ctx.dim])
        )


class SplitFn(Function):
    """Views of consecutive pieces of ``sizes`` along ``dim``; backward concatenates."""

    @staticmethod
    def forward(ctx, x, sizes, dim):
        ctx.dim = dim
        out, start = [], 0
        index = [slice(None)] * x.ndim
        for s in sizes:
            index[dim] = slice(start, start + s)
            out.append(x[tuple(index)])
            start += s
        return tuple(out)

    @staticmethod
    def backward(ctx, *gs):
        return array_module(gs[0]).concatenate(gs, axis=ctx.dim), None, None


class UnbindFn(Function):
    @staticmethod
    def forward(ctx, x, dim):
        ctx.dim = dim
        return tuple(array_module(x).moveaxis(x, dim, 0))

    @staticmethod
    def backward(ctx, *gs):
        return array_module(gs[0]).stack(gs, axis=ctx.dim), None


def _pad_positions(n: int, before: int, after: int, mode: str):
    """For each output position along one dim, the input position it copies (non-constant modes)."""
    i = np.arange(-before, n + after)
    if mode == "reflect":
        period = 2 * (n - 1)
        i = np.abs(i) % period if period else np.zeros_like(i)
        return np.where(i >= n, period - i, i)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    return i % n  # circular


class PadFn(Function):
    """Pads (or, for negative amounts, crops) the trailing dims: ``pads[d] = (before, after)``."""

    @staticmethod
    def forward(ctx, x, pads, mode, value):
        xp = array_module(x)
        ctx.shape, ctx.pads, ctx.mode = x.shape, pads, mode
        first = x.ndim - len(pads)
        if mode == "constant":
            out_shape = list(x.shape)
            src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
            for k, (b, a) in enumerate(pads):
                d = first + k
                n = x.shape[d]
                out_shape[d] = n + b + a
                lo, hi = max(-b, 0), n - max(-a, 0)
                src[d] = slice(lo, max(hi, lo))
                dst[d] = slice(max(b, 0), max(b, 0) + max(hi - lo, 0))
            src, dst = tuple(src), tuple(dst)
            ctx.src, ctx.dst = src, dst
            out = xp.full(out_shape, value, dtype=x.dtype)
            out[dst] = x[src]
            return out
        positions = []
        for k, (b, a) in enumerate(pads):
            d = first + k
            idx = xp.asarray(_pad_positions(x.shape[d], b, a, mode))
            positions.append((d, idx))
            x = xp.take(x, idx, axis=d)
        ctx.positions = positions
        return x

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        if ctx.mode == "constant":
            gx = xp.zeros(ctx.shape, g.dtype)
            gx[ctx.src] = g[ctx.dst]
            return gx, None, None, None
        for d, idx in reversed(ctx.positions):
            shape = list(g.shape)
            shape[d] = ctx.shape[d]
            gx = xp.zeros(shape, g.dtype)
            index_add(xp.moveaxis(gx, d, 0), idx, xp.moveaxis(g, d, 0))
            g = gx
        return g, None, None, None


class FlipFn(Function):
    @staticmethod
    def forward(ctx, x, dims):
        ctx.dims = dims
        return array_module(x).flip(x, axis=dims)

    @staticmethod
    def backward(ctx, g):
        return array_module(g).flip(g, axis=ctx.dims), None


class IndexFn(Function):
    """``x[key]``; backward writes (basic key) or scatter-adds (advanced key) into zeros."""

    @staticmethod
    def forward(ctx, x, key, advanced):
        ctx.shape, ctx.key, ctx.advanced = x.shape, key, advanced
        return x[key]

    @staticmethod
    def backward(ctx, g):
        gx = array_module(g).zeros(ctx.shape, g.dtype)
        if ctx.advanced:
            index_add(gx, ctx.key, g)
        else:
            gx[ctx.key] = g
        return gx, None, None


class GatherFn(Function):
    @staticmethod
    def forward(ctx, x, dim, index):
        key = full_index(index, dim)
        ctx.shape, ctx.key = x.shape, key
        return x[key]

    @staticmethod
    def backward(ctx, g):
        gx = array_module(g).zeros(ctx.shape, g.dtype)
        index_add(gx, ctx.key, g)
        return gx, None, None


class ScatterAddFn(Function):
    """out = x with src[i…] added at position index[i…] along ``dim`` (src cut to index's shape)."""

    @staticmethod
    def forward(ctx, x, dim, index, src):
        key = full_index(index, dim)
        part = tuple(slice(0, s) for s in index.shape)
        ctx.key, ctx.part, ctx.src_shape = key, part, src.shape
        out = x.copy()
        index_add(out, key, src[part])
        return out

    @staticmethod
    def backward(ctx, g):
        n = ctx.needs_input_grad
        gsrc = None
        if n[3]:
            gsrc = array_module(g).zeros(ctx.src_shape, g.dtype)
            gsrc[ctx.part] = g[ctx.key]
        return (g if n[0] else None), None, None, gsrc


class MaskedFillFn(Function):
    @staticmethod
    def forward(ctx, x, mask, value):
        xp = array_module(x)
        ctx.save_for_backward(mask)
        return xp.where(mask, xp.asarray(value, dtype=x.dtype), x)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * ~mask, None, None


class IndexSelectFn(Function):
    @staticmethod
    def forward(ctx, x, dim, index):
        ctx.shape, ctx.dim = x.shape, dim
        ctx.save_for_backward(index)
        return array_module(x).take(x, index, axis=dim)

    @staticmethod
    def backward(ctx, g):
        (index,) = ctx.saved_tensors
        xp = array_module(g)
        gx = xp.zeros(ctx.shape, g.dtype)
        index_add(xp.moveaxis(gx, ctx.dim, 0), index, xp.moveaxis(g, ctx.dim, 0))
        return gx, None, None


class TriangleFn(Function):
    """tril (``upper=False``) or triu of the last two dims, on or above/below ``diagonal``."""

    @staticmethod
    def forward(ctx, x, diagonal, upper):
        xp = array_module(x)
        ctx.diagonal, ctx.upper = diagonal, upper
        return (xp.triu if upper else xp.tril)(x, diagonal)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        return (xp.triu if ctx.upper else xp.tril)(g, ctx.diagonal), None, None
