"""Transforms for arrays: normalisation and data augmentation (random crop, flip, Gaussian noise).

A transform maps one sample, ``t(x)``, or a whole batch with a leading sample axis, ``t.batch(xs)``,
drawing independent random numbers per sample from :func:`fastdl.data.rng` (the batch's stream in a
DataLoader, so augmentation is reproducible). Images are (..., H, W): (C, H, W) per sample, (N, C, H, W)
per batch. ``TensorDataset(x, y, transform=...)`` applies a transform to ``x``, batched.

>>> import numpy as np
>>> t = Compose([Normalize(0.5, 0.25), RandomHorizontalFlip(p=1.0)])
>>> t(np.array([[0.0, 1.0]], np.float32))
array([[ 2., -2.]], dtype=float32)
"""
from __future__ import annotations

import numpy as np

from .seeding import rng

__all__ = ["Transform", "Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip", "GaussianNoise"]


class Transform:
    """Base class: subclasses define ``batch(xs)`` on a batch (N, ...); ``t(x)`` applies it to one sample."""

    def __call__(self, x):
        return self.batch(np.asarray(x)[None])[0]

    def batch(self, xs: np.ndarray) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} must define batch()")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order.

    >>> import numpy as np
    >>> Compose([Normalize(1.0, 2.0)])(np.array([3.0]))
    array([1.])
    """

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def batch(self, xs):
        for t in self.transforms:
            xs = t.batch(xs) if hasattr(t, "batch") else np.stack([t(x) for x in xs])
        return xs


class Normalize(Transform):
    """``(x - mean) / std``; mean and std are scalars or per-channel sequences (channel axis -3).

    >>> import numpy as np
    >>> Normalize([0.0, 1.0], [1.0, 2.0])(np.ones((2, 1, 1), np.float32)).ravel()
    array([1., 0.], dtype=float32)
    """

    def __init__(self, mean, std):
        self.mean = mean
        self.std = std
        std_arr = np.asarray(std, dtype=np.float64)
        if np.any(std_arr <= 0):
            raise ValueError(f"Normalize: std must be positive, got {std}")

    def batch(self, xs):
        xs = np.asarray(xs)
        dtype = xs.dtype if xs.dtype.kind == "f" else np.dtype(np.float32)
        mean = np.asarray(self.mean, dtype=dtype)
        std = np.asarray(self.std, dtype=dtype)
        if mean.ndim == 1:
            if xs.ndim < 4 or xs.shape[-3] != mean.size:
                raise ValueError(f"Normalize: {mean.size} channel means for a batch of shape {xs.shape} "
                                 "(expected (N, C, H, W) with C channels)")
            mean, std = mean[:, None, None], std.reshape(-1, 1, 1)
        return ((xs - mean) / std).astype(dtype, copy=False)


class RandomCrop(Transform):
    """Pad the last two axes by ``padding`` (zeros) and cut a random ``size`` window per sample.

    >>> import numpy as np
    >>> RandomCrop(4, padding=2)(np.ones((1, 4, 4))).shape
    (1, 4, 4)
    """

    def __init__(self, size, padding: int = 0):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding = int(padding)
        if len(self.size) != 2 or min(self.size) < 1 or self.padding < 0:
            raise ValueError(f"RandomCrop: size must be positive (h, w) and padding >= 0, got size={size}, "
                             f"padding={padding}")

    def batch(self, xs):
        xs = np.asarray(xs)
        if xs.ndim < 3:
            raise ValueError(f"RandomCrop: expected a batch (N, ..., H, W), got shape {xs.shape}")
        p, (h, w) = self.padding, self.size
        if p:
            xs = np.pad(xs, [(0, 0)] * (xs.ndim - 2) + [(p, p), (p, p)])
        H, W = xs.shape[-2:]
        if h > H or w > W:
            raise ValueError(f"RandomCrop: crop {self.size} larger than the padded image {(H, W)}")
        g = rng()
        top = g.integers(0, H - h + 1, size=xs.shape[0])
        left = g.integers(0, W - w + 1, size=xs.shape[0])
        return np.stack([x[..., t:t + h, l:l + w] for x, t, l in zip(xs, top, left)])


class RandomHorizontalFlip(Transform):
    """Mirror the last axis of each sample with probability ``p``.

    >>> import numpy as np
    >>> RandomHorizontalFlip(p=1.0)(np.array([[1, 2, 3]]))
    array([[3, 2, 1]])
    """

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def batch(self, xs):
        xs = np.array(xs)
        flip = rng().random(xs.shape[0]) < self.p
        xs[flip] = xs[flip][..., ::-1]
        return xs


class GaussianNoise(Transform):
    """Add N(0, std²) noise (data augmentation, or the corruption of a denoising autoencoder);
    ``clip=(lo, hi)`` clips the result.

    >>> import numpy as np
    >>> GaussianNoise(0.0)(np.zeros(3, np.float32))
    array([0., 0., 0.], dtype=float32)
    """

    def __init__(self, std: float, clip: tuple[float, float] | None = None):
        if std < 0:
            raise ValueError(f"GaussianNoise: std must be >= 0, got {std}")
        self.std = float(std)
        self.clip = clip

    def batch(self, xs):
        xs = np.asarray(xs)
        dtype = xs.dtype if xs.dtype.kind == "f" else np.dtype(np.float32)
        out = xs + rng().standard_normal(xs.shape).astype(dtype) * dtype.type(self.std)
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out.astype(dtype, copy=False)
