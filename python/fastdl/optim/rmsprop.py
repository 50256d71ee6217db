"""RMSprop (Hinton, Lecture 6e of "Neural Networks for Machine Learning", 2012; Graves 2013 centred)."""
from __future__ import annotations

import numpy as np

from ._checks import check_nonnegative
from .optimizer import Optimizer

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    r"""RMSprop (``torch.optim.RMSprop``): with g = ∇ + weight_decay·p,

    v ← αv + (1 − α)g²; centred: m̄ ← lerp(m̄, g, 1 − α), a = √(v − m̄²) + eps, else a = √v + eps;
    with momentum b ← μb + g/a, p ← p − lr·b, else p ← p − lr·g/a.
    State per parameter: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0),
    ``grad_avg`` (centered).

    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.tensor([1.0]))
    >>> opt = fastdl.optim.RMSprop([w], lr=0.01)
    >>> w.grad = fastdl.tensor([1.0])
    >>> opt.step()
    >>> round(float(w.numpy()[0]), 4)   # 1 - 0.01/√0.01
    0.9
    """

    _rule = "rmsprop"

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
                 momentum: float = 0, centered: bool = False, foreach: bool | None = None, *,
                 maximize: bool = False):
        check_nonnegative("lr", lr, "learning rate")
        check_nonnegative("eps", eps, "epsilon value")
        check_nonnegative("momentum", momentum, "momentum value")
        check_nonnegative("weight_decay", weight_decay, "weight_decay value")
        check_nonnegative("alpha", alpha, "alpha value")
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def _slots(self, group):
        return ("square_avg", "grad_avg" if group["centered"] else None,
                "momentum_buffer" if group["momentum"] > 0 else None)

    def _prepare(self, param, state, group):
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros(param.shape, dtype=param.dtype)
            if group["momentum"] > 0:
                state["momentum_buffer"] = np.zeros(param.shape, dtype=param.dtype)
            if group["centered"]:
                state["grad_avg"] = np.zeros(param.shape, dtype=param.dtype)
        state["step"] += 1
        return ()

    def _hyper(self, group):
        return dict(lr=float(group["lr"]), alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                    momentum=group["momentum"], centered=group["centered"], maximize=group["maximize"])
