"""conv2d family on the native kernels (``fastdl.kernels.conv2d_*`` and the pooling kernels).

Conv2dFn: y = conv2d(x, W) + b; backward dx = conv2d_backward_input(dy, W), (dW, db) =
conv2d_backward_weight(dy, x). ConvTranspose2dFn runs the same kernels the other way round: its
forward is conv2d's backward-input, its dx is conv2d's forward and its dW is conv2d's backward-weight
with input and output swapped. MaxPool2dFn returns (y, indices) and routes each gradient to its
maximum; AvgPool2dFn and AdaptiveAvgPool2dFn spread it over the window. Arguments reach these
Functions already checked by :mod:`fastdl.functional`; ``unbatched`` marks a (C, H, W) input, run
as a batch of one.
"""
from __future__ import annotations

from .. import kernels
from ..tensor import Function


def _batched(x, unbatched):
    return x[None] if unbatched else x


def _unbatched(y, unbatched):
    return y[0] if unbatched else y


class Conv2dFn(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, unbatched):
        x = _batched(x, unbatched)
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, dilation, groups)
        ctx.unbatched = unbatched
        return _unbatched(kernels.conv2d_forward(x, weight, bias, *ctx.args), unbatched)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g = _batched(grad_out, ctx.unbatched)
        gx = gw = gb = None
        if need_x:
            gx = _unbatched(kernels.conv2d_backward_input(g, weight, x.shape, *ctx.args), ctx.unbatched)
        if need_w:
            gw, gb = kernels.conv2d_backward_weight(g, x, weight.shape, *ctx.args, bias=need_b)
        elif need_b:
            gb = g.sum(axis=(0, 2, 3))
        return gx, gw, gb, None, None, None, None, None


class ConvTranspose2dFn(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, out_hw, unbatched):
        x = _batched(x, unbatched)
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, dilation, groups)
        ctx.unbatched = unbatched
        out_shape = (x.shape[0], weight.shape[1] * groups) + tuple(out_hw)
        y = kernels.conv2d_backward_input(x, weight, out_shape, *ctx.args)
        if bias is not None:
            y += bias[None, :, None, None]
        return _unbatched(y, unbatched)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g = _batched(grad_out, ctx.unbatched)
        gx = gw = gb = None
        if need_x:
            # conv2d of the gradient; with output_padding >= stride it has an extra row or column,
            # which no input position produced.
            gx = kernels.conv2d_forward(g, weight, None, *ctx.args)[:, :, :x.shape[2], :x.shape[3]]
            gx = _unbatched(gx, ctx.unbatched)
        if need_w:
            gw, _ = kernels.conv2d_backward_weight(x, g, weight.shape, *ctx.args, bias=False)
        if need_b:
            gb = g.sum(axis=(0, 2, 3))
        return gx, gw, gb, None, None, None, None, None, None


class MaxPool2dFn(Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode, unbatched):
        x = _batched(x, unbatched)
        ctx.args = (kernel_size, stride, padding, dilation, ceil_mode)
        ctx.input_shape = x.shape
        ctx.unbatched = unbatched
        y, indices = kernels.max_pool2d_forward(x, *ctx.args)
        ctx.save_for_backward(indices)
        return _unbatched(y, unbatched), _unbatched(indices, unbatched)

    @staticmethod
    def backward(ctx, grad_out, grad_indices=None):
        (indices,) = ctx.saved_tensors
        gx = kernels.max_pool2d_backward(_batched(grad_out, ctx.unbatched), indices, ctx.input_shape, *ctx.args)
        return _unbatched(gx, ctx.unbatched), None, None, None, None, None, None


class AvgPool2dFn(Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, unbatched):
        x = _batched(x, unbatched)
        ctx.args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        ctx.input_shape = x.shape
        ctx.unbatched = unbatched
        return _unbatched(kernels.avg_pool2d_forward(x, *ctx.args), unbatched)

    @staticmethod
    def backward(ctx, grad_out):
        gx = kernels.avg_pool2d_backward(_batched(grad_out, ctx.unbatched), ctx.input_shape, *ctx.args)
        return _unbatched(gx, ctx.unbatched), None, None, None, None, None, None, None


class AdaptiveAvgPool2dFn(Function):
    @staticmethod
    def forward(ctx, x, output_size, unbatched):
        x = _batched(x, unbatched)
        ctx.input_shape = x.shape
        ctx.unbatched = unbatched
        return _unbatched(kernels.adaptive_avg_pool2d_forward(x, output_size), unbatched)

    @staticmethod
    def backward(ctx, grad_out):
        gx = kernels.adaptive_avg_pool2d_backward(_batched(grad_out, ctx.unbatched), ctx.input_shape)
        return _unbatched(gx, ctx.unbatched), None, None
