"""``fastdl.nn``: modules, layers, losses, initialisers and utilities with PyTorch's names.

>>> import fastdl
>>> from fastdl import nn
>>> model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
>>> loss = nn.CrossEntropyLoss()(model(fastdl.randn(32, 784)), fastdl.randint(0, 10, (32,)))
>>> loss.backward()
>>> model[0].weight.grad.shape
(128, 784)
"""
from . import functional, init, utils
from .layers import (
    ELU,
    GELU,
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Bilinear,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Dropout2d,
    Embedding,
    Flatten,
    GroupNorm,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    PositionalEncoding,
    ReLU,
    SiLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
    Unflatten,
    sinusoidal_positional_encoding,
)
from .losses import (
    BCELoss,
    BCEWithLogitsLoss,
    CosineEmbeddingLoss,
    CrossEntropyLoss,
    KLDivLoss,
    L1Loss,
    MSELoss,
    NLLLoss,
    SmoothL1Loss,
)
from .attention import MultiheadAttention
from .module import Identity, Module, ModuleDict, ModuleList, Parameter, Sequential
from . import parallel  # DistributedDataParallel

__all__ = [
    "Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "Identity",
    "Linear", "Bilinear", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
    "Flatten", "Unflatten", "Dropout", "Dropout2d",
    "BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "Embedding",
    "ReLU", "LeakyReLU", "ELU", "GELU", "SiLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Softplus",
    "PositionalEncoding", "sinusoidal_positional_encoding",
    "MSELoss", "L1Loss", "SmoothL1Loss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss",
    "KLDivLoss", "CosineEmbeddingLoss",
    "MultiheadAttention",
    "functional", "init", "utils",
    "parallel",
]

# ---- recurrent layers (lstm branch) ----------------------------------------------------------------
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell  # noqa: E402

__all__ += ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]

# ---- transformer layers (nn branch, on MultiheadAttention) -----------------------------------------
from .transformer import (  # noqa: E402
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ += ["Transformer", "TransformerEncoderLayer", "TransformerEncoder", "TransformerDecoderLayer",
            "TransformerDecoder"]
