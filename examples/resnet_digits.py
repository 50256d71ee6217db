"""A small ResNet (skip connections, batch normalisation) on the 28×28 digits.

He et al. (2016): each residual block computes y = relu(x + F(x)) with F = conv3×3 → BN → relu →
conv3×3 → BN; when a block halves the resolution (stride 2) or changes the width, the skip path
is a 1×1 convolution with BN. The identity path lets gradients reach early layers unchanged, which
is what makes deep networks trainable. Three stages (16, 32, 64 channels at 28, 14, 7 pixels),
global average pooling, a linear classifier. Prints the test accuracy and saves the curves.

    python examples/resnet_digits.py       # or: fastdl train resnet_digits
"""
from __future__ import annotations

import os
import sys

import _common

from fastdl import data, nn, optim, train

NAME = "resnet_digits"


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(c, w, stride=1 if i == 0 else 2))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(x.flatten(1))


def run(epochs: int = 12, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    splits = data.digits(size=28, transform=data.transforms.RandomCrop(28, padding=2))
    train_set = data.Subset(splits.train, range(64)) if fast else splits.train
    train_loader = data.DataLoader(train_set, batch_size=32, shuffle=True, seed=seed)
    val_loader = data.DataLoader(splits.val, batch_size=128)
    model = ResNet()
    epochs = 1 if fast else epochs
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=epochs, steps_per_epoch=len(train_loader))
    history = train.fit(model, nn.CrossEntropyLoss(), optimizer, train_loader, val_loader, epochs=epochs,
                        metrics=["accuracy"], verbose=0 if fast else 1,
                        callbacks=[train.LRSchedulerCallback(scheduler, per_batch=True)])
    history.plot(os.path.join(out, "curves.png"), title="small ResNet on 28×28 digits")
    test = train.evaluate(model, nn.CrossEntropyLoss(), data.DataLoader(splits.test, batch_size=128),
                          metrics=["accuracy"])
    return _common.report(NAME, {"test_accuracy": test["accuracy"], "test_loss": test["loss"]}, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=12)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
