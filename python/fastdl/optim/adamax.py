"""Adamax: Adam with the infinity norm (Kingma & Ba, 2015, section 7)."""
from __future__ import annotations

import numpy as np

from ._checks import check_betas, check_nonnegative
from .optimizer import Optimizer

__all__ = ["Adamax"]


class Adamax(Optimizer):
    r"""Adamax (``torch.optim.Adamax``): with g = ∇ + weight_decay·p and t the step,

    m ← lerp(m, g, 1 − β1), u ← max(β2·u, |g| + eps), p ← p − lr/(1 − β1ᵗ) · m/u.
    State per parameter: ``step``, ``exp_avg``, ``exp_inf``.

    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.tensor([1.0]))
    >>> opt = fastdl.optim.Adamax([w], lr=0.1)
    >>> w.grad = fastdl.tensor([2.0])
    >>> opt.step()
    >>> round(float(w.numpy()[0]), 4)
    0.9
    """

    _rule = "adamax"

    def __init__(self, params, lr: float = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 foreach: bool | None = None, *, maximize: bool = False):
        check_nonnegative("lr", lr, "learning rate")
        check_nonnegative("eps", eps, "epsilon value")
        check_nonnegative("weight_decay", weight_decay, "weight_decay value")
        betas = check_betas(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def _slots(self, group):
        return ("exp_avg", "exp_inf", None)

    def _prepare(self, param, state, group):
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros(param.shape, dtype=param.dtype)
            state["exp_inf"] = np.zeros(param.shape, dtype=param.dtype)
        state["step"] += 1
        beta1 = group["betas"][0]
        return (float(group["lr"]) / (1 - beta1 ** state["step"]),)

    def _hyper(self, group):
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    maximize=group["maximize"])
