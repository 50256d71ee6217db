"""A multilayer perceptron on the 8×8 handwritten digits.

64 pixels → 256 → 128 → 10 classes, ReLU, dropout between the layers; trained with SGD with
Nesterov momentum and weight decay (L2 regularisation), the learning rate halved on plateaus, early
stopping on the validation loss (the weights of the best epoch are kept). Prints the test accuracy
(target ≥ 97%) and saves the training/validation curves.

    python examples/mlp_digits.py          # or: fastdl train mlp_digits
"""
from __future__ import annotations

import os
import sys

import _common

from fastdl import data, nn, optim, train

NAME = "mlp_digits"


def build_model(dropout: float = 0.2) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(256, 128), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(128, 10),
    )


def run(epochs: int = 60, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    splits = data.digits(size=8, flatten=True)
    train_loader = data.DataLoader(splits.train, batch_size=32, shuffle=True, seed=seed)
    val_loader = data.DataLoader(splits.val, batch_size=256)
    test_loader = data.DataLoader(splits.test, batch_size=256)

    model = build_model()
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scheduler = optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=4)
    epochs = 2 if fast else epochs
    history = train.fit(
        model, nn.CrossEntropyLoss(), optimizer, train_loader, val_loader, epochs=epochs, metrics=["accuracy"],
        callbacks=[train.LRSchedulerCallback(scheduler, monitor="val_loss"),
                   train.EarlyStopping(monitor="val_loss", patience=12, restore_best=True)],
        verbose=0 if fast else 1)
    history.plot(os.path.join(out, "curves.png"), title="MLP on 8×8 digits")
    test = train.evaluate(model, nn.CrossEntropyLoss(), test_loader, metrics=["accuracy"])
    return _common.report(NAME, {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
                                 "epochs_run": len(history), "best_epoch": history.best_epoch}, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=60)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
