"""Tensor creation, attributes, conversions, dtype promotion (against PyTorch's rules), repr,
DLPack, NumPy interop, in-place updates and the seeded generator."""
import math

import numpy as np
import pytest

import fastdl

from .helpers import torch


def test_dtypes_are_numpy_dtypes():
    assert fastdl.float32 is np.dtype("float32") and fastdl.float64 is np.dtype("float64")
    assert fastdl.float16 is np.dtype("float16") and fastdl.int64 is np.dtype("int64")
    assert fastdl.int32 is np.dtype("int32") and fastdl.bool is np.dtype("bool")
    assert fastdl.float is fastdl.float32 and fastdl.long is fastdl.int64 and fastdl.double is fastdl.float64


@pytest.mark.parametrize("data,dtype", [
    (1.5, "float32"), (2, "int64"), (True, "bool"), ([1.0, 2], "float32"), ([[1, 2], [3, 4]], "int64"),
    ([True, False], "bool"), (np.arange(3, dtype=np.int32), "int32"), (np.ones(2, np.float64), "float64"),
    (np.float64(2.0), "float64"), (np.ones(2, np.float16), "float16"),
])
def test_tensor_infers_dtype_like_pytorch(data, dtype):
    assert fastdl.tensor(data).dtype == np.dtype(dtype)
    if torch is not None:
        assert str(torch.tensor(data).dtype).replace("torch.", "") == dtype


def test_tensor_copies_from_numpy_shares_as_tensor_may_share():
    a = np.zeros(3, np.float32)
    t, f, s = fastdl.tensor(a), fastdl.from_numpy(a), fastdl.as_tensor(a)
    a[0] = 7
    assert t[0].item() == 0 and f[0].item() == 7 and s[0].item() == 7
    assert fastdl.tensor([1, 2], dtype=fastdl.float64).dtype == fastdl.float64
    assert fastdl.tensor([fastdl.tensor(1.0), fastdl.tensor(2.0)]).tolist() == [1.0, 2.0]
    with pytest.raises(TypeError, match="from_numpy"):
        fastdl.from_numpy([1, 2])


def test_creation_functions():
    assert fastdl.zeros(2, 3).shape == fastdl.zeros((2, 3)).shape == fastdl.zeros([2, 3]).shape == (2, 3)
    assert fastdl.zeros(()).shape == () and fastdl.zeros(0, 4).shape == (0, 4)
    assert fastdl.ones(2, dtype=fastdl.int32).dtype == fastdl.int32
    assert fastdl.empty(3, 1).shape == (3, 1) and fastdl.empty(3).dtype == fastdl.float32
    assert fastdl.full((2,), 1.5).dtype == fastdl.float32 and fastdl.full((2,), 3).dtype == fastdl.int64
    assert fastdl.full((2,), True).dtype == fastdl.bool
    assert fastdl.arange(5).tolist() == [0, 1, 2, 3, 4] and fastdl.arange(5).dtype == fastdl.int64
    assert fastdl.arange(1, 2, 0.5).tolist() == [1.0, 1.5]
    assert fastdl.arange(3, dtype=fastdl.float64).dtype == fastdl.float64
    assert fastdl.linspace(-1, 1, 5).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert fastdl.eye(2, 3).tolist() == [[1, 0, 0], [0, 1, 0]]
    z = fastdl.zeros(2, requires_grad=True)
    assert z.requires_grad and z.is_leaf
    x = fastdl.randn(3, 2, dtype=fastdl.float64)
    for like, value in [(fastdl.zeros_like, 0), (fastdl.ones_like, 1), (lambda t: fastdl.full_like(t, 4), 4)]:
        y = like(x)
        assert y.shape == x.shape and y.dtype == x.dtype and (y == value).all().item()
    assert fastdl.empty_like(x).shape == (3, 2)
    assert fastdl.rand_like(x).dtype == fastdl.float64 and fastdl.randn_like(x).shape == (3, 2)
    r = fastdl.randint_like(x, 5)
    assert r.shape == (3, 2) and r.dtype == fastdl.float64 and ((r >= 0) & (r < 5)).all().item()


