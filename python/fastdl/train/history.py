"""``History``: the per-epoch logs of a run (loss, metrics, their ``val_`` forms, learning rate, time)
and the training/validation curves a course uses to show under- and over-fitting."""
from __future__ import annotations

import math

__all__ = ["History"]


class History:
    """Per-epoch logs: ``history["val_loss"]`` is the list of validation losses, one per epoch.

    ``epochs`` lists the epoch numbers (1-based); ``stopped_early`` / ``best_epoch`` are set by
    :class:`~fastdl.train.EarlyStopping`.

    >>> h = History()
    >>> h.append(1, {"loss": 1.0, "val_loss": 1.2}); h.append(2, {"loss": 0.5, "val_loss": 0.9})
    >>> h["val_loss"], h.best("val_loss")
    ([1.2, 0.9], (2, 0.9))
    """

    def __init__(self):
        self.epochs: list[int] = []
        self.history: dict[str, list[float]] = {}
        self.stopped_early = False
        self.best_epoch: int | None = None

    def append(self, epoch: int, logs: dict) -> None:
        n = len(self.epochs)
        self.epochs.append(int(epoch))
        for key, value in logs.items():
            column = self.history.setdefault(key, [float("nan")] * n)
            column.append(float(value))
        for column in self.history.values():
            if len(column) < n + 1:
                column.append(float("nan"))

    def __getitem__(self, key: str) -> list[float]:
        if key not in self.history:
            raise KeyError(f"History has no {key!r}; it has {sorted(self.history)}")
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epochs)

    def last(self) -> dict:
        """The logs of the last epoch."""
        return {k: v[-1] for k, v in self.history.items()} if self.epochs else {}

    def best(self, monitor: str = "val_loss", mode: str = "auto"):
        """``(epoch, value)`` of the best epoch for ``monitor`` (min for losses, max for the rest)."""
        values = self[monitor]
        sign = _sign(monitor, mode)
        finite = [(sign * v, i) for i, v in enumerate(values) if not math.isnan(v)]
        if not finite:
            raise ValueError(f"History.best: {monitor!r} has no finite value")
        i = min(finite)[1]
        return self.epochs[i], values[i]

    def state_dict(self) -> dict:
        return {"epochs": list(self.epochs), "history": {k: list(v) for k, v in self.history.items()},
                "stopped_early": self.stopped_early, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = [int(e) for e in state["epochs"]]
        self.history = {k: [float(x) for x in v] for k, v in state["history"].items()}
        self.stopped_early = bool(state["stopped_early"])
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])

    def plot(self, path, keys=None, title: str | None = None):
        """Save training and validation curves to ``path`` (PNG, SVG or PDF by its suffix), one panel
        per quantity (``loss``, each metric; the learning rate on a log scale), with the best
        validation epoch marked. Needs matplotlib (``pip install 'fastdl[examples]'``)."""
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install 'fastdl[examples]'") from None
        if not self.epochs:
            raise ValueError("History.plot: nothing to plot, the history is empty")
        if keys is None:
            keys = [k for k in self.history if not k.startswith("val_") and k != "time"]
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
        for ax, key in zip(axes[0], keys):
            has_val = "val_" + key in self.history
            ax.plot(self.epochs, self.history[key], "o-", ms=3, label=f"training {key}" if has_val else key)
            if has_val:
                ax.plot(self.epochs, self.history["val_" + key], "s-", ms=3, label=f"validation {key}")
                best_epoch, _ = self.best("val_" + key)
                ax.axvline(best_epoch, color="gray", ls=":", lw=1, label=f"best epoch {best_epoch}")
            if key == "lr":
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def __repr__(self):
        last = ", ".join(f"{k}={v:.4g}" for k, v in self.last().items())
        return f"History({len(self)} epochs{': ' + last if last else ''})"


def _sign(monitor: str, mode: str) -> float:
    if mode == "auto":
        mode = "min" if "loss" in monitor or "error" in monitor or "perplexity" in monitor else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
    return 1.0 if mode == "min" else -1.0
