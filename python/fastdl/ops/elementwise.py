"""Elementwise ops: arithmetic, activations, casts; PyTorch's type promotion; the no-grad fast path.

Binary ops broadcast their inputs (``broadcasting = True``: the engine sums each gradient back to
its input's shape). Promotion follows PyTorch: the operand of the highest category (bool < integer
< floating) decides the result; within a category, tensors with dimensions outrank 0-d tensors,
which outrank Python scalars; so a Python float never upcasts a float32 tensor, a float32 tensor
with a float64 tensor gives float64, and an integer tensor with a Python float gives the default
float dtype. Mixed dtypes are cast before the op by a differentiable cast node, so every Function
here sees operands of one dtype.

When nothing needs a graph, ``unary``/``binary`` call ``forward`` with a shared null ctx and wrap
the array: no node, no per-op helper objects (``bench overhead`` measures this path).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import _C, array_module, declare_fallback, note_fallback
from ..tensor import NULL_CTX, Function, Tensor, _defaults, _grad_mode, _raise_devices, op_name

_KIND_CATEGORY = {"b": 0, "i": 1, "u": 1, "f": 2}
_PY_CATEGORY = {bool: 0, int: 1, float: 2}


# ---- promotion ------------------------------------------------------------------------------------

def _category(dtype) -> int:
    try:
        return _KIND_CATEGORY[dtype.kind]
    except KeyError:
        raise TypeError(f"dtype {dtype} is not supported by fastdl ops") from None


def _category_dtype(category: int):
    return (np.dtype(np.bool_), np.dtype(np.int64), _defaults.dtype)[category]


def to_dtype(t: Tensor, dtype) -> Tensor:
    """``t`` cast to ``dtype``; differentiable between floating dtypes."""
    if t.data.dtype == dtype:
        return t
    if t.requires_grad and _grad_mode.enabled and np.dtype(dtype).kind == "f":
        return ToDtypeFn.apply(t, dtype)
    return Tensor(t.data.astype(dtype))


def promote_tensors(op, a: Tensor, b: Tensor):
    """Cast two tensors to their PyTorch result dtype (raising for different devices)."""
    if a.data.__class__ is not b.data.__class__:
        _raise_devices(op, (a, b))
    da, db = a.data.dtype, b.data.dtype
    if da == db:
        return a, b
    ca, cb = _category(da), _category(db)
    if ca != cb:
        target = da if ca > cb else db
    elif (a.data.ndim > 0) != (b.data.ndim > 0):
        target = da if a.data.ndim > 0 else db
    else:
        target = np.promote_types(da, db)
    return to_dtype(a, target), to_dtype(b, target)


def _scalar(v):
    """A Python scalar for ``v`` (NumPy scalars and 0-d data unwrap), or None if ``v`` is not one."""
    if v.__class__ in _PY_CATEGORY:
        return v
    if isinstance(v, np.generic) and v.dtype.kind in "biuf":
        return v.item()
    for kind in _PY_CATEGORY:  # subclasses of bool/int/float (IntEnum …)
        if isinstance(v, kind):
            return kind(v)
    return None


def _as_operand(v):
    """A Tensor for array-like operands (arrays, lists), or NotImplemented."""
    if isinstance(v, np.ndarray):
        return Tensor(v)
    if isinstance(v, (list, tuple)):
        from ..tensor import tensor

        return tensor(v)
    if hasattr(v, "__cuda_array_interface__"):
        return Tensor(v)
    return NotImplemented


def _with_scalar(cls, t: Tensor, s):
    """Cast ``t`` when the scalar ``s`` is of a higher category (int tensor * 1.5 → float32)."""
    cat = _PY_CATEGORY[s.__class__] if s.__class__ in _PY_CATEGORY else 2
    if cat > _category(t.data.dtype):
        t = to_dtype(t, _category_dtype(cat))
    return t


def binary(cls, a, b):
    """``cls`` applied to ``(a, b)``, at least one a Tensor, after PyTorch's promotion."""
    if isinstance(a, Tensor):
        if isinstance(b, Tensor):
            if a.data.dtype is not b.data.dtype or a.data.__class__ is not b.data.__class__:
                a, b = promote_tensors(cls, a, b)
        else:
            s = _scalar(b)
            if s is None:
                b = _as_operand(b)
                return NotImplemented if b is NotImplemented else binary(cls, a, b)
            a, b = _with_scalar(cls, a, s), s
    else:
        s = _scalar(a)
        if s is None:
            a = _as_operand(a)
            return NotImplemented if a is NotImplemented else binary(cls, a, b)
        b, a = _with_scalar(cls, b, s), s
    if cls.int_to_float:
        if isinstance(a, Tensor) and a.data.dtype.kind != "f":
            a = to_dtype(a, _defaults.dtype)
        if isinstance(b, Tensor) and b.data.dtype.kind != "f":
            b = to_dtype(b, _defaults.dtype)
    try:
        if _grad_mode.enabled and (
            (isinstance(a, Tensor) and a.requires_grad) or (isinstance(b, Tensor) and b.requires_grad)
        ):
            return cls.apply(a, b)
        return Tensor(cls.forward(NULL_CTX, a.data if isinstance(a, Tensor) else a,
                                  b.data if isinstance(b, Tensor) else b))
    except ValueError:
        _raise_if_not_broadcastable(cls, a, b)
        raise


