"""Layers with PyTorch's names, arguments, defaults, initialisation, parameter names and reprs.

Every layer checks its input and raises a ValueError naming the layer and its configuration:
``Linear(in_features=512, out_features=10, bias=True) got input of shape (32, 768): last
dimension 768 != in_features 512``.

>>> import fastdl
>>> from fastdl import nn
>>> layer = nn.Linear(4, 2)
>>> layer(fastdl.ones(3, 4)).shape
(3, 2)
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..tensor import Tensor, no_grad
from . import init
from .module import Module, Parameter

__all__ = [
    "Linear", "Bilinear", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
    "Flatten", "Unflatten", "Dropout", "Dropout2d",
    "BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "Embedding",
    "ReLU", "LeakyReLU", "ELU", "GELU", "SiLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Softplus",
    "PositionalEncoding", "sinusoidal_positional_encoding",
]


def _empty(*shape, dtype=None) -> Parameter:
    return Parameter(Tensor(np.empty(shape, dtype=np.dtype(dtype or np.float32))))


def _shape(x) -> tuple:
    return tuple(x.shape)


# ---- linear -------------------------------------------------------------------------------------

class Linear(Module):
    """y = x·Wᵀ + b: input (*, in_features) → (*, out_features).

    weight (out_features, in_features) and bias (out_features,) start as PyTorch's:
    U(−1/√in_features, 1/√in_features).

    >>> import fastdl
    >>> fastdl.nn.Linear(3, 5, bias=False).weight.shape
    (5, 3)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = _empty(out_features, in_features, dtype=dtype)
        self.bias = _empty(out_features, dtype=dtype) if bias else None
        self.reset_parameters()
        self._place(device)

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        if input.ndim == 0 or input.shape[-1] != self.in_features:
            last = input.shape[-1] if input.ndim else "(none: a scalar)"
            raise self._error(f"got input of shape {_shape(input)}: last dimension {last} != in_features "
                              f"{self.in_features}")
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Bilinear(Module):
    """y_k = x1ᵀ·W_k·x2 + b_k: input1 (*, in1_features), input2 (*, in2_features) → (*, out_features).

    >>> import fastdl
    >>> fastdl.nn.Bilinear(3, 4, 2)(fastdl.ones(5, 3), fastdl.ones(5, 4)).shape
    (5, 2)
    """

    def __init__(self, in1_features: int, in2_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        self.in1_features, self.in2_features, self.out_features = in1_features, in2_features, out_features
        self.weight = _empty(out_features, in1_features, in2_features, dtype=dtype)
        self.bias = _empty(out_features, dtype=dtype) if bias else None
        self.reset_parameters()
        self._place(device)

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.weight.shape[1])
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input1, input2):
        if input1.ndim == 0 or input1.shape[-1] != self.in1_features:
            raise self._error(f"got input1 of shape {_shape(input1)}: last dimension != in1_features "
                              f"{self.in1_features}")
        if input2.ndim == 0 or input2.shape[-1] != self.in2_features:
            raise self._error(f"got input2 of shape {_shape(input2)}: last dimension != in2_features "
                              f"{self.in2_features}")
        if input1.shape[:-1] != input2.shape[:-1]:
            raise self._error(f"got inputs {_shape(input1)} and {_shape(input2)} with different batch shapes")
        return F.bilinear(input1, input2, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")


# ---- convolution and pooling (on the conv2d family: F.conv2d, F.max_pool2d, …) --------------------

def _pair(value, name: str) -> tuple:
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    return value


class _ConvNd(Module):
    _transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, output_padding, groups,
                 bias, padding_mode, device, dtype):
        super().__init__()
        name = type(self).__name__
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                             f"divisible by groups ({groups})")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"{name}: padding_mode must be one of 'zeros', 'reflect', 'replicate' or 'circular', "
                             f"got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        self.output_padding = _pair(output_padding, "output_padding")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"{name}: padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding")
        self.padding_mode = padding_mode
        if self._transposed:
            shape = (in_channels, out_channels // groups) + self.kernel_size
        else:
            shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = _empty(*shape, dtype=dtype)
        self.bias = _empty(out_channels, dtype=dtype) if bias else None
        self.reset_parameters()
        self._place(device)

    def reset_parameters(self) -> None:
        # PyTorch: kaiming_uniform_(a=√5) = U(±1/√fan_in) for the weight, the same bound for the bias.
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def _check_input(self, input) -> None:
        if input.ndim not in (3, 4) or input.shape[-3] != self.in_channels:
            raise self._error(f"got input of shape {_shape(input)}: expected (N, C_in, H, W) or (C_in, H, W) "
                              f"with C_in = in_channels = {self.in_channels}")

    def _explicit_padding(self, input):
        """Non-zero padding modes pad the input first (PyTorch's order: last dim first)."""
        if self.padding == "valid":
            return input, 0
        if self.padding == "same":
            pads = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
        else:
            pads = [self.padding[1], self.padding[1], self.padding[0], self.padding[0]]
        return F.pad(input, tuple(pads), mode=self.padding_mode), 0

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            text += f", output_padding={self.output_padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text


class Conv2d(_ConvNd):
    """2-D convolution (cross-correlation): input (N, C_in, H, W) → (N, C_out, OH, OW) with
    OH = ⌊(H + 2·padding − dilation·(KH − 1) − 1)/stride⌋ + 1 (likewise OW); weight
    (C_out, C_in/groups, KH, KW), bias (C_out,), initialised as PyTorch's.

    >>> import fastdl
    >>> conv = fastdl.nn.Conv2d(3, 8, kernel_size=3, padding=1)
    >>> conv(fastdl.randn(2, 3, 16, 16)).shape
    (2, 8, 16, 16)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 0, groups, bias,
                         padding_mode, device, dtype)

    def forward(self, input):
        self._check_input(input)
        padding = self.padding
        if self.padding_mode != "zeros":
            input, padding = self._explicit_padding(input)
        return F.conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class ConvTranspose2d(_ConvNd):
    """Transposed 2-D convolution (the gradient of Conv2d with respect to its input):
    input (N, C_in, H, W) → (N, C_out, OH, OW), OH = (H − 1)·stride − 2·padding +
    dilation·(KH − 1) + output_padding + 1; weight (C_in, C_out/groups, KH, KW).

    >>> import fastdl
    >>> up = fastdl.nn.ConvTranspose2d(8, 3, kernel_size=4, stride=2, padding=1)
    >>> up(fastdl.randn(2, 8, 7, 7)).shape
    (2, 3, 14, 14)
    """

    _transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", device=None,
                 dtype=None):
        if padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d: only padding_mode='zeros' is supported, got {padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f"ConvTranspose2d: padding must be an int or a pair, got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, output_padding, groups,
                         bias, padding_mode, device, dtype)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(f"ConvTranspose2d: output_padding {self.output_padding} must be smaller than "
                                 f"either stride {self.stride} or dilation {self.dilation}")

    def forward(self, input, output_size=None):
        self._check_input(input)
        output_padding = self.output_padding
        if output_size is not None:
            output_padding = self._output_padding_for(input, tuple(output_size)[-2:])
        return F.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                  self.groups, self.dilation)

    def _output_padding_for(self, input, size) -> tuple:
        result = []
        for i, want in enumerate(size):
            smallest = ((input.shape[-2 + i] - 1) * self.stride[i] - 2 * self.padding[i]
                        + self.dilation[i] * (self.kernel_size[i] - 1) + 1)
            extra = want - smallest
            if not 0 <= extra < max(self.stride[i], self.dilation[i]):
                raise self._error(f"got output_size {tuple(size)} for input of shape {_shape(input)}: "
                                  f"reachable sizes for dim {i} are {smallest}…"
                                  f"{smallest + max(self.stride[i], self.dilation[i]) - 1}")
            result.append(extra)
        return tuple(result)


class _PoolNd(Module):
    def _check_input(self, input) -> None:
        if input.ndim not in (3, 4):
            raise self._error(f"got input of shape {_shape(input)}: expected (N, C, H, W) or (C, H, W)")


class MaxPool2d(_PoolNd):
    """Maximum over kernel_size windows: input (N, C, H, W) → (N, C, OH, OW); ``stride``
    defaults to ``kernel_size``; ``return_indices`` also returns the flat argmax per window.

    >>> import fastdl
    >>> fastdl.nn.MaxPool2d(2)(fastdl.randn(1, 3, 8, 8)).shape
    (1, 3, 4, 4)
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, input):
        self._check_input(input)
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(_PoolNd):
    """Mean over kernel_size windows: input (N, C, H, W) → (N, C, OH, OW); padded zeros count
    unless ``count_include_pad=False``; ``divisor_override`` replaces the window size.

    >>> import fastdl
    >>> fastdl.nn.AvgPool2d(2)(fastdl.ones(1, 1, 4, 4)).tolist()
    [[[[1.0, 1.0], [1.0, 1.0]]]]
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, input):
        self._check_input(input)
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(_PoolNd):
    """Mean over the windows that split H × W into ``output_size`` (an int, a pair, or None to
    keep that dim): input (N, C, H, W) → (N, C, OH, OW). ``AdaptiveAvgPool2d(1)`` is global
    average pooling.

    >>> import fastdl
    >>> fastdl.nn.AdaptiveAvgPool2d((1, 1))(fastdl.randn(2, 5, 7, 7)).shape
    (2, 5, 1, 1)
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        self._check_input(input)
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


