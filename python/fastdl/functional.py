"""fastdl.functional: the public ``F`` namespace, with PyTorch's names and arguments."""
from __future__ import annotations

import builtins

from . import kernels as _kernels
from .ops import conv2d as _conv
from .tensor import Tensor

# ---- conv2d family: convolution and pooling -------------------------------------------------------
# (builtins.any/max/min: this module defines the tensor ops of those names.)


def _conv_operands(op: str, input, weight=None, bias=None) -> bool:
    """Checks the operands of a convolution or pooling op; True when input is unbatched (C, H, W)."""
    named = [("input", input)] + ([("weight", weight)] if weight is not None else []) + \
        ([("bias", bias)] if bias is not None else [])
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if input.ndim not in (3, 4):
        raise ValueError(f"{op}: input must be 3-D (C, H, W) or 4-D (N, C, H, W), got {input.shape}")
    if weight is not None and weight.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D, got {weight.shape} for input {input.shape}")
    if input.dtype.kind != "f" or builtins.any(t.dtype != input.dtype for _, t in named):
        raise TypeError(f"{op}: operands must share one floating-point dtype, got "
                        + ", ".join(f"{name} {t.dtype} {t.shape}" for name, t in named))
    if builtins.any(t.device != input.device for _, t in named):
        raise ValueError(f"{op}: operands are on different devices: "
                         + ", ".join(f"{name} {t.device} {t.shape}" for name, t in named))
    return input.ndim == 3


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    input (N, C_in, H, W) or (C_in, H, W), weight (C_out, C_in/groups, KH, KW), bias (C_out,) →
    (N, C_out, OH, OW) with OH = ⌊(H + 2·padding − dilation·(KH − 1) − 1) / stride⌋ + 1.
    ``stride``, ``dilation``: int or pair; ``padding``: int, pair, ``"same"`` (stride 1) or
    ``"valid"``; ``groups`` divides both channel counts (groups = C_in: depthwise).

    >>> import fastdl
    >>> import fastdl.functional as F
    >>> F.conv2d(fastdl.ones(1, 1, 4, 4), fastdl.ones(2, 1, 3, 3), padding=1).shape
    (1, 2, 4, 4)
    """
    unbatched = _conv_operands("conv2d", input, weight, bias)
    return _conv.Conv2dFn.apply(input, weight, bias, stride, padding, dilation, groups, unbatched)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1) -> Tensor:
    """Transposed convolution (the gradient of conv2d with respect to its input), as
    ``torch.nn.functional.conv_transpose2d``.

    input (N, C_in, H, W) or (C_in, H, W), weight (C_in, C_out/groups, KH, KW), bias (C_out,) →
    (N, C_out, OH, OW) with OH = (H − 1)·stride − 2·padding + dilation·(KH − 1) + output_padding + 1;
    ``output_padding`` < stride or < dilation picks among the input sizes a conv2d maps to H.

    >>> import fastdl
    >>> import fastdl.functional as F
    >>> F.conv_transpose2d(fastdl.ones(1, 4, 3, 3), fastdl.ones(4, 2, 4, 4), stride=2, padding=1).shape
    (1, 2, 6, 6)
    """
    op = "conv_transpose2d"
    unbatched = _conv_operands(op, input, weight, bias)
    stride = _kernels._pair(op, "stride", stride, 1)
    padding = _kernels._pair(op, "padding", padding, 0)
    output_padding = _kernels._pair(op, "output_padding", output_padding, 0)
    dilation = _kernels._pair(op, "dilation", dilation, 1)
    C_in, H, W = input.shape[-3:]
    shapes = f"input {input.shape}, weight {weight.shape}"
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r} for {shapes}")
    if weight.shape[0] != C_in or C_in % groups:
        raise ValueError(f"{op}: weight.shape[0] must equal the input channels {C_in} and be divisible by "
                         f"groups {groups}, got {shapes}")
    if bias is not None and bias.shape != (weight.shape[1] * groups,):
        raise ValueError(f"{op}: bias must be ({weight.shape[1] * groups},), got {bias.shape} for {shapes}")
    for d in (0, 1):
        if output_padding[d] >= builtins.max(stride[d], dilation[d]):
            raise ValueError(f"{op}: output_padding {output_padding} must be smaller than stride {stride} or "
                             f"dilation {dilation} for {shapes}")
    out_hw = tuple((n - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.shape[2 + d] - 1)
                   + output_padding[d] + 1 for d, n in enumerate((H, W)))
    if builtins.min(out_hw) < 1:
        raise ValueError(f"{op}: the output would be {out_hw}: padding {padding} is too large for {shapes}")
    return _conv.ConvTranspose2dFn.apply(input, weight, bias, stride, padding, dilation, groups, out_hw, unbatched)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling, as ``torch.nn.functional.max_pool2d``: input (N, C, H, W) or (C, H, W) → the
    window maxima (N, C, OH, OW), and with ``return_indices`` also their flat positions ih·W + iw
    (int64). ``stride`` defaults to ``kernel_size``; padding counts as −∞.

    >>> import fastdl
    >>> import fastdl.functional as F
    >>> F.max_pool2d(fastdl.arange(16.0).reshape(1, 1, 4, 4), 2).tolist()
    [[[[5.0, 7.0], [13.0, 15.0]]]]
    """
    unbatched = _conv_operands("max_pool2d", input)
    out, indices = _conv.MaxPool2dFn.apply(input, kernel_size, stride, padding, dilation, ceil_mode, unbatched)
    return (out, indices) if return_indices else out


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None) -> Tensor:
    """Average pooling, as ``torch.nn.functional.avg_pool2d``: input (N, C, H, W) or (C, H, W) →
    (N, C, OH, OW); the divisor is the window size (with the zero padding when
    ``count_include_pad``), or ``divisor_override``.

    >>> import fastdl
    >>> import fastdl.functional as F
    >>> F.avg_pool2d(fastdl.arange(16.0).reshape(1, 1, 4, 4), 2).tolist()
    [[[[2.5, 4.5], [10.5, 12.5]]]]
    """
    unbatched = _conv_operands("avg_pool2d", input)
    return _conv.AvgPool2dFn.apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                   divisor_override, unbatched)


def adaptive_avg_pool2d(input, output_size) -> Tensor:
    """Adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``: input (N, C, H, W)
    or (C, H, W) → (N, C, OH, OW) for ``output_size`` = OH, (OH, OW) or (OH, None); window i covers
    rows ⌊i·H/OH⌋ … ⌈(i+1)·H/OH⌉ − 1.

    >>> import fastdl
    >>> import fastdl.functional as F
    >>> F.adaptive_avg_pool2d(fastdl.ones(2, 3, 7, 5), 1).shape
    (2, 3, 1, 1)
    """
    unbatched = _conv_operands("adaptive_avg_pool2d", input)
    return _conv.AdaptiveAvgPool2dFn.apply(input, output_size, unbatched)
