"""Adam (Kingma & Ba, 2015), AMSGrad (Reddi et al., 2018) and AdamW (Loshchilov & Hutter, 2019)."""
from __future__ import annotations

import numpy as np

from ._checks import check_betas, check_nonnegative
from .optimizer import Optimizer

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    r"""Adam (``torch.optim.Adam``): with g = ∇ (+ weight_decay·p) and t the step,

    m ← lerp(m, g, 1 − β1), v ← β2·v + (1 − β2)·g² (AMSGrad: v̂ = max(v̂, v)),
    p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps).
    ``decoupled_weight_decay=True`` is AdamW: p ← p·(1 − lr·weight_decay) instead of adding to g.
    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).

    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.tensor([1.0, -1.0]))
    >>> opt = fastdl.optim.Adam([w], lr=0.1)
    >>> w.grad = fastdl.tensor([3.0, -0.5])
    >>> opt.step()
    >>> w.numpy().round(4)   # the first Adam step moves every coordinate by lr
    array([ 0.9, -0.9], dtype=float32)
    """

    _rule = "adam"

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False):
        check_nonnegative("lr", lr, "learning rate")
        check_nonnegative("eps", eps, "epsilon value")
        check_nonnegative("weight_decay", weight_decay, "weight_decay value")
        betas = check_betas(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _slots(self, group):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq" if group["amsgrad"] else None)

    def _prepare(self, param, state, group):
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros(param.shape, dtype=param.dtype)
            state["exp_avg_sq"] = np.zeros(param.shape, dtype=param.dtype)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros(param.shape, dtype=param.dtype)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        t = state["step"]
        return (float(group["lr"]) / (1 - beta1**t), (1 - beta2**t) ** 0.5)

    def _hyper(self, group):
        beta1, beta2 = group["betas"]
        return dict(lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=group["weight_decay"], amsgrad=group["amsgrad"], maximize=group["maximize"],
                    decoupled=group["decoupled_weight_decay"])


class AdamW(Adam):
    r"""AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay,
    p ← p·(1 − lr·weight_decay) before the Adam step; ``weight_decay`` defaults to 0.01.

    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.tensor([1.0]))
    >>> opt = fastdl.optim.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> w.grad = fastdl.tensor([1.0])
    >>> opt.step()
    >>> round(float(w.numpy()[0]), 4)   # 1·(1 - 0.05) - 0.1
    0.85
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=foreach, maximize=maximize, fused=fused, decoupled_weight_decay=True)
