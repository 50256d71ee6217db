"""Every op against PyTorch in float64 (NumPy reference without PyTorch) on awkward shapes — scalars,
size-1 and size-0 dims, broadcasting on either side, non-contiguous inputs — values and gradients,
plus a float64 finite-difference gradcheck of every differentiable op."""
import math

import numpy as np
import pytest

import fastdl
import fastdl.functional as F

from .helpers import check_op, gradcheck, torch

if torch is not None:
    import torch.nn.functional as TF

DTYPES = (np.float64, np.float32)


def data(shape, domain="any", seed=0):
    rng = np.random.default_rng(seed)
    if domain == "pos":
        return rng.uniform(0.5, 2.0, shape)
    if domain == "gt-1":
        return rng.uniform(-0.7, 2.0, shape)
    if domain == "nonzero":
        return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.3, 2.0, shape)
    if domain == "wide":
        return 4 * rng.standard_normal(shape)
    return rng.standard_normal(shape)


def _np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np_erf(x):
    return np.array([math.erf(v) for v in np.ravel(x)]).reshape(np.shape(x))


# name: (fastdl fn, torch fn, numpy fn, domain)
UNARY = {
    "neg": (lambda x: -x, lambda x: -x, np.negative, "any"),
    "abs": (lambda x: x.abs(), lambda x: x.abs(), np.abs, "nonzero"),
    "exp": (lambda x: x.exp(), lambda x: x.exp(), np.exp, "any"),
    "log": (lambda x: x.log(), lambda x: x.log(), np.log, "pos"),
    "log1p": (lambda x: x.log1p(), lambda x: x.log1p(), np.log1p, "gt-1"),
    "sqrt": (lambda x: x.sqrt(), lambda x: x.sqrt(), np.sqrt, "pos"),
    "rsqrt": (lambda x: x.rsqrt(), lambda x: x.rsqrt(), lambda x: 1 / np.sqrt(x), "pos"),
    "sin": (lambda x: x.sin(), lambda x: x.sin(), np.sin, "any"),
    "cos": (lambda x: x.cos(), lambda x: x.cos(), np.cos, "any"),
    "tanh": (lambda x: x.tanh(), lambda x: x.tanh(), np.tanh, "any"),
    "sigmoid": (lambda x: x.sigmoid(), lambda x: x.sigmoid(), _np_sigmoid, "wide"),
    "relu": (lambda x: x.relu(), lambda x: x.relu(), lambda x: np.maximum(x, 0), "nonzero"),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), lambda x: TF.leaky_relu(x, 0.1),
                   lambda x: np.where(x > 0, x, 0.1 * x), "nonzero"),
    "elu": (lambda x: F.elu(x, 1.3), lambda x: TF.elu(x, 1.3),
            lambda x: np.where(x > 0, x, 1.3 * np.expm1(np.minimum(x, 0))), "nonzero"),
    "gelu": (F.gelu, lambda x: TF.gelu(x), lambda x: x * 0.5 * (1 + _np_erf(x / math.sqrt(2))), "wide"),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))), "wide"),
    "silu": (F.silu, lambda x: TF.silu(x), lambda x: x * _np_sigmoid(x), "wide"),
    "softplus": (lambda x: F.softplus(x, beta=2.0, threshold=3.0), lambda x: TF.softplus(x, beta=2.0, threshold=3.0),
                 lambda x: np.where(2 * x > 3, x, np.log1p(np.exp(2 * x)) / 2), "wide"),
    "logsigmoid": (F.logsigmoid, lambda x: TF.logsigmoid(x), lambda x: -np.log1p(np.exp(-x)), "wide"),
    "clamp": (lambda x: x.clamp(-0.5, 0.7), lambda x: x.clamp(-0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7), "any"),
    "clamp_min": (lambda x: fastdl.clamp(x, min=0.2), lambda x: x.clamp(min=0.2), lambda x: np.maximum(x, 0.2), "any"),
    "square": (lambda x: x.square(), lambda x: x.square(), np.square, "any"),
    "reciprocal": (lambda x: x.reciprocal(), lambda x: x.reciprocal(), lambda x: 1 / x, "nonzero"),
    "pow3": (lambda x: x ** 3, lambda x: x ** 3, lambda x: x ** 3, "any"),
    "pow_half": (lambda x: x ** 0.5, lambda x: x ** 0.5, np.sqrt, "pos"),
    "rpow": (lambda x: 2.0 ** x, lambda x: 2.0 ** x, lambda x: 2.0 ** x, "any"),
    "rsub": (lambda x: 1.5 - x, lambda x: 1.5 - x, lambda x: 1.5 - x, "any"),
    "rdiv": (lambda x: 3 / x, lambda x: 3 / x, lambda x: 3 / x, "nonzero"),
    "scalar_mul_add": (lambda x: x * 2.5 + 1, lambda x: x * 2.5 + 1, lambda x: x * 2.5 + 1, "any"),
    "sign": (lambda x: x.sign(), lambda x: x.sign(), np.sign, "nonzero"),
    "floor": (lambda x: x.floor(), lambda x: x.floor(), np.floor, "wide"),
    "round": (lambda x: x.round(), lambda x: x.round(), np.round, "wide"),
    "clone": (lambda x: x.clone(), lambda x: x.clone(), np.copy, "any"),
}
ZERO_GRAD = {"sign", "floor", "round"}
UNARY_SHAPES = [(), (1,), (7,), (3, 1, 5), (0, 3), (2, 13)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", UNARY_SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name, shape, dtype):
    fn, tfn, nfn, domain = UNARY[name]
    check_op(fn, [data(shape, domain)], tfn, nfn, dtype=dtype)


@pytest.mark.parametrize("name", sorted(set(UNARY) - ZERO_GRAD))
def test_unary_gradcheck(name):
    fn, _, _, domain = UNARY[name]
    gradcheck(lambda x: fn(x), [data((3, 4), domain)])


BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b, np.add, "any"),
    "sub": (lambda a, b: a - b, lambda a, b: a - b, np.subtract, "any"),
    "mul": (lambda a, b: a * b, lambda a, b: a * b, np.multiply, "any"),
    "div": (lambda a, b: a / b, lambda a, b: a / b, np.divide, "nonzero"),
    "pow": (lambda a, b: a ** b, lambda a, b: a ** b, np.power, "pos-any"),
    "maximum": (fastdl.maximum, lambda a, b: torch.maximum(a, b), np.maximum, "any"),
    "minimum": (fastdl.minimum, lambda a, b: torch.minimum(a, b), np.minimum, "any"),
    "add_alpha": (lambda a, b: fastdl.add(a, b, alpha=-2), lambda a, b: torch.add(a, b, alpha=-2),
                  lambda a, b: a - 2 * b, "any"),
}
BROADCAST_PAIRS = [((3, 4), (3, 4)), ((3, 1), (1, 4)), ((), (2, 3)), ((2, 3), ()), ((5, 1, 3), (3,)),
                   ((3,), (5, 2, 1)), ((0, 3), (1, 3)), ((1,), (7, 1)), ((), ())]


