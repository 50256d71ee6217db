"""The training loop: :func:`fit` and :func:`evaluate`, and the :class:`Trainer` state they share
with callbacks and checkpoints.

One training step: ``output, target = batch_fn(model, batch)`` (default: ``model(x), y`` for a
batch ``(x, y)``); ``loss = loss_fn(output, target)``; ``loss.item()`` (the one host sync per step)
is checked to be finite *before* the update, so a diverged run stops with the step named instead of
writing NaNs into the weights; then ``zero_grad``, ``backward``, optional gradient clipping,
``optimizer.step()``. Epoch values are sample-weighted means over the batches.

Under a data-parallel launcher (``fastdl.distributed`` initialised, the model wrapped in
``nn.parallel.DistributedDataParallel``) the same call trains every rank: each epoch's logs are
sample-weighted means over all ranks (so every rank takes the same early-stopping and scheduler
decisions), each loader's ``sampler.set_epoch(epoch)`` is called, only rank 0 prints, runs the
output callbacks and writes checkpoints, and a checkpoint holds the unwrapped model's state dict,
which a single process loads without MPI.
"""
from __future__ import annotations

import json
import math
import time

from .callbacks import Callback, ProgressBar
from .history import History
from .metrics import make_metric

__all__ = ["fit", "evaluate", "Trainer", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; ``epoch``, ``step`` (1-based within the epoch),
    ``global_step`` and the ``history`` up to the last finished epoch are attached."""

    def __init__(self, message, epoch, step, global_step, history):
        super().__init__(message)
        self.epoch, self.step, self.global_step, self.history = epoch, step, global_step, history


def default_batch_fn(model, batch):
    """``(model(x), y)`` for a batch ``(x, y)``; ``(model(x), x)`` for a batch ``(x,)`` (autoencoders)."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return model(batch[0]), batch[1]
        if len(batch) == 1:
            return model(batch[0]), batch[0]
    raise ValueError(f"fit: the default batch_fn takes batches (x, y) or (x,), got {type(batch).__name__} "
                     f"of {len(batch) if isinstance(batch, (tuple, list)) else 1}; pass batch_fn=")


def _to_device(batch, device):
    if device is None:
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if hasattr(batch, "to") and getattr(batch, "device", device) != device:
        return batch.to(device)
    return batch


def _batch_size(target, output) -> int:
    for x in (target, output):
        while isinstance(x, (tuple, list)) and x:
            x = x[0]
        shape = getattr(x, "shape", None)
        if shape:
            return int(shape[0])
    return 1


def _detached(x):
    if isinstance(x, (tuple, list)):
        return x[0] if x else x
    return x.detach() if hasattr(x, "detach") else x


def _generator_state():
    from ..data.seeding import global_generator

    return global_generator().bit_generator.state


def _set_generator_state(state):
    from ..data.seeding import global_generator

    global_generator().bit_generator.state = state


# ---- data parallel: fit() under the MPI launcher --------------------------------------------------

def _rank_and_world() -> tuple:
    from .. import distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_over_ranks(logs: dict, count: int, world: int) -> dict:
    """Sample-weighted means of ``logs`` over the ranks (this rank saw ``count`` samples)."""
    if world == 1:
        return logs
    import numpy as np

    from .. import distributed as dist

    keys = list(logs)
    sums = np.array([logs[k] * count for k in keys] + [count], dtype=np.float64)
    dist.all_reduce(sums)
    return {k: float(sums[i] / sums[-1]) for i, k in enumerate(keys)}


def _unwrap(model):
    """What a checkpoint holds: the model inside DistributedDataParallel (loadable in one process)."""
    from ..nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _set_epoch(loader, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


class Trainer:
    """The state of one run: what :func:`fit` builds and callbacks see.

    Attributes: ``model``, ``loss_fn``, ``optimizer``, ``train_loader``, ``val_loader``, ``epochs``,
    ``device``, ``callbacks``, ``history``, ``epoch`` (1-based, current), ``start_epoch``,
    ``global_step``, ``stop_training`` (a callback sets it to stop after this epoch), ``logs``.
    """

    def __init__(self, model, loss_fn, optimizer, train_loader, val_loader=None, epochs: int = 1,
                 callbacks=(), device=None, metrics=(), batch_fn=None, clip_grad_norm: float | None = None,
                 verbose: int = 1):
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"fit: epochs must be a positive integer, got {epochs!r}")
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"fit: callbacks must be fastdl.train.Callback objects, got {type(cb).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.epochs = epochs
        self.device = device
        self.metrics = list(metrics)
        for m in self.metrics:
            make_metric(m)
        self.batch_fn = batch_fn or default_batch_fn
        self.clip_grad_norm = clip_grad_norm
        # A progress bar shows the epoch's logs itself: no second line per epoch.
        self.verbose = verbose and not any(isinstance(cb, ProgressBar) for cb in callbacks)
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        self.history = History()
        self.epoch = 0
        self.start_epoch = 1
        self.global_step = 0
        self.stop_training = False
        self.logs: dict = {}
        self.rank, self.world_size = _rank_and_world()

    # ---- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly: model, optimizer, callbacks (their
        schedulers, early-stopping counters), epoch, global step, history and random states."""
        meta = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "history": self.history.state_dict(),
            "generator": _generator_state(),
            "train_loader": self.train_loader.state_dict() if hasattr(self.train_loader, "state_dict") else {},
            "val_loader": self.val_loader.state_dict() if hasattr(self.val_loader, "state_dict") else {},
        }
        return {
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "callbacks": {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.callbacks)},
            # Random states hold 128-bit integers: kept as JSON text, which any saver stores.
            "trainer": json.dumps(meta),
        }

    def load_state_dict(self, state: dict) -> None:
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        saved = state.get("callbacks", {})
        for i, cb in enumerate(self.callbacks):
            key = f"{i}:{type(cb).__name__}"
            if key in saved:
                cb.load_state_dict(saved[key])
        meta = json.loads(state["trainer"])
        self.epoch = int(meta["epoch"])
        self.start_epoch = self.epoch + 1
        self.global_step = int(meta["global_step"])
        self.history.load_state_dict(meta["history"])
        _set_generator_state(meta["generator"])
        if meta["train_loader"]:
            self.train_loader.load_state_dict(meta["train_loader"])
        if meta["val_loader"] and self.val_loader is not None:
            self.val_loader.load_state_dict(meta["val_loader"])

    def save_checkpoint(self, path) -> None:
        """Write :meth:`state_dict` to ``path`` atomically with ``fastdl.save`` (rank 0 only)."""
        from .. import save

        if self.rank != 0:
            return
        save(self.state_dict(), str(path))

    def load_checkpoint(self, path) -> None:
        from .. import load

        self.load_state_dict(load(str(path)))

    # ---- the loop -------------------------------------------------------------------------------

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            if self.rank == 0 or not cb.main_rank_only:
                getattr(cb, hook)(self, *args)

    def _clip(self) -> None:
        from ..nn.utils import clip_grad_norm_

        clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)

    def train_epoch(self) -> dict:
        """One pass over ``train_loader``; returns the epoch's training logs."""
        model, optimizer = self.model, self.optimizer
        model.train()
        metrics = [make_metric(m) for m in self.metrics]
        total, count = 0.0, 0
        _set_epoch(self.train_loader, self.epoch)
        for step, batch in enumerate(self.train_loader, 1):
            batch = _to_device(batch, self.device)
            output, target = self.batch_fn(model, batch)
            loss = self.loss_fn(output, target)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"fit: the training loss became {value} at epoch {self.epoch}, step {step} (global step "
                    f"{self.global_step + 1}); stopped before the optimizer step, so the weights are those "
                    "of the previous step. Lower the learning rate, clip gradients (clip_grad_norm=...), "
                    "or check the inputs for NaN/inf.", self.epoch, step, self.global_step + 1, self.history)
            optimizer.zero_grad()
            loss.backward()
            if self.clip_grad_norm is not None:
                self._clip()
            optimizer.step()
            self.global_step += 1
            n = _batch_size(target, output)
            total += value * n
            count += n
            for m in metrics:
                m.update(_detached(output), target)
            self._call("on_batch_end", step, value)
        if count == 0:
            raise ValueError("fit: train_loader yielded no batch")
        logs = {"loss": total / count}
        logs.update({m.name: m.compute() for m in metrics})
        return _average_over_ranks(logs, count, self.world_size)

    def run(self) -> History:
        if self.device is not None and hasattr(self.model, "to"):
            self.model.to(self.device)
        self._call("on_train_begin")
        for epoch in range(self.start_epoch, self.epochs + 1):
            self.epoch = epoch
            self._call("on_epoch_begin", epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            t0 = time.perf_counter()
            logs = self.train_epoch()
            if self.val_loader is not None:
                val = evaluate(self.model, self.loss_fn, self.val_loader, self.metrics, self.device, self.batch_fn)
                logs.update({"val_" + k: v for k, v in val.items()})
            logs["lr"] = lr
            logs["time"] = time.perf_counter() - t0
            self.logs = logs
            self.history.append(epoch, logs)
            self._call("on_epoch_end", epoch, logs)
            if self.verbose and self.rank == 0:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k not in ("lr", "time"))
                print(f"epoch {epoch}/{self.epochs}  {shown}  ({logs['time']:.1f}s)", flush=True)
            if self.stop_training:
                if self.verbose and self.rank == 0:
                    print(f"early stop after epoch {epoch}; best epoch {self.history.best_epoch}", flush=True)
                break
        self._call("on_train_end")
        return self.history


