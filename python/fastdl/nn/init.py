"""Weight initialisers (``torch.nn.init``): fill a Tensor in place, outside autograd, and return it.

Every initialiser draws from fastdl's one seeded generator (``fastdl.manual_seed``), in float64,
then casts to the tensor's dtype. Fans follow PyTorch: for a weight (out, in, *kernel) fan_in =
in·∏kernel and fan_out = out·∏kernel. A NumPy array is filled in place too.

>>> import fastdl
>>> w = fastdl.empty(256, 128)
>>> _ = fastdl.nn.init.kaiming_uniform_(w, nonlinearity="relu")
>>> bound = (2.0 ** 0.5) * (3.0 / 128) ** 0.5
>>> bool(abs(w).max() <= bound)
True
"""
from __future__ import annotations

import math

import numpy as np

from .. import random as _random

__all__ = [
    "calculate_gain",
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "zeros_",
    "ones_",
    "eye_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
]


def _array(tensor, op: str) -> np.ndarray:
    data = tensor if isinstance(tensor, np.ndarray) else getattr(tensor, "data", None)
    if not isinstance(data, np.ndarray):
        raise TypeError(f"nn.init.{op}: expected a Tensor or a NumPy array, got {type(tensor).__name__}")
    return data


def _fill(tensor, values, op: str):
    data = _array(tensor, op)
    data[...] = values
    return tensor


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The recommended gain for an activation (PyTorch's table): linear, conv and sigmoid 1,
    tanh 5/3, relu √2, leaky_relu √(2/(1 + slope²)) (slope ``param``, default 0.01), selu 3/4.

    >>> round(calculate_gain("leaky_relu", 0.2), 4)
    1.3868
    """
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
    if nonlinearity in linear or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor) -> tuple[int, int]:
    shape = _array(tensor, "fan").shape
    if len(shape) < 2:
        raise ValueError(
            f"Fan in and fan out can not be computed for tensor with fewer than 2 dimensions (shape {shape})"
        )
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _fan(tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a: float = 0.0, b: float = 1.0, generator=None):
    """Fill with U(a, b)."""
    rng = generator or _random.generator()
    return _fill(tensor, rng.uniform(a, b, _array(tensor, "uniform_").shape), "uniform_")


def normal_(tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    """Fill with N(mean, std²)."""
    rng = generator or _random.generator()
    return _fill(tensor, rng.normal(mean, std, _array(tensor, "normal_").shape), "normal_")


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0, generator=None):
    """Fill with N(mean, std²) truncated to [a, b] (rejection sampling; a and b absolute)."""
    rng = generator or _random.generator()
    shape = _array(tensor, "trunc_normal_").shape
    out = rng.normal(mean, std, shape)
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = rng.normal(mean, std, int(bad.sum()))
        bad = (out < a) | (out > b)
    return _fill(tensor, out, "trunc_normal_")


def constant_(tensor, val: float):
    """Fill with ``val``."""
    return _fill(tensor, val, "constant_")


def zeros_(tensor):
    """Fill with 0."""
    return _fill(tensor, 0, "zeros_")


def ones_(tensor):
    """Fill with 1."""
    return _fill(tensor, 1, "ones_")


def eye_(tensor):
    """Fill a 2-D tensor with the identity (ones on the diagonal)."""
    data = _array(tensor, "eye_")
    if data.ndim != 2:
        raise ValueError(f"nn.init.eye_: only 2-D tensors are supported, got shape {data.shape}")
    return _fill(tensor, np.eye(*data.shape), "eye_")


def xavier_uniform_(tensor, gain: float = 1.0, generator=None):
    """Glorot & Bengio (2010): U(−a, a), a = gain·√(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain: float = 1.0, generator=None):
    """Glorot & Bengio (2010): N(0, std²), std = gain·√(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)), generator)


def kaiming_uniform_(tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator=None):
    """He et al. (2015): U(−b, b), b = gain·√(3 / fan) with gain = calculate_gain(nonlinearity, a).
    (PyTorch's Linear and Conv layers use a = √5, which gives b = 1/√fan_in.)"""
    fan = _fan(tensor, mode)
    if fan == 0:
        return tensor
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator=None):
    """He et al. (2015): N(0, std²), std = gain / √fan."""
    fan = _fan(tensor, mode)
    if fan == 0:
        return tensor
    return normal_(tensor, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan), generator)


def orthogonal_(tensor, gain: float = 1.0, generator=None):
    """Saxe et al. (2014): a (semi-)orthogonal matrix from the QR decomposition of a Gaussian one,
    with the signs fixed so the distribution is uniform; dimensions past the first are flattened.

    >>> import numpy as np
    >>> w = orthogonal_(np.empty((3, 5)))
    >>> bool(np.allclose(w @ w.T, np.eye(3)))
    True
    """
    data = _array(tensor, "orthogonal_")
    if data.ndim < 2:
        raise ValueError(f"nn.init.orthogonal_: only tensors with 2 or more dimensions are supported, got {data.shape}")
    if data.size == 0:
        return tensor
    rows = data.shape[0]
    cols = data.size // rows
    rng = generator or _random.generator()
    flat = rng.standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, (gain * q).reshape(data.shape), "orthogonal_")
