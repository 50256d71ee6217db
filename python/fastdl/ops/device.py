"""Moving tensors between devices: ``Tensor.to(device)``, ``.cuda()``, ``.cpu()``.

A move is an op of its own (ToDeviceFn) so that gradients flow back to the source device: the
backward moves the incoming gradient to where the input lived. Data moves only here, never as a
side effect of another op (those raise on mixed devices).
"""
from __future__ import annotations

from ..backend import device_of
from ..tensor import Function, _parse_device, _to_device


class ToDeviceFn(Function):
    @staticmethod
    def forward(ctx, x, device):
        ctx.source = device_of(x)
        return _to_device(x, device, "to")

    @staticmethod
    def backward(ctx, grad):
        return _to_device(grad, ctx.source, "to"), None


def to_device(t, device):
    """``t`` on ``device`` ("cpu", "cuda", "cuda:N"): ``t`` itself when it is already there.

    >>> import fastdl
    >>> x = fastdl.ones(2)
    >>> to_device(x, "cpu") is x
    True
    """
    kind, index = _parse_device(device, "to")
    target = "cpu" if kind == "cpu" else f"cuda:{index}"
    if t.device == target:
        return t
    return ToDeviceFn.apply(t, target)
