"""fastdl.autograd: gradients without touching ``.grad`` (:func:`grad`), :func:`backward` over
several outputs, and :func:`gradcheck`, the float64 finite-difference check of any function's
gradients.

>>> import fastdl
>>> x = fastdl.tensor([1.0, 2.0], requires_grad=True)
>>> (g,) = fastdl.autograd.grad((x ** 3).sum(), x)
>>> g.tolist(), x.grad
([3.0, 12.0], None)
"""
from __future__ import annotations

import numpy as np

from .backend import array_module
from .tensor import Function, Tensor, _run_backward, no_grad

__all__ = ["Function", "grad", "backward", "gradcheck", "GradcheckError"]


def _as_list(tensors, op, name):
    if isinstance(tensors, Tensor):
        return [tensors]
    if isinstance(tensors, (list, tuple)) and all(isinstance(t, Tensor) for t in tensors):
        return list(tensors)
    raise TypeError(f"{op}: {name} must be a Tensor or a sequence of Tensors")


def _root_grads(op, outputs, grad_outputs):
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"{op}: {len(grad_outputs)} grad_outputs for {len(outputs)} outputs")
    grads = []
    for out, g in zip(outputs, grad_outputs):
        if not out.requires_grad:
            raise RuntimeError(f"{op}: an output of shape {out.shape} does not require grad and has no grad_fn")
        xp = array_module(out.data)
        if g is None:
            if out.data.size != 1:
                raise ValueError(f"{op}: grad_outputs must be given for a non-scalar output of shape {out.shape}")
            grads.append(xp.ones(out.shape, out.dtype))
        else:
            garr = g.data if isinstance(g, Tensor) else xp.asarray(g)
            if garr.shape != out.shape:
                raise ValueError(f"{op}: grad_output of shape {garr.shape} for an output of shape {out.shape}")
            grads.append(garr.astype(out.dtype, copy=True))
    return grads


def backward(tensors, grad_tensors=None, retain_graph=False) -> None:
    """Accumulate the gradients of several outputs into the leaves' ``.grad`` in one pass.

    >>> import fastdl
    >>> x = fastdl.ones(2, requires_grad=True)
    >>> fastdl.autograd.backward([x.sum(), (2 * x).sum()])
    >>> x.grad.tolist()
    [3.0, 3.0]
    """
    outputs = _as_list(tensors, "backward", "tensors")
    _run_backward(outputs, _root_grads("backward", outputs, grad_tensors), bool(retain_graph))


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, allow_unused=False) -> tuple:
    """The gradients of ``outputs`` with respect to ``inputs`` (leaf or intermediate tensors), as a
    tuple; no leaf's ``.grad`` changes. An input the outputs do not depend on raises unless
    ``allow_unused`` (its gradient is then None). The graph is freed unless ``retain_graph``.

    >>> import fastdl
    >>> x = fastdl.tensor(3.0, requires_grad=True)
    >>> y = x * x
    >>> fastdl.autograd.grad(y, [x, y])
    (tensor(6., dtype=float32, device='cpu'), tensor(1., dtype=float32, device='cpu'))
    """
    outs = _as_list(outputs, "grad", "outputs")
    ins = _as_list(inputs, "grad", "inputs")
    for t in ins:
        if not t.requires_grad:
            raise RuntimeError(f"grad: an input of shape {t.shape} does not require grad")
    captured = _run_backward(outs, _root_grads("grad", outs, grad_outputs), bool(retain_graph), inputs=ins)
    result = []
    for t, g in zip(ins, captured):
        if g is None and not allow_unused:
            raise RuntimeError(
                f"grad: an input of shape {t.shape} was not used to compute the outputs (pass allow_unused=True)"
            )
        result.append(None if g is None else Tensor(g))
    return tuple(result)


class GradcheckError(RuntimeError):
    """Raised by :func:`gradcheck` when analytical and numerical gradients disagree."""


# Above this many Jacobian entries gradcheck compares random directional derivatives instead.
_FULL_JACOBIAN_LIMIT = 4096


