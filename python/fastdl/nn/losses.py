"""Loss modules with PyTorch's names, arguments, defaults and reductions ("mean", "sum", "none").

Each calls its functional form in :mod:`fastdl.functional`; the numerically delicate ones use
stable forms: cross-entropy through log-sum-exp, binary cross-entropy with logits through
log-sigmoid (softplus), never exp of a large number or log of 0.

>>> import fastdl
>>> from fastdl import nn
>>> loss = nn.CrossEntropyLoss()(fastdl.tensor([[2.0, 0.0], [0.0, 2.0]]), fastdl.tensor([0, 1]))
>>> round(loss.item(), 4)
0.1269
"""
from __future__ import annotations

from .. import functional as F
from .module import Module

__all__ = [
    "MSELoss", "L1Loss", "SmoothL1Loss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss",
    "KLDivLoss", "CosineEmbeddingLoss",
]


class _Loss(Module):
    _reductions = ("none", "mean", "sum")

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in self._reductions:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {', '.join(self._reductions)}, "
                             f"got {reduction!r}")
        self.reduction = reduction

    def _check_same_shape(self, input, target) -> None:
        if tuple(input.shape) != tuple(target.shape):
            raise self._error(f"got input of shape {tuple(input.shape)} and target of shape {tuple(target.shape)}: "
                              "they must match (reshape one; fastdl does not broadcast a loss's target)")


class _WeightedLoss(_Loss):
    def __init__(self, weight=None, reduction: str = "mean"):
        super().__init__(reduction)
        self.register_buffer("weight", weight)


class MSELoss(_Loss):
    """Mean squared error: (input − target)², input and target of the same shape (*)."""

    def forward(self, input, target):
        self._check_same_shape(input, target)
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    """Mean absolute error: |input − target|."""

    def forward(self, input, target):
        self._check_same_shape(input, target)
        return F.l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(_Loss):
    """0.5·d²/beta where |d| < beta, |d| − 0.5·beta elsewhere (d = input − target)."""

    def __init__(self, reduction: str = "mean", beta: float = 1.0):
        super().__init__(reduction)
        self.beta = beta

    def forward(self, input, target):
        self._check_same_shape(input, target)
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class BCELoss(_WeightedLoss):
    """Binary cross-entropy of probabilities input ∈ [0, 1] against targets of the same shape;
    ``weight`` rescales each element (broadcast). Prefer :class:`BCEWithLogitsLoss` on logits."""

    def forward(self, input, target):
        self._check_same_shape(input, target)
        return F.binary_cross_entropy(input, target, self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_WeightedLoss):
    """Sigmoid + binary cross-entropy in one stable expression (log-sigmoid), on logits.

    pos_weight (C,): weight of positive examples per class (broadcast along the last axis), e.g.
    #negatives/#positives for an imbalanced class.

    >>> import fastdl
    >>> loss = fastdl.nn.BCEWithLogitsLoss()(fastdl.tensor([0.0, 100.0]), fastdl.tensor([1.0, 1.0]))
    >>> round(loss.item(), 4)   # log 2 / 2: no overflow at logit 100
    0.3466
    """

    def __init__(self, weight=None, reduction: str = "mean", pos_weight=None):
        super().__init__(weight, reduction)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, target):
        self._check_same_shape(input, target)
        return F.binary_cross_entropy_with_logits(input, target, self.weight, reduction=self.reduction,
                                                  pos_weight=self.pos_weight)


class CrossEntropyLoss(_WeightedLoss):
    """Cross-entropy of logits (N, C) or (N, C, d1, …) against class indices (N,) / (N, d1, …)
    or class probabilities (the input's shape).

    weight (C,): per-class weights ("mean" is then weighted: Σ loss / Σ weight[target]);
    ignore_index: targets with this value contribute nothing; label_smoothing ε mixes the target
    with the uniform distribution: (1 − ε)·target + ε/C.
    """

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__(weight, reduction)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, input, target):
        try:
            return F.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                                   reduction=self.reduction, label_smoothing=self.label_smoothing)
        except ValueError as exc:
            raise self._error(f"got input of shape {tuple(input.shape)} and target of shape "
                              f"{tuple(getattr(target, 'shape', ()))}: {exc}") from None


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood of log-probabilities (N, C, *) (e.g. from LogSoftmax) at class
    indices (N, *); weight and ignore_index as in :class:`CrossEntropyLoss`."""

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(weight, reduction)
        self.ignore_index = ignore_index

    def forward(self, input, target):
        try:
            return F.nll_loss(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction)
        except ValueError as exc:
            raise self._error(f"got input of shape {tuple(input.shape)} and target of shape "
                              f"{tuple(getattr(target, 'shape', ()))}: {exc}") from None


class KLDivLoss(_Loss):
    """KL divergence with input = log-probabilities: target·(log target − input); use
    reduction="batchmean" for the mathematical KL (PyTorch's "mean" divides by every element)."""

    _reductions = ("none", "mean", "sum", "batchmean")

    def __init__(self, reduction: str = "mean", log_target: bool = False):
        super().__init__(reduction)
        self.log_target = log_target

    def forward(self, input, target):
        self._check_same_shape(input, target)
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class CosineEmbeddingLoss(_Loss):
    """1 − cos(x1, x2) for target 1, max(0, cos(x1, x2) − margin) for target −1;
    input1, input2 (N, D), target (N,)."""

    def __init__(self, margin: float = 0.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.margin = margin

    def forward(self, input1, input2, target):
        return F.cosine_embedding_loss(input1, input2, target, self.margin, reduction=self.reduction)
