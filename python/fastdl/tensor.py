"""Tensor, Function and the reverse-mode autodiff engine.

A :class:`Tensor` wraps one array (``.data``: a NumPy array on "cpu"; a CuPy array on "cuda" once
that device lands) and, when it was computed from tensors that require grad, the node that made it
(``.grad_fn``). Each op is a :class:`Function` subclass (in ``fastdl/ops/``) whose ``forward`` and
``backward`` work on raw arrays; ``Function.apply`` runs the forward and records a graph node only
when grad mode is on and an input requires grad. The node *is* the ``ctx`` object the forward saw:
it keeps the saved arrays, ``needs_input_grad`` and one edge per input (the producing node, or the
leaf tensor whose ``.grad`` accumulates).

``Tensor.backward`` walks the graph in topological order without recursion (Kahn's algorithm over
the nodes reachable from the output), sums the gradients of every consumer of a value before its
node's backward runs, undoes broadcasting for the elementwise ops that broadcast, accumulates into
leaf ``.grad`` and frees each node's saved arrays unless ``retain_graph=True``.

>>> import fastdl
>>> x = fastdl.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> y = (x * x).sum()
>>> y.backward()
>>> x.grad
tensor([2., 4., 6.], dtype=float32, device='cpu')
"""
from __future__ import annotations

import collections
import functools
import threading
import weakref

import numpy as np

from . import random as _random
from .backend import array_module, device_of, is_cuda_array, require_cuda

__all__ = [
    "Tensor", "Function", "tensor", "as_tensor", "from_numpy", "from_dlpack",
    "zeros", "ones", "full", "empty", "arange", "linspace", "eye", "rand", "randn", "randint", "randperm",
    "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "randint_like",
    "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled",
    "get_default_dtype", "set_default_dtype",
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool_",
]

# ---- dtypes ---------------------------------------------------------------------------------------
# fastdl dtypes are NumPy dtype objects (``fastdl.float32 is np.dtype("float32")``); PyTorch's
# aliases (fastdl.bool, fastdl.float, fastdl.long …) are set in fastdl/__init__.py.
float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int8 = np.dtype(np.int8)
int16 = np.dtype(np.int16)
int32 = np.dtype(np.int32)
int64 = np.dtype(np.int64)
uint8 = np.dtype(np.uint8)
bool_ = np.dtype(np.bool_)
_SUPPORTED = frozenset((float16, float32, float64, int8, int16, int32, int64, uint8, bool_))
_ndarray = np.ndarray


class _Defaults:
    dtype = float32


_defaults = _Defaults()


def get_default_dtype() -> np.dtype:
    """The dtype of tensors made from Python floats and of random/creation functions (float32).

    >>> import fastdl
    >>> fastdl.get_default_dtype()
    dtype('float32')
    """
    return _defaults.dtype


def set_default_dtype(dtype) -> None:
    """Set the default floating dtype (float16, float32 or float64), like ``torch.set_default_dtype``."""
    d = _as_dtype(dtype, "set_default_dtype")
    if d.kind != "f":
        raise TypeError(f"set_default_dtype: only floating dtypes can be the default, got {d}")
    _defaults.dtype = d


def _as_dtype(dtype, op: str) -> np.dtype:
    """Normalise a dtype argument (a fastdl/NumPy dtype, a NumPy scalar type or a name)."""
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: {dtype!r} is not a dtype") from None
    if d not in _SUPPORTED:
        raise TypeError(f"{op}: dtype {d} is not supported (use float16/32/64, int8/16/32/64, uint8 or bool)")
    return d


# ---- grad mode ------------------------------------------------------------------------------------

class _GradMode(threading.local):
    enabled = True


_grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    """Whether ops record the graph in this thread (False inside :class:`no_grad`).

    >>> import fastdl
    >>> with fastdl.no_grad():
    ...     fastdl.is_grad_enabled()
    False
    """
    return _grad_mode.enabled


class _GradModeContext:
    """Base of no_grad/enable_grad/set_grad_enabled: a context manager and a function decorator."""

    _mode = True

    def __new__(cls, *args):
        # ``@no_grad`` without parentheses: the decorated function arrives as the argument.
        if cls is not set_grad_enabled and len(args) == 1 and callable(args[0]):
            return cls()(args[0])
        return super().__new__(cls)

    def __enter__(self):
        self._previous = _grad_mode.enabled
        _grad_mode.enabled = self._mode

    def __exit__(self, *exc):
        _grad_mode.enabled = self._previous
        return False

    def __call__(self, func):
        mode = self._mode

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            previous = _grad_mode.enabled
            _grad_mode.enabled = mode
            try:
                return func(*args, **kwargs)
            finally:
                _grad_mode.enabled = previous

        return wrapper


class no_grad(_GradModeContext):
    """Context manager and decorator that turns graph recording off (inference, optimizer updates).

    >>> import fastdl
    >>> x = fastdl.ones(2, requires_grad=True)
    >>> with fastdl.no_grad():
    ...     y = x * 2
    >>> y.requires_grad
    False
    >>> @fastdl.no_grad()
    ... def f(t):
    ...     return t + 1
    >>> f(x).requires_grad
    False
    """

    _mode = False


class enable_grad(_GradModeContext):
    """Context manager and decorator that turns graph recording back on inside :class:`no_grad`.

    >>> import fastdl
    >>> x = fastdl.ones(2, requires_grad=True)
    >>> with fastdl.no_grad():
    ...     with fastdl.enable_grad():
    ...         y = x * 2
    >>> y.requires_grad
    True
    """

    _mode = True


class set_grad_enabled(_GradModeContext):
    """Set grad mode: ``set_grad_enabled(False)`` as a call, a context manager or a decorator.

    >>> import fastdl
    >>> with fastdl.set_grad_enabled(False):
    ...     fastdl.is_grad_enabled()
    False
    """

    def __init__(self, mode):
        self._mode = bool(mode)
        self._previous = _grad_mode.enabled
        _grad_mode.enabled = self._mode

    def __enter__(self):
        pass


# ---- Function: one op with its backward; its instances are the graph nodes ----------------------

_FREED = None  # a node's _saved after backward without retain_graph


