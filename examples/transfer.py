"""Transfer learning: LeNet pretrained on digits 0–4, fine-tuned on 5–9 from 50 examples per class.

Features learnt on one task (strokes, curves) serve a related one. We train LeNet-5 on the digits
0–4, freeze its feature layers (``requires_grad_(False)``: no gradients, no updates) and train only
a new output layer on 50 images of each digit 5–9; then we train the same network from scratch on
the same 250 images. Prints both test accuracies on the digits 5–9 and saves both curves.

What to expect (seed 0, full run): the frozen features with a new head reach about 88 %, training
only 425 parameters; the whole network trained from scratch reaches about 99 %, because these clean
digits are easy enough to learn from 250 images and features learnt for 0–4 do not separate 5–9
perfectly. Transfer pays off when the new data is scarcer or harder than this.

    python examples/transfer.py            # or: fastdl train transfer
"""
from __future__ import annotations

import os
import sys

import _common
import lenet_digits
import numpy as np

import fastdl
from fastdl import data, nn, optim, train

NAME = "transfer"


def select(ds, classes, per_class=None, seed=0):
    """The samples of ``ds`` whose label is in ``classes`` (relabelled 0..k-1), at most ``per_class``
    of each."""
    x, y = ds.arrays
    rng = np.random.default_rng(seed)
    keep = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        keep.append(idx if per_class is None else rng.choice(idx, per_class, replace=False))
    keep = np.sort(np.concatenate(keep))
    return data.TensorDataset(x[keep], y[keep] - min(classes), transform=ds.transform)


def fit_model(model, params, train_set, val_set, epochs, lr, seed, fast):
    loader = data.DataLoader(train_set, batch_size=32, shuffle=True, seed=seed)
    return train.fit(model, nn.CrossEntropyLoss(), optim.Adam(params, lr=lr), loader,
                     data.DataLoader(val_set, batch_size=256), epochs=epochs, metrics=["accuracy"],
                     verbose=0 if fast else 1)


def test_accuracy(model, ds) -> float:
    return train.evaluate(model, None, data.DataLoader(ds, batch_size=256), metrics=["accuracy"])["accuracy"]


def run(epochs: int = 25, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    splits = data.digits(size=28, test_fraction=0.25, transform=data.transforms.RandomCrop(28, padding=2))
    low, high = range(0, 5), range(5, 10)
    pre_epochs, few_epochs = (1, 1) if fast else (epochs, 2 * epochs)

    print("pretraining LeNet-5 on digits 0-4")
    base = lenet_digits.build_model(num_classes=5)
    fit_model(base, base.parameters(), select(splits.train, low), select(splits.val, low), pre_epochs, 2e-3, seed, fast)

    few = select(splits.train, high, per_class=50, seed=seed)
    val, test = select(splits.val, high), select(splits.test, high)

    print("fine-tuning a new head on 50 examples per digit 5-9, features frozen")
    for p in base.parameters():
        p.requires_grad_(False)
    base[-1] = nn.Linear(84, 5)  # the new head is the only trainable layer
    tuned = fit_model(base, base[-1].parameters(), few, val, few_epochs, 5e-3, seed, fast)

    print("training the same network from scratch on the same 250 images")
    fastdl.manual_seed(seed)
    scratch = lenet_digits.build_model(num_classes=5)
    from_scratch = fit_model(scratch, scratch.parameters(), few, val, few_epochs, 2e-3, seed, fast)

    tuned.plot(os.path.join(out, "finetune_curves.png"), title="frozen pretrained features + new head")
    from_scratch.plot(os.path.join(out, "scratch_curves.png"), title="from scratch on 250 images")
    return _common.report(NAME, {"finetuned_test_accuracy": test_accuracy(base, test),
                                 "scratch_test_accuracy": test_accuracy(scratch, test)}, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=25)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