def test_random_functions_use_one_seeded_generator():
    fastdl.manual_seed(123)
    a = (fastdl.rand(5), fastdl.randn(2, 2), fastdl.randint(3, 9, (4,)), fastdl.randperm(6))
    fastdl.manual_seed(123)
    b = (fastdl.rand(5), fastdl.randn(2, 2), fastdl.randint(3, 9, (4,)), fastdl.randperm(6))
    for x, y in zip(a, b):
        assert x.tolist() == y.tolist()
    assert a[0].dtype == fastdl.float32 and a[2].dtype == fastdl.int64
    assert ((a[2] >= 3) & (a[2] < 9)).all().item() and sorted(a[3].tolist()) == list(range(6))
    assert fastdl.randn(3, dtype=fastdl.float16).dtype == fastdl.float16
    assert fastdl.initial_seed() == 123
    g = fastdl.random.generator()
    state = fastdl.get_rng_state()
    first = g.random()
    fastdl.set_rng_state(state)
    assert g.random() == first
    t = fastdl.empty(3)
    fastdl.manual_seed(5)
    t.normal_(0.0, 2.0)
    fastdl.manual_seed(5)
    assert t.tolist() == np.random.Generator(np.random.PCG64(5)).normal(0, 2, 3).astype(np.float32).tolist()


def test_attributes():
    x = fastdl.arange(24, dtype=fastdl.float32).reshape(2, 3, 4)
    assert x.shape == (2, 3, 4) and x.ndim == 3 and x.dim() == 3 and x.dtype == fastdl.float32
    assert x.device == "cpu" and not x.is_cuda
    assert x.size() == (2, 3, 4) and x.size(-1) == 4 and x.numel() == 24 and len(x) == 2
    assert x.T.shape == (4, 3, 2) and x.mT.shape == (2, 4, 3)
    assert x.stride() == (12, 4, 1) and x.is_contiguous() and not x.T.is_contiguous()
    assert x.element_size() == 4 and x.is_floating_point() and not fastdl.arange(2).is_floating_point()
    assert fastdl.tensor([[1, 2]]).tolist() == [[1, 2]]
    assert fastdl.tensor(2.5).item() == 2.5 and float(fastdl.tensor([3.0])) == 3.0 and int(fastdl.tensor(4)) == 4
    assert [t.tolist() for t in fastdl.tensor([[1, 2], [3, 4]])] == [[1, 2], [3, 4]]
    assert f"{fastdl.tensor(1 / 3):.3f}" == "0.333"
    assert bool(fastdl.tensor([1])) and not bool(fastdl.tensor(0.0))
    assert list(range(5))[fastdl.tensor(2)] == 2
    assert isinstance(x.numpy(), np.ndarray) and np.asarray(x).shape == (2, 3, 4)
    assert np.asarray(x, dtype=np.float64).dtype == np.float64


def test_numpy_operands_dispatch_to_tensor():
    t = fastdl.ones(3, requires_grad=True)
    out = np.arange(3.0, dtype=np.float32) + t
    assert isinstance(out, fastdl.Tensor) and out.requires_grad
    assert isinstance(np.float32(2.0) * t, fastdl.Tensor)
    assert (t * np.ones(3, np.float32)).dtype == fastdl.float32


def test_conversions():
    x = fastdl.tensor([1.5, -2.5])
    assert x.double().dtype == fastdl.float64 and x.half().dtype == fastdl.float16
    assert x.long().tolist() == [1, -2] and x.int().dtype == fastdl.int32
    assert x.bool().tolist() == [True, True] and fastdl.tensor([0, 2]).float().dtype == fastdl.float32
    assert x.to(fastdl.float64).dtype == fastdl.float64 and x.to("cpu") is x
    assert x.to("cpu", fastdl.float64).dtype == fastdl.float64 and x.to(dtype="float64").dtype == fastdl.float64
    assert x.to(fastdl.zeros(1, dtype=fastdl.int64)).dtype == fastdl.int64
    assert x.to(fastdl.float32, copy=True) is not x and x.cpu() is x
    assert x.type_as(fastdl.zeros(1, dtype=fastdl.float64)).dtype == fastdl.float64
    y = fastdl.tensor([1.0, 2.0], requires_grad=True)
    y.double().sum().backward()
    assert y.grad.dtype == fastdl.float32 and y.grad.tolist() == [1.0, 1.0]
    assert not y.long().requires_grad


def test_requires_grad_and_clone():
    x = fastdl.ones(2)
    assert x.requires_grad_() is x and x.requires_grad
    c = x.clone()
    assert c.requires_grad and c.grad_fn is not None and not np.shares_memory(c.numpy(), x.numpy())
    with pytest.raises(TypeError, match="floating"):
        fastdl.arange(3).requires_grad_()
    with pytest.raises(TypeError, match="floating"):
        fastdl.tensor([1, 2], requires_grad=True)


