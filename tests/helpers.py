"""Test helpers: tolerances derived from the dtype and the reduction length, seeded inputs, and the
awkward shapes every kernel is tested on."""
import os

import numpy as np
import pytest

EPS = {np.dtype(np.float32): np.finfo(np.float32).eps, np.dtype(np.float64): np.finfo(np.float64).eps}
# GPU tensor-core formats (cuda branch): the unit roundoff of their 10 (float16, TF32) or 7
# (bfloat16) stored mantissa bits, named by string since NumPy has no TF32/bfloat16 dtype.
EPS.update({np.dtype(np.float16): 2.0**-10, "tf32": 2.0**-10, "bfloat16": 2.0**-7})


def tol(dtype, k: int = 1) -> float:
    """Relative tolerance for a result that sums ``k`` products in ``dtype``.

    Rounding errors of a k-term sum grow like sqrt(k)·eps for random signs (worst case k·eps); we
    allow 8·sqrt(k)·eps plus a floor, measured against the magnitude of the reference.
    """
    eps = EPS[dtype] if isinstance(dtype, str) and dtype in EPS else EPS[np.dtype(dtype)]
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


# ---- ops and autodiff (tensor branch) -------------------------------------------------------------
# check_op compares an op's values and gradients with PyTorch in float64 (when importable) or with a
# NumPy reference (values) and its float64 central differences (gradients); gradcheck runs fastdl's
# own finite-difference check of an op in float64.

EPS[np.dtype(np.float16)] = np.finfo(np.float16).eps

try:
    import torch
except ImportError:  # pragma: no cover - CI installs torch; the NumPy path keeps tests running without
    torch = None
if os.environ.get("FASTDL_TEST_WITHOUT_TORCH") == "1":  # exercise the NumPy references on purpose
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the reference) is not installed")


def noncontiguous(a: np.ndarray) -> np.ndarray:
    """The same values as a strided (every other element of the last dim) view."""
    if a.ndim == 0 or a.size == 0:
        return a
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    view = wide[..., ::2]
    view[...] = a
    assert not view.flags.c_contiguous or a.shape[-1] == 1
    return view


def _to_tensors(arrays, dtype, grad, strided, device):
    import fastdl

    tensors = []
    for a in arrays:
        if a.dtype.kind == "f":
            v = a.astype(dtype)
            v = noncontiguous(v) if strided else v
            t = fastdl.Tensor(v) if device == "cpu" else fastdl.tensor(v, device=device)
            tensors.append(t.requires_grad_(grad))
        else:
            tensors.append(fastdl.Tensor(a) if device == "cpu" else fastdl.tensor(a, device=device))
    return tensors


def _float_outputs(out):
    outs = [out] if not isinstance(out, (tuple, list)) else list(out)
    return [o for o in outs if np.dtype(o.dtype).kind == "f"]


def _numerical_grads(numpy_fn, arrays, upstream, eps=1e-6):
    """d(Σ g·f)/d(input) for every float input by float64 central differences."""
    def scalar(args):
        outs = numpy_fn(*args)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        outs = [np.asarray(o, np.float64) for o in outs if np.asarray(o).dtype.kind == "f"]
        return sum(float((o * g).sum()) for o, g in zip(outs, upstream))

    grads = []
    for i, a in enumerate(arrays):
        if a.dtype.kind != "f":
            grads.append(None)
            continue
        g = np.zeros(a.shape)
        args = [np.array(x, dtype=np.float64) if x.dtype.kind == "f" else x for x in arrays]
        flat = args[i].reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            plus = scalar(args)
            flat[j] = old - eps
            minus = scalar(args)
            flat[j] = old
            g.reshape(-1)[j] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


