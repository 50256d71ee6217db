"""The GPU: availability, devices, synchronisation and seeding (PyTorch's ``torch.cuda`` names).

fastdl runs on an NVIDIA GPU when three things hold: it was built with CUDA, CuPy is installed
(``pip install 'fastdl[cuda]'``), and the CUDA driver sees a GPU. :func:`is_available` tells;
anything that asks for ``"cuda"`` without them raises an error naming what is missing.

>>> import fastdl
>>> isinstance(fastdl.cuda.is_available(), bool)
True
>>> fastdl.cuda.device_count() >= 0
True
"""
from __future__ import annotations

from .backend import _C, cuda_unavailable_reason, require_cuda

__all__ = [
    "is_available", "device_count", "current_device", "set_device", "get_device_name", "synchronize",
    "manual_seed", "manual_seed_all", "unavailable_reason",
]


def is_available() -> bool:
    """Whether tensors can be put on ``"cuda"`` (built with CUDA, CuPy installed, a GPU visible)."""
    return cuda_unavailable_reason() is None


def unavailable_reason() -> str | None:
    """``None`` when :func:`is_available`, else what is missing and how to fix it."""
    return cuda_unavailable_reason()


def device_count() -> int:
    """Number of visible GPUs (0 when CUDA cannot run here)."""
    if not is_available():
        return 0
    return len(_C.cuda_info()["devices"])


def current_device() -> int:
    """Index of the current GPU (CuPy's current device)."""
    return require_cuda("current_device").cuda.runtime.getDevice()


def set_device(device) -> None:
    """Make ``device`` (an index or ``"cuda:N"``) the current GPU."""
    cupy = require_cuda("set_device")
    index = int(str(device).split(":")[-1]) if not isinstance(device, int) else device
    cupy.cuda.Device(index).use()


def get_device_name(device=None) -> str:
    """The GPU's name, e.g. ``"NVIDIA H100 80GB HBM3"``."""
    require_cuda("get_device_name")
    index = current_device() if device is None else int(str(device).split(":")[-1])
    return _C.cuda_info()["devices"][index]["name"]


def synchronize(device=None) -> None:
    """Wait until every kernel queued on ``device`` (default: the current GPU) has finished."""
    cupy = require_cuda("synchronize")
    if device is None:
        cupy.cuda.Device().synchronize()
    else:
        cupy.cuda.Device(int(str(device).split(":")[-1])).synchronize()


def manual_seed(seed: int) -> None:
    """Seed CuPy's random generator of the current GPU. fastdl's own random functions draw from
    the one host generator (``fastdl.manual_seed``) whatever the device, so the same seed gives the
    same tensors on the CPU and on the GPU; this seeds code that samples with CuPy directly."""
    cupy = require_cuda("manual_seed")
    cupy.random.seed(int(seed))


def manual_seed_all(seed: int) -> None:
    """:func:`manual_seed` on every visible GPU."""
    cupy = require_cuda("manual_seed_all")
    for index in range(device_count()):
        with cupy.cuda.Device(index):
            cupy.random.seed(int(seed))
