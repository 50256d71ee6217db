"""fastdl: a small, fast deep-learning tensor library.

Native kernels (GEMM, conv2d, attention, LSTM) for the CPU (portable, AVX2, AVX-512, chosen at
run time) and CUDA, under a PyTorch-style Python API.

>>> import fastdl, numpy as np
>>> fastdl.kernels.matmul(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)).shape
(2, 4)
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import kernels
from .backend import (
    backend_info,
    cpu_capability,
    get_num_threads,
    set_cpu_capability,
    set_num_threads,
)

__all__ = [
    "__version__",
    "backend_info",
    "cpu_capability",
    "get_num_threads",
    "kernels",
    "set_cpu_capability",
    "set_num_threads",
]

# ---- data loading and the training loop (data branch) -------------------------------------------
from . import data, train  # noqa: E402

__all__ += ["data", "train"]
