"""fastdl.functional: the public ``F`` namespace, with PyTorch's names and arguments.

Ops with their own backward call a Function of ``fastdl/ops``; composites (std, logsigmoid,
dropout, one_hot, chunk …) are written here over those, their gradients for free. Each function
checks its arguments and raises ValueError/TypeError naming the op and the shapes.

>>> import fastdl
>>> import fastdl.functional as F
>>> x = fastdl.tensor([[1.0, -2.0, 3.0]])
>>> F.relu(x).tolist()
[[1.0, 0.0, 3.0]]
>>> F.softmax(x, dim=1).sum().item()
1.0
"""
from __future__ import annotations

import builtins
import math
import numbers

import numpy as np

from . import random as _random
from .backend import _C, array_module
from .ops import elementwise as _ew
from .ops import gemm as _gemm
from .ops import reduce as _red
from .ops import shape as _shp
from .ops.elementwise import binary, unary
from .tensor import NULL_CTX as _NULL_CTX
from .tensor import Tensor, _defaults, _grad_mode, _is_int, _max_result, _raise_devices

__all__ = [
    # elementwise
    "add", "sub", "mul", "div", "true_divide", "pow", "neg", "abs", "exp", "log", "log1p", "sqrt", "rsqrt",
    "sin", "cos", "tanh", "sigmoid", "relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "logsigmoid",
    "clamp", "clip", "maximum", "minimum", "where", "square", "reciprocal", "sign", "floor", "ceil", "round",
    "eq", "ne", "lt", "le", "gt", "ge", "isnan", "isinf", "isfinite", "logical_not", "logical_and",
    "logical_or", "logical_xor", "equal", "allclose", "clone", "detach", "to_dtype",
    # reductions
    "sum", "mean", "var", "std", "max", "min", "amax", "amin", "argmax", "argmin", "logsumexp", "prod",
    "norm", "cumsum", "all", "any", "softmax", "log_softmax",
    # gemm
    "matmul", "mm", "bmm", "dot", "linear",
    # shapes and indexing
    "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "t", "expand",
    "repeat", "contiguous", "cat", "concat", "stack", "split", "chunk", "unbind", "pad", "flip", "index",
    "gather", "scatter_add", "masked_fill", "index_select", "one_hot", "tril", "triu",
    # random
    "dropout",
    # nn: normalisation, embedding, losses (nn branch)
    "dropout2d", "batch_norm", "layer_norm", "group_norm", "embedding", "bilinear", "cosine_similarity",
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "kl_div", "cosine_embedding_loss",
]


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_ndarray, _empty = np.ndarray, np.empty


# ---- argument helpers -----------------------------------------------------------------------------

def _tensor(x, op: str, name: str = "input") -> Tensor:
    if isinstance(x, Tensor):
        return x
    raise TypeError(f"{op}: {name} must be a Tensor, got {type(x).__name__}")


def _dim(dim, ndim: int, op: str, shape=None) -> int:
    """A dim in [-ndim, ndim) as a non-negative axis (0-d tensors accept 0 and -1)."""
    if not _is_int(dim):
        raise TypeError(f"{op}: dim must be an integer, got {dim!r}")
    n = builtins.max(ndim, 1)
    if not -n <= dim < n:
        where = f"a tensor of shape {shape}" if shape is not None else f"{ndim} dimensions"
        raise ValueError(f"{op}: dim {dim} is out of range for {where} (expected {-n} … {n - 1})")
    return int(dim) % n


def _dims(dim, x: Tensor, op: str):
    """None (all dims) or a sorted tuple of distinct non-negative axes."""
    if dim is None:
        return None
    ndim = x.data.ndim
    if isinstance(dim, (tuple, list)):
        dims = tuple(sorted(_dim(d, ndim, op, x.shape) for d in dim))
        if len(set(dims)) != len(dims):
            raise ValueError(f"{op}: dim {tuple(dim)} repeats a dimension of a tensor of shape {x.shape}")
    else:
        dims = (_dim(dim, ndim, op, x.shape),)
    return dims if ndim else ()


def _float_input(x: Tensor, op: str) -> Tensor:
    if x.data.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point, got {x.dtype} {x.shape} (use .float())")
    return x


def _index_array(index, op: str, name: str = "index"):
    if isinstance(index, Tensor):
        index = index.data
    elif not hasattr(index, "dtype"):
        index = np.asarray(index)
    if index.dtype.kind not in "iu":
        raise TypeError(f"{op}: {name} must be an integer tensor, got {index.dtype} {index.shape}")
    return index


def _record(*tensors) -> bool:
    """Whether an op on ``tensors`` records the graph (grad mode on and one of them requires grad)."""
    if _grad_mode.enabled:
        for t in tensors:
            if isinstance(t, Tensor) and t.requires_grad:
                return True
    return False


# ---- elementwise ----------------------------------------------------------------------------------

def _binary_op(cls, input, other, op):
    if not isinstance(input, Tensor) and not isinstance(other, Tensor):
        input = _tensor(input, op)
    result = binary(cls, input, other)
    if result is NotImplemented:
        raise TypeError(f"{op}: unsupported operand {type(other).__name__} (expected a Tensor, array or number)")
    return result


def add(input, other, alpha=1) -> Tensor:
    """input + alpha·other, broadcasting (shapes as ``torch.add``).

    >>> import fastdl
    >>> fastdl.add(fastdl.ones(2, 1), fastdl.ones(3), alpha=2).shape
    (2, 3)
    """
    return _binary_op(_ew.AddFn, input, other if alpha == 1 else other * alpha, "add")


def sub(input, other, alpha=1) -> Tensor:
    """input - alpha·other, broadcasting.

    >>> import fastdl
    >>> fastdl.sub(fastdl.ones(2), 3.0).tolist()
    [-2.0, -2.0]
    """
    return _binary_op(_ew.SubFn, input, other if alpha == 1 else other * alpha, "sub")


def mul(input, other) -> Tensor:
    """input · other elementwise, broadcasting.

    >>> import fastdl
    >>> fastdl.mul(fastdl.tensor([1.0, 2.0]), 3).tolist()
    [3.0, 6.0]
    """
    return _binary_op(_ew.MulFn, input, other, "mul")


def div(input, other, rounding_mode=None) -> Tensor:
    """input / other (true division; integers give floats); ``rounding_mode`` "floor" or "trunc"
    rounds the quotient (no gradient).

    >>> import fastdl
    >>> fastdl.div(fastdl.tensor([3, 4]), 2).tolist()
    [1.5, 2.0]
    """
    if rounding_mode is None:
        return _binary_op(_ew.DivFn, input, other, "div")
    if rounding_mode not in ("floor", "trunc"):
        raise ValueError(f"div: rounding_mode must be None, 'floor' or 'trunc', got {rounding_mode!r}")
    a, b = _ew._raw(input), _ew._raw(other)
    if a is NotImplemented or b is NotImplemented:
        raise TypeError(f"div: unsupported operands {type(input).__name__} and {type(other).__name__}")
    xp = array_module(a if isinstance(input, Tensor) else b)
    if rounding_mode == "floor":
        return Tensor(xp.floor_divide(a, b))
    result_dtype = np.result_type(a, b)
    q = xp.trunc(xp.true_divide(a, b))
    return Tensor(q.astype(result_dtype) if result_dtype.kind in "iu" else q)


true_divide = div


def pow(input, exponent) -> Tensor:
    """input ** exponent (either may be a number), broadcasting.

    >>> import fastdl
    >>> fastdl.pow(fastdl.tensor([2.0, 3.0]), 2).tolist()
    [4.0, 9.0]
    """
    return _binary_op(_ew.PowFn, input, exponent, "pow")


def _unary_op(cls, input, op, *args):
    return unary(cls, _tensor(input, op), *args)


def neg(input) -> Tensor:
    """-input.

    >>> import fastdl
    >>> fastdl.neg(fastdl.ones(1)).tolist()
    [-1.0]
    """
    return _unary_op(_ew.NegFn, input, "neg")


def abs(input) -> Tensor:
    """|input|; the gradient at 0 is 0.

    >>> import fastdl
    >>> fastdl.abs(fastdl.tensor([-2.0, 1.0])).tolist()
    [2.0, 1.0]
    """
    return _unary_op(_ew.AbsFn, input, "abs")


def exp(input) -> Tensor:
    """e ** input.

    >>> import fastdl
    >>> fastdl.exp(fastdl.zeros(1)).tolist()
    [1.0]
    """
    return _unary_op(_ew.ExpFn, input, "exp")


def log(input) -> Tensor:
    """Natural logarithm.

    >>> import fastdl
    >>> fastdl.log(fastdl.ones(1)).tolist()
    [0.0]
    """
    return _unary_op(_ew.LogFn, input, "log")


def log1p(input) -> Tensor:
    """log(1 + input), accurate for small input.

    >>> import fastdl
    >>> fastdl.log1p(fastdl.zeros(1)).tolist()
    [0.0]
    """
    return _unary_op(_ew.Log1pFn, input, "log1p")


def sqrt(input) -> Tensor:
    """Square root.

    >>> import fastdl
    >>> fastdl.sqrt(fastdl.tensor([4.0])).tolist()
    [2.0]
    """
    return _unary_op(_ew.SqrtFn, input, "sqrt")


def rsqrt(input) -> Tensor:
    """1 / sqrt(input).

    >>> import fastdl
    >>> fastdl.rsqrt(fastdl.tensor([4.0])).tolist()
    [0.5]
    """
    return _unary_op(_ew.RsqrtFn, input, "rsqrt")


def sin(input) -> Tensor:
    """Sine.

    >>> import fastdl
    >>> fastdl.sin(fastdl.zeros(1)).tolist()
    [0.0]
    """
    return _unary_op(_ew.SinFn, input, "sin")


def cos(input) -> Tensor:
    """Cosine.

    >>> import fastdl
    >>> fastdl.cos(fastdl.zeros(1)).tolist()
    [1.0]
    """
    return _unary_op(_ew.CosFn, input, "cos")


def tanh(input) -> Tensor:
    """Hyperbolic tangent.

    >>> import fastdl
    >>> fastdl.tanh(fastdl.zeros(1)).tolist()
    [0.0]
    """
    return _unary_op(_ew.TanhFn, input, "tanh")


def sigmoid(input) -> Tensor:
    """1 / (1 + e^-input), stable for large |input|.

    >>> import fastdl
    >>> fastdl.sigmoid(fastdl.zeros(1)).tolist()
    [0.5]
    """
    return _unary_op(_ew.SigmoidFn, input, "sigmoid")


def relu(input, inplace=False) -> Tensor:
    """max(input, 0).

    >>> import fastdl
    >>> fastdl.relu(fastdl.tensor([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """
    return _unary_op(_ew.ReluFn, input, "relu")


def leaky_relu(input, negative_slope=0.01, inplace=False) -> Tensor:
    """input where positive, negative_slope · input elsewhere.

    >>> import fastdl
    >>> fastdl.functional.leaky_relu(fastdl.tensor([-1.0, 2.0], dtype=fastdl.float64), 0.1).tolist()
    [-0.1, 2.0]
    """
    return _unary_op(_ew.LeakyReluFn, input, "leaky_relu", float(negative_slope))


def elu(input, alpha=1.0, inplace=False) -> Tensor:
    """input where positive, alpha·(e^input - 1) elsewhere.

    >>> import fastdl
    >>> round(fastdl.functional.elu(fastdl.tensor([-1.0]))[0].item(), 4)
    -0.6321
    """
    return _unary_op(_ew.EluFn, _float_input(_tensor(input, "elu"), "elu"), "elu", float(alpha))


