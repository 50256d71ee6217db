"""Adadelta (Zeiler, 2012)."""
from __future__ import annotations

import numpy as np

from ._checks import check_nonnegative
from .optimizer import Optimizer

__all__ = ["Adadelta"]


class Adadelta(Optimizer):
    r"""Adadelta (``torch.optim.Adadelta``): with g = ∇ + weight_decay·p,

    v ← ρv + (1 − ρ)g², Δ = √(u + eps) / √(v + eps)·g, u ← ρu + (1 − ρ)Δ², p ← p − lr·Δ.
    State per parameter: ``step``, ``square_avg`` (v), ``acc_delta`` (u).

    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.tensor([1.0]))
    >>> opt = fastdl.optim.Adadelta([w])
    >>> w.grad = fastdl.tensor([1.0])
    >>> opt.step()
    >>> float(w.numpy()[0]) < 1.0
    True
    """

    _rule = "adadelta"

    def __init__(self, params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0,
                 foreach: bool | None = None, *, maximize: bool = False):
        check_nonnegative("lr", lr, "learning rate")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_nonnegative("eps", eps, "epsilon value")
        check_nonnegative("weight_decay", weight_decay, "weight_decay value")
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def _slots(self, group):
        return ("square_avg", "acc_delta", None)

    def _prepare(self, param, state, group):
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros(param.shape, dtype=param.dtype)
            state["acc_delta"] = np.zeros(param.shape, dtype=param.dtype)
        state["step"] += 1
        return ()

    def _hyper(self, group):
        return dict(lr=float(group["lr"]), rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"],
                    maximize=group["maximize"])
