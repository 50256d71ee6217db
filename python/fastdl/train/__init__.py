"""Training: ``fit`` and ``evaluate``, the ``History`` of a run with its curves, metrics and callbacks
(``EarlyStopping``, ``ModelCheckpoint``, ``LRSchedulerCallback``, ``ProgressBar``, ``CSVLogger``).

>>> from fastdl.train import fit, EarlyStopping, ModelCheckpoint
>>> EarlyStopping(monitor="val_loss", patience=3).patience
3
"""
from .callbacks import Callback, CSVLogger, EarlyStopping, LRSchedulerCallback, ModelCheckpoint, ProgressBar
from .history import History
from .loop import NonFiniteLossError, Trainer, evaluate, fit
from .metrics import Accuracy, FunctionMetric, Metric

__all__ = [
    "Accuracy", "CSVLogger", "Callback", "EarlyStopping", "FunctionMetric", "History", "LRSchedulerCallback",
    "Metric", "ModelCheckpoint", "NonFiniteLossError", "ProgressBar", "Trainer", "evaluate", "fit",
]