def gelu(input, approximate="none") -> Tensor:
    """x·Φ(x) with Φ the standard normal CDF; ``approximate="tanh"`` uses the tanh formula.

    >>> import fastdl
    >>> round(fastdl.functional.gelu(fastdl.tensor([1.0])).item(), 4)
    0.8413
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _unary_op(_ew.GeluFn, _float_input(_tensor(input, "gelu"), "gelu"), "gelu", approximate)


def silu(input, inplace=False) -> Tensor:
    """input · sigmoid(input) (swish).

    >>> import fastdl
    >>> fastdl.functional.silu(fastdl.zeros(1)).tolist()
    [0.0]
    """
    return _unary_op(_ew.SiluFn, input, "silu")


def softplus(input, beta=1.0, threshold=20.0) -> Tensor:
    """log(1 + e^(beta·input)) / beta, linear where beta·input > threshold.

    >>> import fastdl
    >>> round(fastdl.functional.softplus(fastdl.zeros(1)).item(), 4)
    0.6931
    """
    return _unary_op(_ew.SoftplusFn, input, "softplus", float(beta), float(threshold))


def logsigmoid(input) -> Tensor:
    """log(sigmoid(input)) = min(input, 0) - log1p(e^-|input|), exact for any input.

    >>> import fastdl
    >>> round(fastdl.functional.logsigmoid(fastdl.tensor([-100.0])).item(), 1)
    -100.0
    """
    x = _tensor(input, "logsigmoid")
    return minimum(x, 0.0) - log1p(exp(-abs(x)))


def clamp(input, min=None, max=None) -> Tensor:
    """input limited to [min, max] (either may be None or a tensor); the gradient passes inside.

    >>> import fastdl
    >>> fastdl.clamp(fastdl.tensor([-2.0, 0.5, 3.0]), -1, 1).tolist()
    [-1.0, 0.5, 1.0]
    """
    x = _tensor(input, "clamp")
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        if min is not None:
            x = maximum(x, min)
        return x if max is None else minimum(x, max)
    if builtins.any(isinstance(v, float) for v in (min, max)) and x.data.dtype.kind != "f":
        x = _ew.to_dtype(x, _defaults.dtype)
    return unary(_ew.ClampFn, x, min, max)


clip = clamp


def maximum(input, other) -> Tensor:
    """Elementwise max, broadcasting; ties split the gradient evenly.

    >>> import fastdl
    >>> fastdl.maximum(fastdl.tensor([1.0, 5.0]), fastdl.tensor([3.0, 2.0])).tolist()
    [3.0, 5.0]
    """
    return _binary_op(_ew.MaximumFn, input, other, "maximum")


def minimum(input, other) -> Tensor:
    """Elementwise min, broadcasting; ties split the gradient evenly.

    >>> import fastdl
    >>> fastdl.minimum(fastdl.tensor([1.0, 5.0]), 2.0).tolist()
    [1.0, 2.0]
    """
    return _binary_op(_ew.MinimumFn, input, other, "minimum")


def where(condition, input, other) -> Tensor:
    """input where condition is true, other elsewhere; all three broadcast.

    >>> import fastdl
    >>> x = fastdl.tensor([1.0, -2.0])
    >>> fastdl.where(x > 0, x, 0.0).tolist()
    [1.0, 0.0]
    """
    cond = condition.data if isinstance(condition, Tensor) else np.asarray(condition)
    if cond.dtype != np.bool_:
        raise TypeError(f"where: condition must be a bool tensor, got {cond.dtype} {cond.shape}")
    a, b = _where_operand(input), _where_operand(other)
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        a, b = _ew.promote_tensors("where", a, b)
    elif isinstance(a, Tensor):
        a = _ew._with_scalar(None, a, b)
    elif isinstance(b, Tensor):
        b = _ew._with_scalar(None, b, a)
    dtype = (a if isinstance(a, Tensor) else b).data.dtype if isinstance(a, Tensor) or isinstance(b, Tensor) \
        else _ew._category_dtype(builtins.max(_ew._PY_CATEGORY[type(v)] for v in (a, b)))
    xp = array_module(cond)
    if not isinstance(a, Tensor):
        a = xp.asarray(a, dtype=dtype)
    if not isinstance(b, Tensor):
        b = xp.asarray(b, dtype=dtype)
    try:
        np.broadcast_shapes(cond.shape, *(v.shape for v in (a, b)))
    except ValueError:
        raise ValueError(
            f"where: shapes do not broadcast: condition {cond.shape}, input {a.shape}, other {b.shape}"
        ) from None
    if _record(a, b):
        return _ew.WhereFn.apply(cond, a, b)
    return Tensor(xp.where(cond, a.data if isinstance(a, Tensor) else a, b.data if isinstance(b, Tensor) else b))


def _where_operand(v):
    if isinstance(v, Tensor):
        return v
    s = _ew._scalar(v)
    if s is not None:
        return s
    t = _ew._as_operand(v)
    if t is NotImplemented:
        raise TypeError(f"where: input and other must be tensors, arrays or numbers, got {type(v).__name__}")
    return t


def square(input) -> Tensor:
    """input².

    >>> import fastdl
    >>> fastdl.square(fastdl.tensor([3.0])).tolist()
    [9.0]
    """
    return _binary_op(_ew.PowFn, input, 2, "square")


def reciprocal(input) -> Tensor:
    """1 / input.

    >>> import fastdl
    >>> fastdl.reciprocal(fastdl.tensor([4.0])).tolist()
    [0.25]
    """
    return _binary_op(_ew.DivFn, 1.0, _tensor(input, "reciprocal"), "reciprocal")


def _zero_grad_op(input, name):
    return unary(_ew.ZeroGradFn, _tensor(input, name), name)


def sign(input) -> Tensor:
    """-1, 0 or 1 by the sign of input (zero gradient).

    >>> import fastdl
    >>> fastdl.sign(fastdl.tensor([-3.0, 0.0, 2.0])).tolist()
    [-1.0, 0.0, 1.0]
    """
    return _zero_grad_op(input, "sign")


def floor(input) -> Tensor:
    """Round down (zero gradient).

    >>> import fastdl
    >>> fastdl.floor(fastdl.tensor([1.5])).tolist()
    [1.0]
    """
    return _zero_grad_op(input, "floor")


def ceil(input) -> Tensor:
    """Round up (zero gradient).

    >>> import fastdl
    >>> fastdl.ceil(fastdl.tensor([1.5])).tolist()
    [2.0]
    """
    return _zero_grad_op(input, "ceil")


def round(input) -> Tensor:
    """Round half to even, as PyTorch (zero gradient).

    >>> import fastdl
    >>> fastdl.round(fastdl.tensor([0.5, 1.5])).tolist()
    [0.0, 2.0]
    """
    return _zero_grad_op(input, "round")


def _compare(name, input, other):
    result = _ew.compare(name, _tensor(input, name), other)
    if result is NotImplemented:
        raise TypeError(f"{name}: cannot compare a tensor with {type(other).__name__}")
    return result


def eq(input, other) -> Tensor:
    """input == other elementwise (bool).

    >>> import fastdl
    >>> fastdl.eq(fastdl.tensor([1, 2]), 2).tolist()
    [False, True]
    """
    return _compare("equal", input, other)


def ne(input, other) -> Tensor:
    """input != other elementwise (bool)."""
    return _compare("not_equal", input, other)


def lt(input, other) -> Tensor:
    """input < other elementwise (bool)."""
    return _compare("less", input, other)


def le(input, other) -> Tensor:
    """input <= other elementwise (bool)."""
    return _compare("less_equal", input, other)


def gt(input, other) -> Tensor:
    """input > other elementwise (bool)."""
    return _compare("greater", input, other)


def ge(input, other) -> Tensor:
    """input >= other elementwise (bool)."""
    return _compare("greater_equal", input, other)


def isnan(input) -> Tensor:
    """Where input is NaN (bool).

    >>> import fastdl
    >>> fastdl.isnan(fastdl.tensor([1.0, float("nan")])).tolist()
    [False, True]
    """
    x = _tensor(input, "isnan")
    return Tensor(array_module(x.data).isnan(x.data))


def isinf(input) -> Tensor:
    """Where input is ±inf (bool)."""
    x = _tensor(input, "isinf")
    return Tensor(array_module(x.data).isinf(x.data))


def isfinite(input) -> Tensor:
    """Where input is finite (bool)."""
    x = _tensor(input, "isfinite")
    return Tensor(array_module(x.data).isfinite(x.data))


def logical_not(input) -> Tensor:
    """not input (bool).

    >>> import fastdl
    >>> fastdl.logical_not(fastdl.tensor([True, False])).tolist()
    [False, True]
    """
    x = _tensor(input, "logical_not")
    return Tensor(array_module(x.data).logical_not(x.data))


def _logical(name, input, other):
    x = _tensor(input, name)
    o = other.data if isinstance(other, Tensor) else other
    return Tensor(getattr(array_module(x.data), name)(x.data, o))


def logical_and(input, other) -> Tensor:
    """input and other (bool)."""
    return _logical("logical_and", input, other)


def logical_or(input, other) -> Tensor:
    """input or other (bool)."""
    return _logical("logical_or", input, other)


def logical_xor(input, other) -> Tensor:
    """input xor other (bool)."""
    return _logical("logical_xor", input, other)


def equal(input, other) -> bool:
    """True if both tensors have the same shape and values.

    >>> import fastdl
    >>> fastdl.equal(fastdl.ones(2), fastdl.ones(2))
    True
    """
    a, b = _tensor(input, "equal"), _tensor(other, "equal", "other")
    return a.shape == b.shape and bool((a.data == b.data).all())


def allclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False) -> bool:
    """True if |input - other| ≤ atol + rtol·|other| everywhere.

    >>> import fastdl
    >>> fastdl.allclose(fastdl.ones(2), fastdl.ones(2) + 1e-9)
    True
    """
    a, b = _tensor(input, "allclose"), _tensor(other, "allclose", "other")
    return bool(array_module(a.data).allclose(a.data, b.data, rtol=rtol, atol=atol, equal_nan=equal_nan))


def clone(input) -> Tensor:
    """A copy of input that stays in the graph.

    >>> import fastdl
    >>> fastdl.clone(fastdl.ones(2)).tolist()
    [1.0, 1.0]
    """
    x = _tensor(input, "clone")
    if _record(x):
        return _ew.CloneFn.apply(x)
    return Tensor(x.data.copy())


def detach(input) -> Tensor:
    """input cut from the graph (shares its data)."""
    return _tensor(input, "detach").detach()


# ---- reductions -----------------------------------------------------------------------------------

def _nonempty(x, dims, op):
    if x.data.size == 0:
        if dims is None or builtins.any(x.shape[d] == 0 for d in dims):
            raise ValueError(f"{op}: cannot reduce an empty tensor of shape {x.shape} over dim {dims}")


def _with_dtype(x, dtype, op):
    return x if dtype is None else _ew.to_dtype(x, np.dtype(dtype))


def sum(input, dim=None, keepdim=False, *, dtype=None) -> Tensor:
    """Sum over ``dim`` (an int, a tuple, or None for all); integers and bools sum to int64.

    >>> import fastdl
    >>> x = fastdl.ones(2, 3)
    >>> fastdl.sum(x).item(), fastdl.sum(x, 1).tolist(), fastdl.sum(x, (0, 1), keepdim=True).shape
    (6.0, [3.0, 3.0], (1, 1))
    """
    x = _with_dtype(_tensor(input, "sum"), dtype, "sum")
    dims = None if dim is None else _dims(dim, x, "sum")
    if x.data.dtype.kind in "biu" and x.data.dtype != np.int64:
        x = _ew.to_dtype(x, np.dtype(np.int64))
    if x.requires_grad and _grad_mode.enabled:
        return _red.SumFn.apply(x, dims, bool(keepdim))
    return Tensor(_red.sum_array(x.data, dims, bool(keepdim)))


def mean(input, dim=None, keepdim=False, *, dtype=None) -> Tensor:
    """Mean over ``dim`` (floating inputs only, as PyTorch).

    >>> import fastdl
    >>> fastdl.mean(fastdl.tensor([[1.0, 2.0], [3.0, 4.0]]), dim=0).tolist()
    [2.0, 3.0]
    """
    x = _float_input(_with_dtype(_tensor(input, "mean"), dtype, "mean"), "mean")
    dims = _dims(dim, x, "mean")
    if x.requires_grad and _grad_mode.enabled:
        return _red.MeanFn.apply(x, dims, bool(keepdim))
    return Tensor(x.data.mean(axis=dims, keepdims=bool(keepdim)))


def _correction(unbiased, correction, op):
    if correction is not None:
        if unbiased is not None:
            raise ValueError(f"{op}: give either unbiased or correction, not both")
        return correction
    return 1 if unbiased is None or unbiased else 0


def var(input, dim=None, unbiased=None, keepdim=False, *, correction=None) -> Tensor:
    """Variance over ``dim`` with Bessel's ``correction`` (default 1; ``unbiased=False`` is 0).

    >>> import fastdl
    >>> fastdl.var(fastdl.tensor([1.0, 2.0, 3.0, 4.0])).item()
    1.6666666269302368
    """
    x = _float_input(_tensor(input, "var"), "var")
    dims = _dims(dim, x, "var")
    return _red.VarFn.apply(x, dims, _correction(unbiased, correction, "var"), bool(keepdim))


def std(input, dim=None, unbiased=None, keepdim=False, *, correction=None) -> Tensor:
    """Standard deviation: sqrt(var).

    >>> import fastdl
    >>> round(fastdl.std(fastdl.tensor([1.0, 3.0])).item(), 4)
    1.4142
    """
    return sqrt(var(input, dim, unbiased, keepdim, correction=correction))


def _extremum(input, dim, keepdim, largest, op):
    x = _tensor(input, op)
    if isinstance(dim, Tensor):
        return (maximum if largest else minimum)(x, dim)
    if dim is None:
        _nonempty(x, None, op)
        if _record(x):
            return _red.AmaxFn.apply(x, None, False, largest)
        return Tensor((array_module(x.data).amax if largest else array_module(x.data).amin)(x.data))
    d = _dim(dim, x.data.ndim, op, x.shape)
    if x.data.ndim == 0:
        return _max_result(x, Tensor(np.zeros((), np.int64)))
    _nonempty(x, (d,), op)
    values, indices = _red.MaxDimFn.apply(x, d, bool(keepdim), largest)
    return _max_result(values, indices)


def max(input, dim=None, keepdim=False):
    """The largest value; with ``dim``, a (values, indices) pair; with a tensor, ``maximum``.

    >>> import fastdl
    >>> x = fastdl.tensor([[1.0, 5.0], [7.0, 2.0]])
    >>> fastdl.max(x).item()
    7.0
    >>> fastdl.max(x, dim=1).indices.tolist()
    [1, 0]
    """
    return _extremum(input, dim, keepdim, True, "max")


def min(input, dim=None, keepdim=False):
    """The smallest value; with ``dim``, a (values, indices) pair; with a tensor, ``minimum``.

    >>> import fastdl
    >>> fastdl.min(fastdl.tensor([[1.0, 5.0], [7.0, 2.0]]), dim=0).values.tolist()
    [1.0, 2.0]
    """
    return _extremum(input, dim, keepdim, False, "min")


def _amax(input, dim, keepdim, largest, op):
    x = _tensor(input, op)
    dims = None if dim == () or dim is None else _dims(dim, x, op)
    _nonempty(x, dims, op)
    if _record(x):
        return _red.AmaxFn.apply(x, dims, bool(keepdim), largest)
    xp = array_module(x.data)
    return Tensor((xp.amax if largest else xp.amin)(x.data, axis=dims, keepdims=bool(keepdim)))


def amax(input, dim=(), keepdim=False) -> Tensor:
    """Max over ``dim`` (all dims by default); ties share the gradient evenly.

    >>> import fastdl
    >>> fastdl.amax(fastdl.tensor([[1.0, 5.0], [7.0, 2.0]]), dim=1).tolist()
    [5.0, 7.0]
    """
    return _amax(input, dim, keepdim, True, "amax")


def amin(input, dim=(), keepdim=False) -> Tensor:
    """Min over ``dim`` (all dims by default); ties share the gradient evenly."""
    return _amax(input, dim, keepdim, False, "amin")


def _arg(input, dim, keepdim, largest, op):
    x = _tensor(input, op)
    xp = array_module(x.data)
    f = xp.argmax if largest else xp.argmin
    if dim is None:
        _nonempty(x, None, op)
        out = f(x.data.reshape(-1))
        return Tensor(xp.asarray(out, dtype=np.int64).reshape((1,) * x.data.ndim if keepdim else ()))
    d = _dim(dim, x.data.ndim, op, x.shape)
    if x.data.ndim == 0:
        return Tensor(np.zeros((), np.int64))
    _nonempty(x, (d,), op)
    return Tensor(f(x.data, axis=d, keepdims=bool(keepdim)).astype(np.int64))


def argmax(input, dim=None, keepdim=False) -> Tensor:
    """Index of the largest value (of the flattened tensor when ``dim`` is None); int64.

    >>> import fastdl
    >>> fastdl.argmax(fastdl.tensor([[1.0, 5.0], [7.0, 2.0]]), dim=1).tolist()
    [1, 0]
    """
    return _arg(input, dim, keepdim, True, "argmax")


def argmin(input, dim=None, keepdim=False) -> Tensor:
    """Index of the smallest value; int64."""
    return _arg(input, dim, keepdim, False, "argmin")


def logsumexp(input, dim, keepdim=False) -> Tensor:
    """log Σ exp(input) over ``dim``, computed stably.

    >>> import fastdl
    >>> round(fastdl.logsumexp(fastdl.tensor([1000.0, 1000.0], dtype=fastdl.float64), 0).item(), 4)
    1000.6931
    """
    x = _float_input(_tensor(input, "logsumexp"), "logsumexp")
    return _red.LogsumexpFn.apply(x, _dims(dim, x, "logsumexp"), bool(keepdim))


def prod(input, dim=None, keepdim=False) -> Tensor:
    """Product over one ``dim`` (or all); exact gradients also where input has zeros.

    >>> import fastdl
    >>> fastdl.prod(fastdl.tensor([2.0, 3.0, 4.0])).item()
    24.0
    """
    x = _tensor(input, "prod")
    d = None if dim is None else _dim(dim, x.data.ndim, "prod", x.shape)
    if x.data.ndim == 0:
        d = None
    if _record(x):
        return _red.ProdFn.apply(x, d, bool(keepdim))
    return Tensor(x.data.prod(axis=d, keepdims=bool(keepdim)))


def norm(input, p="fro", dim=None, keepdim=False) -> Tensor:
    """The vector p-norm over ``dim`` (all elements by default): p = "fro"/2, 1, inf, -inf, 0 or
    any number; the gradient at a zero norm is 0.

    >>> import fastdl
    >>> fastdl.norm(fastdl.tensor([3.0, 4.0])).item()
    5.0
    """
    x = _float_input(_tensor(input, "norm"), "norm")
    if p == "fro":
        p = 2
    if not isinstance(p, numbers.Real):
        raise ValueError(f"norm: p must be a number, 'fro', inf or -inf, got {p!r}")
    return _red.NormFn.apply(x, float(p), _dims(dim, x, "norm"), bool(keepdim))


def cumsum(input, dim) -> Tensor:
    """Running sum along ``dim``.

    >>> import fastdl
    >>> fastdl.cumsum(fastdl.tensor([1.0, 2.0, 3.0]), 0).tolist()
    [1.0, 3.0, 6.0]
    """
    x = _tensor(input, "cumsum")
    d = _dim(dim, x.data.ndim, "cumsum", x.shape)
    if x.data.ndim == 0:
        return clone(x)
    return _red.CumsumFn.apply(x, d)


def all(input, dim=None, keepdim=False) -> Tensor:
    """Whether every element (along ``dim``) is nonzero (bool).

    >>> import fastdl
    >>> fastdl.all(fastdl.tensor([True, False])).item()
    False
    """
    x = _tensor(input, "all")
    return Tensor(array_module(x.data).all(x.data, axis=_dims(dim, x, "all"), keepdims=bool(keepdim)))


def any(input, dim=None, keepdim=False) -> Tensor:
    """Whether any element (along ``dim``) is nonzero (bool).

    >>> import fastdl
    >>> fastdl.any(fastdl.tensor([True, False])).item()
    True
    """
    x = _tensor(input, "any")
    return Tensor(array_module(x.data).any(x.data, axis=_dims(dim, x, "any"), keepdims=bool(keepdim)))


def _softmax_dim(dim, x, op):
    if dim is None:  # PyTorch's legacy implicit choice
        dim = 0 if x.data.ndim in (0, 1, 3) else 1
    return _dim(dim, x.data.ndim, op, x.shape) if x.data.ndim else None


def softmax(input, dim=None, dtype=None) -> Tensor:
    """exp(x) / Σ exp(x) along ``dim``, shifted by the max for stability.

    >>> import fastdl
    >>> fastdl.softmax(fastdl.tensor([0.0, 0.0]), dim=0).tolist()
    [0.5, 0.5]
    """
    x = _float_input(_with_dtype(_tensor(input, "softmax"), dtype, "softmax"), "softmax")
    return _red.SoftmaxFn.apply(x, _softmax_dim(dim, x, "softmax"))


def log_softmax(input, dim=None, dtype=None) -> Tensor:
    """log(softmax(x)) along ``dim``, computed without forming softmax.

    >>> import fastdl
    >>> round(fastdl.log_softmax(fastdl.tensor([0.0, 0.0]), dim=0)[0].item(), 4)
    -0.6931
    """
    x = _float_input(_with_dtype(_tensor(input, "log_softmax"), dtype, "log_softmax"), "log_softmax")
    return _red.LogSoftmaxFn.apply(x, _softmax_dim(dim, x, "log_softmax"))


# ---- gemm -----------------------------------------------------------------------------------------

def matmul(input, other) -> Tensor:
    """Matrix product with ``torch.matmul``'s rules: (…, M, K) @ (…, K, N) → (…, M, N) with batch
    dims broadcast; a 1-D operand is a row (left) or column (right) vector whose dim is dropped.
    Runs on fastdl's GEMM (float32/float64).

    >>> import fastdl
    >>> fastdl.matmul(fastdl.ones(5, 2, 3), fastdl.ones(3, 4)).shape
    (5, 2, 4)
    >>> fastdl.matmul(fastdl.ones(3), fastdl.ones(3)).item()
    3.0
    """
    if input.__class__ is Tensor and other.__class__ is Tensor:
        # The common case first: two float32/float64 matrices on the CPU with no graph to record.
        ad, bd = input.data, other.data
        dtype = ad.dtype
        if dtype is bd.dtype and (dtype is _F32 or dtype is _F64) and ad.__class__ is _ndarray \
                and bd.__class__ is _ndarray and not (_grad_mode.enabled and (input.requires_grad or other.requires_grad)):
            sa, sb = ad.shape, bd.shape
            if len(sa) == 2 and len(sb) == 2 and sa[1] == sb[0]:
                out = _empty((sa[0], sb[1]), dtype)
                _C.gemm(ad, bd, out, False, False, 1.0, 0.0)
                return Tensor(out)
    a = input if isinstance(input, Tensor) else _ew._as_operand(input)
    b = other if isinstance(other, Tensor) else _ew._as_operand(other)
    if a is NotImplemented or b is NotImplemented:
        raise TypeError(f"matmul: operands must be tensors or arrays, got {type(input).__name__} and "
                        f"{type(other).__name__}")
    if a.data.dtype is not b.data.dtype or a.data.__class__ is not b.data.__class__:
        a, b = _ew.promote_tensors("matmul", a, b)
    sa, sb = a.data.shape, b.data.shape
    if len(sa) == 0 or len(sb) == 0:
        raise ValueError(f"matmul: both operands need at least one dimension, got {sa} and {sb}")
    ka = sa[-1]
    kb = sb[0] if len(sb) == 1 else sb[-2]
    if ka != kb:
        raise ValueError(f"matmul: inner dimensions differ: {sa} @ {sb} ({ka} != {kb})")
    if len(sa) > 2 or len(sb) > 2:
        try:
            np.broadcast_shapes(sa[:-2], sb[:-2])
        except ValueError:
            raise ValueError(f"matmul: batch dimensions do not broadcast: {sa} @ {sb}") from None
    if a.data.dtype == np.bool_:
        raise TypeError(f"matmul: bool tensors are not supported ({sa} @ {sb})")
    if _grad_mode.enabled and (a.requires_grad or b.requires_grad):
        return _gemm.MatmulFn.apply(a, b)
    return Tensor(_gemm.matmul(a.data, b.data))


def mm(input, mat2) -> Tensor:
    """(M, K) @ (K, N) → (M, N).

    >>> import fastdl
    >>> fastdl.mm(fastdl.ones(2, 3), fastdl.ones(3, 4)).shape
    (2, 4)
    """
    a, b = _tensor(input, "mm"), _tensor(mat2, "mm", "mat2")
    if a.data.ndim != 2 or b.data.ndim != 2:
        raise ValueError(f"mm: both operands must be 2-D, got {a.shape} and {b.shape}")
    return matmul(a, b)


def bmm(input, mat2) -> Tensor:
    """(B, M, K) @ (B, K, N) → (B, M, N).

    >>> import fastdl
    >>> fastdl.bmm(fastdl.ones(2, 2, 3), fastdl.ones(2, 3, 4)).shape
    (2, 2, 4)
    """
    a, b = _tensor(input, "bmm"), _tensor(mat2, "bmm", "mat2")
    if a.data.ndim != 3 or b.data.ndim != 3 or a.shape[0] != b.shape[0]:
        raise ValueError(f"bmm: operands must be 3-D with the same batch size, got {a.shape} and {b.shape}")
    return matmul(a, b)


def dot(input, other) -> Tensor:
    """Inner product of two 1-D tensors.

    >>> import fastdl
    >>> fastdl.dot(fastdl.tensor([1.0, 2.0]), fastdl.tensor([3.0, 4.0])).item()
    11.0
    """
    a, b = _tensor(input, "dot"), _tensor(other, "dot", "other")
    if a.data.ndim != 1 or b.data.ndim != 1:
        raise ValueError(f"dot: both operands must be 1-D, got {a.shape} and {b.shape}")
    return matmul(a, b)


def linear(input, weight, bias=None) -> Tensor:
    """input (…, in) · weight (out, in)ᵀ + bias (out,) → (…, out), on fastdl's GEMM.

    >>> import fastdl
    >>> fastdl.functional.linear(fastdl.ones(4, 3), fastdl.ones(2, 3), fastdl.zeros(2)).tolist()[0]
    [3.0, 3.0]
    """
    x, w = _tensor(input, "linear"), _tensor(weight, "linear", "weight")
    xd, wd = x.data, w.data
    if wd.ndim != 2 or xd.ndim < 1 or xd.shape[-1] != wd.shape[1]:
        raise ValueError(f"linear: input {x.shape} vs weight {w.shape}: the last dimension of input must "
                         "equal weight's second (in_features)")
    bd = None
    if bias is not None:
        bd = _tensor(bias, "linear", "bias").data
        if bd.shape != (wd.shape[0],):
            raise ValueError(f"linear: bias {bias.shape} must be ({wd.shape[0]},) for weight {w.shape}")
    if xd.dtype is not wd.dtype or (bd is not None and bd.dtype is not xd.dtype):
        operands = (x, w) if bias is None else (x, w, bias)
        if builtins.any(t.data.dtype != xd.dtype for t in operands):
            raise TypeError("linear: dtypes differ: " + ", ".join(f"{t.dtype} {t.shape}" for t in operands))
    if xd.dtype.kind != "f":
        raise TypeError(f"linear: input must be floating point, got {x.dtype} {x.shape}")
    if xd.__class__ is not wd.__class__ or (bd is not None and bd.__class__ is not xd.__class__):
        _raise_devices("linear", (x, w) if bias is None else (x, w, bias))
    if _grad_mode.enabled and (x.requires_grad or w.requires_grad or (bias is not None and bias.requires_grad)):
        return _gemm.GemmFn.apply(x, w, bias)
    return Tensor(_gemm.GemmFn.forward(_NULL_CTX, xd, wd, bd))


# ---- shapes ---------------------------------------------------------------------------------------

def _apply(cls, x, *args):
    if x.requires_grad and _grad_mode.enabled:
        return cls.apply(x, *args)
    out = cls.forward(_NULL_CTX, x.data, *args)
    return tuple(Tensor(o) for o in out) if isinstance(out, tuple) else Tensor(out)


def reshape(input, shape) -> Tensor:
    """The same elements in a new shape (one entry may be -1); a view when the layout allows.

    >>> import fastdl
    >>> fastdl.reshape(fastdl.arange(6), (2, -1)).shape
    (2, 3)
    """
    x = _tensor(input, "reshape")
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    known = [s for s in shape if s != -1]
    if builtins.any(not _is_int(s) or s < -1 for s in shape) or len(known) < len(shape) - 1:
        raise ValueError(f"reshape: invalid shape {shape} for a tensor of shape {x.shape}")
    n = x.data.size
    k = math.prod(known)
    if (len(known) == len(shape) and k != n) or (len(known) < len(shape) and (k == 0 or n % k)):
        raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} ({n} elements) into {shape}")
    if shape == x.shape:
        return x
    return _apply(_shp.ReshapeFn, x, shape)


def flatten(input, start_dim=0, end_dim=-1) -> Tensor:
    """Dims ``start_dim`` … ``end_dim`` merged into one.

    >>> import fastdl
    >>> fastdl.flatten(fastdl.ones(2, 3, 4), 1).shape
    (2, 12)
    """
    x = _tensor(input, "flatten")
    if x.data.ndim == 0:
        return reshape(x, (1,))
    s = _dim(start_dim, x.data.ndim, "flatten", x.shape)
    e = _dim(end_dim, x.data.ndim, "flatten", x.shape)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {x.shape}")
    return reshape(x, x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])


def unflatten(input, dim, sizes) -> Tensor:
    """Dim ``dim`` split into ``sizes`` (one may be -1).

    >>> import fastdl
    >>> fastdl.unflatten(fastdl.ones(2, 12), 1, (3, 4)).shape
    (2, 3, 4)
    """
    x = _tensor(input, "unflatten")
    d = _dim(dim, x.data.ndim, "unflatten", x.shape)
    sizes = tuple(sizes)
    known = math.prod(s for s in sizes if s != -1)
    n = x.shape[d]
    if -1 in sizes:
        if known == 0 or n % known:
            raise ValueError(f"unflatten: sizes {sizes} do not divide dim {dim} of size {n} in {x.shape}")
        sizes = tuple(n // known if s == -1 else s for s in sizes)
    elif known != n:
        raise ValueError(f"unflatten: sizes {sizes} multiply to {known}, not dim {dim} of size {n} in {x.shape}")
    return reshape(x, x.shape[:d] + sizes + x.shape[d + 1:])


def squeeze(input, dim=None) -> Tensor:
    """Size-1 dims removed (all, or those in ``dim``; a listed dim of another size is kept).

    >>> import fastdl
    >>> fastdl.squeeze(fastdl.ones(1, 3, 1)).shape, fastdl.squeeze(fastdl.ones(1, 3, 1), 0).shape
    ((3,), (3, 1))
    """
    x = _tensor(input, "squeeze")
    if dim is None:
        drop = {i for i, s in enumerate(x.shape) if s == 1}
    else:
        drop = {d for d in (_dims(dim, x, "squeeze") or ()) if x.shape[d] == 1}
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in drop))


def unsqueeze(input, dim) -> Tensor:
    """A size-1 dim inserted at ``dim`` (in [-ndim-1, ndim]).

    >>> import fastdl
    >>> fastdl.unsqueeze(fastdl.ones(3), 0).shape, fastdl.unsqueeze(fastdl.ones(3), -1).shape
    ((1, 3), (3, 1))
    """
    x = _tensor(input, "unsqueeze")
    d = _dim(dim, x.data.ndim + 1, "unsqueeze", x.shape)
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


def permute(input, dims) -> Tensor:
    """The dims reordered (a view).

    >>> import fastdl
    >>> fastdl.permute(fastdl.ones(2, 3, 4), (2, 0, 1)).shape
    (4, 2, 3)
    """
    x = _tensor(input, "permute")
    dims = tuple(dims)
    norm = tuple(_dim(d, x.data.ndim, "permute", x.shape) for d in dims) if x.data.ndim else ()
    if len(norm) != x.data.ndim or sorted(norm) != list(range(x.data.ndim)):
        raise ValueError(f"permute: {dims} is not a permutation of the dims of a tensor of shape {x.shape}")
    if norm == tuple(range(x.data.ndim)):
        return x
    return _apply(_shp.PermuteFn, x, norm)


def transpose(input, dim0, dim1) -> Tensor:
    """Dims ``dim0`` and ``dim1`` swapped (a view).

    >>> import fastdl
    >>> fastdl.transpose(fastdl.ones(2, 3, 4), 0, 2).shape
    (4, 3, 2)
    """
    x = _tensor(input, "transpose")
    if x.data.ndim == 0:
        return x
    a = _dim(dim0, x.data.ndim, "transpose", x.shape)
    b = _dim(dim1, x.data.ndim, "transpose", x.shape)
    dims = list(range(x.data.ndim))
    dims[a], dims[b] = dims[b], dims[a]
    return permute(x, dims)


def t(input) -> Tensor:
    """The transpose of a tensor with at most 2 dims.

    >>> import fastdl
    >>> fastdl.t(fastdl.ones(2, 3)).shape
    (3, 2)
    """
    x = _tensor(input, "t")
    if x.data.ndim > 2:
        raise ValueError(f"t: expects a tensor with at most 2 dims, got {x.shape} (use transpose)")
    return transpose(x, 0, -1) if x.data.ndim == 2 else x


def expand(input, shape) -> Tensor:
    """A broadcast view with size-1 dims stretched to ``shape`` (-1 keeps a size).

    >>> import fastdl
    >>> fastdl.functional.expand(fastdl.ones(3, 1), (2, 3, 4)).shape
    (2, 3, 4)
    """
    x = _tensor(input, "expand")
    shape = tuple(shape)
    lead = len(shape) - x.data.ndim
    if lead < 0:
        raise ValueError(f"expand: shape {shape} has fewer dims than the tensor's {x.shape}")
    target = tuple(x.shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(shape))
    for i, s in enumerate(x.shape):
        if s != 1 and s != target[i + lead]:
            raise ValueError(f"expand: cannot expand a tensor of shape {x.shape} to {shape} (dim {i} has size {s})")
    if builtins.any(not _is_int(s) or s < 0 for s in target):
        raise ValueError(f"expand: invalid shape {shape} for a tensor of shape {x.shape}")
    if target == x.shape:
        return x
    return _apply(_shp.ExpandFn, x, target)


def repeat(input, repeats) -> Tensor:
    """The tensor tiled ``repeats`` times along each dim (as ``Tensor.repeat``).

    >>> import fastdl
    >>> fastdl.repeat(fastdl.ones(2, 3), (2, 1, 2)).shape
    (2, 2, 6)
    """
    x = _tensor(input, "repeat")
    repeats = tuple(repeats)
    if len(repeats) < x.data.ndim or builtins.any(not _is_int(r) or r < 0 for r in repeats):
        raise ValueError(f"repeat: repeats {repeats} must be non-negative, one per dim of {x.shape} (or more)")
    return _apply(_shp.RepeatFn, x, repeats)


def contiguous(input) -> Tensor:
    """input with C-contiguous data (itself when it already is)."""
    x = _tensor(input, "contiguous")
    if x.data.flags.c_contiguous:
        return x
    return _apply(_shp.ContiguousFn, x)


def _join(op, tensors, dim, stack_new):
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{op}: expected a list or tuple of tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError(f"{op}: expected a non-empty list of tensors")
    ts = [_tensor(t, op, f"tensors[{i}]") for i, t in enumerate(tensors)]
    shapes = [t.shape for t in ts]
    for t in ts[1:]:
        if t.data.__class__ is not ts[0].data.__class__:
            _raise_devices(op, ts)
    if stack_new:
        if builtins.any(s != shapes[0] for s in shapes):
            raise ValueError(f"{op}: all tensors must have the same shape, got {shapes}")
        d = _dim(dim, len(shapes[0]) + 1, op, shapes[0])
    else:
        ndim = len(shapes[0])
        if ndim == 0:
            raise ValueError(f"{op}: zero-dimensional tensors cannot be concatenated, got {shapes}")
        d = _dim(dim, ndim, op, shapes[0])
        for s in shapes:
            if len(s) != ndim or s[:d] + s[d + 1:] != shapes[0][:d] + shapes[0][d + 1:]:
                raise ValueError(f"{op}: sizes must match except in dim {dim}, got {shapes}")
    dtypes = {t.data.dtype for t in ts}
    if len(dtypes) > 1:
        target = ts[0]
        for t in ts[1:]:
            target = _ew.promote_tensors(op, target, t)[0]
        ts = [_ew.to_dtype(t, target.data.dtype) for t in ts]
    cls = _shp.StackFn if stack_new else _shp.CatFn
    if _record(*ts):
        return cls.apply(d, *ts)
    return Tensor(cls.forward(_NULL_CTX, d, *(t.data for t in ts)))


def cat(tensors, dim=0) -> Tensor:
    """Tensors joined along an existing ``dim`` (dtypes promoted).

    >>> import fastdl
    >>> fastdl.cat([fastdl.ones(2, 3), fastdl.zeros(1, 3)]).shape
    (3, 3)
    """
    return _join("cat", tensors, dim, False)


concat = cat


def stack(tensors, dim=0) -> Tensor:
    """Same-shaped tensors joined along a new ``dim``.

    >>> import fastdl
    >>> fastdl.stack([fastdl.ones(2), fastdl.zeros(2)], dim=1).shape
    (2, 2)
    """
    return _join("stack", tensors, dim, True)


def split(tensor, split_size_or_sections, dim=0) -> tuple:
    """Views of consecutive pieces along ``dim``: of size ``split_size_or_sections`` (the last may be
    smaller), or of the listed sizes.

    >>> import fastdl
    >>> [p.shape for p in fastdl.split(fastdl.ones(5, 2), 2)]
    [(2, 2), (2, 2), (1, 2)]
    >>> [p.shape for p in fastdl.split(fastdl.ones(5, 2), [1, 4])]
    [(1, 2), (4, 2)]
    """
    x = _tensor(tensor, "split", "tensor")
    d = _dim(dim, x.data.ndim, "split", x.shape)
    n = x.shape[d]
    if _is_int(split_size_or_sections):
        size = int(split_size_or_sections)
        if size <= 0:
            raise ValueError(f"split: split_size must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else [])
        if not sizes:
            sizes = [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if builtins.sum(sizes) != n or builtins.any(s < 0 for s in sizes):
            raise ValueError(f"split: sizes {sizes} do not add up to dim {dim} of size {n} in {x.shape}")
    return _apply(_shp.SplitFn, x, tuple(sizes), d)


def chunk(input, chunks, dim=0) -> tuple:
    """About ``chunks`` equal pieces along ``dim`` (each ceil(n / chunks); possibly fewer pieces).

    >>> import fastdl
    >>> [p.shape[0] for p in fastdl.chunk(fastdl.ones(5), 3)]
    [2, 2, 1]
    """
    x = _tensor(input, "chunk")
    if not _is_int(chunks) or chunks <= 0:
        raise ValueError(f"chunk: chunks must be a positive integer, got {chunks!r}")
    d = _dim(dim, x.data.ndim, "chunk", x.shape)
    n = x.shape[d]
    return split(x, builtins.max(-(-n // chunks), 1), d)


def unbind(input, dim=0) -> tuple:
    """The slices along ``dim``, that dim removed.

    >>> import fastdl
    >>> [p.shape for p in fastdl.unbind(fastdl.ones(2, 3), 1)]
    [(2,), (2,), (2,)]
    """
    x = _tensor(input, "unbind")
    return _apply(_shp.UnbindFn, x, _dim(dim, x.data.ndim, "unbind", x.shape))


def pad(input, pad, mode="constant", value=None) -> Tensor:
    """Pad the last dims: ``pad = (left, right)`` for the last dim, then ``(top, bottom)`` for the
    one before, …; negative amounts crop. Modes: constant (``value``, default 0), reflect,
    replicate, circular.

    >>> import fastdl
    >>> fastdl.functional.pad(fastdl.ones(2, 3), (1, 2)).shape
    (2, 6)
    >>> fastdl.functional.pad(fastdl.tensor([[1.0, 2.0, 3.0]]), (2, 0), mode="reflect").tolist()
    [[3.0, 2.0, 1.0, 2.0, 3.0]]
    """
    x = _tensor(input, "pad")
    pad = tuple(pad)
    if len(pad) % 2 or len(pad) // 2 > x.data.ndim or builtins.any(not _is_int(p) for p in pad):
        raise ValueError(f"pad: pad {pad} must hold (before, after) integer pairs for at most {x.data.ndim} dims "
                         f"of {x.shape}")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ValueError(f"pad: mode must be constant, reflect, replicate or circular, got {mode!r}")
    pairs = tuple((pad[2 * k], pad[2 * k + 1]) for k in range(len(pad) // 2))[::-1]
    first = x.data.ndim - len(pairs)
    for k, (b, a) in enumerate(pairs):
        n = x.shape[first + k]
        if mode == "constant":
            if n + b + a < 0:
                raise ValueError(f"pad: padding {pad} leaves a negative size for dim {first + k} of {x.shape}")
        elif b < 0 or a < 0 or (mode == "reflect" and (b >= n or a >= n)) or (mode != "reflect" and n == 0) \
                or (mode == "circular" and (b > n or a > n)):
            limit = "smaller than" if mode == "reflect" else "at most"
            raise ValueError(f"pad: {mode} padding {pad} must be non-negative and {limit} the size of dim "
                             f"{first + k} of {x.shape}")
    return _apply(_shp.PadFn, x, pairs, mode, 0 if value is None else value)


def flip(input, dims) -> Tensor:
    """The order of elements reversed along ``dims``.

    >>> import fastdl
    >>> fastdl.flip(fastdl.tensor([1, 2, 3]), (0,)).tolist()
    [3, 2, 1]
    """
    x = _tensor(input, "flip")
    dims = _dims(tuple(dims) if isinstance(dims, (tuple, list)) else dims, x, "flip")
    if not dims:
        return x
    return _apply(_shp.FlipFn, x, dims)


def _index_key(key):
    """``key`` with tensors and lists as arrays and booleans as integer arrays (``nonzero``);
    returns (key, advanced) where advanced means it holds integer arrays."""
    if not isinstance(key, tuple):
        key = (key,)
    out, advanced = [], False
    for k in key:
        if isinstance(k, Tensor):
            k = k.data
        elif isinstance(k, list):
            k = np.asarray(k)
            if k.size == 0:
                k = k.astype(np.int64)
        if hasattr(k, "dtype") and getattr(k, "ndim", 0) >= 0 and not isinstance(k, np.generic):
            if k.dtype == np.bool_:
                out.extend(k.nonzero())
                advanced = True
                continue
            if k.dtype.kind not in "iu":
                raise IndexError(f"index: tensors used as indices must be integer or bool, got {k.dtype} {k.shape}")
            advanced = True
        out.append(k)
    return tuple(out), advanced


def index(input, key) -> Tensor:
    """``input[key]`` with ints, slices, None, Ellipsis, integer and bool tensors; repeated integer
    indices accumulate their gradients.

    >>> import fastdl
    >>> x = fastdl.arange(12).reshape(3, 4)
    >>> x[1, 1:3].tolist(), x[fastdl.tensor([0, 2])].shape, x[x > 9].tolist()
    ([5, 6], (2, 4), [10, 11])
    """
    x = _tensor(input, "index")
    k, advanced = _index_key(key)
    try:
        if x.requires_grad and _grad_mode.enabled:
            return _shp.IndexFn.apply(x, k, advanced)
        return Tensor(x.data[k])
    except IndexError as exc:
        raise IndexError(f"index: {exc} (tensor of shape {x.shape})") from None


def _gather_args(op, x, dim, index):
    d = _dim(dim, x.data.ndim, op, x.shape)
    idx = _index_array(index, op)
    if idx.ndim != x.data.ndim:
        raise ValueError(f"{op}: index {idx.shape} must have as many dims as input {x.shape}")
    if builtins.any(idx.shape[i] > x.shape[i] for i in range(idx.ndim) if i != d):
        raise ValueError(f"{op}: index {idx.shape} is larger than input {x.shape} outside dim {dim}")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= x.shape[d]):
        raise IndexError(f"{op}: index values must be in [0, {x.shape[d]}) for dim {dim} of input {x.shape}, "
                         f"got [{int(idx.min())}, {int(idx.max())}]")
    return d, idx


def gather(input, dim, index) -> Tensor:
    """out[i][j] = input[index[i][j]][j] (dim 0), … : values picked along ``dim``.

    >>> import fastdl
    >>> x = fastdl.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> fastdl.gather(x, 1, fastdl.tensor([[0, 0], [1, 0]])).tolist()
    [[1.0, 1.0], [4.0, 3.0]]
    """
    x = _tensor(input, "gather")
    d, idx = _gather_args("gather", x, dim, index)
    return _apply(_shp.GatherFn, x, d, idx)


def scatter_add(input, dim, index, src) -> Tensor:
    """input with src[i][j] added at row index[i][j] (dim 0), …; repeated indices accumulate.

    >>> import fastdl
    >>> fastdl.scatter_add(fastdl.zeros(3), 0, fastdl.tensor([0, 0, 2]), fastdl.ones(3)).tolist()
    [2.0, 0.0, 1.0]
    """
    x, s = _tensor(input, "scatter_add"), _tensor(src, "scatter_add", "src")
    d, idx = _gather_args("scatter_add", x, dim, index)
    if s.data.ndim != idx.ndim or builtins.any(idx.shape[i] > s.shape[i] for i in range(idx.ndim)):
        raise ValueError(f"scatter_add: src {s.shape} must be at least as large as index {idx.shape}")
    if s.data.dtype != x.data.dtype:
        raise TypeError(f"scatter_add: src dtype {s.dtype} differs from input dtype {x.dtype}")
    if _record(x, s):
        return _shp.ScatterAddFn.apply(x, d, idx, s)
    return Tensor(_shp.ScatterAddFn.forward(_NULL_CTX, x.data, d, idx, s.data))


def masked_fill(input, mask, value) -> Tensor:
    """input with ``value`` where ``mask`` (a bool tensor broadcastable to input) is true.

    >>> import fastdl
    >>> x = fastdl.tensor([1.0, 2.0, 3.0])
    >>> fastdl.masked_fill(x, x > 1, 0.0).tolist()
    [1.0, 0.0, 0.0]
    """
    x = _tensor(input, "masked_fill")
    m = mask.data if isinstance(mask, Tensor) else np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"masked_fill: mask must be a bool tensor, got {m.dtype} {m.shape}")
    try:
        ok = np.broadcast_shapes(m.shape, x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"masked_fill: mask {m.shape} does not broadcast to input {x.shape}")
    if isinstance(value, Tensor):
        value = value.item()
    return _apply(_shp.MaskedFillFn, x, m, value)


def index_select(input, dim, index) -> Tensor:
    """The entries ``index`` (1-D integers) along ``dim``.

    >>> import fastdl
    >>> fastdl.index_select(fastdl.arange(6).reshape(2, 3), 1, fastdl.tensor([2, 0])).tolist()
    [[2, 0], [5, 3]]
    """
    x = _tensor(input, "index_select")
    d = _dim(dim, x.data.ndim, "index_select", x.shape)
    idx = _index_array(index, "index_select")
    if idx.ndim > 1:
        raise ValueError(f"index_select: index must be 1-D, got {idx.shape}")
    n = x.shape[d] if x.data.ndim else 1
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(f"index_select: index values must be in [0, {n}) for dim {dim} of input {x.shape}")
    return _apply(_shp.IndexSelectFn, x, d, idx.reshape(-1))


def one_hot(tensor, num_classes=-1) -> Tensor:
    """Integer class labels (…) → one-hot int64 (…, num_classes); -1 infers max + 1.

    >>> import fastdl
    >>> fastdl.functional.one_hot(fastdl.tensor([0, 2]), 3).tolist()
    [[1, 0, 0], [0, 0, 1]]
    """
    labels = _index_array(_tensor(tensor, "one_hot", "tensor"), "one_hot", "tensor")
    xp = array_module(labels)
    if num_classes == -1:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"one_hot: labels must be in [0, {num_classes}), got [{int(labels.min())}, "
                         f"{int(labels.max())}] in a tensor of shape {labels.shape}")
    return Tensor((labels[..., None] == xp.arange(num_classes)).astype(np.int64))


def _triangle(input, diagonal, upper, op):
    x = _tensor(input, op)
    if x.data.ndim < 2:
        raise ValueError(f"{op}: input must have at least 2 dims, got {x.shape}")
    return _apply(_shp.TriangleFn, x, int(diagonal), upper)


def tril(input, diagonal=0) -> Tensor:
    """The lower triangle of the last two dims (on and below ``diagonal``), zeros elsewhere.

    >>> import fastdl
    >>> fastdl.tril(fastdl.ones(2, 2)).tolist()
    [[1.0, 0.0], [1.0, 1.0]]
    """
    return _triangle(input, diagonal, False, "tril")


def triu(input, diagonal=0) -> Tensor:
    """The upper triangle of the last two dims (on and above ``diagonal``), zeros elsewhere.

    >>> import fastdl
    >>> fastdl.triu(fastdl.ones(2, 2), 1).tolist()
    [[0.0, 1.0], [0.0, 0.0]]
    """
    return _triangle(input, diagonal, True, "triu")


# ---- random ---------------------------------------------------------------------------------------

def dropout(input, p=0.5, training=True, inplace=False) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (training only); the
    mask comes from fastdl's seeded generator (on the CPU: one 64-bit seed drawn from it, expanded
    by the native ``_C.dropout_mask``, the same mask for any thread count).

    >>> import fastdl
    >>> _ = fastdl.manual_seed(0)
    >>> y = fastdl.functional.dropout(fastdl.ones(1000), 0.5)
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
    """
    x = _tensor(input, "dropout")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if isinstance(x.data, np.ndarray) and x.data.dtype in (np.float32, np.float64):
        mask = np.empty(x.shape, x.data.dtype)
        _C.dropout_mask(mask, p, int(_random.generator().integers(0, 2**63)))
        return x * mask
    keep = _random.generator().random(x.shape, dtype=np.float32) >= p
    return x * (keep.astype(x.data.dtype) * (1.0 / (1.0 - p)))


