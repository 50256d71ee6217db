"""fastdl: a small, fast deep-learning tensor library.

Native kernels (GEMM, conv2d, attention, LSTM) for the CPU (portable, AVX2, AVX-512, chosen at
run time) and CUDA, under a PyTorch-style Python API.

>>> import fastdl, numpy as np
>>> fastdl.kernels.matmul(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)).shape
(2, 4)
>>> x = fastdl.randn(4, 3, requires_grad=True)
>>> fastdl.relu(x @ fastdl.ones(3, 2)).sum().backward()
>>> x.grad.shape
(4, 3)
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

# ---- tensors and autodiff (tensor branch) ---------------------------------------------------------
from . import random
from .tensor import *  # noqa: F401,F403 - Tensor, creation functions, dtypes, grad modes
from .tensor import __all__ as _tensor_all
from .tensor import bool_, float16, float32, float64, int16, int32, int64
from . import functional, autograd
from .random import get_rng_state, initial_seed, manual_seed, seed, set_rng_state

# PyTorch's dtype aliases.
bool = bool_  # noqa: A001
half, float, double = float16, float32, float64  # noqa: A001
short, int, long = int16, int32, int64  # noqa: A001

_TORCH_NAMES = [
    "abs", "add", "all", "allclose", "amax", "amin", "any", "argmax", "argmin", "bmm", "cat", "ceil", "chunk",
    "clamp", "clip", "clone", "concat", "cos", "cumsum", "detach", "div", "dot", "eq", "equal", "exp", "flatten",
    "flip", "floor", "gather", "ge", "gt", "index_select", "isfinite", "isinf", "isnan", "le", "log", "log1p",
    "log_softmax", "logical_and", "logical_not", "logical_or", "logical_xor", "logsumexp", "lt", "masked_fill",
    "matmul", "max", "maximum", "mean", "min", "minimum", "mm", "mul", "ne", "neg", "norm", "permute", "pow",
    "prod", "reciprocal", "relu", "repeat", "reshape", "round", "rsqrt", "scatter_add", "sigmoid", "sign", "sin",
    "softmax", "split", "sqrt", "square", "squeeze", "stack", "std", "sub", "sum", "t", "tanh", "transpose",
    "tril", "triu", "true_divide", "unbind", "unflatten", "unsqueeze", "var", "where",
]
globals().update({name: getattr(functional, name) for name in _TORCH_NAMES})
# ---- end tensor branch ----------------------------------------------------------------------------

# ---- CUDA (cuda branch) ---------------------------------------------------------------------------
from . import cuda
from . import backend as backends  # fastdl.backends.allow_tf32 = True: TF32 tensor cores for float32
# ---- end cuda branch ------------------------------------------------------------------------------

__all__ = [
    "__version__",
    "backend_info",
    "cpu_capability",
    "get_num_threads",
    "kernels",
    "set_cpu_capability",
    "set_num_threads",
    # tensor branch
    "autograd", "functional", "random", "manual_seed", "seed", "initial_seed", "get_rng_state", "set_rng_state",
    "bool", "half", "float", "double", "short", "int", "long", *_tensor_all, *_TORCH_NAMES,
    # cuda branch
    "cuda", "backends",
]

# ---- nn, optim and saving (nn branch) --------------------------------------------------------------
from . import nn, optim  # noqa: E402
from .serialization import load, load_torch_state_dict, save  # noqa: E402

__all__ += ["nn", "optim", "save", "load", "load_torch_state_dict"]

# ---- data loading and the training loop (data branch) -------------------------------------------
from . import data, train  # noqa: E402

__all__ += ["data", "train"]
