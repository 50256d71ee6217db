"""Linear regression two ways (the normal equations, and gradient descent), and logistic regression.

Linear: minimise the mean squared error ‖Xw − y‖²/n. Setting the gradient 2Xᵀ(Xw − y)/n to zero
gives the normal equations XᵀX w = Xᵀy, so w = (XᵀX)⁻¹Xᵀy (solved, not inverted). Gradient descent
on the same loss, with fastdl's autodiff computing the gradient, reaches the same w. Logistic:
p(y=1|x) = σ(w·x + b), trained on the cross-entropy (BCEWithLogitsLoss) to separate the digits
0 and 1. Prints both solutions, their difference, and the classifier's test accuracy.

    python examples/regression.py          # or: fastdl train regression
"""
from __future__ import annotations

import os
import sys

import _common
import numpy as np

import fastdl
from fastdl import data, nn, optim, train

NAME = "regression"


def make_regression(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    w_true, b_true = np.array([2.0, -3.0, 0.5]), 1.0
    y = x @ w_true + b_true + 0.1 * rng.standard_normal(n)
    return x, y


def normal_equations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[w, b] = (XᵀX)⁻¹Xᵀy with a column of ones for the bias, via a linear solve."""
    X = np.hstack([x, np.ones((len(x), 1))])
    return np.linalg.solve(X.T @ X, X.T @ y)


def gradient_descent(x: np.ndarray, y: np.ndarray, steps: int, lr: float = 0.1) -> np.ndarray:
    """Full-batch gradient descent on the mean squared error, gradients by autodiff (float64)."""
    X = fastdl.tensor(x)
    Y = fastdl.tensor(y)
    w = fastdl.zeros(3, dtype=fastdl.float64, requires_grad=True)
    b = fastdl.zeros((), dtype=fastdl.float64, requires_grad=True)
    for _ in range(steps):
        loss = ((X @ w + b - Y) ** 2).mean()
        w.grad = b.grad = None
        loss.backward()
        w.data -= lr * w.grad.data  # the update acts on the arrays: no graph is recorded
        b.data -= lr * b.grad.data
    return np.append(w.numpy(), b.item())


def run(epochs: int = 30, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    x, y = make_regression(500, seed)
    exact = normal_equations(x, y)
    descent = gradient_descent(x, y, steps=20 if fast else 500)
    gap = float(np.abs(exact - descent).max())
    print(f"normal equations  w = {np.round(exact[:3], 4).tolist()}, b = {exact[3]:.4f}")
    print(f"gradient descent  w = {np.round(descent[:3], 4).tolist()}, b = {descent[3]:.4f}  (max difference {gap:.2e})")

    splits = data.digits(size=8, flatten=True)
    binary = []
    for part in splits:
        xs, ys = part.arrays
        keep = ys < 2
        binary.append(data.TensorDataset(xs[keep], ys[keep, None].astype(np.float32)))
    model = nn.Linear(64, 1)
    history = train.fit(model, nn.BCEWithLogitsLoss(), optim.SGD(model.parameters(), lr=0.1),
                        data.DataLoader(binary[0], batch_size=32, shuffle=True, seed=seed),
                        data.DataLoader(binary[1], batch_size=256), epochs=2 if fast else epochs,
                        metrics=[train.Accuracy(logits=True)], verbose=0)
    history.plot(os.path.join(out, "logistic_curves.png"), title="logistic regression: digits 0 vs 1")
    test = train.evaluate(model, nn.BCEWithLogitsLoss(), data.DataLoader(binary[2], batch_size=256),
                          metrics=[train.Accuracy(logits=True)])
    return _common.report(NAME, {"max_abs_difference": gap, "logistic_test_accuracy": test["accuracy"]}, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=30)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
