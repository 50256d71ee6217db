"""LSTM and GRU on the native whole-sequence kernels (``fastdl._C.lstm_forward`` / ``lstm_backward``).

LSTMFn is one layer over a time-major sequence: (x (T, B, I), h0, c0 (B, H), w_ih (4H, I),
w_hh (4H, H), b_ih, b_hh (4H,)) → (y (T, B, H), h_n, c_n (B, H)); h0, c0 and the biases may be
None. When a gradient is needed the forward keeps the activated gates and every cell state (the
kernel writes them anyway), and the backward runs backpropagation through time in one native call
that returns every gradient asked for. LSTMCellFn is one step (x (B, I), h, c) → (h', c'), the
same kernels with T = 1, so that ``nn.LSTMCell`` pays one kernel call per step.

GRUFn and GRUCellFn are the same for the GRU (``fastdl._C.gru_forward`` / ``gru_backward``, three
gates, PyTorch's r, z, n). The Elman RNN is composed from ops in :mod:`fastdl.functional` (a
fallback declared in :mod:`fastdl.backend`, counted each time it runs).
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import _C
from ..tensor import Function


def _grads_wanted(needs) -> tuple:
    """Names of the kernel's gradients for needs_input_grad of (x, h0, c0, w_ih, w_hh, b_ih, b_hh)."""
    names = tuple(n for n, flag in zip(("x", "h0", "c0", "w_ih", "w_hh"), needs) if flag)
    return names + ("b",) if needs[5] or needs[6] else names


def _bias_grads(gb, needs):
    """The one bias gradient for b_ih and b_hh (a copy for the second, so neither aliases the other)."""
    g_ih = gb if needs[5] else None
    g_hh = (gb.copy() if needs[5] else gb) if needs[6] else None
    return g_ih, g_hh


class LSTMFn(Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        training = any(ctx.needs_input_grad)
        y, h_n, c_n, saved = kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=training)
        if training:
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, y, *saved)
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n):
        x, h0, c0, w_ih, w_hh, y, gates, cell = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gx, gh0, gc0, gw_ih, gw_hh, gb = kernels.lstm_backward(
            grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, h0, c0, y, (gates, cell), grads=_grads_wanted(needs))
        return (gx, gh0, gc0, gw_ih, gw_hh) + _bias_grads(gb, needs)


def _contiguous(a):
    return a if a is None or a.flags.c_contiguous else np.ascontiguousarray(a)


class LSTMCellFn(Function):
    """One step; the caller (``functional.lstm_cell``) has checked every shape and dtype, so the
    kernel is called directly: a cell step from Python is dominated by call overhead."""

    @staticmethod
    def forward(ctx, x, h, c, w_ih, w_hh, b_ih, b_hh):
        training = any(ctx.needs_input_grad)
        B, H = x.shape[0], w_hh.shape[1]
        y = np.empty((1, B, H), x.dtype)
        c_n = np.empty((B, H), x.dtype)
        gates = np.empty((1, B, 4 * H), x.dtype)
        cell = np.empty((1, B, H), x.dtype) if training else None
        _C.lstm_forward(_contiguous(x)[None], _contiguous(w_ih), _contiguous(w_hh), _contiguous(b_ih),
                        _contiguous(b_hh), _contiguous(h), _contiguous(c), y, y[0], c_n, gates, cell)
        if training:
            ctx.save_for_backward(x, h, c, w_ih, w_hh, y, gates, cell)
        return y[0], c_n

    @staticmethod
    def backward(ctx, grad_h, grad_c):
        x, h, c, w_ih, w_hh, y, gates, cell = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gx, gh, gc, gw_ih, gw_hh, gb = kernels.lstm_backward(
            None, grad_h, grad_c, x[None], w_ih, w_hh, h, c, y, (gates, cell), grads=_grads_wanted(needs))
        return (None if gx is None else gx[0], gh, gc, gw_ih, gw_hh) + _bias_grads(gb, needs)


# ---- GRU: the same fused kernels with three gates ----------------------------------------------------

def _gru_grads_wanted(needs) -> tuple:
    """Names of the kernel's gradients for needs_input_grad of (x, h0, w_ih, w_hh, b_ih, b_hh)."""
    return tuple(n for n, flag in zip(("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"), needs) if flag)


class GRUFn(Function):
    """(x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,)) → (y (T, B, H), h_n)."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh):
        training = any(ctx.needs_input_grad)
        y, h_n, saved = kernels.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, training=training)
        if training:
            ctx.save_for_backward(x, h0, w_ih, w_hh, y, *saved)
        return y, h_n

    @staticmethod
    def backward(ctx, grad_y, grad_h_n):
        x, h0, w_ih, w_hh, y, gates, hn = ctx.saved_tensors
        return kernels.gru_backward(grad_y, grad_h_n, x, w_ih, w_hh, h0, y, (gates, hn),
                                    grads=_gru_grads_wanted(ctx.needs_input_grad))


class GRUCellFn(Function):
    """One step, (x (B, I), h (B, H), weights) → h'; shapes checked by the caller."""

    @staticmethod
    def forward(ctx, x, h, w_ih, w_hh, b_ih, b_hh):
        training = any(ctx.needs_input_grad)
        B, H = x.shape[0], w_hh.shape[1]
        y = np.empty((1, B, H), x.dtype)
        gates = np.empty((1, B, 3 * H), x.dtype)
        hn = np.empty((1, B, H), x.dtype) if training else None
        _C.gru_forward(_contiguous(x)[None], _contiguous(w_ih), _contiguous(w_hh), _contiguous(b_ih),
                       _contiguous(b_hh), _contiguous(h), y, y[0], gates, hn)
        if training:
            ctx.save_for_backward(x, h, w_ih, w_hh, y, gates, hn)
        return y[0]

    @staticmethod
    def backward(ctx, grad_h):
        x, h, w_ih, w_hh, y, gates, hn = ctx.saved_tensors
        gx, gh, gw_ih, gw_hh, gb_ih, gb_hh = kernels.gru_backward(
            None, grad_h, x[None], w_ih, w_hh, h, y, (gates, hn), grads=_gru_grads_wanted(ctx.needs_input_grad))
        return (None if gx is None else gx[0]), gh, gw_ih, gw_hh, gb_ih, gb_hh