def to_dtype(input, dtype) -> Tensor:
    """input cast to ``dtype`` (differentiable between floating dtypes).

    >>> import fastdl
    >>> fastdl.functional.to_dtype(fastdl.ones(1), fastdl.float64).dtype
    dtype('float64')
    """
    return _ew.to_dtype(_tensor(input, "to_dtype"), dtype)


# ---- recurrent: LSTM and GRU (native), RNN (composed) ----------------------------------------------

from .backend import note_fallback as _note_fallback  # noqa: E402
from .ops import lstm as _lstm  # noqa: E402

__all__ += ["lstm", "lstm_cell", "gru", "gru_cell", "rnn", "rnn_tanh_cell", "rnn_relu_cell"]


_LSTM_OPERANDS = ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
_CELL_OPERANDS = ("input", "h", "c", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
_SINGLE_STATE_OPERANDS = ("input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _recurrent_operands(op, names, operands):
    """Check that every given operand (None: absent) is a Tensor of one floating dtype on one device."""
    first = operands[0]
    if not isinstance(first, Tensor):
        _tensor(first, op, names[0])
    dtype, kind = first.data.dtype, first.data.__class__
    if dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point, got {first.dtype} {first.shape}")
    for name, t in zip(names, operands):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            _tensor(t, op, name)
        if t.data.dtype != dtype:
            raise TypeError(f"{op}: dtypes differ: " + ", ".join(
                f"{n} {o.dtype} {o.shape}" for n, o in zip(names, operands) if isinstance(o, Tensor)))
        if t.data.__class__ is not kind:
            _raise_devices(op, [o for o in operands if o is not None])


def _state_pair(hx, op):
    if hx is None:
        return None, None
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"{op}: hx must be a pair (h, c) of Tensors or None, got {type(hx).__name__}")
    return hx[0], hx[1]


def _apply_recurrent(fn, operands):
    """fn on the operands: recorded when a gradient is needed, else straight on the arrays."""
    if _grad_mode.enabled and builtins.any(o is not None and o.requires_grad for o in operands):
        return fn.apply(*operands)
    out = fn.forward(_NULL_CTX, *(None if o is None else o.data for o in operands))
    return tuple(Tensor(o) for o in out) if isinstance(out, tuple) else Tensor(out)


def lstm(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One LSTM layer over a time-major sequence on fastdl's fused native kernel (PyTorch's gate
    order i, f, g, o): input (T, B, I), hx = (h0, c0) each (B, H) or None (zeros), weight_ih
    (4H, I), weight_hh (4H, H), bias_ih and bias_hh (4H,) or None → (output (T, B, H), (h_n, c_n)).

    >>> import fastdl
    >>> y, (h, c) = fastdl.functional.lstm(fastdl.ones(5, 2, 3), None, fastdl.ones(8, 3) * 0.1, fastdl.zeros(8, 2))
    >>> y.shape, h.shape, c.shape
    ((5, 2, 2), (2, 2), (2, 2))
    """
    h0, c0 = _state_pair(hx, "lstm")
    operands = (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)
    _recurrent_operands("lstm", _LSTM_OPERANDS, operands)
    y, h, c = _apply_recurrent(_lstm.LSTMFn, operands)
    return y, (h, c)


def _check_cell(op, x, h, gates, weight_ih, weight_hh, bias_ih, bias_hh, states=1):
    """Shapes of one recurrent cell step: input (B, I), hidden states (B, H), weights (gates·H, ·)."""
    if x.data.ndim != 2:
        raise ValueError(f"{op}: input must be 2-D (B, I), got {x.shape}")
    B, I = x.shape
    if weight_hh.data.ndim != 2 or weight_hh.shape[0] != gates * weight_hh.shape[1]:
        raise ValueError(f"{op}: weight_hh must be ({gates}H, H), got {weight_hh.shape}")
    H = weight_hh.shape[1]
    if weight_ih.shape != (gates * H, I):
        raise ValueError(f"{op}: weight_ih must be ({gates * H}, {I}) for input {x.shape} and weight_hh "
                         f"{weight_hh.shape}, got {weight_ih.shape}")
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None and b.shape != (gates * H,):
            raise ValueError(f"{op}: {name} must be ({gates * H},), got {b.shape}")
    for name, s in (zip(("h", "c"), h) if states == 2 else (("hx", h),)):
        if s is not None and s.shape != (B, H):
            raise ValueError(f"{op}: {name} must be (B, H) = ({B}, {H}) for input {x.shape}, got {s.shape}")
    return B, H


def lstm_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One LSTM step (the native kernel with T = 1): input (B, I), hx = (h, c) each (B, H) or None,
    weight_ih (4H, I), weight_hh (4H, H), biases (4H,) → (h', c').

    >>> import fastdl
    >>> h, c = fastdl.functional.lstm_cell(fastdl.ones(2, 3), None, fastdl.ones(8, 3), fastdl.zeros(8, 2))
    >>> h.shape, f"{c[0, 0].item():.4f}"
    ((2, 2), '0.9479')
    """
    h, c = _state_pair(hx, "lstm_cell")
    operands = (input, h, c, weight_ih, weight_hh, bias_ih, bias_hh)
    _recurrent_operands("lstm_cell", _CELL_OPERANDS, operands)
    _check_cell("lstm_cell", input, (h, c), 4, weight_ih, weight_hh, bias_ih, bias_hh, states=2)
    return _apply_recurrent(_lstm.LSTMCellFn, operands)


def _note_composed():
    _note_fallback("lstm", "RNN")


def gru_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One GRU step with PyTorch's equations and gate order (r, z, n) on the native kernel (T = 1):
    input (B, I), hx (B, H) or None, weight_ih (3H, I), weight_hh (3H, H), biases (3H,) → h'.

    >>> import fastdl
    >>> fastdl.functional.gru_cell(fastdl.ones(2, 3), None, fastdl.ones(6, 3), fastdl.zeros(6, 2)).shape
    (2, 2)
    """
    operands = (input, hx, weight_ih, weight_hh, bias_ih, bias_hh)
    _recurrent_operands("gru_cell", _SINGLE_STATE_OPERANDS, operands)
    _check_cell("gru_cell", input, hx, 3, weight_ih, weight_hh, bias_ih, bias_hh)
    return _apply_recurrent(_lstm.GRUCellFn, operands)


def _rnn_cell(op, nonlinearity, input, hx, weight_ih, weight_hh, bias_ih, bias_hh):
    _recurrent_operands(op, _SINGLE_STATE_OPERANDS, (input, hx, weight_ih, weight_hh, bias_ih, bias_hh))
    _check_cell(op, input, hx, 1, weight_ih, weight_hh, bias_ih, bias_hh)
    _note_composed()
    pre = linear(input, weight_ih, bias_ih)
    if hx is not None:
        pre = pre + linear(hx, weight_hh, bias_hh)
    elif bias_hh is not None:
        pre = pre + bias_hh
    return tanh(pre) if nonlinearity == "tanh" else relu(pre)


def rnn_tanh_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One Elman RNN step h' = tanh(input·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh), composed from ops:
    input (B, I), hx (B, H) or None, weight_ih (H, I), weight_hh (H, H), biases (H,) → h'.

    >>> import fastdl
    >>> fastdl.functional.rnn_tanh_cell(fastdl.ones(2, 3), None, fastdl.ones(4, 3), fastdl.zeros(4, 4)).shape
    (2, 4)
    """
    return _rnn_cell("rnn_tanh_cell", "tanh", input, hx, weight_ih, weight_hh, bias_ih, bias_hh)


def rnn_relu_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One Elman RNN step with ReLU, h' = relu(input·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh), composed from ops.

    >>> import fastdl
    >>> fastdl.functional.rnn_relu_cell(fastdl.ones(2, 3), None, fastdl.ones(4, 3), fastdl.zeros(4, 4)).tolist()[0]
    [3.0, 3.0, 3.0, 3.0]
    """
    return _rnn_cell("rnn_relu_cell", "relu", input, hx, weight_ih, weight_hh, bias_ih, bias_hh)


def _sequence(op, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, gates):
    """Checked operands of a composed recurrent layer; the input projection of every step in one GEMM."""
    _recurrent_operands(op, _SINGLE_STATE_OPERANDS, (input, hx, weight_ih, weight_hh, bias_ih, bias_hh))
    x = input
    if x.data.ndim != 3:
        raise ValueError(f"{op}: input must be 3-D (T, B, I), got {x.shape}")
    T, B, I = x.shape
    if T < 1 or B < 1:
        raise ValueError(f"{op}: input (T, B, I) must have positive sizes, got {x.shape}")
    _, H = _check_cell(op, Tensor(x.data[0]), hx, gates, weight_ih, weight_hh, bias_ih, bias_hh)
    _note_composed()
    h = hx if hx is not None else Tensor(array_module(x.data).zeros((B, H), x.data.dtype))
    projected = linear(reshape(input, (T * B, I)), weight_ih, bias_ih)
    return unbind(reshape(projected, (T, B, gates * H)), 0), h


def gru(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One GRU layer over a time-major sequence on the fused native kernel (PyTorch's equations,
    gate order r, z, n): input (T, B, I), hx (B, H) or None, weight_ih (3H, I), weight_hh (3H, H),
    biases (3H,) → (output (T, B, H), h_n).

    >>> import fastdl
    >>> y, h = fastdl.functional.gru(fastdl.ones(5, 2, 3), None, fastdl.ones(6, 3), fastdl.zeros(6, 2))
    >>> y.shape, h.shape
    ((5, 2, 2), (2, 2))
    """
    operands = (input, hx, weight_ih, weight_hh, bias_ih, bias_hh)
    _recurrent_operands("gru", _SINGLE_STATE_OPERANDS, operands)
    return _apply_recurrent(_lstm.GRUFn, operands)


def rnn(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh"):
    """One Elman RNN layer over a time-major sequence, composed from ops: input (T, B, I), hx (B, H)
    or None, weight_ih (H, I), weight_hh (H, H), biases (H,), nonlinearity "tanh" or "relu" →
    (output (T, B, H), h_n).

    >>> import fastdl
    >>> y, h = fastdl.functional.rnn(fastdl.ones(5, 2, 3), None, fastdl.ones(4, 3), fastdl.zeros(4, 4))
    >>> y.shape, h.shape
    ((5, 2, 4), (2, 4))
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    steps, h = _sequence("rnn", input, hx, weight_ih, weight_hh, bias_ih, bias_hh, 1)
    act = tanh if nonlinearity == "tanh" else relu
    outputs = []
    for gi in steps:
        h = act(gi + linear(h, weight_hh, bias_hh))
        outputs.append(h)
    return stack(outputs), h


# ---- attention: fused scaled-dot-product attention (native); composed on CUDA ---------------------

from . import backend as _backend  # noqa: E402
from .ops import attention as _attention  # noqa: E402

__all__ += ["scaled_dot_product_attention"]


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False) -> Tensor:
    """softmax(query·keyᵀ·scale + mask)·value on fastdl's fused attention kernel (PyTorch's semantics).

    query (..., L, E), key (..., S, E), value (..., S, Ev) → (..., L, Ev); batch dimensions broadcast.
    ``attn_mask`` broadcasts to (..., L, S): bool (True takes part) or additive in query's dtype (its
    gradient flows when it requires grad). ``is_causal`` keeps key j for query i when j ≤ i
    (top-left aligned when L ≠ S, as PyTorch; combined with ``attn_mask`` if both are given).
    ``scale`` defaults to 1/sqrt(E). ``enable_gqa`` lets query have a multiple of key/value's heads
    (dimension -3), each group of queries sharing one key/value head. ``dropout_p`` drops attention
    probabilities (with fastdl's seeded generator); pass 0.0 when not training.

    Rows whose mask removes every key give zeros (and zero gradients), never NaN. The L×S score
    matrix is never stored: memory is linear in L and S. On CUDA tensors this runs the composed
    formula (a declared fallback) until the CUDA attention kernel exists.

    >>> import fastdl
    >>> q = fastdl.ones(2, 4, 8)
    >>> v = fastdl.arange(2 * 4 * 3, dtype=fastdl.float32).reshape(2, 4, 3)
    >>> out = fastdl.functional.scaled_dot_product_attention(q, q, v, is_causal=True)
    >>> out.shape, out[0, 1].tolist()
    ((2, 4, 3), [1.5, 2.5, 3.5])
    """
    op = "scaled_dot_product_attention"
    q, k, v = _tensor(query, op, "query"), _tensor(key, op, "key"), _tensor(value, op, "value")
    m = None if attn_mask is None else _tensor(attn_mask, op, "attn_mask")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1), got {dropout_p}")
    if builtins.any(t.is_cuda for t in (q, k, v, m) if t is not None):
        _backend.note_fallback("attention", "cuda")
        return _attention_composed(op, q, k, v, m, dropout_p, is_causal, scale, enable_gqa)[0]
    seed = int(_random.generator().integers(0, 2**63)) if dropout_p > 0 else 0
    options = (bool(is_causal), scale, float(dropout_p), seed, bool(enable_gqa))
    if _record(q, k, v, m):
        return _attention.ScaledDotProductAttentionFn.apply(q, k, v, m, *options)
    return Tensor(_attention.ScaledDotProductAttentionFn.forward(
        _NULL_CTX, q.data, k.data, v.data, None if m is None else m.data, *options))


def _attention_composed(op, q, k, v, m, dropout_p, is_causal, scale, enable_gqa):
    """(out, weights) of scaled-dot-product attention composed from fastdl ops, storing the L×S
    weights: the path for CUDA tensors and for callers that need the weights themselves
    (``nn.MultiheadAttention(need_weights=True)``). Rows with no key give zero weights."""
    L, S, E = q.shape[-2], k.shape[-2], q.shape[-1]
    if enable_gqa and q.data.ndim >= 3 and k.data.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        group = q.shape[-3] // builtins.max(k.shape[-3], 1)
        if k.shape[-3] * group != q.shape[-3] or v.shape[-3] != k.shape[-3]:
            raise ValueError(f"{op}: enable_gqa needs equal key/value heads that divide the query heads "
                             f"(dimension -3): query {q.shape}, key {k.shape}, value {v.shape}")
        k, v = (x.unsqueeze(-3).expand(*x.shape[:-2], group, *x.shape[-2:]).reshape(
            *x.shape[:-3], q.shape[-3], *x.shape[-2:]) for x in (k, v))
    if scale is None:
        scale = 1.0 / math.sqrt(E) if E > 0 else 1.0
    scores = matmul(q, k.transpose(-2, -1)) * scale
    xp = array_module(q.data)
    if is_causal:
        scores = masked_fill(scores, Tensor(~xp.tril(xp.ones((L, S), dtype=bool))), float("-inf"))
    if m is not None:
        scores = masked_fill(scores, logical_not(m), float("-inf")) if m.dtype == np.bool_ else scores + m
    some_key = Tensor((scores.data > -xp.inf).any(axis=-1, keepdims=True))
    weights = softmax(where(some_key, scores, 0.0), dim=-1) * some_key.to(scores.dtype)
    if dropout_p > 0:
        weights = dropout(weights, dropout_p)
    return matmul(weights, v), weights


# ---- nn: dropout, normalisation, embedding and losses (the functional forms of fastdl.nn) ----------

from .ops import nn as _nn_ops  # noqa: E402
from .tensor import ones_like as _ones_like  # noqa: E402
from .tensor import tensor as _new_tensor  # noqa: E402
from .tensor import zeros_like as _zeros_like  # noqa: E402


def _nn_optional(value):
    return value if value is None or isinstance(value, Tensor) else _new_tensor(value)


def dropout2d(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Zero whole channels: input (N, C, H, W) or (C, H, W), one Bernoulli(1 − p) per channel."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if input.ndim not in (3, 4):
        raise ValueError(f"dropout2d: expected input (N, C, H, W) or (C, H, W), got {input.shape}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    mask_shape = input.shape[:-2] + (1, 1)
    keep = _random.generator().random(mask_shape) >= p
    return input * Tensor((keep / (1.0 - p)).astype(input.dtype))


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5):
    """Batch normalisation of input (N, C, *) per channel (Ioffe & Szegedy, 2015).

    training: normalise with the batch statistics and update ``running_mean``/``running_var``
    (in place, when given) with ``momentum`` (the running variance is unbiased); otherwise use
    the running statistics. weight, bias: (C,) or None.
    """
    if input.ndim < 2:
        raise ValueError(f"batch_norm: expected input (N, C, *), got {input.shape}")
    C = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"batch_norm: {name} has shape {tuple(t.shape)}, expected ({C},) for input {input.shape}")
    if training and input.numel() // C <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input {input.shape}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm: running_mean and running_var are needed when not training")
    rm = running_mean.data if running_mean is not None else None
    rv = running_var.data if running_var is not None else None
    return _nn_ops.BatchNormFn.apply(input, _nn_optional(weight), _nn_optional(bias), rm, rv, training,
                                     momentum, eps)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """Layer normalisation (Ba et al., 2016) over the trailing ``normalized_shape`` axes.

    >>> import fastdl
    >>> y = fastdl.functional.layer_norm(fastdl.tensor([[1.0, 2.0, 3.0]]), (3,))
    >>> y.numpy().round(4)
    array([[-1.2247,  0.    ,  1.2247]], dtype=float32)
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or tuple(input.shape[input.ndim - k:]) != shape:
        raise ValueError(f"layer_norm: input {input.shape} does not end with normalized_shape {shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"layer_norm: {name} has shape {tuple(t.shape)}, expected {shape}")
    return _nn_ops.LayerNormFn.apply(input, _nn_optional(weight), _nn_optional(bias), k, eps)


def group_norm(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """Group normalisation (Wu & He, 2018): input (N, C, *) normalised over groups of
    C/num_groups channels and the spatial axes."""
    if input.ndim < 2:
        raise ValueError(f"group_norm: expected input (N, C, *), got {input.shape}")
    C = input.shape[1]
    if num_groups <= 0 or C % num_groups:
        raise ValueError(f"group_norm: {C} channels are not divisible into {num_groups} groups (input {input.shape})")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"group_norm: {name} has shape {tuple(t.shape)}, expected ({C},)")
    return _nn_ops.GroupNormFn.apply(input, _nn_optional(weight), _nn_optional(bias), num_groups, eps)


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False):
    """Rows of weight (num_embeddings, dim) at the integer indices ``input`` (any shape) →
    input.shape + (dim,). The ``padding_idx`` row gets no gradient; ``max_norm`` renormalises
    the looked-up rows in place first (as PyTorch)."""
    if sparse:
        raise ValueError("embedding: sparse gradients are not supported; use sparse=False")
    idx = input.data if isinstance(input, Tensor) else np.asarray(input)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be an integer tensor, got {idx.dtype} {idx.shape}")
    num = weight.shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= num):
        bad = int(idx.max()) if int(idx.max()) >= num else int(idx.min())
        raise ValueError(f"embedding: index {bad} is out of range for {num} embeddings (indices {idx.shape})")
    if padding_idx is not None and padding_idx < 0:
        padding_idx += num
    if max_norm is not None:
        rows = np.unique(idx)
        w = weight.data
        norms = np.linalg.norm(w[rows].astype(np.float64), ord=norm_type, axis=1)
        scale = np.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0)
        w[rows] *= scale[:, None].astype(w.dtype)
    return _nn_ops.EmbeddingFn.apply(idx, weight, padding_idx, scale_grad_by_freq)