def binary_inputs(shapes, domain):
    a_dom, b_dom = ("pos", "any") if domain == "pos-any" else (("any", "nonzero") if domain == "nonzero" else ("any",) * 2)
    return [data(shapes[0], a_dom, 1), data(shapes[1], b_dom, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", BROADCAST_PAIRS, ids=str)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_broadcasting(name, shapes, dtype):
    fn, tfn, nfn, domain = BINARY[name]
    check_op(fn, binary_inputs(shapes, domain), tfn, nfn, dtype=dtype)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_gradcheck(name):
    fn, _, _, domain = BINARY[name]
    gradcheck(fn, binary_inputs(((3, 1, 4), (2, 1)), domain))


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4), (3, 4)), ((3, 1), (1, 4), (3, 4)), ((2, 3), (), (3,))], ids=str)
def test_where(shapes):
    cond = data(shapes[2], seed=5) > 0
    check_op(lambda a, b, c: fastdl.where(c, a, b), [data(shapes[0]), data(shapes[1], seed=3), cond],
             lambda a, b, c: torch.where(c, a, b), lambda a, b, c: np.where(c, a, b))
    gradcheck(lambda a, b, c: fastdl.where(c, a, b), [data(shapes[0]), data(shapes[1], seed=3), cond])


def test_where_with_scalars():
    x = data((4,))
    check_op(lambda a: fastdl.where(a > 0, a, 0.0), [x], lambda a: torch.where(a > 0, a, 0.0),
             lambda a: np.where(a > 0, a, 0.0), dtype=np.float32)


def test_maximum_minimum_ties_split_the_gradient():
    a = fastdl.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = fastdl.tensor([1.0, 1.0, 4.0], requires_grad=True)
    (fastdl.maximum(a, b).sum() + fastdl.minimum(a, b).sum()).backward()
    assert a.grad.tolist() == [1.0, 1.0, 1.0] and b.grad.tolist() == [1.0, 1.0, 1.0]
    a.grad = b.grad = None
    fastdl.maximum(a, b).sum().backward()
    assert a.grad.tolist() == [0.5, 1.0, 0.0] and b.grad.tolist() == [0.5, 0.0, 1.0]


def test_clamp_with_tensor_bounds():
    check_op(lambda x, lo, hi: fastdl.clamp(x, lo, hi), [data((3, 4)), data((4,), seed=1) - 1, data((3, 1), seed=2) + 1],
             lambda x, lo, hi: torch.clamp(x, lo, hi), lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi))


# ---- reductions -----------------------------------------------------------------------------------

REDUCE_CASES = [((), None), ((5,), None), ((5,), 0), ((3, 4), 1), ((3, 4), -2), ((2, 3, 5), (0, 2)),
                ((2, 3, 5), None), ((1, 7), 0), ((0, 4), 1)]


def _td(x, dim):
    """PyTorch's spelling of "all dims" that keeps keepdim working."""
    return tuple(range(x.ndim)) if dim is None else dim


