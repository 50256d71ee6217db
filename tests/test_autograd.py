"""The backward engine: shared values, diamonds, a 100,000-op chain, retain_graph, no_grad, detach,
accumulation, autograd.grad, custom Functions, in-place updates and gradcheck itself."""
import threading

import numpy as np
import pytest

import fastdl
from fastdl.autograd import Function, GradcheckError

from .helpers import gradcheck


def leaf(values, dtype=fastdl.float64):
    return fastdl.tensor(values, dtype=dtype, requires_grad=True)


def test_value_used_many_times_sums_every_consumer():
    x = leaf([0.5, -1.0, 2.0])
    y = x * x + 3 * x + x.exp() + x
    y.sum().backward()
    xv = x.detach().numpy()
    assert np.allclose(x.grad.numpy(), 2 * xv + 3 + np.exp(xv) + 1)


class Counted(Function):
    """Identity that counts how often its backward runs and what gradient it receives."""

    calls = []

    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, g):
        Counted.calls.append(g.copy())
        return g


def test_diamond_runs_each_backward_once_with_the_summed_gradient():
    Counted.calls.clear()
    x = leaf([1.0, 2.0])
    a = Counted.apply(x)
    b, c = a * 2, a * 3
    (b + c).sum().backward()
    assert len(Counted.calls) == 1
    assert Counted.calls[0].tolist() == [5.0, 5.0]
    assert x.grad.tolist() == [5.0, 5.0]


def test_deep_diamond_lattice():
    x = leaf([1.0])
    y = x
    for _ in range(30):
        y = y * 0.5 + y * 0.5
    y.backward()
    assert x.grad.tolist() == [1.0]


def test_chain_of_100000_ops_needs_no_recursion():
    x = leaf(1.0)
    y = x
    for _ in range(100_000):
        y = y + 1.0
    y.backward()
    assert x.grad.item() == 1.0
    assert y.item() == 100_001.0
    del y  # freeing the chain must not recurse either


def test_leaf_gradients_accumulate_across_backward_calls():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    (x * 4).sum().backward()
    assert x.grad.tolist() == [7.0, 7.0]
    x.grad = None
    (x * 1).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]


def test_leaf_gradients_never_alias_each_other_or_the_graph():
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (a + b).sum().backward()
    assert not np.shares_memory(a.grad.numpy(), b.grad.numpy())
    a.grad.numpy()[:] = 100
    assert b.grad.tolist() == [1.0, 1.0]
    c = leaf([1.0, 2.0])
    d = c + c.clone()  # one gradient array reaches c twice
    e = d * 1.0
    e.sum().backward()
    assert c.grad.tolist() == [2.0, 2.0]
    w = leaf([[1.0, 2.0]])
    w.expand(3, 2).sum().backward()  # the broadcast view SumFn returns is copied, writable
    w.grad.numpy()[...] += 1
    assert w.grad.tolist() == [[4.0, 4.0]]


def test_broadcasting_is_undone_by_the_engine():
    a = leaf(np.ones((3, 1)))
    b = leaf(np.ones(4))
    c = leaf(2.0)
    (a * b * c).sum().backward()
    assert a.grad.shape == (3, 1) and a.grad.numpy().ravel().tolist() == [8.0] * 3
    assert b.grad.shape == (4,) and b.grad.tolist() == [6.0] * 4
    assert c.grad.shape == () and c.grad.item() == 12.0


def test_retain_graph_allows_a_second_backward():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.tolist() == [4.0, 8.0]


def test_second_backward_without_retain_graph_raises_clearly():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()
    assert x.grad.tolist() == [2.0, 4.0]  # the failed call changed nothing


def test_backward_frees_saved_arrays():
    x = leaf([1.0, 2.0])
    y = x * x
    node = y.grad_fn
    y.sum().backward()
    with pytest.raises(RuntimeError, match="freed"):
        _ = node.saved_tensors


def test_backward_with_explicit_gradient_for_non_scalar():
    x = leaf([1.0, 2.0, 3.0])
    y = x * 2
    y.backward(fastdl.tensor([1.0, 0.0, -1.0]))
    assert x.grad.tolist() == [2.0, 0.0, -2.0]


def test_no_grad_context_decorator_and_nesting():
    x = leaf([1.0])
    with fastdl.no_grad():
        assert not fastdl.is_grad_enabled()
        y = x * 2
        with fastdl.enable_grad():
            z = x * 2
    assert fastdl.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad and z.grad_fn is not None

    @fastdl.no_grad()
    def f(t):
        return t * 3

    @fastdl.no_grad
    def g(t):
        return t * 3

    assert not f(x).requires_grad and not g(x).requires_grad
    assert fastdl.is_grad_enabled()
    fastdl.set_grad_enabled(False)
    try:
        assert not (x * 1).requires_grad
    finally:
        fastdl.set_grad_enabled(True)
    with fastdl.set_grad_enabled(False):
        assert not (x * 1).requires_grad
    assert (x * 1).requires_grad


