"""Callbacks: code that runs at points of :func:`fastdl.train.fit` — early stopping, checkpoints,
learning-rate schedules, a progress bar, a CSV log.

A callback overrides any of ``on_train_begin(trainer)``, ``on_epoch_begin(trainer, epoch)``,
``on_batch_end(trainer, step, loss)``, ``on_epoch_end(trainer, epoch, logs)`` and
``on_train_end(trainer)``; ``trainer`` (a :class:`~fastdl.train.Trainer`) holds the model, optimizer,
history, ``epoch``, ``global_step`` and ``stop_training``. Callbacks run in order of their ``order``
(then as listed): schedulers and early stopping act before checkpoints save, so a checkpoint holds
the state the next epoch starts from. A callback with state (``state_dict``/``load_state_dict``)
is saved in checkpoints and restored on resume.
"""
from __future__ import annotations

import csv
import math
import os
import sys

from .history import _sign

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "LRSchedulerCallback", "ProgressBar", "CSVLogger"]


class Callback:
    """Base class; every hook does nothing. Under a data-parallel launcher, callbacks with
    ``main_rank_only = True`` (output: progress bars, logs) run on rank 0 only."""

    order = 0
    main_rank_only = False

    def on_train_begin(self, trainer) -> None:
        pass

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        pass

    def on_batch_end(self, trainer, step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _monitored(logs: dict, monitor: str, who: str) -> float:
    if monitor not in logs:
        hint = " (pass val_loader to fit)" if monitor.startswith("val_") else ""
        raise KeyError(f"{who}: monitor {monitor!r} is not in the epoch logs {sorted(logs)}{hint}")
    return float(logs[monitor])


def _copy_state(state):
    """A deep copy of a state dict's arrays, so later updates in place do not change it."""
    if isinstance(state, dict):
        return {k: _copy_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_copy_state(v) for v in state)
    clone = getattr(state, "clone", None)
    if clone is not None:
        return clone().detach() if hasattr(state, "detach") else clone()
    copy = getattr(state, "copy", None)
    return copy() if copy is not None else state


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs;
    with ``restore_best`` the model gets back the weights of its best epoch at the end.

    mode: ``"min"``, ``"max"`` or ``"auto"`` (min for losses). Sets ``history.stopped_early`` and
    ``history.best_epoch``.
    """

    order = 10

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best: bool = True):
        if patience < 0 or min_delta < 0:
            raise ValueError(f"EarlyStopping: patience and min_delta must be >= 0, got {patience}, {min_delta}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.sign = _sign(monitor, mode)
        self.restore_best = restore_best
        self.best = math.inf
        self.best_epoch = None
        self.wait = 0
        self.best_state = None

    def on_epoch_end(self, trainer, epoch, logs):
        value = self.sign * _monitored(logs, self.monitor, "EarlyStopping")
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = _copy_state(trainer.model.state_dict())
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.stop_training = True
                trainer.history.stopped_early = True
        trainer.history.best_epoch = self.best_epoch

    def on_train_end(self, trainer):
        if self.restore_best and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)

    def state_dict(self):
        state = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
        if self.best_state is not None:
            state["best_state"] = self.best_state
        return state

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.wait = float(state["best"]), state["best_epoch"], int(state["wait"])
        if self.best_epoch is not None:
            self.best_epoch = int(self.best_epoch)
        self.best_state = state.get("best_state")


class ModelCheckpoint(Callback):
    """Save the whole training state (model, optimizer, callbacks, epoch, history, random states) to
    ``path`` at the end of every ``every``-th epoch, or only when ``monitor`` improves with
    ``save_best_only``. Each write is atomic (a temporary file renamed over the old one), so a crash
    leaves the previous checkpoint intact. ``path`` may contain ``{epoch}``.

    ``fit(..., resume_from=path)`` continues the run exactly where the checkpoint was taken.
    """

    order = 100

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = False, mode: str = "auto",
                 every: int = 1):
        if every < 1:
            raise ValueError(f"ModelCheckpoint: every must be >= 1, got {every}")
        self.path = str(path)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.sign = _sign(monitor, mode)
        self.every = int(every)
        self.best = math.inf
        self.saved: list[str] = []

    def on_epoch_end(self, trainer, epoch, logs):
        if self.save_best_only:
            value = self.sign * _monitored(logs, self.monitor, "ModelCheckpoint")
            if not value < self.best:
                return
            self.best = value
        elif epoch % self.every:
            return
        path = self.path.format(epoch=epoch)
        trainer.save_checkpoint(path)
        self.saved.append(path)

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = float(state["best"])


class LRSchedulerCallback(Callback):
    """Step a learning-rate scheduler once per epoch (after validation; a ``ReduceLROnPlateau``
    gets ``monitor``'s value) or once per batch with ``per_batch`` (e.g. ``OneCycleLR``)."""

    order = 5

    def __init__(self, scheduler, monitor: str = "val_loss", per_batch: bool = False):
        self.scheduler = scheduler
        self.monitor = monitor
        self.per_batch = per_batch

    def on_batch_end(self, trainer, step, loss):
        if self.per_batch:
            self.scheduler.step()

    def on_epoch_end(self, trainer, epoch, logs):
        if self.per_batch:
            return
        if type(self.scheduler).__name__ == "ReduceLROnPlateau":
            self.scheduler.step(_monitored(logs, self.monitor, "LRSchedulerCallback"))
        else:
            self.scheduler.step()

    def state_dict(self):
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state["scheduler"])


class ProgressBar(Callback):
    """A tqdm bar per epoch: steps/s, ETA, the running loss and the last epoch's metrics.
    Needs tqdm (``pip install 'fastdl[examples]'``)."""

    order = 50
    main_rank_only = True

    def __init__(self, file=None, leave: bool = True):
        try:
            import tqdm
        except ImportError:
            raise ImportError("ProgressBar needs tqdm: pip install 'fastdl[examples]'") from None
        self._tqdm = tqdm.tqdm
        self.file = file
        self.leave = leave
        self.bar = None
        self._running = 0.0

    def on_epoch_begin(self, trainer, epoch):
        self.bar = self._tqdm(total=len(trainer.train_loader), desc=f"epoch {epoch}/{trainer.epochs}",
                              file=self.file or sys.stderr, leave=self.leave, unit="step", dynamic_ncols=True)
        self._running = 0.0

    def on_batch_end(self, trainer, step, loss):
        self._running = loss if step == 1 else 0.9 * self._running + 0.1 * loss
        self.bar.update(1)
        if step % 10 == 0 or step == self.bar.total:
            self.bar.set_postfix(loss=f"{self._running:.4f}", refresh=False)

    def on_epoch_end(self, trainer, epoch, logs):
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k not in ("time", "lr")}, refresh=False)
        self.bar.close()


class CSVLogger(Callback):
    """Append one row per epoch (epoch, then every log) to ``path``; a resumed run appends to it."""

    order = 60
    main_rank_only = True

    def __init__(self, path):
        self.path = str(path)
        self.keys = None

    def on_train_begin(self, trainer):
        if trainer.start_epoch == 1 and os.path.exists(self.path):
            os.remove(self.path)

    def on_epoch_end(self, trainer, epoch, logs):
        if self.keys is None:
            self.keys = list(logs)
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["epoch"] + self.keys)
            writer.writerow([epoch] + [f"{logs.get(k, float('nan')):.6g}" for k in self.keys])
