"""``fastdl.nn.functional``: the public functional namespace, the same as :mod:`fastdl.functional`
(PyTorch's ``torch.nn.functional``), so ``import fastdl.nn.functional as F`` works as in PyTorch.

>>> import fastdl.nn.functional as F
>>> import fastdl
>>> F.relu is fastdl.functional.relu
True
"""
from .. import functional as _functional
from ..functional import *  # noqa: F401,F403  (re-export)


def __getattr__(name):
    return getattr(_functional, name)


def __dir__():
    return dir(_functional)
