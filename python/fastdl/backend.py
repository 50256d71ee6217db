"""Backends: the native module, the CPU level and threads, CUDA availability, and backend_info().

Every kernel family declares here which implementation serves it on each device; a composed
(non-native) path that can run must be declared with :func:`declare_fallback`, and
:func:`note_fallback` counts each time it runs, so ``backend_info()`` never hides a fallback.
"""
from __future__ import annotations

import os
import platform

import numpy as np

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "fastdl's native module fastdl._C could not be loaded; reinstall with `pip install .` "
        f"from a source checkout ({exc})"
    ) from exc

__all__ = [
    "backend_info",
    "cpu_capability",
    "set_cpu_capability",
    "set_num_threads",
    "get_num_threads",
    "declare_fallback",
    "note_fallback",
    "array_module",
    "device_of",
    "allow_tf32",
    "is_cuda_array",
    "cuda_unavailable_reason",
    "require_cuda",
]

# family -> device -> implementation; each family's module adds its entry.
FAMILY_IMPLEMENTATIONS: dict[str, dict[str, str]] = {
    "gemm": {
        "cpu": "native: BLIS-style packed GEMM, {level} micro-kernel",
        "cuda": "native: tiled SIMT float32/float64; wmma tensor cores for TF32 (opt-in), float16, bfloat16",
    },
    "conv2d": {
        "cpu": "native: implicit GEMM, {level} indirect register tiles (1x1: the GEMM; depthwise: direct "
               "{level} kernel); pooling native",
        "cuda": "not yet implemented",
    },
}
_FALLBACKS: dict[tuple[str, str], dict] = {}


def cpu_capability() -> str:
    """The CPU kernel level in use: ``"avx512"``, ``"avx2"`` or ``"portable"``.

    ``FASTDL_CPU_CAPABILITY`` (read at import) forces a lower level.

    >>> import fastdl
    >>> fastdl.cpu_capability() in ("avx512", "avx2", "portable")
    True
    """
    return _C.cpu_capability()


def set_cpu_capability(level: str) -> None:
    """Switch the CPU kernel level at run time (``"portable"``, ``"avx2"``, ``"avx512"``).

    Raises ValueError for a level this CPU does not have. Used by tests to cover every path.
    """
    _C.set_cpu_capability(level)


def set_num_threads(n: int) -> None:
    """Number of OpenMP threads the native CPU kernels use (like ``torch.set_num_threads``)."""
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    """Number of OpenMP threads the native CPU kernels use."""
    return _C.get_num_threads()


def declare_fallback(family: str, case: str, path: str) -> None:
    """Declare that ``case`` of ``family`` runs a composed path ``path`` instead of a native kernel."""
    _FALLBACKS.setdefault((family, case), {"family": family, "case": case, "path": path, "runs": 0})


def note_fallback(family: str, case: str) -> None:
    """Count one run of a declared fallback (an undeclared one is a bug and raises)."""
    entry = _FALLBACKS.get((family, case))
    if entry is None:
        raise RuntimeError(f"undeclared fallback {family}/{case}")
    entry["runs"] += 1


# ---- arrays and devices (tensor branch) ----------------------------------------------------------
# Every array operation of the Python layer goes through the module returned here, so that adding
# the CUDA device only teaches these two functions about CuPy.

def array_module(x):
    """The array module of ``x``: ``numpy`` for CPU arrays and Python scalars (CuPy on "cuda").

    >>> import numpy as np
    >>> from fastdl.backend import array_module
    >>> array_module(np.ones(2)) is np
    True
    """
    cls = type(x)
    if cls is np.ndarray:
        return np
    if cls.__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def device_of(x) -> str:
    """The device an array lives on: ``"cpu"`` for NumPy arrays, ``"cuda:N"`` for GPU arrays.

    >>> import numpy as np
    >>> from fastdl.backend import device_of
    >>> device_of(np.ones(2))
    'cpu'
    """
    if type(x) is np.ndarray:
        return "cpu"
    dev = getattr(x, "device", None)
    index = getattr(dev, "id", None)
    return "cpu" if index is None else f"cuda:{index}"


# ---- CUDA (cuda branch) ---------------------------------------------------------------------------
# The GPU needs three things: fastdl built with CUDA, CuPy installed, and a usable GPU. Every entry
# point that is asked for "cuda" calls require_cuda(), whose error says which are missing and how
# to fix each.

#: TF32 tensor cores for float32 GEMMs on CUDA (``fastdl.backends.allow_tf32 = True``); off by
#: default as in PyTorch, since TF32 keeps 10 mantissa bits of each input.
allow_tf32 = False

_CUDA_FIXES = {
    "built": "fastdl was built without CUDA: reinstall from source with the CUDA toolkit's nvcc on PATH "
    "(FASTDL_CUDA=ON pip install .)",
    "cupy": "CuPy is not installed: pip install 'fastdl[cuda]' (cupy-cuda13x)",
    "gpu": "no usable GPU: {why} (check the NVIDIA driver with nvidia-smi, and CUDA_VISIBLE_DEVICES)",
}


