"""The perceptron learning rule on a linearly separable problem, and an MLP that solves XOR.

Part 1, Rosenblatt's perceptron: ŷ = step(w·x + b); for every misclassified point,
w ← w + η (y − ŷ) x and b ← b + η (y − ŷ). On linearly separable data it stops making mistakes
after finitely many updates (Novikoff's theorem); on XOR it never does, because no line separates
XOR's classes. Part 2: a two-layer network (2 → 4 tanh → 1) trained by backpropagation solves XOR.
Saves the decision boundaries and the MLP's loss curve.

    python examples/perceptron.py          # or: fastdl train perceptron
"""
from __future__ import annotations

import os
import sys

import _common
import numpy as np

import fastdl
from fastdl import data, nn, optim, train

NAME = "perceptron"
XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
XOR_Y = np.array([0, 1, 1, 0], np.float32)


def separable_points(n: int, seed: int):
    """Two clouds on either side of the line x0 + 2·x1 = 0.5, with a margin."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (4 * n, 2)).astype(np.float32)
    score = x[:, 0] + 2 * x[:, 1] - 0.5
    x = x[np.abs(score) > 0.2][:n]
    return x, (x[:, 0] + 2 * x[:, 1] - 0.5 > 0).astype(np.float32)


def perceptron(x: np.ndarray, y: np.ndarray, lr: float = 0.1, max_epochs: int = 100):
    """The perceptron rule on fastdl tensors; returns (w, b, epochs until no mistake or None)."""
    xs, ys = fastdl.tensor(x), fastdl.tensor(y)
    w, b = fastdl.zeros(2), fastdl.zeros(())
    for epoch in range(1, max_epochs + 1):
        mistakes = 0
        for i in range(len(x)):
            y_hat = float((xs[i] @ w + b).item() > 0)
            if y_hat != y[i]:
                w = w + lr * (ys[i] - y_hat) * xs[i]
                b = b + lr * (ys[i] - y_hat)
                mistakes += 1
        if mistakes == 0:
            return w.numpy(), float(b.item()), epoch
    return w.numpy(), float(b.item()), None


def accuracy(w, b, x, y) -> float:
    return float(((x @ w + b > 0).astype(np.float32) == y).mean())


def plot(path, x, y, w, b, mlp, xor_acc):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.5, 4))
    ax = axes[0]
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=12)
    xx = np.linspace(-1, 1, 2)
    ax.plot(xx, -(w[0] * xx + b) / w[1], "k-", label="perceptron boundary")
    ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.legend(fontsize=8), ax.set_title("separable: perceptron rule")
    ax = axes[1]
    grid = np.stack(np.meshgrid(np.linspace(-0.5, 1.5, 100), np.linspace(-0.5, 1.5, 100)), -1).reshape(-1, 2)
    with fastdl.no_grad():
        p = mlp(fastdl.tensor(grid.astype(np.float32))).sigmoid().numpy().reshape(100, 100)
    ax.contourf(np.linspace(-0.5, 1.5, 100), np.linspace(-0.5, 1.5, 100), p, levels=20, cmap="coolwarm", alpha=0.6)
    ax.scatter(XOR_X[:, 0], XOR_X[:, 1], c=XOR_Y, cmap="coolwarm", edgecolors="k", s=80)
    ax.set_title(f"XOR: MLP (perceptron rule: {xor_acc:.0%} at best)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(epochs: int = 600, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    x, y = separable_points(200, seed)
    w, b, converged = perceptron(x, y, max_epochs=3 if fast else 100)
    sep_acc = accuracy(w, b, x, y)
    _, _, xor_converged = perceptron(XOR_X, XOR_Y, max_epochs=3 if fast else 100)
    xor_best = max(accuracy(np.array([a, c], np.float32), d, XOR_X, XOR_Y)
                   for a in np.linspace(-2, 2, 21) for c in np.linspace(-2, 2, 21) for d in np.linspace(-2, 2, 21))

    mlp = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    loader = data.DataLoader(data.TensorDataset(XOR_X, XOR_Y[:, None]), batch_size=4)
    history = train.fit(mlp, nn.BCEWithLogitsLoss(), optim.SGD(mlp.parameters(), lr=0.5, momentum=0.9), loader,
                        epochs=5 if fast else epochs, metrics=[train.Accuracy(logits=True)], verbose=0)
    with fastdl.no_grad():
        predictions = (mlp(fastdl.tensor(XOR_X)).numpy()[:, 0] > 0).astype(int).tolist()
    history.plot(os.path.join(out, "xor_curves.png"), title="MLP on XOR")
    plot(os.path.join(out, "boundaries.png"), x, y, w, b, mlp, xor_best)
    print(f"perceptron rule: separable data {'converged after ' + str(converged) + ' epochs' if converged else 'not converged'}"
          f" (accuracy {sep_acc:.3f}); XOR {'converged' if xor_converged else 'never converges'} "
          f"(no line gets more than {xor_best:.0%})")
    print(f"MLP on XOR: predictions {predictions} for inputs {XOR_X.astype(int).tolist()}")
    return _common.report(NAME, {"separable_accuracy": sep_acc, "perceptron_epochs": converged,
                                 "xor_mlp_accuracy": history["accuracy"][-1], "xor_mlp_loss": history["loss"][-1]},
                          out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=600)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