def _outputs(fn, inputs):
    out = fn(*inputs)
    outs = [out] if isinstance(out, Tensor) else [o for o in out if isinstance(o, Tensor)]
    return [o for o in outs if o.data.dtype.kind == "f"]


def _flat_value(fn, inputs):
    with no_grad():
        return np.concatenate([np.asarray(o.data, np.float64).reshape(-1) for o in _outputs(fn, inputs)])


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True) -> bool:
    """Compare the gradients backward computes for ``fn(*inputs)`` with float64 central
    differences, for every input that requires grad (they must be float64).

    Small problems compare the full Jacobian; larger ones compare random directional derivatives
    vᵀ·J·u. A mismatch raises :class:`GradcheckError` naming the input and the worst entry (or
    returns False when ``raise_exception=False``).

    >>> import fastdl
    >>> x = fastdl.randn(3, dtype=fastdl.float64, requires_grad=True)
    >>> fastdl.autograd.gradcheck(lambda t: (t.sin() * t).sum(), (x,))
    True
    """
    inputs = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    wrt = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not wrt:
        raise ValueError("gradcheck: no input requires grad")
    for i in wrt:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype} {inputs[i].shape}; use float64 inputs")
    outs = _outputs(fn, inputs)
    if not outs:
        raise ValueError("gradcheck: fn returned no floating-point tensor")
    n_out = sum(o.data.size for o in outs)
    n_in = sum(inputs[i].data.size for i in wrt)
    rng = np.random.default_rng(0)

    def analytic(vs):
        grads = _run_backward(outs, [v.reshape(o.shape).astype(o.dtype) for v, o in zip(vs, outs)],
                              True, inputs=[inputs[i] for i in wrt])
        return [np.zeros(inputs[i].shape) if g is None else np.asarray(g, np.float64) for i, g in zip(wrt, grads)]

    def split(v):
        parts, start = [], 0
        for o in outs:
            parts.append(v[start:start + o.data.size])
            start += o.data.size
        return parts

    def numeric(k, direction):
        """Central difference of the flattened outputs along ``direction`` for input wrt[k]."""
        data = inputs[wrt[k]].data
        saved = data.copy()
        data += eps * direction
        plus = _flat_value(fn, inputs)
        data[...] = saved - eps * direction
        minus = _flat_value(fn, inputs)
        data[...] = saved
        return (plus - minus) / (2 * eps)

    def fail(message):
        if raise_exception:
            raise GradcheckError("gradcheck: " + message)
        return False

    if n_out * n_in <= _FULL_JACOBIAN_LIMIT:
        rows = [analytic(split(np.eye(n_out)[r])) for r in range(n_out)]
        for k, i in enumerate(wrt):
            shape = inputs[i].shape
            size = inputs[i].data.size
            analytical = np.stack([rows[r][k].reshape(-1) for r in range(n_out)]) if n_out else np.zeros((0, size))
            numerical = np.zeros((n_out, size))
            for j in range(size):
                e = np.zeros(size)
                e[j] = 1.0
                numerical[:, j] = numeric(k, e.reshape(shape))
            bad = np.abs(analytical - numerical) > atol + rtol * np.abs(numerical)
            if bad.any():
                r, j = np.argwhere(bad)[0]
                return fail(
                    f"Jacobian mismatch for input {i} {shape} at output element {r}, input element {j}: "
                    f"backward {analytical[r, j]:.6g} vs numerical {numerical[r, j]:.6g} "
                    f"({int(bad.sum())} of {bad.size} entries differ)"
                )
        return True
    for trial in range(3):
        v = rng.standard_normal(n_out)
        grads = analytic(split(v))
        for k, i in enumerate(wrt):
            u = rng.standard_normal(inputs[i].shape)
            a = float((grads[k] * u).sum())
            b = float(v @ numeric(k, u))
            if abs(a - b) > atol + rtol * abs(b):
                return fail(
                    f"directional derivative mismatch for input {i} {inputs[i].shape} (trial {trial}): "
                    f"backward {a:.8g} vs numerical {b:.8g}"
                )
    return True
