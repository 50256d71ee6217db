"""Shared fixtures: the CPU kernel levels this machine has, and the device fixture.

``device`` runs a test on "cpu" and on "cuda" where a GPU is usable; without one the cuda case is
skipped with the reason, and FASTDL_REQUIRE_CUDA=1 turns that skip into a failure.
"""
import os

import pytest

import fastdl
from fastdl.backend import _C

LEVELS = ("portable", "avx2", "avx512")
_DETECTED = _C.detected_cpu_capability()
AVAILABLE_LEVELS = LEVELS[: LEVELS.index(_DETECTED) + 1]


def _cuda_unavailable_reason():
    return fastdl.backend.cuda_unavailable_reason()


def _skip_or_fail_without_cuda():
    reason = _cuda_unavailable_reason()
    if reason:
        if os.environ.get("FASTDL_REQUIRE_CUDA") == "1":
            pytest.fail(f"FASTDL_REQUIRE_CUDA=1 but CUDA cannot run: {reason}")
        pytest.skip(reason)


@pytest.fixture(params=AVAILABLE_LEVELS)
def cpu_level(request):
    """Run the test once per CPU kernel level this machine supports, restoring the level after."""
    previous = fastdl.cpu_capability()
    fastdl.set_cpu_capability(request.param)
    yield request.param
    fastdl.set_cpu_capability(previous)


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda":
        _skip_or_fail_without_cuda()
    return request.param


@pytest.fixture
def cuda():
    """The CuPy module, for tests that only make sense on the GPU (skipped, or failed under
    FASTDL_REQUIRE_CUDA=1, where CUDA cannot run)."""
    _skip_or_fail_without_cuda()
    import cupy

    return cupy


@pytest.fixture
def threads():
    """Restore the thread count a test changes."""
    previous = fastdl.get_num_threads()
    yield
    fastdl.set_num_threads(previous)


@pytest.fixture(scope="module")
def torch_one_thread():
    """PyTorch's reference ops on small tensors run fastest (and steadiest on a busy machine) on
    one thread; restored after the module."""
    from .helpers import torch

    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