# ---- shape ----------------------------------------------------------------------------------------

class Flatten(Module):
    """Flattens dims start_dim…end_dim: (N, C, H, W) → (N, C·H·W) by default.

    >>> import fastdl
    >>> fastdl.nn.Flatten()(fastdl.ones(2, 3, 4, 5)).shape
    (2, 60)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input):
        for d in (self.start_dim, self.end_dim):
            if not -max(input.ndim, 1) <= d < max(input.ndim, 1):
                raise self._error(f"got input of shape {_shape(input)}: dimension {d} is out of range")
        return input.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Splits dimension ``dim`` into ``unflattened_size``: (N, 60) → (N, 3, 4, 5).

    >>> import fastdl
    >>> fastdl.nn.Unflatten(1, (3, 4, 5))(fastdl.ones(2, 60)).shape
    (2, 3, 4, 5)
    """

    def __init__(self, dim: int, unflattened_size):
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, input):
        if not -input.ndim <= self.dim < input.ndim:
            raise self._error(f"got input of shape {_shape(input)}: dimension {self.dim} is out of range")
        known = math.prod(s for s in self.unflattened_size if s != -1)
        size = input.shape[self.dim]
        if (-1 not in self.unflattened_size and known != size) or (known and size % known):
            raise self._error(f"got input of shape {_shape(input)}: dimension {self.dim} has {size} elements, "
                              f"which do not split into {self.unflattened_size}")
        return input.unflatten(self.dim, self.unflattened_size)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