def test_repr_shows_values_dtype_device_and_grad_fn():
    x = fastdl.tensor([[1.0, 2.5], [3.0, 4.0]], requires_grad=True)
    assert repr(x) == ("tensor([[1.0000, 2.5000],\n        [3.0000, 4.0000]], dtype=float32, device='cpu', "
                       "requires_grad=True)")
    y = (x * 2).sum()
    assert repr(y) == "tensor(21., dtype=float32, device='cpu', grad_fn=<SumFnBackward>)"
    assert repr(fastdl.arange(3)) == "tensor([0, 1, 2], dtype=int64, device='cpu')"
    assert "size=(0, 2)" in repr(fastdl.zeros(0, 2))
    assert "..." in repr(fastdl.zeros(10000))
    assert str(fastdl.tensor([math.inf, 1.0])).replace(" ", "") == "tensor([inf,1.],dtype=float32,device='cpu')"


# (a, b) → PyTorch's result dtype: tensors with dims outrank 0-d tensors outrank Python scalars within
# a category (bool < integer < float); int / int is float.
PROMOTION = [
    ("f32[2]", "1.5"), ("f32[2]", "2"), ("i64[2]", "1.5"), ("i32[2]", "2"), ("bool[2]", "2"), ("bool[2]", "True"),
    ("f32[2]", "f64[2]"), ("f32[2]", "f64[]"), ("f32[]", "f64[2]"), ("i32[2]", "f16[]"), ("i64[2]", "f32[2]"),
    ("i32[2]", "i64[2]"), ("i32[2]", "i64[]"), ("f16[2]", "f32[]"), ("bool[2]", "i32[2]"), ("f16[2]", "1e3"),
    ("i64[2]", "f64[]"), ("u8[2]", "i32[2]"),
]
_DT = {"f16": "float16", "f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool",
       "u8": "uint8"}


def _make(spec, lib):
    if "[" not in spec:
        return eval(spec)
    name, dims = spec.rstrip("]").split("[")
    shape = (2,) if dims else ()
    arr = np.ones(shape, _DT[name])
    return lib.tensor(arr) if lib is fastdl else torch.from_numpy(arr)


@pytest.mark.parametrize("a,b", PROMOTION)
@pytest.mark.parametrize("op", ["add", "mul", "div"])
def test_promotion_matches_pytorch(a, b, op):
    if torch is None:
        pytest.skip("PyTorch is not installed")
    if op != "div" and "bool" in a and b == "True":
        pytest.skip("PyTorch rejects bool arithmetic differently per op")
    fa, fb = _make(a, fastdl), _make(b, fastdl)
    ta, tb = _make(a, torch), _make(b, torch)
    expected = str(getattr(torch, op)(ta, tb).dtype).replace("torch.", "")
    assert str(getattr(fastdl, op)(fa, fb).dtype) == expected
    if not isinstance(fb, fastdl.Tensor):
        pass
    elif op != "div":
        assert str(getattr(fastdl, op)(fb, fa).dtype) == str(getattr(torch, op)(tb, ta).dtype).replace("torch.", "")