class Function:
    """Base class of every differentiable op; subclass with static ``forward`` and ``backward``.

    ``forward(ctx, *args)`` receives Tensor arguments as raw arrays (other arguments as given) and
    returns an array or a tuple of arrays; ``backward(ctx, *grad_outputs)`` returns one gradient
    array (or None) per forward argument, each with exactly that input's shape. Subclasses whose
    forward broadcasts its inputs elementwise set ``broadcasting = True``; the engine then sums the
    gradients over the broadcast axes.

    >>> import fastdl
    >>> class Cube(fastdl.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x ** 3
    ...     @staticmethod
    ...     def backward(ctx, grad_out):
    ...         (x,) = ctx.saved_tensors
    ...         return 3 * x ** 2 * grad_out
    >>> x = fastdl.tensor(2.0, requires_grad=True)
    >>> Cube.apply(x).backward()
    >>> x.grad.item()
    12.0
    """

    __slots__ = ("_saved", "needs_input_grad", "_next", "_nout", "_outputs_meta", "_retained", "__weakref__")
    broadcasting = False

    def save_for_backward(self, *arrays) -> None:
        """Keep arrays (or None) for backward; read them back as ``ctx.saved_tensors``."""
        self._saved = arrays

    @property
    def saved_tensors(self) -> tuple:
        saved = self._saved
        if saved is _FREED:
            raise RuntimeError(
                f"{type(self).__name__}: its saved arrays were freed by a previous backward; "
                "call backward(retain_graph=True) to backward through the graph a second time"
            )
        return saved

    @staticmethod
    def forward(ctx, *args):
        raise TypeError("Function.forward must be defined by the subclass")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise TypeError("Function.backward must be defined by the subclass")

    @property
    def next_functions(self) -> tuple:
        """The nodes (or leaf tensors) the gradient of each input flows to, as PyTorch shows them."""
        return tuple(None if e is None else (e[0], e[1]) for e in self._next)

    def name(self) -> str:
        return type(self).__name__ + "Backward"

    def __repr__(self) -> str:
        return f"<{self.name()}>"

    @classmethod
    def apply(cls, *args):
        """Run the op on ``args`` and return its Tensor output(s), recording the graph if needed."""
        ctx = object.__new__(cls)
        ctx._saved = ()
        ctx._retained = None
        arrays, needs, edges = [], [], []
        first = None
        for a in args:
            if isinstance(a, Tensor):
                d = a.data
                if first is None:
                    first = d
                elif d.__class__ is not first.__class__ or (
                    d.__class__ is not _ndarray and d.device.id != first.device.id
                ):
                    _raise_devices(cls, args)
                arrays.append(d)
                if a.requires_grad:
                    # An edge: (producing node or leaf tensor, output index, shape, dtype, is a node).
                    fn = a.grad_fn
                    edges.append((a, 0, d.shape, d.dtype, False) if fn is None else
                                 (fn, a._output_nr, d.shape, d.dtype, True))
                    needs.append(True)
                    continue
            else:
                arrays.append(a)
            edges.append(None)
            needs.append(False)
        record = _grad_mode.enabled and True in needs
        ctx.needs_input_grad = tuple(needs) if record else (False,) * len(args)
        out = cls.forward(ctx, *arrays)
        if not record:
            if out.__class__ is tuple:
                return tuple(Tensor(o) for o in out)
            return Tensor(out)
        ctx._next = tuple(edges)
        if out.__class__ is tuple:
            outs = tuple(_graph_output(o, ctx, i) for i, o in enumerate(out))
            ctx._nout = len(outs)
            ctx._outputs_meta = tuple((o.data.shape, o.data.dtype) for o in outs)
            return outs
        ctx._nout = 1
        return _graph_output(out, ctx, 0)


def _graph_output(array, node, index):
    t = Tensor(array)
    if t.data.dtype.kind == "f":
        t.requires_grad = True
        t.grad_fn = node
        t._output_nr = index
    return t


def op_name(op) -> str:
    """The user-facing name of an op given as a name or a Function class (AddFn → add)."""
    if isinstance(op, str):
        return op
    name = op.__name__
    return name[:-2].lower() if name.endswith("Fn") else name


def _raise_devices(op, args):
    described = ", ".join(f"{a.device} {a.shape}" for a in args if isinstance(a, Tensor))
    raise ValueError(f"{op_name(op)}: tensors are on different devices ({described}); move them with .to(device)")


class _NullContext:
    """The ctx given to forward when nothing is recorded (the ops' no-grad fast path): it drops
    whatever forward stores, so only forwards that never read ctx back may receive it."""

    __slots__ = ()
    needs_input_grad = (False,) * 16

    def save_for_backward(self, *arrays):
        pass

    def __setattr__(self, name, value):
        pass


NULL_CTX = _NullContext()


# ---- the backward engine --------------------------------------------------------------------------

