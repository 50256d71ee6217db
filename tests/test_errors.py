"""Bad inputs to tensors, ops and the engine: each raises a clear exception that names the op and
the shapes (the words expected are listed per case)."""
import numpy as np
import pytest

import fastdl
import fastdl.functional as F


class _FakeDevice:
    id = 0


class FakeCudaArray(np.ndarray):
    """A NumPy array that reports itself as living on cuda:0, to test device checks on a CPU machine."""

    device = _FakeDevice()


def on_fake_gpu(t):
    return fastdl.Tensor(np.asarray(t.numpy()).view(FakeCudaArray))


def ones(*shape, grad=False):
    return fastdl.ones(*shape, requires_grad=grad)


def backward_twice():
    y = (ones(2, grad=True) * 2).sum()
    y.backward()
    y.backward()


CASES = [
    # (description, call, exception, words that must appear)
    ("add shape mismatch", lambda: ones(2, 3) + ones(4), ValueError, ["add", "(2, 3)", "(4,)"]),
    ("mul shape mismatch with grad", lambda: ones(2, 3, grad=True) * ones(2, 2), ValueError, ["mul", "(2, 3)", "(2, 2)"]),
    ("comparison shape mismatch", lambda: ones(3) < ones(2), ValueError, ["less", "(3,)", "(2,)"]),
    ("in-place result shape", lambda: ones(3).add_(ones(2, 3)), ValueError, ["add_", "(3,)"]),
    ("matmul inner dims", lambda: ones(2, 3) @ ones(4, 5), ValueError, ["matmul", "(2, 3)", "(4, 5)"]),
    ("matmul batch dims", lambda: ones(2, 2, 3) @ ones(3, 3, 4), ValueError, ["matmul", "batch", "(2, 2, 3)"]),
    ("matmul 0-d", lambda: fastdl.matmul(ones(()), ones(3)), ValueError, ["matmul", "()"]),
    ("mm needs 2-D", lambda: fastdl.mm(ones(3), ones(3, 2)), ValueError, ["mm", "(3,)"]),
    ("linear in_features", lambda: F.linear(ones(64, 785), ones(10, 784)), ValueError,
     ["linear", "(64, 785)", "(10, 784)"]),
    ("linear bias", lambda: F.linear(ones(4, 3), ones(2, 3), ones(3)), ValueError, ["linear", "bias", "(3,)"]),
    ("linear dtypes", lambda: F.linear(ones(4, 3), ones(2, 3).double()), TypeError, ["linear", "float64"]),
    ("sum bad dim", lambda: ones(2, 3).sum(dim=3), ValueError, ["sum", "dim 3", "(2, 3)"]),
    ("mean repeated dim", lambda: ones(2, 3).mean((1, -1)), ValueError, ["mean", "(2, 3)"]),
    ("mean of ints", lambda: fastdl.arange(3).mean(), TypeError, ["mean", "int64"]),
    ("softmax bad dim", lambda: F.softmax(ones(2, 3), dim=-3), ValueError, ["softmax", "(2, 3)"]),
    ("max of empty", lambda: fastdl.zeros(0, 3).max(), ValueError, ["max", "(0, 3)"]),
    ("argmax of empty dim", lambda: fastdl.zeros(0, 3).argmax(0), ValueError, ["argmax", "(0, 3)"]),
    ("reshape size", lambda: ones(2, 3).reshape(4, 2), ValueError, ["reshape", "(2, 3)", "(4, 2)"]),
    ("reshape two -1", lambda: ones(2, 3).reshape(-1, -1), ValueError, ["reshape", "(-1, -1)"]),
    ("view size", lambda: ones(6).view(5), ValueError, ["reshape", "(6,)", "(5,)"]),
    ("unflatten sizes", lambda: ones(2, 12).unflatten(1, (5, -1)), ValueError, ["unflatten", "(2, 12)"]),
    ("permute not a permutation", lambda: ones(2, 3).permute(0, 0), ValueError, ["permute", "(2, 3)"]),
    ("transpose bad dim", lambda: ones(2, 3).transpose(0, 2), ValueError, ["transpose", "(2, 3)"]),
    ("expand non-singleton", lambda: ones(2, 3).expand(4, 3), ValueError, ["expand", "(2, 3)", "(4, 3)"]),
    ("repeat too few", lambda: ones(2, 3).repeat(2), ValueError, ["repeat", "(2, 3)"]),
    ("cat sizes", lambda: fastdl.cat([ones(2, 3), ones(2, 4)]), ValueError, ["cat", "(2, 3)", "(2, 4)"]),
    ("cat empty list", lambda: fastdl.cat([]), ValueError, ["cat", "non-empty"]),
    ("cat not a list", lambda: fastdl.cat(ones(2)), TypeError, ["cat", "list"]),
    ("stack shapes", lambda: fastdl.stack([ones(2), ones(3)]), ValueError, ["stack", "(2,)", "(3,)"]),
    ("split sizes", lambda: ones(5).split([2, 2]), ValueError, ["split", "(5,)"]),
    ("chunk count", lambda: ones(5).chunk(0), ValueError, ["chunk", "positive"]),
    ("pad odd", lambda: F.pad(ones(2, 3), (1,)), ValueError, ["pad", "(2, 3)"]),
    ("pad reflect too wide", lambda: F.pad(ones(1, 2, 3), (3, 0), mode="reflect"), ValueError, ["pad", "reflect", "(1, 2, 3)"]),
    ("pad mode", lambda: F.pad(ones(2, 3), (1, 1), mode="wrap"), ValueError, ["pad", "mode"]),
    ("index out of range", lambda: ones(2, 3)[2], IndexError, ["index", "(2, 3)"]),
    ("index float tensor", lambda: ones(3)[ones(1)], IndexError, ["index", "float32"]),
    ("gather index range", lambda: ones(2, 3).gather(1, fastdl.tensor([[0, 3], [1, 1]])), IndexError,
     ["gather", "(2, 3)"]),
    ("gather index dims", lambda: ones(2, 3).gather(1, fastdl.tensor([0, 1])), ValueError, ["gather", "(2,)", "(2, 3)"]),
    ("gather float index", lambda: ones(2, 3).gather(1, ones(2, 1)), TypeError, ["gather", "float32"]),
    ("scatter_add src", lambda: ones(3).scatter_add(0, fastdl.tensor([0, 1]), ones(1)), ValueError,
     ["scatter_add", "(1,)", "(2,)"]),
    ("index_select 2-D index", lambda: ones(3).index_select(0, fastdl.tensor([[0]])), ValueError, ["index_select", "(1, 1)"]),
    ("masked_fill mask dtype", lambda: ones(3).masked_fill(ones(3), 0.0), TypeError, ["masked_fill", "float32"]),
    ("masked_fill mask shape", lambda: ones(3).masked_fill(fastdl.ones(4).bool(), 0.0), ValueError,
     ["masked_fill", "(4,)", "(3,)"]),
    ("where condition dtype", lambda: fastdl.where(ones(2), ones(2), ones(2)), TypeError, ["where", "float32"]),
    ("where shapes", lambda: fastdl.where(ones(2).bool(), ones(3), 0.0), ValueError, ["where", "(2,)", "(3,)"]),
    ("one_hot range", lambda: F.one_hot(fastdl.tensor([0, 5]), 3), ValueError, ["one_hot", "(2,)"]),
    ("one_hot float", lambda: F.one_hot(ones(2), 3), TypeError, ["one_hot", "float32"]),
    ("tril 1-D", lambda: ones(3).tril(), ValueError, ["tril", "(3,)"]),
    ("clamp no bounds", lambda: ones(3).clamp(), ValueError, ["clamp"]),
    ("gelu approximate", lambda: F.gelu(ones(3), approximate="fast"), ValueError, ["gelu", "approximate"]),
    ("dropout p", lambda: F.dropout(ones(3), 1.5), ValueError, ["dropout", "1.5"]),
    ("item of many", lambda: ones(2, 3).item(), ValueError, ["item", "(2, 3)"]),
    ("bool of many", lambda: bool(ones(2)), ValueError, ["(2,)", "ambiguous"]),
    ("len of 0-d", lambda: len(ones(())), TypeError, ["0-d"]),
    ("int requires grad", lambda: fastdl.arange(3).requires_grad_(), TypeError, ["requires_grad_", "int64"]),
    ("bad dtype", lambda: fastdl.zeros(2, dtype="complex64"), TypeError, ["zeros", "complex64"]),
    ("negative size", lambda: fastdl.zeros(2, -1), ValueError, ["zeros", "(2, -1)"]),
    ("float size", lambda: fastdl.ones(2.5), TypeError, ["ones", "integers"]),
    ("randint range", lambda: fastdl.randint(5, 5, (2,)), ValueError, ["randint", "high"]),
    ("cuda device", lambda: fastdl.zeros(2, device="cuda"), RuntimeError, ["zeros", "CUDA is not available"]),
    ("to cuda", lambda: ones(2).to("cuda:0"), RuntimeError, ["to", "CUDA is not available"]),
    ("tensor from strings", lambda: fastdl.tensor(["a"]), TypeError, ["tensor", "<U1"]),
    ("unsupported operand", lambda: ones(2) + "x", TypeError, ["str"]),
    ("F.add operand", lambda: fastdl.add(ones(2), object()), TypeError, ["add", "object"]),
    ("functional non-tensor", lambda: F.relu([1.0]), TypeError, ["relu", "list"]),
    ("backward non-scalar", lambda: (ones(2, 3, grad=True) * 2).backward(), ValueError,
     ["backward", "non-scalar", "(2, 3)"]),
    ("backward gradient shape", lambda: (ones(2, 3, grad=True) * 2).backward(ones(3)), ValueError,
     ["backward", "(3,)", "(2, 3)"]),
    ("backward without grad", lambda: ones(2).sum().backward(), RuntimeError, ["backward", "does not require grad"]),
    ("backward twice", backward_twice, RuntimeError, ["SumFn", "second time", "retain_graph"]),
    ("in-place on a leaf requiring grad", lambda: ones(2, grad=True).add_(1), RuntimeError, ["add_", "(2,)", "no_grad"]),
    ("setitem on a leaf requiring grad", lambda: ones(2, grad=True).__setitem__(0, 1.0), RuntimeError, ["__setitem__"]),
    ("different devices add", lambda: ones(2) + on_fake_gpu(ones(2)), ValueError, ["add", "cpu", "cuda:0", "(2,)"]),
    ("different devices matmul", lambda: ones(2, 2) @ on_fake_gpu(ones(2, 2)), ValueError,
     ["matmul", "cpu", "cuda:0", "(2, 2)"]),
    ("different devices cat", lambda: fastdl.cat([ones(2), on_fake_gpu(ones(3))]), ValueError, ["cat", "cuda:0", "(3,)"]),
    ("different devices Function", lambda: fastdl.where(ones(2).bool(), ones(2, grad=True), on_fake_gpu(ones(2))),
     ValueError, ["where", "cuda:0"]),
    ("different devices linear", lambda: F.linear(ones(2, 3), on_fake_gpu(ones(4, 3))), ValueError,
     ["linear", "cuda:0", "(4, 3)"]),
]


@pytest.mark.parametrize("description,call,exc,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(description, call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from {exc.__name__}: {message}"


def test_device_of_the_fake_gpu_array():
    assert on_fake_gpu(ones(2)).device == "cuda:0" and ones(2).device == "cpu"
