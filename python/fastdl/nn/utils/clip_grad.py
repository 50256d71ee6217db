"""Gradient clipping: rescale gradients in place (outside autograd) before ``optimizer.step()``."""
from __future__ import annotations

import math

import numpy as np

from ...tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_", "get_total_norm"]


def _params(parameters) -> list:
    if isinstance(parameters, Tensor):
        return [parameters]
    return list(parameters)


def _grads(parameters) -> list[np.ndarray]:
    return [p.grad.data for p in _params(parameters) if p.grad is not None]


def _norm(arrays: list[np.ndarray], norm_type: float) -> float:
    if not arrays:
        return 0.0
    if norm_type == math.inf:
        return max(float(np.abs(g).max()) if g.size else 0.0 for g in arrays)
    if norm_type == 2.0:
        # One BLAS dot per gradient, accumulated in float64.
        return math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in arrays))
    return float(sum(float((np.abs(g.astype(np.float64)) ** norm_type).sum()) for g in arrays) ** (1.0 / norm_type))


def get_total_norm(tensors, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    """The ``norm_type`` norm of all ``tensors`` together (as if concatenated), a 0-d Tensor."""
    norm_type = float(norm_type)
    arrays = [t.data if isinstance(t, Tensor) else np.asarray(t) for t in _params(tensors)]
    total = _norm(arrays, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise ValueError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
            "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`"
        )
    dtype = arrays[0].dtype if arrays else np.dtype(np.float32)
    return Tensor(np.array(total, dtype=dtype))


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach=None) -> Tensor:
    """Scale all gradients by min(1, max_norm / (total_norm + 1e-6)), the total norm taken over
    every gradient together; returns the total norm (before clipping) as a 0-d Tensor.

    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.zeros(2))
    >>> w.grad = fastdl.tensor([3.0, 4.0])
    >>> float(clip_grad_norm_([w], max_norm=1.0))
    5.0
    >>> w.grad.numpy().round(4)
    array([0.6, 0.8], dtype=float32)
    """
    grads = _grads(parameters)
    total = get_total_norm(grads, norm_type, error_if_nonfinite)
    coef = float(max_norm) / (float(total.data) + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return total


def clip_grad_value_(parameters, clip_value: float, foreach=None) -> None:
    """Clamp every gradient element to [−clip_value, clip_value] in place.

    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.zeros(3))
    >>> w.grad = fastdl.tensor([-2.0, 0.5, 9.0])
    >>> clip_grad_value_([w], 1.0)
    >>> w.grad.numpy()
    array([-1. ,  0.5,  1. ], dtype=float32)
    """
    clip_value = float(clip_value)
    for g in _grads(parameters):
        np.clip(g, -clip_value, clip_value, out=g)
