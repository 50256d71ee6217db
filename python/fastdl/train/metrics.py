"""Metrics accumulated over an epoch: each batch adds a sum and a count, so the epoch value is exact
whatever the batch sizes (the last, shorter batch weighs what it holds).

A metric is a :class:`Metric` or a name: ``"accuracy"``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Metric", "Accuracy", "FunctionMetric", "make_metric"]


def _array(x):
    data = getattr(x, "data", x)
    if hasattr(data, "get"):  # a CuPy array: metrics are computed on the host
        data = data.get()
    return np.asarray(data)


class Metric:
    """Base class: ``update(output, target)`` per batch, ``compute()`` at the end, ``reset()`` before.

    Subclasses define ``batch(output, target) -> (sum, count)`` on NumPy arrays; ``name`` is the
    key in the logs (``val_`` + name for the validation set).
    """

    name = "metric"

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, output, target) -> None:
        s, n = self.batch(_array(output), _array(target))
        self.total += float(s)
        self.count += int(n)

    def compute(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def batch(self, output: np.ndarray, target: np.ndarray):
        raise TypeError(f"{type(self).__name__} must define batch(output, target)")


class Accuracy(Metric):
    """Share of correct class predictions.

    output: scores (N, C) or (N, T, C) (the class is the argmax of the last axis), or (N,) / (N, 1)
    probabilities or logits of the positive class (``threshold`` 0.5, applied to sigmoid(output) when
    ``logits``); target: class indices (N,) or (N, T), or 0/1 labels.

    >>> import numpy as np
    >>> m = Accuracy()
    >>> m.update(np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([0, 0]))
    >>> m.compute()
    0.5
    """

    name = "accuracy"

    def __init__(self, logits: bool = True, ignore_index: int | None = None):
        self.logits = logits
        self.ignore_index = ignore_index
        super().__init__()

    def batch(self, output, target):
        target = target.reshape(-1) if target.ndim == output.ndim and output.shape[-1] == 1 else target
        if output.ndim == target.ndim + 1 and output.shape[-1] > 1:
            pred = output.argmax(-1)
        else:
            out = output.reshape(target.shape)
            pred = (out > 0) if self.logits else (out > 0.5)
        if pred.shape != target.shape:
            raise ValueError(f"Accuracy: predictions {pred.shape} from output {output.shape} do not match "
                             f"target {target.shape}")
        keep = np.ones(target.shape, bool) if self.ignore_index is None else target != self.ignore_index
        return float((pred.astype(np.int64) == target.astype(np.int64))[keep].sum()), int(keep.sum())


class FunctionMetric(Metric):
    """A metric from ``fn(output, target) -> float`` (a batch mean), weighted by the batch size.

    >>> import numpy as np
    >>> m = FunctionMetric("mae", lambda o, t: np.abs(o - t).mean())
    >>> m.update(np.zeros(4), np.ones(4)); m.compute()
    1.0
    """

    def __init__(self, name: str, fn):
        self.name = name
        self.fn = fn
        super().__init__()

    def batch(self, output, target):
        n = output.shape[0] if output.ndim else 1
        return float(self.fn(output, target)) * n, n


def make_metric(metric) -> Metric:
    """A fresh :class:`Metric` from a Metric instance (copied), a name, or a ``(name, fn)`` pair."""
    if isinstance(metric, Metric):
        fresh = object.__new__(type(metric))
        fresh.__dict__.update(metric.__dict__)
        fresh.reset()
        return fresh
    if metric == "accuracy":
        return Accuracy()
    if isinstance(metric, tuple) and len(metric) == 2 and callable(metric[1]):
        return FunctionMetric(*metric)
    raise ValueError(f"unknown metric {metric!r}: use 'accuracy', a Metric, or a (name, fn) pair")