def _raise_if_not_broadcastable(op, *operands):
    shapes = [v.shape for v in operands if isinstance(v, Tensor)]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(
            f"{op_name(op)}: shapes {' and '.join(str(s) for s in shapes)} do not broadcast "
            "(sizes must match or be 1, aligned from the last dim)"
        ) from None


def unary(cls, x: Tensor, *args):
    """``cls`` applied to ``x`` (integers promoted to the default float for float-only ops)."""
    if cls.int_to_float and x.data.dtype.kind != "f":
        x = to_dtype(x, _defaults.dtype)
    if x.requires_grad and _grad_mode.enabled:
        return cls.apply(x, *args)
    return Tensor(cls.forward(NULL_CTX, x.data, *args))


def _raw(v):
    if isinstance(v, Tensor):
        return v.data
    s = _scalar(v)
    if s is not None:
        return s
    v = _as_operand(v)
    return NotImplemented if v is NotImplemented else v.data


def compare(name: str, a: Tensor, b):
    """A comparison (``equal``, ``less`` …) as a bool tensor; never differentiable."""
    bd = _raw(b)
    if bd is NotImplemented:
        return NotImplemented
    if isinstance(b, Tensor) and bd.__class__ is not a.data.__class__:
        _raise_devices(name, (a, b))
    try:
        return Tensor(getattr(array_module(a.data), name)(a.data, bd))
    except ValueError:
        _raise_if_not_broadcastable(name, a, b)
        raise


def no_grad_binary(name: str, a, b):
    """A binary op without a gradient (floor division, remainder, bitwise ops)."""
    ad, bd = _raw(a), _raw(b)
    if ad is NotImplemented or bd is NotImplemented:
        return NotImplemented
    xp = array_module(ad if isinstance(a, Tensor) else bd)
    return Tensor(getattr(xp, name)(ad, bd))


def no_grad_unary(name: str, x: Tensor):
    return Tensor(getattr(array_module(x.data), name)(x.data))


_INPLACE_UFUNC = {}