def test_scalar_does_not_upcast_and_exp_of_int_is_float():
    x = fastdl.ones(3)
    assert (x * 2.5).dtype == fastdl.float32 and (2.5 * x).dtype == fastdl.float32 and (x ** 2).dtype == fastdl.float32
    assert fastdl.arange(3).exp().dtype == fastdl.float32
    assert (fastdl.arange(3) // 2).tolist() == [0, 0, 1] and (fastdl.arange(4) % 3).tolist() == [0, 1, 2, 0]
    assert fastdl.div(fastdl.tensor([-7, 7]), 2, rounding_mode="trunc").tolist() == [-3, 3]
    assert fastdl.div(fastdl.tensor([-7.0, 7.0]), 2, rounding_mode="floor").tolist() == [-4.0, 3.0]
    assert fastdl.ones(2, dtype=fastdl.float16).sum().dtype == fastdl.float16
    assert fastdl.tensor([True, True]).sum().item() == 2 and fastdl.arange(3, dtype=fastdl.int32).sum().dtype == fastdl.int64


def test_comparisons_and_logic():
    x = fastdl.tensor([1.0, 2.0, 3.0])
    assert (x > 1).tolist() == [False, True, True] and (x == fastdl.tensor([1.0, 0.0, 3.0])).tolist() == [True, False, True]
    assert (1 < x).tolist() == [False, True, True] and (x <= 2).dtype == fastdl.bool
    m = (x > 1) & (x < 3)
    assert m.tolist() == [False, True, False] and (~m).tolist() == [True, False, True]
    assert ((x > 2) | (x < 2)).tolist() == [True, False, True] and ((x > 1) ^ (x > 2)).tolist() == [False, True, False]
    assert x.eq(2).any().item() and not x.ne(x).any().item() and x.ge(1).all().item()
    assert fastdl.equal(x, x.clone()) and not fastdl.equal(x, x[:2])
    assert fastdl.allclose(x, x + 1e-9) and (x == None) is False  # noqa: E711
    assert fastdl.isnan(fastdl.tensor([math.nan, 1.0])).tolist() == [True, False]
    assert fastdl.isinf(fastdl.tensor([math.inf, 1.0])).tolist() == [True, False]
    assert fastdl.isfinite(fastdl.tensor([math.inf, 1.0])).tolist() == [False, True]
    assert x.argmax().item() == 2 and x.argmin(dim=0, keepdim=True).tolist() == [0]
    assert fastdl.logical_xor(x > 1, x > 2).tolist() == [False, True, False]
    assert {x: 1}[x] == 1  # hashable by identity


def test_inplace_updates_and_setitem():
    t = fastdl.zeros(2, 3)
    t[0] = 1.0
    t[1, 1:] = fastdl.tensor([5.0, 6.0])
    t[t > 5] = -1
    assert t.tolist() == [[1, 1, 1], [0, 5, -1]]
    t.fill_(2).add_(fastdl.ones(3), alpha=3)
    assert t.tolist() == [[5, 5, 5], [5, 5, 5]]
    t.zero_().copy_(fastdl.arange(3).float())
    assert t.tolist() == [[0, 1, 2], [0, 1, 2]]
    t.clamp_(max=1.5).masked_fill_(t == 0, 9.0)
    assert t.tolist() == [[9, 1, 1.5], [9, 1, 1.5]]
    i = fastdl.arange(3)
    with pytest.raises(TypeError, match="__iadd__"):
        i += 0.5
    fastdl.manual_seed(0)
    u = fastdl.empty(1000).uniform_(-2, 2)
    assert -2 <= u.min().item() and u.max().item() < 2


def test_dlpack_round_trips():
    x = fastdl.arange(6, dtype=fastdl.float32).reshape(2, 3)
    y = fastdl.from_dlpack(x.numpy())
    assert np.shares_memory(y.numpy(), x.numpy())
    if torch is not None:
        t = torch.from_dlpack(x)
        t[0, 0] = 42
        assert x[0, 0].item() == 42
        back = fastdl.from_dlpack(torch.arange(4.0))
        assert back.tolist() == [0.0, 1.0, 2.0, 3.0] and back.dtype == fastdl.float32
    assert x.__dlpack_device__() == (1, 0)


def test_default_dtype():
    assert fastdl.get_default_dtype() == fastdl.float32
    fastdl.set_default_dtype(fastdl.float64)
    try:
        assert fastdl.tensor(1.5).dtype == fastdl.float64 and fastdl.zeros(1).dtype == fastdl.float64
        assert (fastdl.arange(2) * 0.5).dtype == fastdl.float64
    finally:
        fastdl.set_default_dtype(fastdl.float32)
    with pytest.raises(TypeError, match="floating"):
        fastdl.set_default_dtype(fastdl.int64)


def test_torch_style_top_level_functions():
    x = fastdl.tensor([[1.0, -2.0], [3.0, 4.0]])
    assert fastdl.relu(x).tolist() == [[1, 0], [3, 4]] and fastdl.sum(x, 1).tolist() == [-1, 7]
    assert fastdl.cat([x, x], 1).shape == (2, 4) and fastdl.stack([x, x]).shape == (2, 2, 2)
    assert fastdl.where(x > 0, x, fastdl.zeros_like(x)).tolist() == [[1, 0], [3, 4]]
    assert fastdl.max(x).item() == 4 and fastdl.max(x, 0).values.tolist() == [3, 4]
    assert fastdl.max(x, fastdl.zeros_like(x)).tolist() == [[1, 0], [3, 4]]
    assert fastdl.functional is fastdl.functional and fastdl.autograd.Function is fastdl.Function


def test_overhead_benchmark_problems_run_and_format():
    from fastdl import bench

    for problem in bench.overhead_problems():
        for fn in problem.make().values():
            fn()
    row = {"problem": "add 8x8", "dtype": "float32", "threads": 1, "us": {"fastdl": 1.0, "numpy": 0.5, "torch": 2.0}}
    assert bench.format_row(row).split()[-2:] == ["2.00", "0.50"]
    assert "torch us" in bench.format_header("overhead") and "% peak" in bench.format_header("gemm")