def is_cuda_array(x) -> bool:
    """Whether ``x`` is a GPU array (CuPy, or anything with ``__cuda_array_interface__``).

    >>> import numpy as np
    >>> from fastdl.backend import is_cuda_array
    >>> is_cuda_array(np.ones(2))
    False
    """
    return not isinstance(x, np.ndarray) and hasattr(x, "__cuda_array_interface__")


def cuda_unavailable_reason() -> str | None:
    """``None`` when fastdl can run on the GPU, else what is missing, each with its fix.

    >>> import fastdl
    >>> r = fastdl.backend.cuda_unavailable_reason()
    >>> r is None or "CUDA" in r or "CuPy" in r or "GPU" in r
    True
    """
    info = _C.cuda_info()
    missing = []
    if not info["built"]:
        missing.append(_CUDA_FIXES["built"])
    if _cupy_version() is None:
        missing.append(_CUDA_FIXES["cupy"])
    if info["built"] and not info["devices"]:
        missing.append(_CUDA_FIXES["gpu"].format(why=info["why_no_device"]))
    return "; ".join(missing) or None


def require_cuda(op: str):
    """Return the ``cupy`` module, or raise RuntimeError naming ``op`` and what is missing."""
    reason = cuda_unavailable_reason()
    if reason:
        raise RuntimeError(f"{op}: CUDA is not available: {reason}")
    import cupy

    return cupy


def _cupy_version() -> str | None:
    try:
        import cupy  # noqa: F401
    except Exception:
        return None
    return cupy.__version__


def backend_info() -> dict:
    """What fastdl runs on this machine: version, CPU level, threads, CUDA, and per kernel family
    the implementation in use, plus every declared fallback and how often it ran.

    >>> import fastdl
    >>> info = fastdl.backend_info()
    >>> sorted(info)[:3]
    ['cpu', 'cuda', 'distributed']
    >>> info["families"]["gemm"]["cpu"].startswith("native")
    True
    """
    from . import __version__

    level = cpu_capability()
    cuda = _C.cuda_info()
    cuda["cupy_version"] = _cupy_version()
    families = {
        name: {device: text.format(level=level) for device, text in impls.items()}
        for name, impls in FAMILY_IMPLEMENTATIONS.items()
    }
    if not cuda["built"]:
        for impls in families.values():
            impls["cuda"] = "not built"
    return {
        "version": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": {
            "model": _C.cpu_model_name(),
            "capability": level,
            "detected_capability": _C.detected_cpu_capability(),
            "forced_by_env": os.environ.get("FASTDL_CPU_CAPABILITY") or None,
            "threads": get_num_threads(),
            "gemm_blocking_float32": _C.gemm_blocking("float32"),
        },
        "cuda": cuda,
        "families": families,
        "fallbacks": [dict(v) for v in _FALLBACKS.values()],
        "distributed": _distributed_info(),
    }


def _distributed_info() -> dict:
    from .distributed import distributed_info

    return distributed_info()


# ---- lstm family ----------------------------------------------------------------------------------
FAMILY_IMPLEMENTATIONS["lstm"] = {
    "cpu": "native: whole-sequence LSTM and GRU, fused recurrent GEMM + gates, {level}; RNN composed from ops",
    "cuda": "not yet implemented",
}
declare_fallback("lstm", "RNN", "composed from linear and tanh/relu per time step")
declare_fallback("lstm", "LSTM proj_size > 0", "composed from linear, sigmoid, tanh and elementwise ops per time step")
FAMILY_IMPLEMENTATIONS["attention"] = {
    "cpu": "native: fused flash attention (FlashAttention-2 tiles, online softmax; masks, causal, GQA and dropout "
           "inside the kernel), {level} micro-kernel",
    "cuda": "composed from ops (declared fallback 'cuda'); no CUDA attention kernel yet",
}
declare_fallback("attention", "cuda", "softmax(Q·Kᵀ·scale + mask)·V composed from fastdl ops (stores the L×S scores)")
declare_fallback("attention", "need_weights",
                 "MultiheadAttention(need_weights=True): the composed formula, which returns the L×S weights")


# ---- optim (nn branch) ----------------------------------------------------------------------------
FAMILY_IMPLEMENTATIONS["optim"] = {
    "cpu": "native: fused multi-tensor optimizer step (one pass per group), {level}",
    "cuda": "not yet implemented",
}
FAMILY_IMPLEMENTATIONS["elementwise"] = {
    "cpu": "NumPy ufuncs; native exact GELU (vectorised erfc, {level}, for float32; libm for float64) and "
           "dropout masks (counter-based hash, {level})",
    "cuda": "CuPy array operations",
}
