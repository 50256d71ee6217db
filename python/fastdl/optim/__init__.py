"""Optimizers and learning-rate schedulers with PyTorch's names, arguments and defaults.

Every optimizer's step is one fused native pass per parameter group (``csrc/cpu/optim.cpp``);
trajectories equal ``torch.optim``'s step for step within float32 rounding.

>>> import fastdl
>>> w = fastdl.nn.Parameter(fastdl.tensor([1.0]))
>>> fastdl.optim.Adam([w], lr=0.1).defaults["betas"]
(0.9, 0.999)
"""
from . import lr_scheduler
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .nadam import NAdam
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "NAdam", "Adamax", "lr_scheduler"]