def bilinear(input1, input2, weight, bias=None):
    """y_k = x1ᵀ·W_k·x2 + b_k: input1 (*, in1), input2 (*, in2), weight (out, in1, in2) → (*, out)."""
    out, in1, in2 = weight.shape
    if input1.shape[-1] != in1 or input2.shape[-1] != in2 or input1.shape[:-1] != input2.shape[:-1]:
        raise ValueError(f"bilinear: input1 {input1.shape} and input2 {input2.shape} do not match weight "
                         f"{weight.shape} (expected (*, {in1}) and (*, {in2}))")
    lead = input1.shape[:-1]
    x1 = input1.reshape(-1, in1)
    x2 = input2.reshape(-1, in2)
    t = (x1 @ weight.permute(1, 0, 2).reshape(in1, out * in2)).reshape(-1, out, in2)
    y = (t * x2.unsqueeze(1)).sum(-1)
    if bias is not None:
        y = y + bias
    return y.reshape(lead + (out,))


def cosine_similarity(x1, x2, dim: int = 1, eps: float = 1e-8):
    """x1·x2 / max(‖x1‖·‖x2‖, eps) along ``dim`` (broadcasting)."""
    dot = (x1 * x2).sum(dim)
    norms = ((x1 * x1).sum(dim) * (x2 * x2).sum(dim)).clamp(min=eps * eps)
    return dot / norms.sqrt()


