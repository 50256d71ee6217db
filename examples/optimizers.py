"""Optimizers on the Himmelblau function, from the same start.

f(x, y) = (x² + y − 11)² + (x + y² − 7)² has four minima (f = 0), e.g. (3, 2), and a maximum near
(−0.27, −0.92). Starting from (−0.5, −3), each optimizer follows the gradient its own way: plain
SGD; momentum (a velocity that accumulates gradients); Nesterov (the gradient taken at the
look-ahead point); Adagrad (per-coordinate steps shrinking with the sum of squared gradients);
Adadelta (a running ratio of update and gradient scales, no learning rate to speak of); RMSprop
(a running mean of squared gradients); Adam (momentum plus RMSprop, bias-corrected). Saves a
contour plot with each trajectory and prints where each ended.

    python examples/optimizers.py          # or: fastdl train optimizers
"""
from __future__ import annotations

import os
import sys

import _common
import numpy as np

import fastdl
from fastdl import optim

NAME = "optimizers"
START = (-0.5, -3.0)
OPTIMIZERS = {
    "SGD": lambda p: optim.SGD(p, lr=0.005),
    "momentum": lambda p: optim.SGD(p, lr=0.002, momentum=0.9),
    "Nesterov": lambda p: optim.SGD(p, lr=0.002, momentum=0.9, nesterov=True),
    "Adagrad": lambda p: optim.Adagrad(p, lr=0.5),
    "Adadelta": lambda p: optim.Adadelta(p, lr=10.0),
    "RMSprop": lambda p: optim.RMSprop(p, lr=0.05),
    "Adam": lambda p: optim.Adam(p, lr=0.1),
}


def himmelblau(x, y):
    return (x ** 2 + y - 11) ** 2 + (x + y ** 2 - 7) ** 2


def trajectory(make_optimizer, steps: int) -> np.ndarray:
    """(steps + 1, 2) positions visited from START."""
    p = fastdl.tensor(np.array(START, np.float64), requires_grad=True)
    opt = make_optimizer([p])
    path = [p.numpy().copy()]
    for _ in range(steps):
        opt.zero_grad()
        himmelblau(p[0], p[1]).backward()
        opt.step()
        path.append(p.numpy().copy())
    return np.array(path)


def run(epochs: int = 300, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    steps = 10 if fast else epochs
    paths = {name: trajectory(make, steps) for name, make in OPTIMIZERS.items()}

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    g = np.linspace(-5, 5, 300)
    gx, gy = np.meshgrid(g, g)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.contour(gx, gy, himmelblau(gx, gy), levels=np.logspace(-0.5, 3, 25), cmap="Greys", linewidths=0.6)
    for name, path in paths.items():
        ax.plot(path[:, 0], path[:, 1], ".-", ms=2, lw=1, label=name)
    ax.plot(*START, "k*", ms=12, label="start")
    ax.set_xlim(-5, 5), ax.set_ylim(-5, 5)
    ax.set_title(f"Himmelblau's function: {steps} steps of each optimizer")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "trajectories.png"), dpi=110)
    plt.close(fig)
    finals = {}
    for name, path in paths.items():
        x, y = path[-1]
        finals[name] = float(himmelblau(x, y))
        print(f"{name:<9} ends at ({x:+.4f}, {y:+.4f})  f = {finals[name]:.3e}")
    return _common.report(NAME, {f"f_{k}": v for k, v in finals.items()}, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=300)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