def _axis(dim):
    return tuple(dim) if isinstance(dim, tuple) else dim


REDUCTIONS = {
    "sum": (lambda x, d, k: x.sum(d, keepdim=k),
            lambda x, d, k: x.sum(_td(x, d), keepdim=k),
            lambda x, d, k: np.sum(x, axis=_axis(d), keepdims=k)),
    "mean": (lambda x, d, k: x.mean(d, keepdim=k),
             lambda x, d, k: x.mean(_td(x, d), keepdim=k),
             lambda x, d, k: np.mean(x, axis=_axis(d), keepdims=k)),
    "var": (lambda x, d, k: x.var(d, keepdim=k),
            lambda x, d, k: x.var(_td(x, d), keepdim=k),
            lambda x, d, k: np.var(x, axis=_axis(d), ddof=1, keepdims=k)),
    "var0": (lambda x, d, k: x.var(d, keepdim=k, correction=0),
             lambda x, d, k: x.var(_td(x, d), keepdim=k, correction=0),
             lambda x, d, k: np.var(x, axis=_axis(d), keepdims=k)),
    "std": (lambda x, d, k: x.std(d, keepdim=k, unbiased=False),
            lambda x, d, k: x.std(_td(x, d), keepdim=k, unbiased=False),
            lambda x, d, k: np.std(x, axis=_axis(d), keepdims=k)),
    "amax": (lambda x, d, k: x.amax(() if d is None else d, keepdim=k),
             lambda x, d, k: x.amax(() if d is None else d, keepdim=k),
             lambda x, d, k: np.amax(x, axis=_axis(d), keepdims=k)),
    "amin": (lambda x, d, k: x.amin(() if d is None else d, keepdim=k),
             lambda x, d, k: x.amin(() if d is None else d, keepdim=k),
             lambda x, d, k: np.amin(x, axis=_axis(d), keepdims=k)),
    "logsumexp": (lambda x, d, k: x.logsumexp(tuple(range(x.ndim)) if d is None else d, keepdim=k),
                  lambda x, d, k: x.logsumexp(tuple(range(x.ndim)) if d is None else d, keepdim=k),
                  lambda x, d, k: np.log(np.sum(np.exp(x), axis=_axis(d), keepdims=k))),
    "norm2": (lambda x, d, k: x.norm(dim=d, keepdim=k),
              lambda x, d, k: torch.linalg.vector_norm(x, 2, dim=d, keepdim=k),
              lambda x, d, k: np.sqrt(np.sum(x * x, axis=_axis(d), keepdims=k))),
    "norm1": (lambda x, d, k: x.norm(1, dim=d, keepdim=k),
              lambda x, d, k: torch.linalg.vector_norm(x, 1, dim=d, keepdim=k),
              lambda x, d, k: np.sum(np.abs(x), axis=_axis(d), keepdims=k)),
    "norm3": (lambda x, d, k: x.norm(3, dim=d, keepdim=k),
              lambda x, d, k: torch.linalg.vector_norm(x, 3, dim=d, keepdim=k),
              lambda x, d, k: np.sum(np.abs(x) ** 3, axis=_axis(d), keepdims=k) ** (1 / 3)),
    "norm_inf": (lambda x, d, k: x.norm(math.inf, dim=d, keepdim=k),
                 lambda x, d, k: torch.linalg.vector_norm(x, math.inf, dim=d, keepdim=k),
                 lambda x, d, k: np.amax(np.abs(x), axis=_axis(d), keepdims=k)),
}
NEEDS_ELEMENTS = {"amax", "amin", "norm_inf", "var", "var0", "std", "logsumexp"}


def _reduce_len(shape, dim):
    if dim is None:
        return max(int(np.prod(shape)), 1)
    dims = dim if isinstance(dim, tuple) else (dim,)
    return max(int(np.prod([shape[d] for d in dims])), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("case", REDUCE_CASES, ids=str)
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions(name, case, keepdim, dtype):
    shape, dim = case
    if 0 in shape and name in NEEDS_ELEMENTS:
        pytest.skip("reduction of an empty tensor is undefined")
    if name.startswith("var") or name == "std":
        if _reduce_len(shape, dim) < 2:
            pytest.skip("variance of a single element divides by zero")
    fn, tfn, nfn = REDUCTIONS[name]
    check_op(lambda x: fn(x, dim, keepdim), [data(shape, "nonzero")], lambda x: tfn(x, dim, keepdim),
             lambda x: nfn(x, dim, keepdim), dtype=dtype, k=_reduce_len(shape, dim))


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_gradcheck(name):
    fn = REDUCTIONS[name][0]
    gradcheck(lambda x: fn(x, (0, 2), False), [data((2, 3, 4), "nonzero")])
    gradcheck(lambda x: fn(x, None, True), [data((3, 2), "nonzero")])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((5,), 0), ((3, 4), 1), ((3, 4), 0), ((2, 3, 5), -1), ((1, 1), 0)], ids=str)