# ---- dropout --------------------------------------------------------------------------------------

class Dropout(Module):
    """In training mode, zero each element with probability p and scale the rest by 1/(1 − p);
    the identity in eval mode. Masks come from fastdl's seeded generator.

    >>> import fastdl
    >>> drop = fastdl.nn.Dropout(0.5).eval()
    >>> bool((drop(fastdl.ones(4)) == 1).all())
    True
    """

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = p, inplace

    def forward(self, input):
        return F.dropout(input, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout2d(Dropout):
    """Zero whole channels of input (N, C, H, W) or (C, H, W) with probability p (training only)."""

    def forward(self, input):
        if input.ndim not in (3, 4):
            raise self._error(f"got input of shape {_shape(input)}: expected (N, C, H, W) or (C, H, W)")
        return F.dropout2d(input, self.p, self.training)


# ---- normalisation --------------------------------------------------------------------------------

class _BatchNorm(Module):
    _ranks: tuple = ()
    _layout = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        dtype = np.dtype(dtype or np.float32)
        if affine:
            self.weight = Parameter(Tensor(np.ones(num_features, dtype)))
            if bias:
                self.bias = Parameter(Tensor(np.zeros(num_features, dtype)))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, dtype)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, dtype)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._place(device)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input):
        if input.ndim not in self._ranks or input.shape[1] != self.num_features:
            raise self._error(f"got input of shape {_shape(input)}: expected {self._layout} with "
                              f"C = num_features = {self.num_features}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.data)
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats and input.numel() // self.num_features <= 1:
            raise self._error(f"got input of shape {_shape(input)}: expected more than 1 value per channel "
                              "when training")
        return F.batch_norm(
            input,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight, self.bias, use_batch_stats, factor, self.eps,
        )

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of input (N, C) or (N, C, L) per feature C (Ioffe & Szegedy, 2015).

    Training mode normalises with the batch's statistics and updates ``running_mean`` and
    ``running_var`` (momentum 0.1; None for a cumulative average); eval mode uses them.

    >>> import fastdl
    >>> bn = fastdl.nn.BatchNorm1d(3)
    >>> y = bn(fastdl.randn(8, 3))
    >>> [name for name, _ in bn.state_dict().items()]
    ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    """

    _ranks = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of input (N, C, H, W) per channel C (see :class:`BatchNorm1d`).

    >>> import fastdl
    >>> fastdl.nn.BatchNorm2d(4)(fastdl.randn(2, 4, 3, 3)).shape
    (2, 4, 3, 3)
    """

    _ranks = (4,)
    _layout = "(N, C, H, W)"


class LayerNorm(Module):
    """Normalise over the trailing ``normalized_shape`` dims: input (*, *normalized_shape).

    >>> import fastdl
    >>> fastdl.nn.LayerNorm(8)(fastdl.randn(2, 5, 8)).shape
    (2, 5, 8)
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        dtype = np.dtype(dtype or np.float32)
        if elementwise_affine:
            self.weight = Parameter(Tensor(np.ones(shape, dtype)))
            self.bias = Parameter(Tensor(np.zeros(shape, dtype))) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self._place(device)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, input):
        k = len(self.normalized_shape)
        if input.ndim < k or _shape(input)[input.ndim - k:] != self.normalized_shape:
            raise self._error(f"got input of shape {_shape(input)}: it must end with normalized_shape "
                              f"{self.normalized_shape}")
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class GroupNorm(Module):
    """Normalise input (N, C, *) over groups of C/num_groups channels (Wu & He, 2018).

    >>> import fastdl
    >>> fastdl.nn.GroupNorm(2, 4)(fastdl.randn(3, 4, 5)).shape
    (3, 4, 5)
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None,
                 dtype=None, *, bias: bool = True):
        super().__init__()
        if num_groups <= 0 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        dtype = np.dtype(dtype or np.float32)
        if affine:
            self.weight = Parameter(Tensor(np.ones(num_channels, dtype)))
            if bias:
                self.bias = Parameter(Tensor(np.zeros(num_channels, dtype)))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self._place(device)

    def reset_parameters(self) -> None:
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input):
        if input.ndim < 2 or input.shape[1] != self.num_channels:
            raise self._error(f"got input of shape {_shape(input)}: expected (N, C, *) with C = num_channels = "
                              f"{self.num_channels}")
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")