def fit(model, loss_fn, optimizer, train_loader, val_loader=None, epochs: int = 1, callbacks=(), device=None,
        metrics=(), batch_fn=None, clip_grad_norm: float | None = None, resume_from=None,
        verbose: int = 1) -> History:
    """Train ``model`` for ``epochs`` epochs and return the :class:`~fastdl.train.History`.

    loss_fn(output, target) → scalar Tensor (a mean over the batch); optimizer: a ``fastdl.optim``
    optimizer over the model's parameters; train_loader / val_loader: iterables of batches (e.g.
    :class:`fastdl.data.DataLoader`); metrics: ``"accuracy"``, :class:`~fastdl.train.Metric` objects or
    ``(name, fn)`` pairs, logged for training and (as ``val_<name>``) validation; callbacks:
    :mod:`fastdl.train.callbacks`; device: where batches and the model go (None: leave them);
    batch_fn(model, batch) → (output, target) for batches other than ``(x, y)``;
    clip_grad_norm: clip the gradients' global norm before each step; resume_from: a
    :class:`~fastdl.train.ModelCheckpoint` file to continue from (the same model, optimizer,
    loaders and callbacks must be passed); verbose: print one line per epoch (unless a
    ProgressBar is among the callbacks).

    Raises :class:`NonFiniteLossError` (naming the epoch and step) when the loss becomes NaN or inf.

    >>> import numpy as np, fastdl
    >>> from fastdl import nn, optim
    >>> from fastdl.data import DataLoader, TensorDataset
    >>> _ = fastdl.manual_seed(0)
    >>> x = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    >>> y = (x.sum(1) > 0).astype(np.int64)
    >>> model = nn.Linear(2, 2)
    >>> h = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.5),
    ...         DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, seed=0), epochs=20,
    ...         metrics=["accuracy"], verbose=0)
    >>> h["accuracy"][-1] > 0.9
    True
    """
    trainer = Trainer(model, loss_fn, optimizer, train_loader, val_loader, epochs, callbacks, device, metrics,
                      batch_fn, clip_grad_norm, verbose)
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
    return trainer.run()


def evaluate(model, loss_fn, loader, metrics=(), device=None, batch_fn=None) -> dict:
    """Mean loss and metrics of ``model`` over ``loader``, in eval mode and without gradients
    (the model's previous mode is restored). Returns ``{"loss": ..., "<metric>": ...}``."""
    from .. import no_grad

    batch_fn = batch_fn or default_batch_fn
    metrics = [make_metric(m) for m in metrics]
    was_training = getattr(model, "training", False)
    model.eval()
    total, count = 0.0, 0
    try:
        with no_grad():
            for batch in loader:
                batch = _to_device(batch, device)
                output, target = batch_fn(model, batch)
                n = _batch_size(target, output)
                if loss_fn is not None:
                    total += loss_fn(output, target).item() * n
                count += n
                for m in metrics:
                    m.update(_detached(output), target)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no batch")
    logs = {"loss": total / count} if loss_fn is not None else {}
    logs.update({m.name: m.compute() for m in metrics})
    return _average_over_ranks(logs, count, _rank_and_world()[1])