@pytest.mark.parametrize("largest", [True, False])
def test_max_min_with_dim(shape, dim, largest, dtype):
    op = "max" if largest else "min"
    check_op(lambda x: getattr(x, op)(dim), [data(shape)], lambda x: getattr(x, op)(dim),
             lambda x: (np.amax if largest else np.amin)(x, axis=dim), dtype=dtype)
    x = data(shape)
    res = getattr(fastdl.tensor(x), op)(dim, keepdim=True)
    assert res.indices.dtype == fastdl.int64
    assert res.indices.tolist() == (np.argmax if largest else np.argmin)(x, axis=dim, keepdims=True).tolist()
    gradcheck(lambda t: getattr(t, op)(dim).values, [x])


def test_max_without_dim_splits_ties_evenly():
    x = fastdl.tensor([1.0, 3.0, 3.0, 2.0], requires_grad=True)
    x.max().backward()
    assert x.grad.tolist() == [0.0, 0.5, 0.5, 0.0]
    y = fastdl.tensor([[1.0, 3.0, 3.0]], requires_grad=True)
    y.max(dim=1).values.sum().backward()
    assert y.grad.tolist() == [[0.0, 1.0, 0.0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((5,), 0), ((3, 4), 1), ((3, 4), None), ((2, 1, 3), 2), ((), None)], ids=str)
def test_prod(shape, dim, dtype):
    x = data(shape, "nonzero")
    check_op(lambda t: t.prod(dim), [x], lambda t: t.prod() if dim is None else t.prod(dim),
             lambda t: np.prod(t, axis=dim), dtype=dtype)


@pytest.mark.parametrize("zeros", [[1], [0, 2]])
def test_prod_gradient_with_zeros(zeros):
    x = data((4,), "nonzero")
    x[zeros] = 0.0
    check_op(lambda t: t.prod(0), [x], lambda t: t.prod(0), lambda t: np.prod(t, axis=0))
    gradcheck(lambda t: t.prod(), [x])


def test_norm_at_zero_has_zero_gradient():
    x = fastdl.zeros(3, dtype=fastdl.float64, requires_grad=True)
    x.norm().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((5,), 0), ((3, 4), 1), ((3, 4), 0), ((2, 3, 5), -1), ((1, 7), 1),
                                       ((0, 3), 1)], ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "cumsum"])
def test_softmax_family(name, shape, dim, dtype):
    def np_softmax(x):
        e = np.exp(x - x.max(axis=dim, keepdims=True)) if x.size else x
        return e / e.sum(axis=dim, keepdims=True) if x.size else x

    numpy_fn = {"softmax": np_softmax, "log_softmax": lambda x: np.log(np_softmax(x)) if x.size else x,
                "cumsum": lambda x: np.cumsum(x, axis=dim)}[name]
    check_op(lambda x: getattr(F, name)(x, dim), [data(shape, "wide")], lambda x: getattr(torch, name)(x, dim),
             numpy_fn, dtype=dtype, k=shape[dim])
    if 0 not in shape:
        gradcheck(lambda x: getattr(F, name)(x, dim), [data(shape)])


def test_softmax_is_stable_for_large_inputs():
    x = fastdl.tensor([[1000.0, 1000.0, -1000.0]])
    assert F.softmax(x, 1).tolist() == [[0.5, 0.5, 0.0]]
    assert np.isfinite(F.log_softmax(x, 1).numpy()).all()


# ---- matmul and linear ----------------------------------------------------------------------------

