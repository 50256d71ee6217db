"""The ops behind ``fastdl.nn`` layers and losses that have their own fused backward:
batch / layer / group normalisation, embedding lookup, cross-entropy and negative log-likelihood.

Normalisation (Ioffe & Szegedy 2015; Ba et al. 2016; Wu & He 2018): x̂ = (x − μ)·σ⁻¹ over the
normalised axes, y = γx̂ + β; backward in one pass from the saved x̂ and σ⁻¹:
dx = σ⁻¹·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = γ·dy (training statistics), dx = σ⁻¹·ĝ (running
statistics). Cross-entropy uses log-softmax through log-sum-exp (no overflow for any logits) and
its gradient in closed form, dx = A·softmax(x) − a for the per-class weights a of the loss
(class weights, label smoothing, ignored targets) and A = Σa. Every op works on raw arrays through
``xp = array_module(x)``; the public entry points are in :mod:`fastdl.functional`.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import array_module
from ..tensor import Function
from . import gemm as _gemm

_ONE_HOT_LIMIT = 1 << 22
_GEMM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _normalize_rows(x2, eps):
    """x2 (M, n) → x̂ (M, n) (a new array) and σ⁻¹ (M, 1): one pass for the means, one for the
    centred sum of squares (einsum: no temporary), one to scale in place."""
    xp = array_module(x2)
    n = x2.shape[1]
    mean = xp.einsum("ij->i", x2) / n
    xhat = x2 - mean[:, None].astype(x2.dtype)
    var = xp.einsum("ij,ij->i", xhat, xhat) / n
    invstd = (1.0 / xp.sqrt(var + eps)).astype(x2.dtype)[:, None]
    xhat *= invstd
    return xhat, invstd


def _rows_backward(ghat, xhat, invstd):
    """dx = σ⁻¹·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) per row of (M, n) arrays."""
    xp = array_module(ghat)
    n = ghat.shape[1]
    m1 = (xp.einsum("ij->i", ghat) / n)[:, None].astype(ghat.dtype)
    m2 = (xp.einsum("ij,ij->i", ghat, xhat) / n)[:, None].astype(ghat.dtype)
    gx = xhat * m2
    xp.subtract(ghat, gx, out=gx)
    gx -= m1
    gx *= invstd
    return gx


class BatchNormFn(Function):
    """x (N, C, *) normalised per channel C; training statistics over N and the spatial axes
    (running statistics updated in place), or the running statistics in eval mode. Works on the
    (N, C, S) view; per-channel sums are einsum reductions (no temporaries)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
        xp = array_module(x)
        N, C = x.shape[:2]
        x3 = x.reshape(N, C, -1)
        count = N * x3.shape[2]
        if use_batch_stats:
            mean = xp.einsum("ncs->c", x3) / count
            xhat = x3 - mean[:, None].astype(x.dtype)
            var = xp.einsum("ncs,ncs->c", xhat, xhat) / count
            if running_mean is not None:
                running_mean *= 1 - momentum
                running_mean += momentum * mean.astype(running_mean.dtype)
                running_var *= 1 - momentum
                running_var += (momentum * count / max(count - 1, 1)) * var.astype(running_var.dtype)
        else:
            xhat = x3 - running_mean[:, None].astype(x.dtype)
            var = running_var
        invstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
        xhat *= invstd[:, None]
        out = xhat * weight[:, None] if weight is not None else xhat.copy()
        if bias is not None:
            out += bias[:, None]
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.batch_stats, ctx.shape = use_batch_stats, x.shape
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        xhat, invstd, weight = ctx.saved_tensors
        N, C, S = xhat.shape
        g3 = g.reshape(N, C, S)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gw = gb = gx = None
        if need_w or (need_x and ctx.batch_stats):
            gw = xp.einsum("ncs,ncs->c", g3, xhat)
        if need_b or (need_x and ctx.batch_stats):
            gb = xp.einsum("ncs->c", g3)
        if need_x:
            scale = invstd if weight is None else invstd * weight
            if ctx.batch_stats:
                # Σ ĝ·x̂ = γ·dγ and Σ ĝ = γ·dβ per channel: the two sums above serve both.
                count = N * S
                gx = xhat * (gw / count)[:, None].astype(g.dtype)
                xp.subtract(g3, gx, out=gx)
                gx -= (gb / count)[:, None].astype(g.dtype)
                gx *= scale[:, None]
            else:
                gx = g3 * scale[:, None]
            gx = gx.reshape(ctx.shape)
        return gx, gw if need_w else None, gb if need_b else None, None, None, None, None, None


