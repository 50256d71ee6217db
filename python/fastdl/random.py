"""The one seeded random generator behind every random function, dropout mask and initialiser.

fastdl keeps a single ``numpy.random.Generator``; :func:`manual_seed` reseeds it in place, so code
that holds ``generator()`` sees the new seed too. Like PyTorch, a fresh process starts from a fixed
seed, so runs are reproducible unless the program seeds from the clock.

>>> import fastdl
>>> _ = fastdl.manual_seed(0)
>>> a = fastdl.randn(3)
>>> _ = fastdl.manual_seed(0)
>>> bool((fastdl.randn(3) == a).all())
True
"""
from __future__ import annotations

import numpy as np

__all__ = ["generator", "manual_seed", "seed", "initial_seed", "get_rng_state", "set_rng_state"]

# PyTorch's default seed, so that a fresh process is reproducible as PyTorch's is.
_DEFAULT_SEED = 67280421310721
_initial_seed = _DEFAULT_SEED
_generator = np.random.Generator(np.random.PCG64(_DEFAULT_SEED))


def generator() -> np.random.Generator:
    """The process-wide generator (a ``numpy.random.Generator``) that fastdl's random functions use.

    >>> import fastdl
    >>> fastdl.random.generator() is fastdl.random.generator()
    True
    """
    return _generator


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed fastdl's generator (like ``torch.manual_seed``) and return it.

    >>> import fastdl
    >>> g = fastdl.manual_seed(42)
    >>> g is fastdl.random.generator()
    True
    """
    global _initial_seed
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise TypeError(f"manual_seed: seed must be an integer, got {type(seed).__name__}") from None
    if seed < 0:
        raise ValueError(f"manual_seed: seed must be non-negative, got {seed}")
    _generator.bit_generator.state = np.random.PCG64(seed).state
    _initial_seed = seed
    return _generator


def seed() -> int:
    """Seed the generator from the operating system's entropy and return the seed used."""
    s = int(np.random.SeedSequence().entropy % (1 << 63))
    manual_seed(s)
    return s


def initial_seed() -> int:
    """The seed last given to :func:`manual_seed` (or the default one)."""
    return _initial_seed


def get_rng_state() -> dict:
    """A copy of the generator's state, for :func:`set_rng_state` (checkpointing)."""
    return dict(_generator.bit_generator.state)


def set_rng_state(state: dict) -> None:
    """Restore a state returned by :func:`get_rng_state`."""
    _generator.bit_generator.state = state
