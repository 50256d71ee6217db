"""Adagrad (Duchi, Hazan & Singer, 2011)."""
from __future__ import annotations

import numpy as np

from ._checks import check_nonnegative
from .optimizer import Optimizer

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    r"""Adagrad (``torch.optim.Adagrad``): with g = ∇ + weight_decay·p and t the step,

    s ← s + g², p ← p − clr·g / (√s + eps), clr = lr / (1 + (t − 1)·lr_decay).
    State per parameter: ``step``, ``sum`` (starts at ``initial_accumulator_value``).

    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.tensor([1.0]))
    >>> opt = fastdl.optim.Adagrad([w], lr=0.5)
    >>> w.grad = fastdl.tensor([2.0])
    >>> opt.step()
    >>> round(float(w.numpy()[0]), 4)   # 1 - 0.5·2/√4
    0.5
    """

    _rule = "adagrad"

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, fused: bool | None = None):
        check_nonnegative("lr", lr, "learning rate")
        check_nonnegative("lr_decay", lr_decay, "lr_decay value")
        check_nonnegative("weight_decay", weight_decay, "weight_decay value")
        check_nonnegative("initial_accumulator_value", initial_accumulator_value, "initial_accumulator_value value")
        check_nonnegative("eps", eps, "epsilon value")
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _slots(self, group):
        return ("sum", None, None)

    def _prepare(self, param, state, group):
        if not state:
            state["step"] = 0
            state["sum"] = np.full(param.shape, group["initial_accumulator_value"], dtype=param.dtype)
        state["step"] += 1
        return (float(group["lr"]) / (1 + (state["step"] - 1) * group["lr_decay"]),)

    def _hyper(self, group):
        return dict(eps=group["eps"], weight_decay=group["weight_decay"], maximize=group["maximize"])