def _sum_to_shape(g, shape):
    """Sum ``g`` over the axes that broadcasting added or stretched to reach ``shape``."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, s in enumerate(shape) if s == 1 and g.shape[i + lead] != 1
    )
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape) if lead else g


def _free(node):
    node._saved = _FREED
    try:
        node.__dict__.clear()
    except AttributeError:  # a Function subclass with __slots__
        pass


def _check_gradient(node, i, g, edge):
    shape, dtype = edge[2], edge[3]
    if g.shape != shape:
        try:
            ok = node.broadcasting and np.broadcast_shapes(g.shape, shape) == g.shape
        except ValueError:
            ok = False
        if not ok:
            raise RuntimeError(
                f"{type(node).__name__}.backward returned a gradient of shape {g.shape} for input {i} "
                f"of shape {shape}"
            )
        g = _sum_to_shape(g, shape)
    if g.dtype != dtype:
        g = g.astype(dtype)
    return g


# Post-accumulate-grad hooks, by leaf: id(tensor) -> (weak reference, hooks). Kept outside the
# Tensor (no slot, nothing to pay per tensor); an entry disappears with its tensor.
_POST_ACCUMULATE_HOOKS: dict = {}


class _HookHandle:
    """What ``register_post_accumulate_grad_hook`` returns: ``remove()`` unregisters the hook."""

    __slots__ = ("_key", "_hook")

    def __init__(self, key, hook):
        self._key, self._hook = key, hook

    def remove(self) -> None:
        entry = _POST_ACCUMULATE_HOOKS.get(self._key)
        if entry is not None and self._hook in entry[1]:
            entry[1].remove(self._hook)
            if not entry[1]:
                del _POST_ACCUMULATE_HOOKS[self._key]


def _run_post_accumulate_hooks(leaf) -> None:
    entry = _POST_ACCUMULATE_HOOKS.get(id(leaf))
    if entry is not None:
        for hook in list(entry[1]):
            hook(leaf)


def _run_backward(roots, root_grads, retain_graph: bool, inputs=None):
    """Backpropagate ``root_grads`` (arrays) from the ``roots`` (tensors).

    With ``inputs`` (a sequence of tensors) the gradients reaching them are returned instead of
    being accumulated into any leaf's ``.grad`` (``autograd.grad``); otherwise leaves accumulate.
    """
    capture = None
    captured = None
    if inputs is not None:
        captured = [None] * len(inputs)
        capture = {}
        for k, t in enumerate(inputs):
            key = t.grad_fn if t.grad_fn is not None else t
            capture.setdefault((id(key), t._output_nr), []).append(k)
    given = set()  # ids of gradient arrays handed on: a second recipient gets a copy
    # Leaves with post-accumulate-grad hooks: id -> edges still to deliver; the hooks run after the
    # last one (autograd.grad accumulates nothing, so it runs none).
    hooked = {} if _POST_ACCUMULATE_HOOKS and capture is None else None
    accumulated = set()

    def hand_out(g):
        if id(g) in given:
            return g.copy()
        given.add(id(g))
        return g

    def to_leaf(leaf, g):
        if capture is not None:
            for k in capture.get((id(leaf), 0), ()):
                captured[k] = g if captured[k] is None else captured[k] + g
            return
        current = leaf.grad
        if current is None:
            if g.base is not None or id(g) in given:
                g = g.copy()
            given.add(id(g))
            leaf.grad = Tensor(g)
        elif current.data.shape == g.shape and getattr(current.data, "flags", None) is not None \
                and current.data.flags.writeable:
            current.data += g
        else:
            leaf.grad = Tensor(current.data + g)

    buffers = {}
    root_nodes = []
    for t, g in zip(roots, root_grads):
        node = t.grad_fn
        if node is None:
            to_leaf(t, g)
            if hooked is not None:
                _run_post_accumulate_hooks(t)
            continue
        g = hand_out(g)
        if node._nout == 1:
            buffers[node] = buffers[node] + g if node in buffers else g
        else:
            slots = buffers.setdefault(node, [None] * node._nout)
            i = t._output_nr
            slots[i] = g if slots[i] is None else slots[i] + g
        root_nodes.append(node)

    # Dependencies: how many edges from reachable nodes point at each node.
    deps = {}
    stack = []
    for node in root_nodes:
        if node not in deps:
            deps[node] = 0
            stack.append(node)
    while stack:
        node = stack.pop()
        if node._saved is _FREED:
            raise RuntimeError(
                f"{type(node).__name__}: trying to backward through the graph a second time (its saved "
                "arrays were freed by the first backward); use backward(retain_graph=True) the first time"
            )
        for edge in node._next:
            if edge is not None and edge[4]:
                target = edge[0]
                if target in deps:
                    deps[target] += 1
                else:
                    deps[target] = 1
                    stack.append(target)
            elif hooked is not None and edge is not None and id(edge[0]) in _POST_ACCUMULATE_HOOKS:
                hooked[id(edge[0])] = hooked.get(id(edge[0]), 0) + 1

    ready = [n for n in deps if deps[n] == 0]
    while ready:
        node = ready.pop()
        grad = buffers.pop(node, None)
        grads_in = None
        if grad is not None:
            if capture is not None:
                for i in range(node._nout):
                    gi = grad if node._nout == 1 else grad[i]
                    for k in capture.get((id(node), i), ()):
                        if gi is not None:
                            captured[k] = gi if captured[k] is None else captured[k] + gi
            if node._retained is not None:
                _fill_retained(node, grad)
            if node._nout == 1:
                grads_in = type(node).backward(node, grad)
            else:
                meta = node._outputs_meta
                xp = array_module(next(g for g in grad if g is not None))
                grads_in = type(node).backward(
                    node, *(xp.zeros(*meta[i]) if g is None else g for i, g in enumerate(grad))
                )
            if grads_in.__class__ is not tuple:
                grads_in = (grads_in,)
            if len(grads_in) != len(node._next):
                raise RuntimeError(
                    f"{type(node).__name__}.backward returned {len(grads_in)} gradients for "
                    f"{len(node._next)} forward arguments"
                )
        edges = node._next
        if not retain_graph:
            _free(node)
        for i, edge in enumerate(edges):
            if edge is None:
                continue
            target = edge[0]
            g = None if grads_in is None else grads_in[i]
            is_node = edge[4]
            if g is not None:
                if g.__class__ is not _ndarray:
                    g = _as_array(g)
                if g.shape != edge[2] or g.dtype != edge[3]:
                    g = _check_gradient(node, i, g, edge)
                if is_node:
                    g = hand_out(g)
                    if target._nout == 1:
                        previous = buffers.get(target)
                        buffers[target] = g if previous is None else previous + g
                    else:
                        slots = buffers.setdefault(target, [None] * target._nout)
                        j = edge[1]
                        slots[j] = g if slots[j] is None else slots[j] + g
                else:
                    to_leaf(target, g)
                    if hooked is not None:
                        accumulated.add(id(target))
            if is_node:
                deps[target] -= 1
                if deps[target] == 0:
                    ready.append(target)
            elif hooked is not None and id(target) in hooked:
                hooked[id(target)] -= 1
                if hooked[id(target)] == 0 and id(target) in accumulated:
                    _run_post_accumulate_hooks(target)
    return captured


def _fill_retained(node, grad):
    for i, ref in node._retained.items():
        t = ref()
        g = grad if node._nout == 1 else grad[i]
        if t is None or g is None:
            continue
        t.grad = Tensor(g.copy()) if t.grad is None else Tensor(t.grad.data + g)


# ---- Tensor ---------------------------------------------------------------------------------------

def _as_array(data):
    """An array for ``data``: arrays pass through, NumPy scalars become 0-d arrays, Python data
    follows :func:`tensor`'s dtype rules."""
    if isinstance(data, _ndarray):
        return data
    if isinstance(data, np.generic):
        return np.asarray(data)
    if hasattr(data, "__cuda_array_interface__"):
        return data
    return _infer_array(data, "tensor")


def _infer_array(data, op, dtype=None):
    """An array for Python/NumPy data: ``dtype`` when given, else PyTorch's inference (Python
    floats → the default dtype, ints → int64, bools → bool; NumPy data keeps its dtype)."""
    if isinstance(data, Tensor):
        arr = data.data
    elif is_cuda_array(data):
        import cupy

        arr = cupy.asarray(data)
    else:
        if isinstance(data, (list, tuple)) and any(isinstance(v, Tensor) for v in data):
            data = [v.detach().numpy() if isinstance(v, Tensor) else v for v in data]
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{op}: cannot make a tensor from {type(data).__name__}: {exc}") from None
    if dtype is not None:
        return arr.astype(dtype, copy=False)
    python_data = not (isinstance(data, (np.ndarray, np.generic, Tensor)) or is_cuda_array(data))
    if python_data and arr.dtype.kind == "f":
        return arr.astype(_defaults.dtype)
    if python_data and arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype not in _SUPPORTED:
        raise TypeError(f"{op}: cannot make a tensor of dtype {arr.dtype} from {type(data).__name__}")
    return arr


_max_result = collections.namedtuple("max", ["values", "indices"])