def check_op(fn, arrays, torch_fn=None, numpy_fn=None, dtype=np.float64, grad=True, k=1, strided=True, seed=0,
             device="cpu"):
    """Check ``fn`` (fastdl tensors → tensor or tuple) on ``arrays`` (NumPy; float arrays become
    ``dtype`` tensors that require grad, integer/bool arrays constant tensors) against the float64
    reference: ``torch_fn`` (same call on torch tensors) when PyTorch is importable, else
    ``numpy_fn`` (on float64 arrays; its gradients by central differences). Values and gradients
    (for a random upstream gradient) must agree within ``tol(dtype, k)`` of the reference's
    magnitude; with ``strided`` the check is repeated on non-contiguous views of the inputs. The
    fastdl tensors live on ``device``."""
    import fastdl

    dtype = np.dtype(dtype)
    arrays = [np.asarray(a) for a in arrays]
    rng = np.random.default_rng(seed)
    # The reference sees exactly the values fastdl sees (rounded to dtype), in float64.
    rounded = [a.astype(dtype).astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    use_torch = torch is not None and torch_fn is not None
    if not use_torch and numpy_fn is None:
        import pytest

        pytest.skip("PyTorch is not installed and the op has no NumPy reference")
    if use_torch:
        targs = [torch.tensor(a, requires_grad=grad and a.dtype.kind == "f") if a.dtype.kind == "f"
                 else torch.from_numpy(np.ascontiguousarray(a)) for a in rounded]
        ref_out = torch_fn(*targs)
        ref_outs = [o for o in ([ref_out] if isinstance(ref_out, torch.Tensor) else list(ref_out))
                    if o.is_floating_point()]
        ref_values = [o.detach().numpy() for o in ref_outs]
    else:
        ref_out = numpy_fn(*rounded)
        ref_values = [np.asarray(o, np.float64) for o in (ref_out if isinstance(ref_out, (tuple, list)) else [ref_out])
                      if np.asarray(o).dtype.kind == "f"]
    upstream = [rng.standard_normal(v.shape) for v in ref_values]
    ref_grads = None
    if grad:
        if use_torch:
            live = [(o, torch.from_numpy(g)) for o, g in zip(ref_outs, upstream) if o.requires_grad]
            if live:
                torch.autograd.backward([o for o, _ in live], [g for _, g in live])
            ref_grads = [None if a.dtype.kind != "f" else
                         (t.grad.numpy() if t.grad is not None else np.zeros(a.shape)) for a, t in zip(arrays, targs)]
        else:
            ref_grads = _numerical_grads(numpy_fn, rounded, upstream)
    for variant in ((False, True) if strided else (False,)):
        tensors = _to_tensors(arrays, dtype, grad, variant, device)
        outs = _float_outputs(fn(*tensors))
        assert len(outs) == len(ref_values), f"{len(outs)} float outputs, reference has {len(ref_values)}"
        for o, r in zip(outs, ref_values):
            assert o.shape == r.shape, f"output shape {o.shape} != reference {r.shape}"
            assert o.dtype == dtype, f"output dtype {o.dtype} != {dtype}"
            assert_close(np.asarray(o.detach().cpu()), r, dtype, k)
        if not grad:
            continue
        live = [(o, g) for o, g in zip(outs, upstream) if o.requires_grad]
        if live:
            fastdl.autograd.backward([o for o, _ in live], [fastdl.tensor(g, dtype=dtype) for _, g in live])
        for i, (t, r) in enumerate(zip(tensors, ref_grads)):
            if r is None:
                continue
            got = np.zeros(t.shape) if t.grad is None else np.asarray(t.grad.cpu())
            assert t.grad is None or t.grad.shape == t.shape, f"grad {i} shape {t.grad.shape} != {t.shape}"
            bound_dtype = dtype if use_torch else np.dtype(np.float64)
            if use_torch:
                assert_close(got, r, bound_dtype, k)
            else:
                scale = max(float(np.abs(r).max()) if r.size else 0.0, 1.0)
                err = float(np.abs(got - r).max()) if r.size else 0.0
                assert err <= max(tol(dtype, k), 1e-6) * scale, f"grad {i}: max error {err:.3e}"


def gradcheck(fn, arrays, **kwargs):
    """fastdl.autograd.gradcheck of ``fn`` on float64 tensors made from ``arrays`` (float arrays
    require grad; integer/bool arrays are constants)."""
    import fastdl

    arrays = [np.asarray(a) for a in arrays]
    tensors = [fastdl.Tensor(a.astype(np.float64), requires_grad=True) if a.dtype.kind == "f" else fastdl.Tensor(a)
               for a in arrays]
    assert fastdl.autograd.gradcheck(fn, tensors, **kwargs)