_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(op: str, reduction: str, extra=()) -> None:
    if reduction not in _REDUCTIONS + tuple(extra):
        raise ValueError(f"{op}: reduction must be one of {', '.join(_REDUCTIONS + tuple(extra))}, got {reduction!r}")


def _reduce_loss(loss, reduction: str):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _same_shape(op: str, input, target) -> None:
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"{op}: input {tuple(input.shape)} and target {tuple(target.shape)} must have the same shape "
                         "(fastdl does not broadcast a loss's target; reshape one of them)")


def _classes_last(op: str, input):
    """input (N, C, d1, …) or (C,) → (M, C) with the class axis last; index targets → (M,)."""
    if input.ndim == 0:
        raise ValueError(f"{op}: input must have a class dimension, got a scalar")
    C = input.shape[1] if input.ndim > 1 else input.shape[0]
    x = input.unsqueeze(0) if input.ndim == 1 else input
    if x.ndim > 2:
        x = x.permute(0, *range(2, x.ndim), 1)
    x = x.reshape(-1, C)
    return x, C


def cross_entropy(input, target, weight=None, *, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0):
    """Cross-entropy of logits against class indices or class probabilities (stable
    log-sum-exp; PyTorch's weights, ignore_index, label smoothing and reductions).

    input (N, C), (N, C, d1, …) or (C,); target: indices (N,), (N, d1, …) or () — or
    probabilities with the input's shape. weight (C,). The "mean" of index targets is weighted:
    Σ loss / Σ weight[target] over the targets not ignored.

    >>> import fastdl
    >>> logits = fastdl.tensor([[2.0, 0.0, 0.0]])
    >>> print(f"{fastdl.functional.cross_entropy(logits, fastdl.tensor([0])).item():.4f}")
    0.2395
    """
    _check_reduction("cross_entropy", reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    x, C = _classes_last("cross_entropy", input)
    if weight is not None and tuple(weight.shape) != (C,):
        raise ValueError(f"cross_entropy: weight has shape {tuple(weight.shape)}, expected ({C},) for input "
                         f"{input.shape}")
    batch_shape = input.shape[:1] + input.shape[2:] if input.ndim > 1 else ()
    t = target if isinstance(target, Tensor) else _new_tensor(target)
    if t.dtype.kind == "f":
        _same_shape("cross_entropy (probability targets)", input, t)
        t2 = t.unsqueeze(0) if input.ndim == 1 else t
        if t2.ndim > 2:
            t2 = t2.permute(0, *range(2, t2.ndim), 1)
        t2 = t2.reshape(-1, C)
    else:
        if t.dtype.kind not in "iu":
            raise TypeError(f"cross_entropy: target must hold class indices (integers) or probabilities (floats), "
                            f"got {t.dtype}")
        if tuple(t.shape) != tuple(batch_shape):
            raise ValueError(f"cross_entropy: target {tuple(t.shape)} must have shape {tuple(batch_shape)} for "
                             f"input {tuple(input.shape)} (class indices) or {tuple(input.shape)} (probabilities)")
        t2 = t.reshape(-1)
        valid = t2.data[t2.data != ignore_index]
        if valid.size and (int(valid.min()) < 0 or int(valid.max()) >= C):
            bad = int(valid.max()) if int(valid.max()) >= C else int(valid.min())
            raise ValueError(f"cross_entropy: target contains class {bad} but input {tuple(input.shape)} has {C} "
                             "classes")
    loss = _nn_ops.CrossEntropyFn.apply(x, t2, _nn_optional(weight), ignore_index, reduction, label_smoothing)
    return loss.reshape(batch_shape) if reduction == "none" else loss


def nll_loss(input, target, weight=None, *, ignore_index: int = -100, reduction: str = "mean"):
    """Negative log-likelihood of log-probabilities input (N, C, *) at class indices target
    (N, *); weighted mean as in :func:`cross_entropy`."""
    _check_reduction("nll_loss", reduction)
    x, C = _classes_last("nll_loss", input)
    if weight is not None and tuple(weight.shape) != (C,):
        raise ValueError(f"nll_loss: weight has shape {tuple(weight.shape)}, expected ({C},)")
    batch_shape = input.shape[:1] + input.shape[2:] if input.ndim > 1 else ()
    t = target if isinstance(target, Tensor) else _new_tensor(target)
    if t.dtype.kind not in "iu" or tuple(t.shape) != tuple(batch_shape):
        raise ValueError(f"nll_loss: target must be integer class indices of shape {tuple(batch_shape)} for input "
                         f"{tuple(input.shape)}, got {t.dtype} {tuple(t.shape)}")
    t2 = t.reshape(-1)
    valid = t2.data[t2.data != ignore_index]
    if valid.size and (int(valid.min()) < 0 or int(valid.max()) >= C):
        bad = int(valid.max()) if int(valid.max()) >= C else int(valid.min())
        raise ValueError(f"nll_loss: target contains class {bad} but input {tuple(input.shape)} has {C} classes")
    loss = _nn_ops.NllLossFn.apply(x, t2, _nn_optional(weight), ignore_index, reduction)
    return loss.reshape(batch_shape) if reduction == "none" else loss


def mse_loss(input, target, *, reduction: str = "mean"):
    """(input − target)², reduced."""
    _check_reduction("mse_loss", reduction)
    _same_shape("mse_loss", input, target)
    diff = input - target
    return _reduce_loss(diff * diff, reduction)


def l1_loss(input, target, *, reduction: str = "mean"):
    """|input − target|, reduced."""
    _check_reduction("l1_loss", reduction)
    _same_shape("l1_loss", input, target)
    return _reduce_loss((input - target).abs(), reduction)


def smooth_l1_loss(input, target, *, reduction: str = "mean", beta: float = 1.0):
    """Huber-like: 0.5·d²/beta where |d| < beta, |d| − 0.5·beta elsewhere (d = input − target)."""
    _check_reduction("smooth_l1_loss", reduction)
    _same_shape("smooth_l1_loss", input, target)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative, got {beta}")
    d = input - target
    ad = d.abs()
    if beta == 0:
        return _reduce_loss(ad, reduction)
    loss = where(ad < beta, d * d * (0.5 / beta), ad - 0.5 * beta)
    return _reduce_loss(loss, reduction)


def binary_cross_entropy(input, target, weight=None, *, reduction: str = "mean"):
    """−weight·(t·log x + (1 − t)·log(1 − x)) for probabilities x in [0, 1] (logs clamped at −100)."""
    _check_reduction("binary_cross_entropy", reduction)
    _same_shape("binary_cross_entropy", input, target)
    x = input.data
    if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError("binary_cross_entropy: all elements of input should be between 0 and 1 "
                         "(apply sigmoid first, or use binary_cross_entropy_with_logits)")
    return _nn_ops.BinaryCrossEntropyFn.apply(input, target, _nn_optional(weight), reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, *, reduction: str = "mean", pos_weight=None):
    """BCE of sigmoid(input) in the stable log-sigmoid form; ``pos_weight`` (broadcast along the
    last axis) weighs the positive term."""
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    _same_shape("binary_cross_entropy_with_logits", input, target)
    return _nn_ops.BinaryCrossEntropyWithLogitsFn.apply(input, target, _nn_optional(weight),
                                                       _nn_optional(pos_weight), reduction)


def kl_div(input, target, *, reduction: str = "mean", log_target: bool = False):
    """KL(target ‖ q) with input = log q: target·(log target − input) (0 where target = 0), or
    exp(target)·(target − input) when ``log_target``. "batchmean" divides the sum by the batch size
    (the true KL); "mean", as PyTorch, by the number of elements."""
    _check_reduction("kl_div", reduction, ("batchmean",))
    _same_shape("kl_div", input, target)
    if log_target:
        loss = target.exp() * (target - input)
    else:
        positive = target > 0
        ones = _ones_like(target)
        loss = where(positive, target * where(positive, target, ones).log(), _zeros_like(target)) - target * input
    if reduction == "batchmean":
        return loss.sum() / (input.shape[0] if input.ndim else 1)
    return _reduce_loss(loss, reduction)


def cosine_embedding_loss(input1, input2, target, margin: float = 0.0, *, reduction: str = "mean"):
    """1 − cos(x1, x2) where target = 1, max(0, cos(x1, x2) − margin) where target = −1;
    input1, input2 (N, D) or (D,), target (N,) or ()."""
    _check_reduction("cosine_embedding_loss", reduction)
    if tuple(input1.shape) != tuple(input2.shape) or input1.ndim not in (1, 2):
        raise ValueError(f"cosine_embedding_loss: input1 {tuple(input1.shape)} and input2 {tuple(input2.shape)} must "
                         "have the same shape (N, D) or (D,)")
    if tuple(target.shape) != tuple(input1.shape[:-1]):
        raise ValueError(f"cosine_embedding_loss: target {tuple(target.shape)} must have shape "
                         f"{tuple(input1.shape[:-1])}")
    eps = 1e-12
    dot = (input1 * input2).sum(-1)
    mag = ((input1 * input1).sum(-1) + eps) * ((input2 * input2).sum(-1) + eps)
    cos = dot / mag.sqrt()
    zeros = _zeros_like(cos)
    pos = where(target == 1, 1 - cos, zeros)
    neg = where(target == -1, (cos - margin).clamp(min=0), zeros)
    return _reduce_loss(pos + neg, reduction)


# ---- conv2d family: convolution and pooling -------------------------------------------------------
# (builtins.any/max/min: this module defines the tensor ops of those names.)

from . import kernels as _kernels  # noqa: E402
from .ops import conv2d as _conv  # noqa: E402

__all__ += ["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]


def _conv_operands(op: str, input, weight=None, bias=None) -> bool:
    """Checks the operands of a convolution or pooling op; True when input is unbatched (C, H, W)."""
    named = [("input", input)] + ([("weight", weight)] if weight is not None else []) + \
        ([("bias", bias)] if bias is not None else [])
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if input.ndim not in (3, 4):
        raise ValueError(f"{op}: input must be 3-D (C, H, W) or 4-D (N, C, H, W), got {input.shape}")
    if weight is not None and weight.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D, got {weight.shape} for input {input.shape}")
    if input.dtype.kind != "f" or builtins.any(t.dtype != input.dtype for _, t in named):
        raise TypeError(f"{op}: operands must share one floating-point dtype, got "
                        + ", ".join(f"{name} {t.dtype} {t.shape}" for name, t in named))
    if builtins.any(t.device != input.device for _, t in named):
        raise ValueError(f"{op}: operands are on different devices: "
                         + ", ".join(f"{name} {t.device} {t.shape}" for name, t in named))
    return input.ndim == 3


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    input (N, C_in, H, W) or (C_in, H, W), weight (C_out, C_in/groups, KH, KW), bias (C_out,) →
    (N, C_out, OH, OW) with OH = ⌊(H + 2·padding − dilation·(KH − 1) − 1) / stride⌋ + 1.
    ``stride``, ``dilation``: int or pair; ``padding``: int, pair, ``"same"`` (stride 1) or
    ``"valid"``; ``groups`` divides both channel counts (groups = C_in: depthwise).

    >>> import fastdl
    >>> import fastdl.functional as F
    >>> F.conv2d(fastdl.ones(1, 1, 4, 4), fastdl.ones(2, 1, 3, 3), padding=1).shape
    (1, 2, 4, 4)
    """
    unbatched = _conv_operands("conv2d", input, weight, bias)
    return _conv.Conv2dFn.apply(input, weight, bias, stride, padding, dilation, groups, unbatched)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1) -> Tensor:
    """Transposed convolution (the gradient of conv2d with respect to its input), as
    ``torch.nn.functional.conv_transpose2d``.

    input (N, C_in, H, W) or (C_in, H, W), weight (C_in, C_out/groups, KH, KW), bias (C_out,) →
    (N, C_out, OH, OW) with OH = (H − 1)·stride − 2·padding + dilation·(KH − 1) + output_padding + 1;
    ``output_padding`` < stride or < dilation picks among the input sizes a conv2d maps to H.

    >>> import fastdl
    >>> import fastdl.functional as F
    >>> F.conv_transpose2d(fastdl.ones(1, 4, 3, 3), fastdl.ones(4, 2, 4, 4), stride=2, padding=1).shape
    (1, 2, 6, 6)
    """
    op = "conv_transpose2d"
    unbatched = _conv_operands(op, input, weight, bias)
    stride = _kernels._pair(op, "stride", stride, 1)
    padding = _kernels._pair(op, "padding", padding, 0)
    output_padding = _kernels._pair(op, "output_padding", output_padding, 0)
    dilation = _kernels._pair(op, "dilation", dilation, 1)
    C_in, H, W = input.shape[-3:]
    shapes = f"input {input.shape}, weight {weight.shape}"
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r} for {shapes}")
    if weight.shape[0] != C_in or C_in % groups:
        raise ValueError(f"{op}: weight.shape[0] must equal the input channels {C_in} and be divisible by "
                         f"groups {groups}, got {shapes}")
    if bias is not None and bias.shape != (weight.shape[1] * groups,):
        raise ValueError(f"{op}: bias must be ({weight.shape[1] * groups},), got {bias.shape} for {shapes}")
    for d in (0, 1):
        if output_padding[d] >= builtins.max(stride[d], dilation[d]):
            raise ValueError(f"{op}: output_padding {output_padding} must be smaller than stride {stride} or "
                             f"dilation {dilation} for {shapes}")
    out_hw = tuple((n - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.shape[2 + d] - 1)
                   + output_padding[d] + 1 for d, n in enumerate((H, W)))
    if builtins.min(out_hw) < 1:
        raise ValueError(f"{op}: the output would be {out_hw}: padding {padding} is too large for {shapes}")
    return _conv.ConvTranspose2dFn.apply(input, weight, bias, stride, padding, dilation, groups, out_hw, unbatched)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling, as ``torch.nn.functional.max_pool2d``: input (N, C, H, W) or (C, H, W) → the
    window maxima (N, C, OH, OW), and with ``return_indices`` also their flat positions ih·W + iw
    (int64). ``stride`` defaults to ``kernel_size``; padding counts as −∞.

    >>> import fastdl
    >>> import fastdl.functional as F
    >>> F.max_pool2d(fastdl.arange(16.0).reshape(1, 1, 4, 4), 2).tolist()
    [[[[5.0, 7.0], [13.0, 15.0]]]]
    """
    unbatched = _conv_operands("max_pool2d", input)
    out, indices = _conv.MaxPool2dFn.apply(input, kernel_size, stride, padding, dilation, ceil_mode, unbatched)
    return (out, indices) if return_indices else out


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None) -> Tensor:
    """Average pooling, as ``torch.nn.functional.avg_pool2d``: input (N, C, H, W) or (C, H, W) →
    (N, C, OH, OW); the divisor is the window size (with the zero padding when
    ``count_include_pad``), or ``divisor_override``.

    >>> import fastdl
    >>> import fastdl.functional as F
    >>> F.avg_pool2d(fastdl.arange(16.0).reshape(1, 1, 4, 4), 2).tolist()
    [[[[2.5, 4.5], [10.5, 12.5]]]]
    """
    unbatched = _conv_operands("avg_pool2d", input)
    return _conv.AvgPool2dFn.apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                   divisor_override, unbatched)


def adaptive_avg_pool2d(input, output_size) -> Tensor:
    """Adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``: input (N, C, H, W)
    or (C, H, W) → (N, C, OH, OW) for ``output_size`` = OH, (OH, OW) or (OH, None); window i covers
    rows ⌊i·H/OH⌋ … ⌈(i+1)·H/OH⌉ − 1.

    >>> import fastdl
    >>> import fastdl.functional as F
    >>> F.adaptive_avg_pool2d(fastdl.ones(2, 3, 7, 5), 1).shape
    (2, 3, 1, 1)
    """
    unbatched = _conv_operands("adaptive_avg_pool2d", input)
    return _conv.AdaptiveAvgPool2dFn.apply(input, output_size, unbatched)