def inplace(cls, t: Tensor, other, op: str):
    """``t op= other``: in place on the data when no graph is involved; when grad mode is on and
    either side requires grad, ``t`` takes the result of the out-of-place op (the values saved for
    backward stay intact). A leaf that requires grad cannot be updated in place outside no_grad."""
    other_grad = isinstance(other, Tensor) and other.requires_grad
    if _grad_mode.enabled and (t.requires_grad or other_grad):
        if t.requires_grad and t.grad_fn is None:
            raise RuntimeError(
                f"{op}: a leaf tensor of shape {t.shape} that requires grad cannot be modified in place "
                "while grad is enabled; update it inside fastdl.no_grad() (as optimizers do)"
            )
        result = binary(cls, t, other)
        if result is NotImplemented:
            return result
        if result.shape != t.shape:
            raise ValueError(f"{op}: the result of shape {result.shape} cannot be written into a tensor of shape {t.shape}")
        if result.data.dtype != t.data.dtype:
            if not np.can_cast(result.data.dtype, t.data.dtype, "same_kind"):
                raise TypeError(f"{op}: result dtype {result.dtype} cannot be written into a {t.dtype} tensor")
            result = to_dtype(result, t.data.dtype)
        t.data, t.grad_fn, t._output_nr, t.requires_grad = result.data, result.grad_fn, result._output_nr, True
        return t
    od = _raw(other)
    if od is NotImplemented:
        return NotImplemented
    if isinstance(other, Tensor) and od.__class__ is not t.data.__class__:
        _raise_devices(cls, (t, other))
    ufunc = getattr(array_module(t.data), _INPLACE_UFUNC[cls])
    try:
        ufunc(t.data, od, out=t.data)
    except (TypeError, ValueError) as exc:
        _raise_if_not_broadcastable(op, t, other)
        other_desc = f"{other.dtype} {other.shape}" if isinstance(other, Tensor) else repr(other)
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(f"{op}: tensor {t.dtype} {t.shape} with {other_desc}: {exc}") from None
    return t


# ---- Functions ------------------------------------------------------------------------------------

class ElementwiseFn(Function):
    """Base of the elementwise Functions: broadcasting inputs, and whether integers become floats."""

    broadcasting = True
    int_to_float = False


class AddFn(ElementwiseFn):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, g):
        n = ctx.needs_input_grad
        return (g if n[0] else None), (g if n[1] else None)


class SubFn(ElementwiseFn):
    @staticmethod
    def forward(ctx, a, b):
        return a - b

    @staticmethod
    def backward(ctx, g):
        n = ctx.needs_input_grad
        return (g if n[0] else None), (-g if n[1] else None)


class MulFn(ElementwiseFn):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        n = ctx.needs_input_grad
        return (g * b if n[0] else None), (g * a if n[1] else None)


class DivFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        n = ctx.needs_input_grad
        ga = g / b if n[0] else None
        gb = -g * a / (b * b) if n[1] else None
        return ga, gb


class PowFn(ElementwiseFn):
    """a ** b; d/da = b·a^(b-1) (0 where b = 0), d/db = a^b·log(a) (0 where a = 0 and b ≥ 0)."""

    @staticmethod
    def forward(ctx, a, b):
        out = a ** b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        n = ctx.needs_input_grad
        xp = array_module(g)
        ga = gb = None
        if n[0]:
            if isinstance(b, (int, float)):
                ga = g * 0.0 if b == 0 else (g * (2 * a) if b == 2 else g * (b * a ** (b - 1)))
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    ga = xp.where(b == 0, 0, g * (b * a ** (b - 1)))
        if n[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                if isinstance(a, (int, float)):
                    log_a = math.log(a) if a > 0 else (-math.inf if a == 0 else math.nan)
                    gb = g * out * log_a
                    if a == 0:
                        gb = xp.where(b >= 0, 0, gb)
                else:
                    gb = xp.where((a == 0) & (b >= 0), 0, g * out * xp.log(a))
        return ga, gb


class NegFn(ElementwiseFn):
    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, g):
        return -g