class LayerNormFn(Function):
    """x (*, *normalized_shape) normalised over its last ``k`` axes (rows of the (M, n) view);
    weight and bias have the normalised shape."""

    @staticmethod
    def forward(ctx, x, weight, bias, k, eps):
        n = math.prod(x.shape[x.ndim - k:])
        xhat, invstd = _normalize_rows(x.reshape(-1, n), eps)
        out = xhat * weight.reshape(n) if weight is not None else xhat
        if bias is not None:
            if out is xhat:
                out = xhat + bias.reshape(n)
            else:
                out += bias.reshape(n)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.shape = x.shape
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        xhat, invstd, weight = ctx.saved_tensors
        n = xhat.shape[1]
        g2 = g.reshape(-1, n)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            ghat = g2 * weight.reshape(n) if weight is not None else g2
            gx = _rows_backward(ghat, xhat, invstd).reshape(ctx.shape)
        if ctx.needs_input_grad[1]:
            gw = xp.einsum("ij,ij->j", g2, xhat).reshape(weight.shape)
        if ctx.needs_input_grad[2]:
            gb = xp.einsum("ij->j", g2).reshape(weight.shape if weight is not None else ctx.shape[-1:])
        return gx, gw, gb, None, None


class GroupNormFn(Function):
    """x (N, C, *) normalised over each group of C/G channels and the spatial axes (rows of the
    (N·G, C/G·S) view); per-channel weight and bias (C,)."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        N, C = x.shape[:2]
        xhat, invstd = _normalize_rows(x.reshape(N * groups, -1), eps)
        x3 = xhat.reshape(N, C, -1)
        out = x3 * weight[:, None] if weight is not None else x3
        if bias is not None:
            if out is x3:
                out = x3 + bias[:, None]
            else:
                out += bias[:, None]
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.shape, ctx.groups = x.shape, groups
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        xhat, invstd, weight = ctx.saved_tensors
        N, C = ctx.shape[:2]
        g3 = g.reshape(N, C, -1)
        x3 = xhat.reshape(N, C, -1)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            ghat = g3 * weight[:, None] if weight is not None else g3
            gx = _rows_backward(ghat.reshape(xhat.shape), xhat, invstd).reshape(ctx.shape)
        if ctx.needs_input_grad[1]:
            gw = xp.einsum("ncs,ncs->c", g3, x3)
        if ctx.needs_input_grad[2]:
            gb = xp.einsum("ncs->c", g3)
        return gx, gw, gb, None, None


class EmbeddingFn(Function):
    """weight (num_embeddings, dim)[indices] → indices.shape + (dim,); the backward scatter-adds
    rows (the ``padding_idx`` row gets none; ``scale_grad_by_freq`` divides by each index's count
    in the batch). Small tables (num_embeddings × indices ≤ 4M) scatter with one GEMM against the
    one-hot matrix; large ones sort the indices once, assign each index's first row and add only
    the repeats one by one."""

    @staticmethod
    def forward(ctx, indices, weight, padding_idx, scale_grad_by_freq):
        ctx.save_for_backward(indices)
        ctx.num, ctx.padding_idx, ctx.scale = weight.shape[0], padding_idx, scale_grad_by_freq
        return weight[indices]

    @staticmethod
    def backward(ctx, g):
        (indices,) = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None, None
        xp = array_module(g)
        flat = indices.reshape(-1)
        rows = g.reshape(flat.size, -1)
        if ctx.scale:
            counts = xp.bincount(flat, minlength=ctx.num)
            rows = rows / counts[flat][:, None].astype(g.dtype)
        if ctx.padding_idx is not None:
            keep = flat != ctx.padding_idx
            flat, rows = flat[keep], rows[keep]
        if 0 < ctx.num * flat.size <= _ONE_HOT_LIMIT and g.dtype in _GEMM_DTYPES:
            # Small tables (many repeats): gw = one_hot(indices)ᵀ · rows, one GEMM.
            one_hot = xp.zeros((ctx.num, flat.size), g.dtype)
            one_hot[flat, xp.arange(flat.size)] = 1
            return None, _gemm.matmul(one_hot, xp.ascontiguousarray(rows)), None, None
        gw = xp.zeros((ctx.num, rows.shape[1]), g.dtype)
        if flat.size:
            order = xp.argsort(flat, kind="stable")
            ordered = flat[order]
            first = xp.concatenate((xp.ones(1, bool), ordered[1:] != ordered[:-1]))
            gw[ordered[first]] = rows[order[first]]
            repeats = ~first
            if repeats.any():
                xp.add.at(gw, ordered[repeats], rows[order[repeats]])
        return None, gw, None, None


def _log_softmax(x, axis):
    xp = array_module(x)
    shifted = x - xp.amax(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def _reduce(loss, reduction, denominator):
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / denominator).astype(loss.dtype)


class CrossEntropyFn(Function):
    """Cross-entropy of logits x (M, C) (class axis last) against class indices t (M,) or class
    probabilities t (M, C), with class weights w (C,), ``ignore_index`` and label smoothing ε.

    Indices: loss_i = −α_i·log p_i,tᵢ − β_i·Σ_c u_c·log p_ic with α_i = (1−ε)·w_tᵢ, β_i = ε/C,
    u = w (both 0 for ignored targets); "mean" divides by Σ w_tᵢ over the kept targets.
    Probabilities: loss_i = −Σ_c w_c·((1−ε)·t_ic + ε/C)·log p_ic; "mean" divides by M.
    """

    @staticmethod
    def forward(ctx, x, target, weight, ignore_index, reduction, label_smoothing):
        xp = array_module(x)
        M, C = x.shape
        logp = _log_softmax(x, 1)
        eps = label_smoothing
        if target.dtype.kind == "f":
            a = (1 - eps) * target + eps / C if eps else target
            if weight is not None:
                a = a * weight
            loss = -(a * logp).sum(axis=1)
            ctx.save_for_backward(logp, a, target, weight)
            ctx.probs, ctx.denominator = True, M
        else:
            keep = target != ignore_index
            safe = xp.where(keep, target, 0)
            w_t = weight[safe] if weight is not None else xp.ones(M, x.dtype)
            alpha = (1 - eps) * w_t * keep
            beta = (eps / C) * keep.astype(x.dtype)
            picked = xp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
            loss = -alpha * picked
            if eps:
                u_logp = (logp * weight).sum(axis=1) if weight is not None else logp.sum(axis=1)
                loss = loss - beta * u_logp
            ctx.save_for_backward(logp, alpha, beta, safe, weight)
            ctx.probs = False
            ctx.denominator = (w_t * keep).sum()
        ctx.reduction, ctx.eps = reduction, eps
        return _reduce(loss.astype(x.dtype), reduction, ctx.denominator)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        if ctx.reduction == "none":
            gi = g[:, None]
        elif ctx.reduction == "sum":
            gi = g
        else:
            gi = g / ctx.denominator
        gx = gt = None
        if ctx.probs:
            logp, a, target, weight = ctx.saved_tensors
            if ctx.needs_input_grad[0]:
                gx = (a.sum(axis=1, keepdims=True) * xp.exp(logp) - a) * gi
            if ctx.needs_input_grad[1]:
                gt = -(1 - ctx.eps) * logp * (weight if weight is not None else 1) * gi
            return gx.astype(logp.dtype) if gx is not None else None, gt, None, None, None, None
        logp, alpha, beta, safe, weight = ctx.saved_tensors
        if ctx.needs_input_grad[0]:
            u = weight if weight is not None else xp.ones(logp.shape[1], logp.dtype)
            gx = (alpha + beta * u.sum())[:, None] * xp.exp(logp)
            gx[xp.arange(gx.shape[0]), safe] -= alpha
            if ctx.eps:
                gx -= beta[:, None] * u
            gx = (gx * gi).astype(logp.dtype)
        return gx, None, None, None, None, None


class NllLossFn(Function):
    """Negative log-likelihood of log-probabilities x (M, C) at class indices t (M,):
    loss_i = −w_tᵢ·x_i,tᵢ (0 for ignored targets); "mean" divides by Σ w_tᵢ over kept targets."""

    @staticmethod
    def forward(ctx, x, target, weight, ignore_index, reduction):
        xp = array_module(x)
        M = x.shape[0]
        keep = target != ignore_index
        safe = xp.where(keep, target, 0)
        w_t = (weight[safe] if weight is not None else xp.ones(M, x.dtype)) * keep
        loss = -w_t * xp.take_along_axis(x, safe[:, None], axis=1)[:, 0]
        ctx.save_for_backward(safe, w_t)
        ctx.shape, ctx.reduction, ctx.denominator = x.shape, reduction, w_t.sum()
        return _reduce(loss.astype(x.dtype), reduction, ctx.denominator)

    @staticmethod
    def backward(ctx, g):
        safe, w_t = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        xp = array_module(g)
        scale = g / ctx.denominator if ctx.reduction == "mean" else g
        gx = xp.zeros(ctx.shape, g.dtype)
        gx[xp.arange(ctx.shape[0]), safe] = (-w_t * scale).astype(g.dtype)
        return gx, None, None, None, None


class BinaryCrossEntropyFn(Function):
    """−w·(t·log x + (1 − t)·log(1 − x)) for probabilities x, with each log clamped at −100 as
    PyTorch does; dx = w·(x − t) / max(x·(1 − x), 1e-12)."""

    @staticmethod
    def forward(ctx, x, target, weight, reduction):
        xp = array_module(x)
        with np.errstate(divide="ignore"):
            log_x = xp.maximum(xp.log(x), -100.0)
            log_1mx = xp.maximum(xp.log1p(-x), -100.0)
        loss = -(target * log_x + (1 - target) * log_1mx)
        if weight is not None:
            loss = loss * weight
        ctx.save_for_backward(x, target, weight, log_x, log_1mx)
        ctx.reduction = reduction
        return _reduce(loss.astype(x.dtype), reduction, x.size)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        x, target, weight, log_x, log_1mx = ctx.saved_tensors
        scale = g / x.size if ctx.reduction == "mean" else g
        if weight is not None:
            scale = scale * weight
        gx = gt = None
        if ctx.needs_input_grad[0]:
            gx = (scale * (x - target) / xp.maximum(x * (1 - x), 1e-12)).astype(x.dtype)
        if ctx.needs_input_grad[1]:
            gt = (scale * (log_1mx - log_x)).astype(x.dtype)
        return gx, gt, None, None


class BinaryCrossEntropyWithLogitsFn(Function):
    """(1 − t)·x + l·softplus(−x) with l = 1 + (pos_weight − 1)·t, times weight: BCE of σ(x)
    without forming σ(x) (softplus through logaddexp, stable for any x);
    dx = w·((1 − t) − l·σ(−x)), so σ(x) − t without pos_weight."""

    @staticmethod
    def forward(ctx, x, target, weight, pos_weight, reduction):
        xp = array_module(x)
        softplus_neg = xp.logaddexp(0, -x)
        lw = 1 + (pos_weight - 1) * target if pos_weight is not None else None
        loss = (1 - target) * x + (softplus_neg if lw is None else lw * softplus_neg)
        if weight is not None:
            loss = loss * weight
        ctx.save_for_backward(x, target, weight, pos_weight, softplus_neg)
        ctx.reduction = reduction
        return _reduce(loss.astype(x.dtype), reduction, x.size)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        x, target, weight, pos_weight, softplus_neg = ctx.saved_tensors
        scale = g / x.size if ctx.reduction == "mean" else g
        if weight is not None:
            scale = scale * weight
        gx = gt = None
        if ctx.needs_input_grad[0]:
            sig_neg = xp.exp(-x - softplus_neg)  # σ(−x) = exp(−x − softplus(−x))
            lw = 1 + (pos_weight - 1) * target if pos_weight is not None else 1
            gx = (scale * ((1 - target) - lw * sig_neg)).astype(x.dtype)
        if ctx.needs_input_grad[1]:
            pw = pos_weight - 1 if pos_weight is not None else 0
            gt = (scale * (-x + pw * softplus_neg)).astype(x.dtype)
        return gx, gt, None, None, None