def test_grad_mode_is_per_thread():
    x = leaf([1.0])
    inside = threading.Event()
    release = threading.Event()

    def worker():
        with fastdl.no_grad():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(5)
    try:
        assert fastdl.is_grad_enabled() and (x * 2).requires_grad
    finally:
        release.set()
        t.join()


def test_detach_shares_data_and_stops_gradients():
    x = leaf([1.0, 2.0])
    d = x.detach()
    assert np.shares_memory(d.numpy(), x.numpy()) and not d.requires_grad
    (x * d).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0]


def test_requires_grad_propagates_and_leaves():
    a = fastdl.ones(2)
    b = leaf([1.0, 1.0])
    assert not (a * 2).requires_grad
    c = a * b
    assert c.requires_grad and not c.is_leaf and b.is_leaf
    assert repr(c.grad_fn) == "<MulFnBackward>"
    assert (a > 0).requires_grad is False  # comparisons are never differentiable
    assert (b.argmax()).requires_grad is False


def test_retain_grad_keeps_an_intermediate_gradient():
    x = leaf([1.0, 2.0])
    y = x * 3
    y.retain_grad()
    (y * y).sum().backward()
    assert y.grad.tolist() == [6.0, 12.0]
    assert x.grad.tolist() == [18.0, 36.0]


def test_autograd_grad_of_leaves_and_intermediates_leaves_grad_untouched():
    x = leaf([1.0, 2.0])
    y = x * x
    z = (y * 3).sum()
    gx, gy = fastdl.autograd.grad(z, [x, y], retain_graph=True)
    assert gx.tolist() == [6.0, 12.0] and gy.tolist() == [3.0, 3.0]
    assert x.grad is None
    (g,) = fastdl.autograd.grad([y], [x], grad_outputs=[fastdl.tensor([1.0, -1.0], dtype=fastdl.float64)])
    assert g.tolist() == [2.0, -4.0]


def test_autograd_grad_unused_input():
    x, w = leaf([1.0]), leaf([2.0])
    with pytest.raises(RuntimeError, match="allow_unused"):
        fastdl.autograd.grad((x * 2).sum(), [x, w])
    gx, gw = fastdl.autograd.grad((x * 2).sum(), [x, w], allow_unused=True)
    assert gx.tolist() == [2.0] and gw is None


def test_autograd_backward_several_roots():
    x = leaf([1.0, 2.0])
    fastdl.autograd.backward([(x * 2).sum(), x * x], [None, fastdl.tensor([1.0, 1.0], dtype=fastdl.float64)])
    assert x.grad.tolist() == [4.0, 6.0]


class MulAdd(Function):
    """x·w + b with a record of which gradients backward was asked for."""

    asked = None

    @staticmethod
    def forward(ctx, x, w, b, scale):
        ctx.save_for_backward(x, w)
        ctx.scale = scale
        return (x * w + b) * scale

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        MulAdd.asked = ctx.needs_input_grad
        gx = g * w * ctx.scale if ctx.needs_input_grad[0] else None
        gw = g * x * ctx.scale if ctx.needs_input_grad[1] else None
        gb = g * ctx.scale if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def test_custom_function_contract_and_needs_input_grad():
    x = fastdl.tensor([1.0, 2.0], dtype=fastdl.float64)
    w = leaf([3.0, 4.0])
    b = leaf([0.5, 0.5])
    y = MulAdd.apply(x, w, b, 2.0)
    assert y.grad_fn.needs_input_grad == (False, True, True, False)
    y.sum().backward()
    assert MulAdd.asked == (False, True, True, False)
    assert w.grad.tolist() == [2.0, 4.0] and b.grad.tolist() == [2.0, 2.0] and x.grad is None
    with fastdl.no_grad():
        assert MulAdd.apply(x, w, b, 2.0).grad_fn is None
    gradcheck(lambda x_, w_, b_: MulAdd.apply(x_, w_, b_, 1.5), [np.array([1.0, 2.0]), np.array([3.0, 4.0]),
                                                                  np.array([0.5, 0.5])])


