"""NAdam: Adam with Nesterov momentum (Dozat, 2016)."""
from __future__ import annotations

import numpy as np

from ._checks import check_betas, check_nonnegative
from .optimizer import Optimizer

__all__ = ["NAdam"]


class NAdam(Optimizer):
    r"""NAdam (``torch.optim.NAdam``): Adam with the momentum schedule
    μₜ = β1·(1 − ½·0.96^(t·momentum_decay)) and Πₜ = μ₁⋯μₜ:

    m ← lerp(m, g, 1 − β1), v ← β2·v + (1 − β2)g², d = √(v / (1 − β2ᵗ)) + eps,
    p ← p − lr·(1 − μₜ)/(1 − Πₜ)·g/d − lr·μₜ₊₁/(1 − Πₜ·μₜ₊₁)·m/d.
    ``decoupled_weight_decay=True`` decays p directly (NAdamW).
    State per parameter: ``step``, ``mu_product``, ``exp_avg``, ``exp_avg_sq``.

    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.tensor([1.0]))
    >>> opt = fastdl.optim.NAdam([w])
    >>> w.grad = fastdl.tensor([1.0])
    >>> opt.step()
    >>> float(w.numpy()[0]) < 1.0
    True
    """

    _rule = "nadam"

    def __init__(self, params, lr: float = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False):
        check_nonnegative("lr", lr, "learning rate")
        check_nonnegative("eps", eps, "epsilon value")
        check_nonnegative("weight_decay", weight_decay, "weight_decay value")
        check_nonnegative("momentum_decay", momentum_decay, "momentum_decay value")
        betas = check_betas(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def _slots(self, group):
        return ("exp_avg", "exp_avg_sq", None)

    def _prepare(self, param, state, group):
        if not state:
            state["step"] = 0
            state["mu_product"] = 1.0
            state["exp_avg"] = np.zeros(param.shape, dtype=param.dtype)
            state["exp_avg_sq"] = np.zeros(param.shape, dtype=param.dtype)
        state["step"] += 1
        t, lr = state["step"], float(group["lr"])
        beta1, beta2 = group["betas"]
        decay = group["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * decay))
        # PyTorch keeps mu_product as a float32 scalar tensor (its default scalar dtype); rounding
        # it the same way keeps the trajectories equal, float64 parameters included.
        mu_product = float(np.float32(state["mu_product"]) * np.float32(mu))
        state["mu_product"] = mu_product
        return (1 - beta2**t, -lr * (1.0 - mu) / (1.0 - mu_product), -lr * mu_next / (1.0 - mu_product * mu_next))

    def _hyper(self, group):
        beta1, beta2 = group["betas"]
        return dict(lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=group["weight_decay"], maximize=group["maximize"],
                    decoupled=group["decoupled_weight_decay"])
