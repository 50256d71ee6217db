"""Hyperparameter checks shared by the optimizers (PyTorch's messages)."""
from __future__ import annotations


def check_nonnegative(name: str, value, label: str | None = None) -> None:
    if not 0.0 <= float(value):
        raise ValueError(f"Invalid {label or name}: {value}")


def check_betas(betas) -> tuple:
    betas = tuple(betas)
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas}")
    for i, beta in enumerate(betas):
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    return betas
