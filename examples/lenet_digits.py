"""LeNet-5 on the digits upsampled to 28×28.

LeCun et al. (1998): conv 5×5 (6 maps, padding 2) → 2×2 max-pool → conv 5×5 (16 maps) → 2×2
max-pool → 400 → 120 → 84 → 10, with ReLU. Data augmentation: random shifts of up to 2 pixels
(pad and crop). Adam, cosine learning-rate decay, early stopping. Prints the test accuracy
(target ≥ 98%) and saves the curves.

    python examples/lenet_digits.py        # or: fastdl train lenet_digits
"""
from __future__ import annotations

import os
import sys

import _common

from fastdl import data, nn, optim, train

NAME = "lenet_digits"


def build_model(num_classes: int = 10) -> nn.Sequential:
    """LeNet-5: ``features`` (the convolutions and the first two dense layers) then the classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def run(epochs: int = 40, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    splits = data.digits(size=28, transform=data.transforms.RandomCrop(28, padding=2))
    train_loader = data.DataLoader(splits.train, batch_size=32, shuffle=True, seed=seed)
    val_loader = data.DataLoader(splits.val, batch_size=256)
    model = build_model()
    epochs = 1 if fast else epochs
    optimizer = optim.Adam(model.parameters(), lr=2e-3)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    history = train.fit(model, nn.CrossEntropyLoss(), optimizer, train_loader, val_loader, epochs=epochs,
                        metrics=["accuracy"], verbose=0 if fast else 1,
                        callbacks=[train.LRSchedulerCallback(scheduler),
                                   train.EarlyStopping(monitor="val_loss", patience=10)])
    history.plot(os.path.join(out, "curves.png"), title="LeNet-5 on 28×28 digits")
    test = train.evaluate(model, nn.CrossEntropyLoss(), data.DataLoader(splits.test, batch_size=256),
                          metrics=["accuracy"])
    return _common.report(NAME, {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
                                 "epochs_run": len(history)}, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=40)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