class SplitTwo(Function):
    """Two outputs: the first half and the second half times 2."""

    @staticmethod
    def forward(ctx, x):
        n = x.shape[0] // 2
        ctx.n = n
        return x[:n].copy(), 2 * x[n:]

    @staticmethod
    def backward(ctx, g1, g2):
        return np.concatenate([g1, 2 * g2])


def test_multi_output_function_unused_output_gets_zeros():
    x = leaf([1.0, 2.0, 3.0, 4.0])
    a, b = SplitTwo.apply(x)
    assert a.grad_fn is b.grad_fn
    b.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 2.0, 2.0]
    x.grad = None
    a, b = SplitTwo.apply(x)
    (a.sum() + b.sum() * 3).backward()
    assert x.grad.tolist() == [1.0, 1.0, 6.0, 6.0]


def test_integer_outputs_do_not_require_grad():
    x = leaf([[1.0, 3.0], [4.0, 2.0]])
    values, indices = x.max(dim=1)
    assert values.requires_grad and not indices.requires_grad


def test_function_returning_a_wrong_shape_is_reported():
    class Bad(Function):
        @staticmethod
        def forward(ctx, x):
            return x.sum()

        @staticmethod
        def backward(ctx, g):
            return np.ones(3)

    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"Bad.backward returned a gradient of shape \(3,\) for input 0 of shape \(2,\)"):
        Bad.apply(x).backward()


def test_gradient_dtype_follows_each_leaf():
    a = leaf([1.0, 2.0], fastdl.float32)
    b = leaf([3.0, 4.0], fastdl.float64)
    c = a * b
    assert c.dtype == fastdl.float64
    c.sum().backward()
    assert a.grad.dtype == fastdl.float32 and b.grad.dtype == fastdl.float64
    assert a.grad.tolist() == [3.0, 4.0]


def test_inplace_on_leaf_requiring_grad_raises_but_works_under_no_grad():
    w = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match="in place"):
        w += 1
    with pytest.raises(RuntimeError, match="in place"):
        w.zero_()
    with fastdl.no_grad():
        w -= 0.5 * fastdl.ones(2, dtype=fastdl.float64)
        w.mul_(2)
    assert w.tolist() == [1.0, 3.0] and w.requires_grad and w.is_leaf


def test_inplace_inside_the_graph_keeps_gradients_correct():
    x = leaf([1.0, 2.0])
    y = x * x
    y += x  # y = x² + x; the x² node keeps its saved x
    y *= 2
    y.sum().backward()
    assert x.grad.tolist() == [2 * (2 * 1.0 + 1), 2 * (2 * 2.0 + 1)]
    acc = fastdl.zeros(2, dtype=fastdl.float64)
    acc += x
    assert acc.requires_grad
    acc.sum().backward()
    assert x.grad.tolist() == [7.0, 11.0]


def test_inplace_without_grad_modifies_data():
    t = fastdl.ones(3)
    data = t.numpy()
    t += 2
    t *= fastdl.tensor([1.0, 2.0, 3.0])
    t.sub_(1, alpha=2).div_(2)
    assert data.tolist() == [0.5, 2.0, 3.5] and t.numpy() is data


def test_parameter_like_subclass_is_a_leaf():
    class Param(fastdl.Tensor):
        pass

    p = Param(np.array([1.0, 2.0]), requires_grad=True)
    (p * p).sum().backward()
    assert p.grad.tolist() == [2.0, 4.0]
    assert isinstance(p + 1, fastdl.Tensor)


def test_gradcheck_catches_a_wrong_backward():
    class WrongSin(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return np.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * np.cos(x) * 1.01

    x = leaf(np.linspace(-1, 1, 5))
    with pytest.raises(GradcheckError, match="input 0"):
        fastdl.autograd.gradcheck(WrongSin.apply, (x,))
    assert fastdl.autograd.gradcheck(WrongSin.apply, (x,), raise_exception=False) is False
    big = leaf(np.linspace(-1, 1, 200).reshape(10, 20))
    with pytest.raises(GradcheckError, match="directional"):
        fastdl.autograd.gradcheck(WrongSin.apply, (big,))
    assert fastdl.autograd.gradcheck(lambda t: t.sin(), (big,))


def test_gradcheck_requires_float64():
    with pytest.raises(TypeError, match="float64"):
        fastdl.autograd.gradcheck(lambda t: t * 2, (fastdl.ones(2, requires_grad=True),))


def test_autodiff_graph_example_checks_its_derivatives():
    import pathlib
    import runpy

    example = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "examples" / "autodiff_graph.py"))
    assert example["main"](["autodiff_graph.py"]) == 0
    assert example["main"](["autodiff_graph.py", "-0.3", "1.7", "2.5"]) == 0
