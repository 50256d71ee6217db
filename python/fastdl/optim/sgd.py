"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay."""
from __future__ import annotations

import numpy as np

from ._checks import check_nonnegative
from .optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent (``torch.optim.SGD``): with g = ∇ + weight_decay·p,

    b ← momentum·b + (1 − dampening)·g (b = g on the first step), then
    p ← p − lr·(g + momentum·b) with ``nesterov``, else p ← p − lr·b; without momentum p ← p − lr·g.
    State per parameter: ``momentum_buffer`` (only when momentum ≠ 0).
    ``foreach`` and ``fused`` are accepted for PyTorch compatibility: fastdl's step is always fused.

    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.tensor([1.0]))
    >>> opt = fastdl.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> for _ in range(2):
    ...     w.grad = fastdl.tensor([1.0])
    ...     opt.step()
    >>> round(float(w.numpy()[0]), 4)   # 1 - 0.1·1 - 0.1·1.9
    0.71
    """

    _rule = "sgd"

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None):
        check_nonnegative("lr", lr, "learning rate")
        check_nonnegative("momentum", momentum, "momentum value")
        check_nonnegative("weight_decay", weight_decay, "weight_decay value")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _slots(self, group):
        return ("momentum_buffer" if group["momentum"] != 0 else None, None, None)

    def _prepare(self, param, state, group):
        if group["momentum"] == 0:
            return ()
        if state.get("momentum_buffer") is None:
            state["momentum_buffer"] = np.empty_like(param, order="C")
            return (1.0,)
        return (0.0,)

    def _hyper(self, group):
        return dict(lr=float(group["lr"]), momentum=group["momentum"], dampening=group["dampening"],
                    weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"])
