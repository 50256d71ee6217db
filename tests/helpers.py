"""Test helpers: tolerances derived from the dtype and the reduction length, seeded inputs, and the
awkward shapes every kernel is tested on."""
import numpy as np

EPS = {np.dtype(np.float32): np.finfo(np.float32).eps, np.dtype(np.float64): np.finfo(np.float64).eps}


def tol(dtype, k: int = 1) -> float:
    """Relative tolerance for a result that sums ``k`` products in ``dtype``.

    Rounding errors of a k-term sum grow like sqrt(k)·eps for random signs (worst case k·eps); we
    allow 8·sqrt(k)·eps plus a floor, measured against the magnitude of the reference.
    """
    eps = EPS[np.dtype(dtype)]
    return 8.0 * np.sqrt(max(int(k), 1)) * eps + 4 * eps


def assert_close(actual, reference, dtype, k: int = 1, scale=None):
    """Compare with an error bound relative to the reference's largest magnitude (or ``scale``)."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    if reference.size == 0:
        return
    if scale is None:
        scale = max(float(np.abs(reference).max()), 1.0)
    err = float(np.abs(actual - reference).max())
    bound = tol(dtype, k) * scale
    assert err <= bound, f"max error {err:.3e} > bound {bound:.3e} (dtype {np.dtype(dtype)}, k={k})"


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# Sizes that hit every edge of the GEMM blocking on every level: 1, primes, tile sizes ± 1.
AWKWARD_SIZES = (1, 2, 3, 7, 13, 31, 33, 257)