class AbsFn(ElementwiseFn):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return abs(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * array_module(x).sign(x)


class ExpFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, x):
        out = array_module(x).exp(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out


class LogFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return array_module(x).log(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / x


class Log1pFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return array_module(x).log1p(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / (1 + x)


class SqrtFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, x):
        out = array_module(x).sqrt(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g / (2 * out)


class RsqrtFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, x):
        out = 1 / array_module(x).sqrt(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * (-0.5 * out * out * out)


class SinFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return array_module(x).sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * array_module(x).cos(x)


class CosFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return array_module(x).cos(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -g * array_module(x).sin(x)


class TanhFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, x):
        out = array_module(x).tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * (1 - out * out)


def sigmoid_array(x):
    """σ(x) = e^min(x, 0) / (1 + e^-|x|): no overflow for either sign, accurate for very negative x,
    and branch-free (a data-dependent ``where`` is ten times slower on random signs)."""
    xp = array_module(x)
    return xp.exp(xp.minimum(x, 0)) / (1 + xp.exp(-abs(x)))


def _mask(condition, dtype):
    """A boolean array as 0/1 of ``dtype`` (multiplying by it beats ``where`` on random masks)."""
    return condition.astype(dtype)


class SigmoidFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, x):
        out = sigmoid_array(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * (out * (1 - out))


_ZEROS = {}


def _zero(x):
    """0 as a 0-d array of x's dtype (NumPy converts a Python 0 on every call otherwise)."""
    if x.__class__ is not np.ndarray:
        return 0
    z = _ZEROS.get(x.dtype)
    if z is None:
        z = _ZEROS[x.dtype] = np.zeros((), x.dtype)
    return z


class ReluFn(ElementwiseFn):
    @staticmethod
    def forward(ctx, x):
        out = array_module(x).maximum(x, _zero(x))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * (out > 0)


class LeakyReluFn(ElementwiseFn):
    @staticmethod
    def forward(ctx, x, negative_slope):
        xp = array_module(x)
        ctx.save_for_backward(x)
        ctx.negative_slope = negative_slope
        return xp.maximum(x, 0) + negative_slope * xp.minimum(x, 0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        slope = ctx.negative_slope
        return g * (_mask(x > 0, g.dtype) * (1 - slope) + slope), None


class EluFn(ElementwiseFn):
    @staticmethod
    def forward(ctx, x, alpha):
        xp = array_module(x)
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return xp.maximum(x, 0) + alpha * xp.expm1(xp.minimum(x, 0))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        # d/dx = 1 for x > 0, α·e^x otherwise (as PyTorch, α at x = 0).
        positive = _mask(x > 0, g.dtype)
        return g * (positive + (1 - positive) * (ctx.alpha * array_module(x).exp(array_module(x).minimum(x, 0)))), None


_erf_impl = None


def erf_array(x):
    """The error function elementwise (SciPy's when installed; otherwise ``math.erf`` per element,
    a declared fallback); CuPy arrays use ``cupyx.scipy.special.erf``."""
    global _erf_impl
    if array_module(x) is not np:
        from cupyx.scipy.special import erf as cupy_erf

        return cupy_erf(x)
    if _erf_impl is None:
        try:
            from scipy.special import erf as scipy_erf

            _erf_impl = scipy_erf
        except ImportError:
            declare_fallback("elementwise", "erf", "math.erf per element (SciPy is not installed)")
            vectorised = np.frompyfunc(math.erf, 1, 1)

            def _erf_impl(a):
                note_fallback("elementwise", "erf")
                return vectorised(a).astype(a.dtype)
    return _erf_impl(x)


_SQRT_HALF = math.sqrt(0.5)
_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _c_contiguous(a):
    """``a`` itself when C-contiguous, else a C-contiguous copy (0-d arrays stay 0-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")

_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


class GeluFn(ElementwiseFn):
    """x·Φ(x) (``approximate="none"``) or 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))) (``"tanh"``)."""

    @staticmethod
    def forward(ctx, x, approximate):
        xp = array_module(x)
        if approximate == "tanh":
            t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
            ctx.save_for_backward(x, t)
            ctx.approximate = approximate
            return 0.5 * x * (1 + t)
        ctx.approximate = approximate
        if xp is np and x.dtype in _NATIVE_FLOATS:  # csrc/cpu/elementwise.cpp: one pass, Φ kept
            x = _c_contiguous(x)
            out, cdf = np.empty_like(x), np.empty_like(x)
            _C.gelu_forward(x, out, cdf)
            ctx.save_for_backward(x, cdf)
            return out
        cdf = 0.5 * (1 + erf_array(x * _SQRT_HALF))
        ctx.save_for_backward(x, cdf)
        return x * cdf

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        xp = array_module(x)
        if ctx.approximate == "tanh":
            d = 0.5 * (1 + s) + 0.5 * x * (1 - s * s) * (_SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x))
        elif xp is np and x.dtype in _NATIVE_FLOATS:
            grad = np.empty_like(x)
            _C.gelu_backward(x, s, _c_contiguous(g.astype(x.dtype, copy=False)), grad)
            return grad, None
        else:
            d = s + x * (_INV_SQRT_2PI * xp.exp(-0.5 * x * x))
        return g * d, None


class SiluFn(ElementwiseFn):
    int_to_float = True

    @staticmethod
    def forward(ctx, x):
        s = sigmoid_array(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g * (s * (1 + x * (1 - s)))


class SoftplusFn(ElementwiseFn):
    """log(1 + e^(βx))/β, and x itself where βx > threshold (as PyTorch)."""

    int_to_float = True

    @staticmethod
    def forward(ctx, x, beta, threshold):
        xp = array_module(x)
        z = x * beta
        linear = _mask(z > threshold, x.dtype)
        ctx.save_for_backward(z, linear)
        return linear * x + (1 - linear) * (xp.log1p(xp.exp(xp.minimum(z, threshold))) / beta)

    @staticmethod
    def backward(ctx, g):
        z, linear = ctx.saved_tensors
        return g * (linear + (1 - linear) * sigmoid_array(z)), None, None


class ClampFn(ElementwiseFn):
    """min(max(x, lo), hi); the gradient passes where lo ≤ x ≤ hi."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        xp = array_module(x)
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        out = x if lo is None else xp.maximum(x, lo)
        return out if hi is None else xp.minimum(out, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.lo is not None:
            g = g * (x >= ctx.lo)
        if ctx.hi is not None:
            g = g * (x <= ctx.hi)
        return g, None, None


class MaximumFn(ElementwiseFn):
    """max(a, b) elementwise; at ties each side gets half the gradient (as PyTorch)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return array_module(a).maximum(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return _split_extremum(g, a > b, a == b, ctx.needs_input_grad)


def _split_extremum(g, a_wins, ties, needs):
    """Gradients of max/min(a, b): all of g to the winner, half to each at ties."""
    weight = _mask(a_wins, g.dtype)
    if ties.any():
        weight += 0.5 * _mask(ties, g.dtype)
    ga = g * weight
    return (ga if needs[0] else None), (g - ga if needs[1] else None)


class MinimumFn(ElementwiseFn):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return array_module(a).minimum(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return _split_extremum(g, a < b, a == b, ctx.needs_input_grad)


class WhereFn(ElementwiseFn):
    """where(cond, a, b); cond is a raw bool array (no gradient)."""

    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        return array_module(cond).where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        (cond,) = ctx.saved_tensors
        n = ctx.needs_input_grad
        return None, (g * cond if n[1] else None), (g * ~cond if n[2] else None)


class ZeroGradFn(ElementwiseFn):
    """Piecewise-constant ops (sign, floor, ceil, round): their gradient is zero."""

    @staticmethod
    def forward(ctx, x, name):
        return getattr(array_module(x), name)(x)

    @staticmethod
    def backward(ctx, g):
        return array_module(g).zeros_like(g), None


class ToDtypeFn(ElementwiseFn):
    """A cast between floating dtypes; the gradient is cast back."""

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.source = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.source), None


class CloneFn(ElementwiseFn):
    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, g):
        return g


_INPLACE_UFUNC.update({AddFn: "add", SubFn: "subtract", MulFn: "multiply", DivFn: "true_divide", PowFn: "power"})
