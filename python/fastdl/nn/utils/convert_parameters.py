"""Flatten parameters into one vector and back (``torch.nn.utils.parameters_to_vector``)."""
from __future__ import annotations

import numpy as np

from ...tensor import Tensor

__all__ = ["parameters_to_vector", "vector_to_parameters"]


def parameters_to_vector(parameters) -> Tensor:
    """All parameters, flattened and concatenated in order, as a new 1-D Tensor (no graph).

    >>> import fastdl
    >>> lin = fastdl.nn.Linear(3, 2)
    >>> parameters_to_vector(lin.parameters()).shape
    (8,)
    """
    arrays = [p.data.reshape(-1) for p in parameters]
    if not arrays:
        raise ValueError("parameters_to_vector: got no parameters")
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1:
        raise TypeError(f"parameters_to_vector: parameters have different dtypes {sorted(map(str, dtypes))}")
    return Tensor(np.concatenate(arrays))


def vector_to_parameters(vec, parameters) -> None:
    """Copy consecutive slices of the 1-D ``vec`` into each parameter (in place)."""
    data = vec.data if isinstance(vec, Tensor) else np.asarray(vec)
    if data.ndim != 1:
        raise TypeError(f"vector_to_parameters: expected a 1-D vector, got shape {data.shape}")
    params = list(parameters)
    total = sum(p.data.size for p in params)
    if total != data.size:
        raise ValueError(f"vector_to_parameters: vector has {data.size} elements, parameters have {total}")
    offset = 0
    for p in params:
        n = p.data.size
        p.data[...] = data[offset: offset + n].reshape(p.data.shape)
        offset += n