MATMUL_CASES = [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)), ((5, 2, 3), (3, 4)),
                ((2, 3), (5, 3, 4)), ((5, 2, 3), (5, 3, 4)), ((2, 1, 2, 3), (4, 3, 5)), ((3,), (5, 3, 4)),
                ((5, 2, 3), (3,)), ((1, 3), (3, 1)), ((2, 0), (0, 3)), ((1, 1), (1, 1)), ((7, 13), (13, 31)),
                ((2, 33, 17), (17, 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", MATMUL_CASES, ids=str)
def test_matmul_every_case(shapes, dtype, cpu_level):
    a, b = data(shapes[0], seed=1), data(shapes[1], seed=2)
    check_op(lambda x, y: x @ y, [a, b], lambda x, y: x @ y, np.matmul, dtype=dtype, k=shapes[0][-1])


@pytest.mark.parametrize("shapes", MATMUL_CASES[:10], ids=str)
def test_matmul_gradcheck(shapes):
    gradcheck(lambda x, y: fastdl.matmul(x, y), [data(shapes[0], seed=1), data(shapes[1], seed=2)])


def test_matmul_runs_on_the_native_gemm(monkeypatch):
    from fastdl.backend import _C

    calls = []
    real = _C.gemm
    monkeypatch.setattr(_C, "gemm", lambda *a: calls.append(a[0].shape) or real(*a))
    x = fastdl.randn(4, 3, requires_grad=True)
    w = fastdl.randn(3, 5, requires_grad=True)
    (x @ w).sum().backward()
    assert len(calls) == 3  # forward, dX = G·Wᵀ, dW = Xᵀ·G


def test_matmul_float16_and_int_use_the_declared_fallback():
    a = fastdl.ones(2, 3, dtype=fastdl.float16)
    assert (a @ fastdl.ones(3, 2, dtype=fastdl.float16)).dtype == fastdl.float16
    assert (fastdl.arange(6).reshape(2, 3) @ fastdl.arange(3)).tolist() == [5, 14]
    fallbacks = {(f["family"], f["case"]): f["runs"] for f in fastdl.backend_info()["fallbacks"]}
    assert fallbacks[("gemm", "float16/integer matmul")] >= 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape", [(4, 3), (2, 5, 3), (3,), (1, 3), (0, 3)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(x_shape, bias, dtype, cpu_level):
    arrays = [data(x_shape), data((5, 3), seed=1)] + ([data((5,), seed=2)] if bias else [])
    check_op(lambda *t: F.linear(*t), arrays, lambda *t: TF.linear(*t),
             lambda x, w, b=None: x @ w.T + (0 if b is None else b), dtype=dtype, k=3)
    if x_shape[0]:
        gradcheck(lambda *t: F.linear(*t), arrays)


def test_mm_bmm_dot():
    check_op(fastdl.mm, [data((3, 4)), data((4, 2))], lambda a, b: torch.mm(a, b), np.matmul)
    check_op(fastdl.bmm, [data((2, 3, 4)), data((2, 4, 2))], lambda a, b: torch.bmm(a, b), np.matmul)
    check_op(fastdl.dot, [data((5,)), data((5,))], lambda a, b: torch.dot(a, b), np.dot)


# ---- shapes ---------------------------------------------------------------------------------------

SHAPE_OPS = {
    "reshape": ((2, 3, 4), lambda x: x.reshape(4, -1), lambda x: x.reshape(4, -1), lambda x: x.reshape(4, -1)),
    "view": ((2, 3, 4), lambda x: x.view(24), lambda x: x.reshape(24), lambda x: x.reshape(24)),
    "flatten": ((2, 3, 4), lambda x: x.flatten(1), lambda x: x.flatten(1), lambda x: x.reshape(2, 12)),
    "unflatten": ((2, 12), lambda x: x.unflatten(1, (3, -1)), lambda x: x.unflatten(1, (3, -1)),
                  lambda x: x.reshape(2, 3, 4)),
    "squeeze": ((1, 3, 1), lambda x: x.squeeze(), lambda x: x.squeeze(), np.squeeze),
    "squeeze_dim": ((1, 3, 1), lambda x: x.squeeze(-1), lambda x: x.squeeze(-1), lambda x: x[..., 0]),
    "unsqueeze": ((3, 2), lambda x: x.unsqueeze(1), lambda x: x.unsqueeze(1), lambda x: x[:, None]),
    "permute": ((2, 3, 4), lambda x: x.permute(2, 0, 1), lambda x: x.permute(2, 0, 1),
                lambda x: x.transpose(2, 0, 1)),
    "transpose": ((2, 3, 4), lambda x: x.transpose(0, 2), lambda x: x.transpose(0, 2), lambda x: x.swapaxes(0, 2)),
    "T": ((3, 4), lambda x: x.T, lambda x: x.T, lambda x: x.T),
    "t": ((3,), lambda x: x.t(), lambda x: x.t(), lambda x: x),
    "expand": ((3, 1), lambda x: x.expand(2, 3, 4), lambda x: x.expand(2, 3, 4),
               lambda x: np.broadcast_to(x, (2, 3, 4))),
    "expand_keep": ((3, 1), lambda x: x.expand(-1, 5), lambda x: x.expand(-1, 5), lambda x: np.broadcast_to(x, (3, 5))),
    "repeat": ((2, 3), lambda x: x.repeat(2, 1, 3), lambda x: x.repeat(2, 1, 3), lambda x: np.tile(x, (2, 1, 3))),
    "contiguous": ((3, 4), lambda x: x.T.contiguous(), lambda x: x.T.contiguous(), lambda x: x.T.copy()),
    "flip": ((3, 4, 2), lambda x: x.flip(0, 2), lambda x: x.flip(0, 2), lambda x: x[::-1, :, ::-1]),
    "tril": ((2, 4, 5), lambda x: x.tril(1), lambda x: x.tril(1), lambda x: np.tril(x, 1)),
    "triu": ((4, 5), lambda x: x.triu(-1), lambda x: x.triu(-1), lambda x: np.triu(x, -1)),
    "index_int": ((4, 5), lambda x: x[1], lambda x: x[1], lambda x: x[1]),
    "index_scalar": ((4, 5), lambda x: x[1, -2], lambda x: x[1, -2], lambda x: x[1, -2]),
    "index_slices": ((4, 5, 6), lambda x: x[1:3, ::2, -1], lambda x: x[1:3, ::2, -1], lambda x: x[1:3, ::2, -1]),
    "index_none_ellipsis": ((4, 5, 6), lambda x: x[None, ..., 2, None], lambda x: x[None, ..., 2, None],
                            lambda x: x[None, ..., 2, None]),
    "index_array_repeats": ((4, 5), lambda x: x[fastdl.tensor([0, 2, 0, 3])], lambda x: x[torch.tensor([0, 2, 0, 3])],
                            lambda x: x[[0, 2, 0, 3]]),
    "index_array_2d": ((4, 5), lambda x: x[fastdl.tensor([[0, 1], [1, 1]]), 1:],
                       lambda x: x[torch.tensor([[0, 1], [1, 1]]), 1:], lambda x: x[np.array([[0, 1], [1, 1]]), 1:]),
    "index_two_arrays": ((4, 5), lambda x: x[fastdl.tensor([0, 3, 3]), fastdl.tensor([1, 1, 4])],
                         lambda x: x[torch.tensor([0, 3, 3]), torch.tensor([1, 1, 4])],
                         lambda x: x[[0, 3, 3], [1, 1, 4]]),
    "index_list": ((4, 5), lambda x: x[:, [4, 0, 4]], lambda x: x[:, [4, 0, 4]], lambda x: x[:, [4, 0, 4]]),
    "index_bool": ((4, 5), lambda x: x[x > 0], lambda x: x[x > 0], lambda x: x[x > 0]),
    "index_bool_rows": ((4, 5), lambda x: x[fastdl.tensor([True, False, True, True])],
                        lambda x: x[torch.tensor([True, False, True, True])], lambda x: x[[0, 2, 3]]),
    "split": ((5, 3), lambda x: x.split(2), lambda x: x.split(2), lambda x: (x[:2], x[2:4], x[4:])),
    "split_sizes": ((3, 6), lambda x: x.split([1, 0, 5], dim=1), lambda x: x.split([1, 0, 5], dim=1),
                    lambda x: (x[:, :1], x[:, 1:1], x[:, 1:])),
    "chunk": ((7, 2), lambda x: x.chunk(3), lambda x: x.chunk(3), lambda x: (x[:3], x[3:6], x[6:])),
    "unbind": ((3, 2), lambda x: x.unbind(1), lambda x: x.unbind(1), lambda x: (x[:, 0], x[:, 1])),
    "split_partial_use": ((6, 2), lambda x: x.split(2)[1] * 3, lambda x: x.split(2)[1] * 3, lambda x: x[2:4] * 3),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(SHAPE_OPS))
def test_shape_ops(name, dtype):
    shape, fn, tfn, nfn = SHAPE_OPS[name]
    check_op(fn, [data(shape, "nonzero")], tfn, nfn, dtype=dtype)
    gradcheck(fn, [data(shape, "nonzero")])


JOIN_CASES = [([(2, 3), (4, 3)], 0), ([(2, 3), (2, 1), (2, 0)], 1), ([(3,), (3,)], -1), ([(1, 2, 3)], 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes,dim", JOIN_CASES, ids=str)
def test_cat(shapes, dim, dtype):
    arrays = [data(s, seed=i) for i, s in enumerate(shapes)]
    check_op(lambda *t: fastdl.cat(list(t), dim), arrays, lambda *t: torch.cat(t, dim),
             lambda *t: np.concatenate(t, axis=dim), dtype=dtype)
    gradcheck(lambda *t: fastdl.cat(t, dim), arrays)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((2, 3), 0), ((2, 3), 2), ((3,), -1), ((), 0)], ids=str)
def test_stack(shape, dim, dtype):
    arrays = [data(shape, seed=i) for i in range(3)]
    check_op(lambda *t: fastdl.stack(t, dim), arrays, lambda *t: torch.stack(t, dim),
             lambda *t: np.stack(t, axis=dim), dtype=dtype)
    gradcheck(lambda *t: fastdl.stack(t, dim), arrays)


def test_cat_promotes_dtypes():
    out = fastdl.cat([fastdl.ones(2), fastdl.ones(2, dtype=fastdl.float64)])
    assert out.dtype == fastdl.float64


PAD_CASES = [((2, 3), (1, 2), "constant"), ((2, 3), (1, 0, 0, 2), "constant"), ((2, 5), (-1, 2), "constant"),
             ((1, 2, 4), (2, 3), "reflect"), ((2, 3, 4), (1, 2, 2, 1), "reflect"), ((1, 2, 4), (3, 1), "replicate"),
             ((1, 2, 3, 3), (1, 1, 2, 0), "replicate"), ((1, 2, 4), (2, 4), "circular"),
             ((1, 1, 3, 4), (1, 2, 3, 0), "circular")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,pad,mode", PAD_CASES, ids=str)
def test_pad(shape, pad, mode, dtype):
    def np_pad(x):
        pairs = [(pad[2 * k], pad[2 * k + 1]) for k in range(len(pad) // 2)][::-1]
        first = x.ndim - len(pairs)
        for k, (b, a) in enumerate(pairs):  # negative amounts crop
            index = [slice(None)] * x.ndim
            index[first + k] = slice(max(-b, 0), x.shape[first + k] - max(-a, 0))
            x = x[tuple(index)]
        widths = [(0, 0)] * first + [(max(b, 0), max(a, 0)) for b, a in pairs]
        npmode = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
        return np.pad(x, widths, mode=npmode, **({"constant_values": 1.5} if mode == "constant" else {}))

    kwargs = {"value": 1.5} if mode == "constant" else {}
    check_op(lambda x: F.pad(x, pad, mode, **kwargs), [data(shape)], lambda x: TF.pad(x, pad, mode, **kwargs),
             np_pad, dtype=dtype)
    gradcheck(lambda x: F.pad(x, pad, mode, **kwargs), [data(shape)])


GATHER_CASES = [((3, 4), 1, (3, 2)), ((3, 4), 0, (5, 4)), ((3, 4), 1, (2, 3)), ((2, 3, 4), -1, (2, 3, 6))]


def _index(shape, size, seed=0):
    return np.random.default_rng(seed).integers(0, size, shape).astype(np.int64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim,index_shape", GATHER_CASES, ids=str)
def test_gather(shape, dim, index_shape, dtype):
    idx = _index(index_shape, shape[dim])

    def np_gather(x, i):
        out = np.empty(i.shape)
        for pos in np.ndindex(i.shape):
            src = list(pos)
            src[dim] = i[pos]
            out[pos] = x[tuple(src)]
        return out

    check_op(lambda x, i: x.gather(dim, i), [data(shape), idx], lambda x, i: x.gather(dim, i), np_gather, dtype=dtype)
    gradcheck(lambda x, i: x.gather(dim, i), [data(shape), idx])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim,index_shape", [((3, 4), 1, (3, 6)), ((5, 2), 0, (4, 2)), ((4, 3), 0, (2, 2))],
                         ids=str)
def test_scatter_add(shape, dim, index_shape, dtype):
    idx = _index(index_shape, shape[dim], seed=1)

    def np_scatter_add(x, s, i):
        out = x.copy()
        for pos in np.ndindex(i.shape):
            dst = list(pos)
            dst[dim] = i[pos]
            out[tuple(dst)] += s[pos]
        return out

    arrays = [data(shape), data(index_shape, seed=2), idx]
    check_op(lambda x, s, i: x.scatter_add(dim, i, s), arrays, lambda x, s, i: x.scatter_add(dim, i, s),
             np_scatter_add, dtype=dtype)
    # A src larger than index contributes only its leading part (PyTorch's backward cannot do this).
    larger = [data(shape), data(tuple(s + 1 for s in index_shape), seed=2), idx]
    check_op(lambda x, s, i: x.scatter_add(dim, i, s), larger, None, np_scatter_add, dtype=dtype)
    gradcheck(lambda x, s, i: x.scatter_add(dim, i, s), larger)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_shape", [(3, 4), (4,), (3, 1), ()], ids=str)
def test_masked_fill(mask_shape, dtype):
    mask = data(mask_shape, seed=4) > 0
    check_op(lambda x, m: x.masked_fill(m, -2.5), [data((3, 4)), mask], lambda x, m: x.masked_fill(m, -2.5),
             lambda x, m: np.where(m, -2.5, x), dtype=dtype)
    gradcheck(lambda x, m: x.masked_fill(m, -2.5), [data((3, 4)), mask])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim,index", [(0, [2, 0, 2]), (1, [3]), (-1, []), (1, [0, 1, 2, 3, 3])], ids=str)
def test_index_select(dim, index, dtype):
    idx = np.array(index, np.int64)
    check_op(lambda x, i: x.index_select(dim, i), [data((3, 4)), idx], lambda x, i: x.index_select(dim, i),
             lambda x, i: np.take(x, i, axis=dim), dtype=dtype)
    gradcheck(lambda x, i: x.index_select(dim, i), [data((3, 4)), idx])


def test_one_hot():
    labels = fastdl.tensor([[0, 3], [2, 2]])
    out = F.one_hot(labels, 4)
    assert out.dtype == fastdl.int64 and out.shape == (2, 2, 4)
    assert out.numpy().argmax(-1).tolist() == [[0, 3], [2, 2]]
    assert F.one_hot(fastdl.tensor([1, 0])).tolist() == [[0, 1], [1, 0]]


def test_dropout_uses_the_seeded_generator_and_scales():
    fastdl.manual_seed(3)
    x = fastdl.ones(2000, requires_grad=True)
    y = F.dropout(x, 0.25)
    kept = y.numpy() != 0
    assert 0.7 < kept.mean() < 0.8
    assert np.allclose(y.numpy()[kept], 1 / 0.75)
    y.sum().backward()
    assert np.array_equal(x.grad.numpy() != 0, kept)
    fastdl.manual_seed(3)
    assert np.array_equal(F.dropout(fastdl.ones(2000), 0.25).numpy(), y.detach().numpy())
    assert F.dropout(x, 0.5, training=False) is x


def test_composite_chain_against_torch():
    def f(lib, x, w):
        h = (x @ w).tanh() * 2 - x.sum(-1, keepdim=True).sigmoid()
        return (h.softmax(-1) * h.exp()).mean(0)

    check_op(lambda x, w: f(fastdl, x, w), [data((4, 3)), data((3, 5), seed=1)], lambda x, w: f(torch, x, w),
             None, dtype=np.float32, k=5)


def test_clamp_with_tensor_bounds_gradcheck():
    gradcheck(lambda x, lo, hi: fastdl.clamp(x, lo, hi), [data((3, 4)), data((4,), seed=1) - 1, data((3, 1), seed=2) + 1])


def test_dropout_gradcheck_with_a_fixed_mask():
    def fn(x):
        fastdl.manual_seed(11)
        return F.dropout(x, 0.3)

    gradcheck(fn, [data((4, 5))])


def test_native_gelu_accuracy_on_every_level():
    # csrc/cpu/elementwise.cpp: float32 vectorised (erfc from exp and a Chebyshev fit), float64 libm.
    from scipy.special import erfc

    from fastdl.backend import _C

    x32 = np.concatenate([np.linspace(-13, 10, 200_003), [0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38]]).astype(np.float32)
    x = x32.astype(np.float64)
    cdf_ref = 0.5 * erfc(-x / math.sqrt(2))
    dx_ref = cdf_ref + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    previous = fastdl.cpu_capability()
    levels = ("portable", "avx2", "avx512")
    try:
        for level in levels[: levels.index(_C.detected_cpu_capability()) + 1]:
            fastdl.set_cpu_capability(level)
            y, cdf, dx = np.empty_like(x32), np.empty_like(x32), np.empty_like(x32)
            _C.gelu_forward(x32, y, cdf)
            _C.gelu_backward(x32, cdf, np.ones_like(x32), dx)
            normal = cdf_ref >= 1e-37  # below, results may flush towards 0 (absolute error < 2e-38)
            ulp = np.abs(cdf[normal] - cdf_ref[normal]) / np.spacing(cdf_ref[normal].astype(np.float32))
            assert ulp[x[normal] >= -5].max() <= 24 and ulp.max() <= 160, level
            assert np.abs(cdf[~normal] - cdf_ref[~normal]).max() < 2e-38
            np.testing.assert_allclose(y, x * cdf_ref, rtol=1e-5, atol=1e-37)
            np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-6)
    finally:
        fastdl.set_cpu_capability(previous)
    y64, cdf64 = np.empty_like(x), np.empty_like(x)
    _C.gelu_forward(x, y64, cdf64)
    np.testing.assert_allclose(cdf64, cdf_ref, rtol=1e-12, atol=1e-300)  # argument rounding: z²·2ε


def test_native_gelu_layouts_nan_and_errors():
    from fastdl.backend import _C

    base = np.random.default_rng(3).standard_normal((6, 10)).astype(np.float32)
    for x in (base[:, ::3], base.T, np.float32(0.7) * np.ones(()), base[:0]):
        t = fastdl.tensor(x, requires_grad=True)
        y = F.gelu(t)
        assert y.shape == x.shape
        y.sum().backward()
        ref = x * 0.5 * (1 + _np_erf(x.astype(np.float64) / math.sqrt(2)))
        np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-5, atol=1e-7)
        assert t.grad.shape == x.shape
    assert np.isnan(F.gelu(fastdl.tensor([np.nan, 1.0])).numpy()[0])
    x = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="gelu"):
        _C.gelu_forward(x, np.empty(4), np.empty(4))
    with pytest.raises(ValueError, match="gelu.*size"):
        _C.gelu_forward(x, np.empty(3, np.float32), np.empty(4, np.float32))
    with pytest.raises(TypeError, match="gelu"):
        _C.gelu_forward(np.ones(4, np.int64), np.empty(4), np.empty(4))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_native_dropout_mask_statistics(threads, p):
    from fastdl.backend import _C

    n = 1 << 20
    mask = np.empty(n, np.float32)
    _C.dropout_mask(mask, p, 2024)
    assert set(np.unique(mask).tolist()) == {0.0, np.float32(1 / (1 - p))}
    kept = mask != 0
    assert abs(kept.mean() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)  # 5 standard deviations
    # neighbours independent: the kept fraction after a kept element is the overall one
    assert abs(kept[1:][kept[:-1]].mean() - (1 - p)) < 6 * math.sqrt(p * (1 - p) / kept.sum())
    again, other = np.empty_like(mask), np.empty_like(mask)
    fastdl.set_num_threads(1)
    _C.dropout_mask(again, p, 2024)
    _C.dropout_mask(other, p, 2025)
    np.testing.assert_array_equal(again, mask)  # a pure function of (seed, index): any thread split
    assert (other != mask).mean() > 0.5 * 2 * p * (1 - p)
    m64 = np.empty(10, np.float64)
    _C.dropout_mask(m64, p, 2024)
    np.testing.assert_array_equal(m64 != 0, kept[:10])
    with pytest.raises(ValueError, match="dropout"):
        _C.dropout_mask(mask, 1.0, 0)
    with pytest.raises(TypeError, match="dropout"):
        _C.dropout_mask(np.empty(3, np.int32), 0.5, 0)