class Tensor:
    """A multi-dimensional array with reverse-mode autodiff, on NumPy arrays (shape ``.shape``).

    Make tensors with :func:`tensor`, :func:`zeros`, :func:`randn` …; the constructor wraps an
    array as it is (``Tensor(np_array)`` shares its memory).

    >>> import fastdl
    >>> t = fastdl.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    >>> (t @ t).sum()
    tensor(54., dtype=float32, device='cpu', grad_fn=<SumFnBackward>)
    """

    __slots__ = ("data", "grad", "requires_grad", "grad_fn", "_output_nr", "__weakref__")
    __array_ufunc__ = None  # NumPy defers `ndarray + tensor` to Tensor.__radd__
    __hash__ = object.__hash__

    def __init__(self, data, requires_grad=False):
        if data.__class__ is not _ndarray:
            data = _as_array(data)
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self.grad_fn = None
        self._output_nr = 0

    # -- attributes --
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def device(self) -> str:
        return device_of(self.data)

    @property
    def is_cuda(self) -> bool:
        return self.device != "cpu"

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def T(self) -> "Tensor":
        return _F.permute(self, tuple(range(self.data.ndim - 1, -1, -1)))

    @property
    def mT(self) -> "Tensor":
        return _F.transpose(self, -2, -1)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def itemsize(self) -> int:
        return self.data.itemsize

    def size(self, dim=None):
        """The shape, or the size of one dimension."""
        if dim is None:
            return self.data.shape
        return self.data.shape[_F._dim(dim, self.data.ndim, "size")]

    def dim(self) -> int:
        return self.data.ndim

    def numel(self) -> int:
        return self.data.size

    nelement = numel

    def element_size(self) -> int:
        return self.data.itemsize

    def stride(self, dim=None):
        """Strides in elements, as PyTorch reports them."""
        strides = tuple(s // self.data.itemsize for s in self.data.strides)
        return strides if dim is None else strides[_F._dim(dim, self.data.ndim, "stride")]

    def is_contiguous(self) -> bool:
        return self.data.flags.c_contiguous

    def is_floating_point(self) -> bool:
        return self.data.dtype.kind == "f"

    def data_ptr(self) -> int:
        if isinstance(self.data, _ndarray):
            return self.data.__array_interface__["data"][0]
        return self.data.data.ptr

    # -- conversion --
    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item: only one-element tensors can be converted to Python scalars, got shape {self.shape}")
        return self.data.item()

    def tolist(self):
        return self.data.tolist()

    def numpy(self) -> np.ndarray:
        """The underlying NumPy array (shared memory; no copy)."""
        if not isinstance(self.data, _ndarray):
            raise TypeError(f"numpy: tensor {self.shape} is on {self.device}; call .cpu() first")
        return self.data

    def __array__(self, dtype=None, copy=None):
        d = self.numpy()
        if dtype is not None and d.dtype != dtype:
            return d.astype(dtype)
        return d.copy() if copy else d

    def __dlpack__(self, **kwargs):
        return self.data.__dlpack__(**{k: v for k, v in kwargs.items() if v is not None})

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    def to(self, *args, **kwargs) -> "Tensor":
        """``to(dtype)``, ``to(device)``, ``to(device, dtype)``, ``to(other_tensor)``; differentiable."""
        dtype, device = kwargs.pop("dtype", None), kwargs.pop("device", None)
        copy = kwargs.pop("copy", False)
        kwargs.pop("non_blocking", None)
        if kwargs:
            raise TypeError(f"to: unexpected arguments {sorted(kwargs)}")
        for a in args:
            if isinstance(a, Tensor):
                dtype, device = a.dtype, a.device
            elif isinstance(a, str) and not _is_dtype_name(a):
                device = a
            else:
                dtype = a
        result = self if dtype is None else _F.to_dtype(self, _as_dtype(dtype, "to"))
        if device is not None:
            result = _device_ops.to_device(result, device)
        if copy and result is self:
            result = _F.clone(self)
        return result

    def type(self, dtype=None):
        if dtype is None:
            return f"fastdl.{self.dtype.name}"
        return self.to(dtype)

    def type_as(self, other) -> "Tensor":
        return self.to(other.dtype)

    def float(self) -> "Tensor":
        return _F.to_dtype(self, float32)

    def double(self) -> "Tensor":
        return _F.to_dtype(self, float64)

    def half(self) -> "Tensor":
        return _F.to_dtype(self, float16)

    def long(self) -> "Tensor":
        return _F.to_dtype(self, int64)

    def int(self) -> "Tensor":
        return _F.to_dtype(self, int32)

    def bool(self) -> "Tensor":
        return _F.to_dtype(self, bool_)

    def cpu(self) -> "Tensor":
        """This tensor on the CPU (itself when it is already there); differentiable."""
        return self.to("cpu")

    def cuda(self, device=None):
        return self.to("cuda" if device is None else f"cuda:{device}")

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous; use .any() or .all()")
        return bool(self.data)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.data.dtype.kind not in "iu" or self.data.size != 1:
            raise TypeError(f"only one-element integer tensors can be used as an index, got {self.dtype} {self.shape}")
        return int(self.data)

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __iter__(self):
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))

    def __format__(self, spec):
        if self.data.ndim == 0:
            return format(self.data.item(), spec)
        return format(repr(self), spec)

    def __repr__(self) -> str:
        extras = [f"dtype={self.dtype.name}", f"device='{self.device}'"]
        if self.grad_fn is not None:
            extras.append(f"grad_fn={self.grad_fn!r}")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        data = self.data if isinstance(self.data, _ndarray) else self.data.get()
        if data.size == 0:
            body = f"[], size={self.shape}"
        else:
            # PyTorch's style: "2." for whole numbers, otherwise four decimals for every element.
            finite = data[np.isfinite(data)] if data.dtype.kind == "f" else data
            whole = data.dtype.kind != "f" or bool((finite == np.round(finite)).all())
            body = np.array2string(data, separator=", ", prefix="tensor(", precision=4, threshold=1000,
                                   edgeitems=3, floatmode="maxprec" if whole else "fixed")
        return f"tensor({body}, {', '.join(extras)})"

    __str__ = __repr__

    # -- autograd --
    def detach(self) -> "Tensor":
        """A tensor sharing this one's data, cut from the graph."""
        return Tensor(self.data)

    def detach_(self) -> "Tensor":
        self.grad_fn = None
        self.requires_grad = False
        return self

    def clone(self) -> "Tensor":
        return _F.clone(self)

    def requires_grad_(self, requires_grad=True) -> "Tensor":
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"requires_grad_: only floating-point tensors can require gradients, got {self.dtype}")
        if not requires_grad and self.grad_fn is not None:
            raise RuntimeError("requires_grad_: use .detach() to stop a non-leaf tensor's gradient")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self) -> None:
        """Keep the gradient of this non-leaf tensor in ``.grad`` after backward."""
        if self.grad_fn is None:
            return
        node = self.grad_fn
        if node._retained is None:
            node._retained = {}
        node._retained[self._output_nr] = weakref.ref(self)

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(tensor)`` each time a backward has finished accumulating this leaf's
        gradient into ``.grad`` (after all of this backward's contributions, as PyTorch's hook of the
        same name; ``autograd.grad`` runs none). Returns a handle with ``remove()``.

        >>> import fastdl
        >>> w = fastdl.tensor([1.0, 2.0], requires_grad=True)
        >>> handle = w.register_post_accumulate_grad_hook(lambda t: print("grad", t.grad.tolist()))
        >>> (w * w + w).sum().backward()
        grad [3.0, 5.0]
        >>> handle.remove()
        """
        if self.grad_fn is not None or not self.requires_grad:
            raise RuntimeError("register_post_accumulate_grad_hook: only a leaf tensor that requires grad "
                               f"accumulates a gradient (this one: shape {self.shape}, "
                               f"{'non-leaf' if self.grad_fn is not None else 'requires_grad=False'})")
        if not callable(hook):
            raise TypeError(f"register_post_accumulate_grad_hook: hook must be callable, got {type(hook).__name__}")
        key = id(self)
        entry = _POST_ACCUMULATE_HOOKS.get(key)
        if entry is None or entry[0]() is not self:
            entry = _POST_ACCUMULATE_HOOKS[key] = (
                weakref.ref(self, lambda _, key=key: _POST_ACCUMULATE_HOOKS.pop(key, None)), [])
        entry[1].append(hook)
        return _HookHandle(key, hook)

    def backward(self, gradient=None, retain_graph=False) -> None:
        """Accumulate d(self)/d(leaf) · gradient into the ``.grad`` of every leaf that requires grad.

        ``gradient`` (same shape as self) is required unless self has one element.
        """
        if not self.requires_grad:
            raise RuntimeError(
                f"backward: the tensor of shape {self.shape} does not require grad and has no grad_fn "
                "(was it computed under no_grad, or from tensors without requires_grad=True?)"
            )
        xp = array_module(self.data)
        if gradient is None:
            if self.data.size != 1:
                raise ValueError(
                    f"backward: gradient must be given for a non-scalar output of shape {self.shape} "
                    "(call .sum() first, or pass gradient= with the output's shape)"
                )
            g = xp.empty(self.data.shape, self.data.dtype)
            g[...] = 1
        else:
            g = gradient.data if isinstance(gradient, Tensor) else xp.asarray(gradient)
            if g.shape != self.data.shape:
                raise ValueError(f"backward: gradient has shape {g.shape}, the output has shape {self.shape}")
            g = g.astype(self.data.dtype, copy=True)
        _run_backward((self,), (g,), bool(retain_graph))

    def zero_(self) -> "Tensor":
        _check_inplace(self, "zero_")
        self.data[...] = 0
        return self

    def fill_(self, value) -> "Tensor":
        _check_inplace(self, "fill_")
        self.data[...] = value.item() if isinstance(value, Tensor) else value
        return self

    def copy_(self, src) -> "Tensor":
        _check_inplace(self, "copy_")
        s = src.data if isinstance(src, Tensor) else np.asarray(src)
        try:
            self.data[...] = s
        except ValueError:
            raise ValueError(f"copy_: source of shape {s.shape} does not broadcast to {self.shape}") from None
        return self

    def normal_(self, mean=0.0, std=1.0) -> "Tensor":
        _check_inplace(self, "normal_")
        self.data[...] = _random.generator().normal(mean, std, self.shape)
        return self

    def uniform_(self, a=0.0, b=1.0) -> "Tensor":
        _check_inplace(self, "uniform_")
        self.data[...] = _random.generator().uniform(a, b, self.shape)
        return self

    def __setitem__(self, key, value):
        _check_inplace(self, "__setitem__")
        v = value.data if isinstance(value, Tensor) else value
        self.data[_F._index_key(key)[0]] = v

    def __getitem__(self, key):
        return _F.index(self, key)

    # -- new tensors like this one --
    def new_tensor(self, data, dtype=None, requires_grad=False):
        return tensor(data, dtype=dtype or self.dtype, requires_grad=requires_grad)

    def new_zeros(self, *size, dtype=None, requires_grad=False):
        return zeros(*size, dtype=dtype or self.dtype, requires_grad=requires_grad)

    def new_ones(self, *size, dtype=None, requires_grad=False):
        return ones(*size, dtype=dtype or self.dtype, requires_grad=requires_grad)

    def new_full(self, size, fill_value, dtype=None, requires_grad=False):
        return full(size, fill_value, dtype=dtype or self.dtype, requires_grad=requires_grad)

    def new_empty(self, *size, dtype=None, requires_grad=False):
        return empty(*size, dtype=dtype or self.dtype, requires_grad=requires_grad)

    # -- arithmetic (see ops/elementwise.py) --
    def __add__(self, other):
        return _ew.binary(_ew.AddFn, self, other)

    def __radd__(self, other):
        return _ew.binary(_ew.AddFn, other, self)

    def __sub__(self, other):
        return _ew.binary(_ew.SubFn, self, other)

    def __rsub__(self, other):
        return _ew.binary(_ew.SubFn, other, self)

    def __mul__(self, other):
        return _ew.binary(_ew.MulFn, self, other)

    def __rmul__(self, other):
        return _ew.binary(_ew.MulFn, other, self)

    def __truediv__(self, other):
        return _ew.binary(_ew.DivFn, self, other)

    def __rtruediv__(self, other):
        return _ew.binary(_ew.DivFn, other, self)

    def __pow__(self, other):
        return _ew.binary(_ew.PowFn, self, other)

    def __rpow__(self, other):
        return _ew.binary(_ew.PowFn, other, self)

    def __matmul__(self, other):
        return _F.matmul(self, other)

    def __rmatmul__(self, other):
        return _F.matmul(other, self)

    def __floordiv__(self, other):
        return _ew.no_grad_binary("floor_divide", self, other)

    def __rfloordiv__(self, other):
        return _ew.no_grad_binary("floor_divide", other, self)

    def __mod__(self, other):
        return _ew.no_grad_binary("remainder", self, other)

    def __neg__(self):
        return _ew.unary(_ew.NegFn, self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _ew.unary(_ew.AbsFn, self)

    def __iadd__(self, other):
        return _ew.inplace(_ew.AddFn, self, other, "__iadd__")

    def __isub__(self, other):
        return _ew.inplace(_ew.SubFn, self, other, "__isub__")

    def __imul__(self, other):
        return _ew.inplace(_ew.MulFn, self, other, "__imul__")

    def __itruediv__(self, other):
        return _ew.inplace(_ew.DivFn, self, other, "__itruediv__")

    def __ipow__(self, other):
        return _ew.inplace(_ew.PowFn, self, other, "__ipow__")

    def add_(self, other, alpha=1):
        return _ew.inplace(_ew.AddFn, self, other if alpha == 1 else other * alpha, "add_")

    def sub_(self, other, alpha=1):
        return _ew.inplace(_ew.SubFn, self, other if alpha == 1 else other * alpha, "sub_")

    def mul_(self, other):
        return _ew.inplace(_ew.MulFn, self, other, "mul_")

    def div_(self, other):
        return _ew.inplace(_ew.DivFn, self, other, "div_")

    def clamp_(self, min=None, max=None):
        _check_inplace(self, "clamp_")
        self.data[...] = _F.clamp(self.detach(), min, max).data
        return self

    def masked_fill_(self, mask, value):
        _check_inplace(self, "masked_fill_")
        self.data[...] = _F.masked_fill(self.detach(), mask, value).data
        return self

    # -- comparisons and logic (never differentiable) --
    def __eq__(self, other):
        return _ew.compare("equal", self, other)

    def __ne__(self, other):
        return _ew.compare("not_equal", self, other)

    def __lt__(self, other):
        return _ew.compare("less", self, other)

    def __le__(self, other):
        return _ew.compare("less_equal", self, other)

    def __gt__(self, other):
        return _ew.compare("greater", self, other)

    def __ge__(self, other):
        return _ew.compare("greater_equal", self, other)

    def __and__(self, other):
        return _ew.no_grad_binary("bitwise_and", self, other)

    __rand__ = __and__

    def __or__(self, other):
        return _ew.no_grad_binary("bitwise_or", self, other)

    __ror__ = __or__

    def __xor__(self, other):
        return _ew.no_grad_binary("bitwise_xor", self, other)

    __rxor__ = __xor__

    def __invert__(self):
        return _F.logical_not(self) if self.data.dtype == bool_ else _ew.no_grad_unary("invert", self)

    # -- the rest of the methods call the public functions of fastdl.functional --
    def add(self, other, alpha=1):
        return _F.add(self, other, alpha=alpha)

    def sub(self, other, alpha=1):
        return _F.sub(self, other, alpha=alpha)

    def mul(self, other):
        return _F.mul(self, other)

    def div(self, other, rounding_mode=None):
        return _F.div(self, other, rounding_mode=rounding_mode)

    def pow(self, exponent):
        return _F.pow(self, exponent)

    def matmul(self, other):
        return _F.matmul(self, other)

    def mm(self, other):
        return _F.mm(self, other)

    def bmm(self, other):
        return _F.bmm(self, other)

    def dot(self, other):
        return _F.dot(self, other)

    def neg(self):
        return _ew.unary(_ew.NegFn, self)

    def abs(self):
        return _ew.unary(_ew.AbsFn, self)

    def exp(self):
        return _ew.unary(_ew.ExpFn, self)

    def log(self):
        return _ew.unary(_ew.LogFn, self)

    def log1p(self):
        return _ew.unary(_ew.Log1pFn, self)

    def sqrt(self):
        return _ew.unary(_ew.SqrtFn, self)

    def rsqrt(self):
        return _ew.unary(_ew.RsqrtFn, self)

    def sin(self):
        return _ew.unary(_ew.SinFn, self)

    def cos(self):
        return _ew.unary(_ew.CosFn, self)

    def tanh(self):
        return _ew.unary(_ew.TanhFn, self)

    def sigmoid(self):
        return _ew.unary(_ew.SigmoidFn, self)

    def relu(self):
        return _ew.unary(_ew.ReluFn, self)

    def square(self):
        return _F.square(self)

    def reciprocal(self):
        return _F.reciprocal(self)

    def sign(self):
        return _F.sign(self)

    def floor(self):
        return _F.floor(self)

    def ceil(self):
        return _F.ceil(self)

    def round(self):
        return _F.round(self)

    def clamp(self, min=None, max=None):
        return _F.clamp(self, min, max)

    clip = clamp

    def maximum(self, other):
        return _F.maximum(self, other)

    def minimum(self, other):
        return _F.minimum(self, other)

    def where(self, condition, other):
        return _F.where(condition, self, other)

    def masked_fill(self, mask, value):
        return _F.masked_fill(self, mask, value)

    def eq(self, other):
        return self == other

    def ne(self, other):
        return self != other

    def lt(self, other):
        return self < other

    def le(self, other):
        return self <= other

    def gt(self, other):
        return self > other

    def ge(self, other):
        return self >= other

    def isnan(self):
        return _F.isnan(self)

    def isinf(self):
        return _F.isinf(self)

    def isfinite(self):
        return _F.isfinite(self)

    def logical_not(self):
        return _F.logical_not(self)

    def logical_and(self, other):
        return _F.logical_and(self, other)

    def logical_or(self, other):
        return _F.logical_or(self, other)

    def equal(self, other):
        return _F.equal(self, other)

    def allclose(self, other, rtol=1e-05, atol=1e-08, equal_nan=False):
        return _F.allclose(self, other, rtol, atol, equal_nan)

    # reductions
    def sum(self, dim=None, keepdim=False, dtype=None):
        return _F.sum(self, dim, keepdim, dtype=dtype)

    def mean(self, dim=None, keepdim=False, dtype=None):
        return _F.mean(self, dim, keepdim, dtype=dtype)

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        return _F.var(self, dim, unbiased, keepdim, correction=correction)

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        return _F.std(self, dim, unbiased, keepdim, correction=correction)

    def max(self, dim=None, keepdim=False):
        return _F.max(self, dim, keepdim)

    def min(self, dim=None, keepdim=False):
        return _F.min(self, dim, keepdim)

    def amax(self, dim=(), keepdim=False):
        return _F.amax(self, dim, keepdim)

    def amin(self, dim=(), keepdim=False):
        return _F.amin(self, dim, keepdim)

    def argmax(self, dim=None, keepdim=False):
        return _F.argmax(self, dim, keepdim)

    def argmin(self, dim=None, keepdim=False):
        return _F.argmin(self, dim, keepdim)

    def logsumexp(self, dim, keepdim=False):
        return _F.logsumexp(self, dim, keepdim)

    def prod(self, dim=None, keepdim=False):
        return _F.prod(self, dim, keepdim)

    def norm(self, p="fro", dim=None, keepdim=False):
        return _F.norm(self, p, dim, keepdim)

    def cumsum(self, dim):
        return _F.cumsum(self, dim)

    def all(self, dim=None, keepdim=False):
        return _F.all(self, dim, keepdim)

    def any(self, dim=None, keepdim=False):
        return _F.any(self, dim, keepdim)

    def softmax(self, dim):
        return _F.softmax(self, dim)

    def log_softmax(self, dim):
        return _F.log_softmax(self, dim)

    # shapes
    def reshape(self, *shape):
        return _F.reshape(self, _shape_args(shape))

    def view(self, *shape):
        return _F.reshape(self, _shape_args(shape))

    def view_as(self, other):
        return _F.reshape(self, other.shape)

    reshape_as = view_as

    def flatten(self, start_dim=0, end_dim=-1):
        return _F.flatten(self, start_dim, end_dim)

    def unflatten(self, dim, sizes):
        return _F.unflatten(self, dim, sizes)

    def squeeze(self, dim=None):
        return _F.squeeze(self, dim)

    def unsqueeze(self, dim):
        return _F.unsqueeze(self, dim)

    def permute(self, *dims):
        return _F.permute(self, _shape_args(dims))

    def transpose(self, dim0, dim1):
        return _F.transpose(self, dim0, dim1)

    swapaxes = transpose

    def t(self):
        return _F.t(self)

    def expand(self, *sizes):
        return _F.expand(self, _shape_args(sizes))

    def expand_as(self, other):
        return _F.expand(self, other.shape)

    def repeat(self, *sizes):
        return _F.repeat(self, _shape_args(sizes))

    def contiguous(self):
        return _F.contiguous(self)

    def split(self, split_size_or_sections, dim=0):
        return _F.split(self, split_size_or_sections, dim)

    def chunk(self, chunks, dim=0):
        return _F.chunk(self, chunks, dim)

    def unbind(self, dim=0):
        return _F.unbind(self, dim)

    def flip(self, *dims):
        return _F.flip(self, _shape_args(dims))

    def gather(self, dim, index):
        return _F.gather(self, dim, index)

    def scatter_add(self, dim, index, src):
        return _F.scatter_add(self, dim, index, src)

    def index_select(self, dim, index):
        return _F.index_select(self, dim, index)

    def tril(self, diagonal=0):
        return _F.tril(self, diagonal)

    def triu(self, diagonal=0):
        return _F.triu(self, diagonal)


def _check_inplace(t: Tensor, op: str) -> None:
    if t.requires_grad and _grad_mode.enabled:
        raise RuntimeError(
            f"{op}: a tensor of shape {t.shape} that requires grad cannot be modified in place while grad "
            "is enabled; update it inside fastdl.no_grad() (as optimizers do) or work on .detach()"
        )


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_dtype_name(s: str) -> bool:
    try:
        return np.dtype(s) in _SUPPORTED
    except TypeError:
        return False


def _shape_args(args) -> tuple:
    """``f(2, 3)``, ``f((2, 3))`` and ``f([2, 3])`` all mean the tuple (2, 3)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