# ---- embedding ------------------------------------------------------------------------------------

class Embedding(Module):
    """A lookup table: integer indices (any shape) → indices.shape + (embedding_dim,).

    weight (num_embeddings, embedding_dim) starts N(0, 1); the ``padding_idx`` row starts at zero
    and gets no gradient.

    >>> import fastdl
    >>> emb = fastdl.nn.Embedding(10, 3, padding_idx=0)
    >>> emb(fastdl.tensor([[0, 2], [4, 9]])).shape
    (2, 2, 3)
    >>> emb.weight.numpy()[0].tolist()
    [0.0, 0.0, 0.0]
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight=None, _freeze: bool = False, device=None, dtype=None):
        super().__init__()
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} must be within num_embeddings "
                                 f"({num_embeddings})")
            if padding_idx < 0:
                padding_idx += num_embeddings
        if sparse:
            raise ValueError("Embedding: sparse gradients are not supported; use sparse=False")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        if _weight is None:
            self.weight = _empty(num_embeddings, embedding_dim, dtype=dtype)
            self.reset_parameters()
        else:
            if tuple(_weight.shape) != (num_embeddings, embedding_dim):
                raise ValueError(f"Embedding: _weight has shape {tuple(_weight.shape)}, expected "
                                 f"({num_embeddings}, {embedding_dim})")
            self.weight = Parameter(_weight, requires_grad=not _freeze)
        self._place(device)

    def reset_parameters(self) -> None:
        init.normal_(self.weight)
        if self.padding_idx is not None:
            with no_grad():
                self.weight.data[self.padding_idx] = 0

    @classmethod
    def from_pretrained(cls, embeddings, freeze: bool = True, padding_idx: int | None = None,
                        max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                        sparse: bool = False) -> "Embedding":
        """An Embedding holding ``embeddings`` (num_embeddings, dim); frozen unless ``freeze=False``."""
        if embeddings.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: embeddings must be 2-D, got {tuple(embeddings.shape)}")
        rows, cols = embeddings.shape
        return cls(rows, cols, _weight=embeddings, _freeze=freeze, padding_idx=padding_idx, max_norm=max_norm,
                   norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, sparse=sparse)

    def forward(self, input):
        data = input.data if isinstance(input, Tensor) else np.asarray(input)
        if data.dtype.kind not in "iu":
            raise self._error(f"got input of dtype {data.dtype} and shape {data.shape}: indices must be integers")
        if data.size and (int(data.min()) < 0 or int(data.max()) >= self.num_embeddings):
            bad = int(data.max()) if int(data.max()) >= self.num_embeddings else int(data.min())
            raise self._error(f"got index {bad} out of range [0, {self.num_embeddings}) (input shape {data.shape})")
        return F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            text += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            text += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq:
            text += ", scale_grad_by_freq=True"
        return text


# ---- activations ----------------------------------------------------------------------------------

class _Activation(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class ReLU(_Activation):
    """max(x, 0), elementwise (``inplace`` is accepted; the result is a new tensor).

    >>> import fastdl
    >>> fastdl.nn.ReLU()(fastdl.tensor([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """

    def forward(self, input):
        return F.relu(input)


class LeakyReLU(Module):
    """x where x ≥ 0, negative_slope·x elsewhere."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope, self.inplace = negative_slope, inplace

    def forward(self, input):
        return F.leaky_relu(input, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class ELU(Module):
    """x where x > 0, alpha·(eˣ − 1) elsewhere."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__()
        self.alpha, self.inplace = alpha, inplace

    def forward(self, input):
        return F.elu(input, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}" + (", inplace=True" if self.inplace else "")


class GELU(Module):
    """x·Φ(x) (``approximate="tanh"``: the tanh approximation)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, input):
        return F.gelu(input, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(_Activation):
    """x·σ(x) (swish)."""

    def forward(self, input):
        return F.silu(input)


class Sigmoid(Module):
    """1 / (1 + e⁻ˣ)."""

    def forward(self, input):
        return F.sigmoid(input)


class Tanh(Module):
    """tanh(x)."""

    def forward(self, input):
        return F.tanh(input)


def _implicit_dim(ndim: int) -> int:
    # PyTorch's legacy choice when dim is None.
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(Module):
    """exp(x) / Σ exp(x) along ``dim`` (stable: the max is subtracted first).

    >>> import fastdl
    >>> fastdl.nn.Softmax(dim=-1)(fastdl.zeros(1, 4)).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return F.softmax(input, self.dim if self.dim is not None else _implicit_dim(input.ndim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """log(softmax(x)) along ``dim``, computed as x − logsumexp(x) (no overflow, no log 0)."""

    def forward(self, input):
        return F.log_softmax(input, self.dim if self.dim is not None else _implicit_dim(input.ndim))


class Softplus(Module):
    """log(1 + e^(βx))/β, linear above ``threshold`` (βx > threshold)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, input):
        return F.softplus(input, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


# ---- positional encoding --------------------------------------------------------------------------

def sinusoidal_positional_encoding(max_len: int, d_model: int, dtype=np.float32) -> Tensor:
    """The (max_len, d_model) table of Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/d_model)),
    PE[p, 2i+1] = cos(p / 10000^(2i/d_model)).

    >>> pe = sinusoidal_positional_encoding(50, 6)
    >>> pe.shape, pe.numpy()[0].tolist()
    ((50, 6), [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    """
    if max_len <= 0 or d_model <= 0:
        raise ValueError(f"sinusoidal_positional_encoding: max_len and d_model must be positive, got {max_len}, "
                         f"{d_model}")
    position = np.arange(max_len, dtype=np.float64)[:, None]
    div_term = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * (-math.log(10000.0) / d_model))
    pe = np.zeros((max_len, d_model), dtype=np.float64)
    pe[:, 0::2] = np.sin(position * div_term)
    pe[:, 1::2] = np.cos(position * div_term[: d_model // 2])
    return Tensor(pe.astype(dtype))


class PositionalEncoding(Module):
    """Adds the sinusoidal positional encoding to x (S, N, E), or (N, S, E) with ``batch_first``,
    then dropout (the PyTorch tutorial's module). The table is a non-persistent buffer ``pe``.

    >>> import fastdl
    >>> pos = fastdl.nn.PositionalEncoding(8, dropout=0.0, batch_first=True)
    >>> pos(fastdl.zeros(2, 5, 8)).shape
    (2, 5, 8)
    """

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000, batch_first: bool = False):
        super().__init__()
        self.d_model, self.max_len, self.batch_first = d_model, max_len, batch_first
        self.dropout = Dropout(dropout)
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model), persistent=False)

    def forward(self, x):
        seq_dim = 1 if self.batch_first else 0
        if x.ndim != 3 or x.shape[-1] != self.d_model or x.shape[seq_dim] > self.max_len:
            raise self._error(f"got input of shape {tuple(x.shape)}: expected "
                              f"{'(N, S, E)' if self.batch_first else '(S, N, E)'} with E = {self.d_model} "
                              f"and S ≤ max_len = {self.max_len}")
        S = x.shape[seq_dim]
        pe = Tensor(self.pe.data[:S].astype(x.dtype, copy=False))
        pe = pe.unsqueeze(0) if self.batch_first else pe.unsqueeze(1)
        return self.dropout(x + pe)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}, batch_first={self.batch_first}"