# ---- creation -------------------------------------------------------------------------------------

def _parse_device(device, op: str):
    """``None``, ``("cpu", None)`` or ``("cuda", index)`` for a device argument ("cpu", "cuda",
    "cuda:N", or an object whose str() is one of those); asking for CUDA where it cannot run raises
    RuntimeError saying what is missing (fastdl built with CUDA, CuPy, a GPU) and how to fix it."""
    if device is None:
        return None
    name = str(device)
    if name == "cpu":
        return "cpu", None
    if name == "cuda" or name.startswith("cuda:"):
        cupy = require_cuda(op)
        if name == "cuda":
            return "cuda", cupy.cuda.runtime.getDevice()
        try:
            index = int(name[5:])
        except ValueError:
            raise ValueError(f"{op}: bad device {name!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
        count = cupy.cuda.runtime.getDeviceCount()
        if not 0 <= index < count:
            raise ValueError(f"{op}: device {name!r} does not exist; {count} GPU(s) are visible")
        return "cuda", index
    raise ValueError(f"{op}: unknown device {name!r}; use 'cpu', 'cuda' or 'cuda:N'")


def _xp_for_device(device, op: str):
    """The array module of ``device`` (NumPy for "cpu" and None, CuPy for "cuda[:N]")."""
    parsed = _parse_device(device, op)
    if parsed is None or parsed[0] == "cpu":
        return np
    import cupy

    return cupy


def _to_device(array, device, op: str):
    """``array`` on ``device``: itself when it is already there, else one copy (host↔device or
    device↔device). Nothing ever moves unless asked for here."""
    parsed = _parse_device(device, op)
    if parsed is None:
        return array
    kind, index = parsed
    on_gpu = not isinstance(array, _ndarray)
    if kind == "cpu":
        return array.get() if on_gpu else array
    if on_gpu and array.device.id == index:
        return array
    import cupy

    with cupy.cuda.Device(index):
        return array.copy() if on_gpu else cupy.asarray(array)


def _size(op: str, size) -> tuple:
    shape = _shape_args(size)
    for s in shape:
        if not _is_int(s):
            raise TypeError(f"{op}: sizes must be integers, got {shape}")
        if s < 0:
            raise ValueError(f"{op}: sizes must be non-negative, got {shape}")
    return tuple(int(s) for s in shape)


def _finish(op, array, requires_grad, device=None) -> Tensor:
    t = Tensor(_to_device(array, device, op))
    if requires_grad:
        t.requires_grad_(True)
    return t


def tensor(data, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A new tensor holding a copy of ``data`` (nested lists, scalars, NumPy arrays, tensors).

    Python floats become the default dtype (float32), Python ints int64, bools bool; a NumPy array
    keeps its dtype. ``device`` ("cpu", "cuda", "cuda:N") defaults to where ``data`` is (CuPy
    arrays and CUDA tensors stay on their GPU).

    >>> import fastdl
    >>> fastdl.tensor([[1, 2], [3, 4]]).dtype
    dtype('int64')
    >>> fastdl.tensor(2.5, requires_grad=True)
    tensor(2.5000, dtype=float32, device='cpu', requires_grad=True)
    """
    _parse_device(device, "tensor")
    arr = _infer_array(data, "tensor", None if dtype is None else _as_dtype(dtype, "tensor"))
    arr = array_module(arr).array(arr, copy=True)
    return _finish("tensor", arr, requires_grad, device)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like :func:`tensor` but shares memory with a NumPy/CuPy array (or tensor) when the dtype and
    device allow."""
    _parse_device(device, "as_tensor")
    if isinstance(data, Tensor):
        return data.to(device=device, dtype=dtype)
    arr = _infer_array(data, "as_tensor", None if dtype is None else _as_dtype(dtype, "as_tensor"))
    return Tensor(_to_device(arr, device, "as_tensor"))


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with a NumPy array (its dtype kept).

    >>> import numpy as np, fastdl
    >>> a = np.zeros(3, np.float32)
    >>> t = fastdl.from_numpy(a)
    >>> a[0] = 5
    >>> t[0].item()
    5.0
    """
    if not isinstance(array, _ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    if array.dtype not in _SUPPORTED:
        raise TypeError(f"from_numpy: dtype {array.dtype} is not supported")
    return Tensor(array)


def from_dlpack(obj) -> Tensor:
    """A tensor sharing memory with any DLPack producer on the CPU (PyTorch, JAX, NumPy, …).

    >>> import numpy as np, fastdl
    >>> fastdl.from_dlpack(np.arange(3.0)).tolist()
    [0.0, 1.0, 2.0]
    """
    if isinstance(obj, Tensor):
        return obj
    return Tensor(np.from_dlpack(obj))


def _float_dtype(dtype, op):
    return _defaults.dtype if dtype is None else _as_dtype(dtype, op)


def zeros(*size, dtype=None, device="cpu", requires_grad=False) -> Tensor:
    """A tensor of zeros: ``zeros(2, 3)`` or ``zeros((2, 3))``.

    >>> import fastdl
    >>> fastdl.zeros(2, 3).shape
    (2, 3)
    """
    return _finish("zeros", np.zeros(_size("zeros", size), _float_dtype(dtype, "zeros")), requires_grad, device)


def ones(*size, dtype=None, device="cpu", requires_grad=False) -> Tensor:
    """A tensor of ones.

    >>> import fastdl
    >>> fastdl.ones(2).tolist()
    [1.0, 1.0]
    """
    return _finish("ones", np.ones(_size("ones", size), _float_dtype(dtype, "ones")), requires_grad, device)


def empty(*size, dtype=None, device="cpu", requires_grad=False) -> Tensor:
    """An uninitialised tensor.

    >>> import fastdl
    >>> fastdl.empty(4, 2).shape
    (4, 2)
    """
    return _finish("empty", np.empty(_size("empty", size), _float_dtype(dtype, "empty")), requires_grad, device)


def _scalar_dtype(value):
    if isinstance(value, (bool, np.bool_)):
        return bool_
    if isinstance(value, (int, np.integer)):
        return int64
    return _defaults.dtype


def full(size, fill_value, dtype=None, device="cpu", requires_grad=False) -> Tensor:
    """A tensor filled with ``fill_value`` (its dtype inferred from the value, as PyTorch does).

    >>> import fastdl
    >>> fastdl.full((2,), 7).tolist()
    [7, 7]
    """
    if isinstance(fill_value, Tensor):
        fill_value = fill_value.item()
    d = _scalar_dtype(fill_value) if dtype is None else _as_dtype(dtype, "full")
    return _finish("full", np.full(_size("full", (size,) if _is_int(size) else size), fill_value, d), requires_grad, device)


def arange(start, end=None, step=1, dtype=None, device="cpu", requires_grad=False) -> Tensor:
    """Values from ``start`` to ``end`` (exclusive) by ``step``; int64 for integer arguments.

    >>> import fastdl
    >>> fastdl.arange(4).tolist()
    [0, 1, 2, 3]
    >>> fastdl.arange(0, 1, 0.25).dtype
    dtype('float32')
    """
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if dtype is None:
        dtype = int64 if all(_is_int(v) for v in (start, end, step)) else _defaults.dtype
    return _finish("arange", np.arange(start, end, step).astype(_as_dtype(dtype, "arange")), requires_grad, device)


def linspace(start, end, steps, dtype=None, device="cpu", requires_grad=False) -> Tensor:
    """``steps`` evenly spaced values from ``start`` to ``end`` inclusive.

    >>> import fastdl
    >>> fastdl.linspace(0, 1, 3).tolist()
    [0.0, 0.5, 1.0]
    """
    if not _is_int(steps) or steps < 0:
        raise ValueError(f"linspace: steps must be a non-negative integer, got {steps!r}")
    d = _float_dtype(dtype, "linspace")
    return _finish("linspace", np.linspace(start, end, steps).astype(d), requires_grad, device)


def eye(n, m=None, dtype=None, device="cpu", requires_grad=False) -> Tensor:
    """The ``n × m`` identity matrix.

    >>> import fastdl
    >>> fastdl.eye(2).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    n, m = _size("eye", (n, n if m is None else m))
    return _finish("eye", np.eye(n, m, dtype=_float_dtype(dtype, "eye")), requires_grad, device)


def _random_float(op, sampler, size, dtype, requires_grad, device):
    d = _float_dtype(dtype, op)
    if d.kind != "f":
        raise TypeError(f"{op}: dtype must be floating point, got {d}")
    shape = _size(op, size)
    if d == float16:
        arr = sampler(shape, np.float32).astype(np.float16)
    else:
        arr = sampler(shape, d)
    return _finish(op, arr, requires_grad, device)


def rand(*size, dtype=None, device="cpu", requires_grad=False) -> Tensor:
    """Uniform samples in [0, 1) from fastdl's seeded generator.

    >>> import fastdl
    >>> _ = fastdl.manual_seed(0)
    >>> x = fastdl.rand(1000)
    >>> bool((x >= 0).all() and (x < 1).all())
    True
    """
    _parse_device(device, "rand")
    return _random_float(
        "rand", lambda s, d: _random.generator().random(s, dtype=d), size, dtype, requires_grad, device
    )


def randn(*size, dtype=None, device="cpu", requires_grad=False) -> Tensor:
    """Standard normal samples from fastdl's seeded generator.

    >>> import fastdl
    >>> fastdl.randn(2, 3).shape
    (2, 3)
    """
    _parse_device(device, "randn")
    return _random_float(
        "randn", lambda s, d: _random.generator().standard_normal(s, dtype=d), size, dtype, requires_grad, device
    )


def randint(*args, size=None, dtype=None, device="cpu", requires_grad=False) -> Tensor:
    """Integers in [low, high): ``randint(high, size)`` or ``randint(low, high, size)``; int64.

    >>> import fastdl
    >>> x = fastdl.randint(0, 10, (100,))
    >>> x.dtype, bool((x >= 0).all() and (x < 10).all())
    (dtype('int64'), True)
    """
    _parse_device(device, "randint")
    args = list(args)
    if size is None:
        if not args or not isinstance(args[-1], (tuple, list)):
            raise TypeError("randint: expected randint(high, size) or randint(low, high, size)")
        size = args.pop()
    if len(args) == 1:
        low, high = 0, args[0]
    elif len(args) == 2:
        low, high = args
    else:
        raise TypeError("randint: expected randint(high, size) or randint(low, high, size)")
    if high <= low:
        raise ValueError(f"randint: high ({high}) must be greater than low ({low})")
    d = int64 if dtype is None else _as_dtype(dtype, "randint")
    arr = _random.generator().integers(low, high, _size("randint", size)).astype(d)
    return _finish("randint", arr, requires_grad, device)


def randperm(n, dtype=None, device="cpu") -> Tensor:
    """A random permutation of 0 … n-1 (int64).

    >>> import fastdl
    >>> sorted(fastdl.randperm(4).tolist())
    [0, 1, 2, 3]
    """
    _parse_device(device, "randperm")
    d = int64 if dtype is None else _as_dtype(dtype, "randperm")
    return _finish("randperm", _random.generator().permutation(_size("randperm", (n,))[0]).astype(d), False, device)


def _like(op, t, dtype):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(t).__name__}")
    return t.shape, t.dtype if dtype is None else dtype


def zeros_like(input, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Zeros with the shape (and dtype) of ``input``.

    >>> import fastdl
    >>> fastdl.zeros_like(fastdl.ones(2, dtype=fastdl.int64)).tolist()
    [0, 0]
    """
    shape, d = _like("zeros_like", input, dtype)
    return zeros(shape, dtype=d, device=device, requires_grad=requires_grad)


def ones_like(input, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Ones with the shape (and dtype) of ``input``."""
    shape, d = _like("ones_like", input, dtype)
    return ones(shape, dtype=d, device=device, requires_grad=requires_grad)


def empty_like(input, dtype=None, device=None, requires_grad=False) -> Tensor:
    """An uninitialised tensor with the shape (and dtype) of ``input``."""
    shape, d = _like("empty_like", input, dtype)
    return empty(shape, dtype=d, device=device, requires_grad=requires_grad)


def full_like(input, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    """``fill_value`` everywhere, with the shape (and dtype) of ``input``."""
    shape, d = _like("full_like", input, dtype)
    return full(shape, fill_value, dtype=d, device=device, requires_grad=requires_grad)


def rand_like(input, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Uniform samples with the shape (and dtype) of ``input``."""
    shape, d = _like("rand_like", input, dtype)
    return rand(shape, dtype=d, device=device, requires_grad=requires_grad)


def randn_like(input, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Normal samples with the shape (and dtype) of ``input``."""
    shape, d = _like("randn_like", input, dtype)
    return randn(shape, dtype=d, device=device, requires_grad=requires_grad)


def randint_like(input, low=0, high=None, dtype=None, device=None) -> Tensor:
    """Random integers in [low, high) with the shape of ``input``: ``randint_like(t, high)`` or
    ``randint_like(t, low, high)``."""
    if high is None:
        low, high = 0, low
    shape, d = _like("randint_like", input, dtype)
    return randint(low, high, shape, dtype=d, device=device)


# The ops need Tensor and Function defined first; Tensor's methods look them up at call time.
from . import functional as _F  # noqa: E402
from .ops import elementwise as _ew  # noqa: E402
from .ops import device as _device_ops  # noqa: E402
