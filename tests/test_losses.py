"""Losses against PyTorch (values and gradients of input and target, every reduction, class
weights, ignore_index, label smoothing, probability targets, K-dimensional inputs), float64
finite-difference gradient checks, stability at extreme logits, and a table of bad inputs."""
import numpy as np
import pytest

import fastdl
from fastdl import nn
from fastdl.autograd import gradcheck

from .helpers import assert_close, needs_torch, torch


pytestmark = pytest.mark.usefixtures("torch_one_thread")

REDUCTIONS = ["mean", "sum", "none"]
DTYPES = [np.float32, np.float64]


def pair(array, requires_grad=True):
    """The same values as a fastdl and a torch tensor (both leaves)."""
    return (fastdl.tensor(array.copy(), requires_grad=requires_grad),
            torch.tensor(array.copy(), requires_grad=requires_grad))


def compare(ours, ref, inputs, dtype, k):
    """Values, then gradients of every input that requires grad, for the same upstream gradient."""
    assert ours.shape == tuple(ref.shape)
    assert_close(ours.data, ref.detach().numpy(), dtype, k)
    g = np.random.default_rng(9).standard_normal(ours.shape).astype(dtype)
    ours.backward(fastdl.tensor(g))
    ref.backward(torch.from_numpy(g))
    for a, b in inputs:
        if b.requires_grad:
            assert a.grad is not None
            assert_close(a.grad.data, b.grad.numpy(), dtype, k)


def module_pair(name, **kwargs):
    t_kwargs = {k: (torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    f_kwargs = {k: (fastdl.tensor(v.copy()) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    return getattr(nn, name)(**f_kwargs), getattr(torch.nn, name)(**t_kwargs)


# ---- elementwise regression losses --------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,kwargs", [("MSELoss", {}), ("L1Loss", {}), ("SmoothL1Loss", {}),
                                         ("SmoothL1Loss", {"beta": 0.3}), ("SmoothL1Loss", {"beta": 0.0})])
@pytest.mark.parametrize("shape", [(1,), (7, 13), (2, 3, 5)])
def test_regression_losses_match_torch(name, kwargs, reduction, dtype, shape):
    rng = np.random.default_rng(0)
    x, tx = pair(rng.standard_normal(shape).astype(dtype))
    y, ty = pair(rng.standard_normal(shape).astype(dtype))
    ours, ref = module_pair(name, reduction=reduction, **kwargs)
    compare(ours(x, y), ref(tx, ty), [(x, tx), (y, ty)], dtype, int(np.prod(shape)))


# ---- binary cross-entropy -------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_matches_torch(reduction, dtype, weighted):
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.99, (6, 4)).astype(dtype)
    p[0, :2] = [0.0, 1.0]  # the clamped logs at the ends
    x, tx = pair(p)
    y, ty = pair(rng.uniform(0, 1, (6, 4)).astype(dtype))
    kwargs = {"weight": rng.uniform(0.5, 2, (4,)).astype(dtype)} if weighted else {}
    ours, ref = module_pair("BCELoss", reduction=reduction, **kwargs)
    assert_close(ours(x, y).data, ref(tx, ty).detach().numpy(), dtype, 24)
    # Gradients away from the clamped ends (there PyTorch divides by 1e-12 too, but the values explode).
    x2, tx2 = pair(p[1:])
    y2, ty2 = pair(y.data[1:].copy())
    compare(ours(x2, y2), ref(tx2, ty2), [(x2, tx2), (y2, ty2)], dtype, 24)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted,pos_weighted", [(False, False), (True, False), (False, True), (True, True)])
def test_bce_with_logits_matches_torch(reduction, dtype, weighted, pos_weighted):
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((5, 3)) * 4).astype(dtype)
    logits[0] = [0.0, 80.0, -80.0]  # zero and saturated logits
    x, tx = pair(logits)
    y, ty = pair(rng.uniform(0, 1, (5, 3)).astype(dtype))
    kwargs = {}
    if weighted:
        kwargs["weight"] = rng.uniform(0.5, 2, (5, 1)).astype(dtype)
    if pos_weighted:
        kwargs["pos_weight"] = rng.uniform(0.5, 3, (3,)).astype(dtype)
    ours, ref = module_pair("BCEWithLogitsLoss", reduction=reduction, **kwargs)
    compare(ours(x, y), ref(tx, ty), [(x, tx), (y, ty)], dtype, 15)


def test_bce_with_logits_is_stable_at_extreme_logits():
    x = fastdl.tensor([1e4, -1e4, 0.0], requires_grad=True)
    y = fastdl.tensor([0.0, 1.0, 1.0])
    loss = nn.BCEWithLogitsLoss(reduction="none")(x, y)
    np.testing.assert_allclose(loss.data, [1e4, 1e4, np.log(2)], rtol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(x.grad.data, [1.0, -1.0, -0.5], rtol=1e-6)


# ---- cross-entropy and NLL ------------------------------------------------------------------------

CE_CASES = [
    dict(shape=(8, 5)),
    dict(shape=(8, 5), weight=True),
    dict(shape=(8, 5), ignore=True),
    dict(shape=(8, 5), weight=True, ignore=True, smoothing=0.2),
    dict(shape=(8, 5), smoothing=0.1),
    dict(shape=(3, 4, 6, 2), weight=True, ignore=True),
    dict(shape=(3, 4, 6), smoothing=0.3, ignore=True),
    dict(shape=(7,)),
    dict(shape=(1, 1)),
    dict(shape=(8, 5), probs=True),
    dict(shape=(8, 5), probs=True, weight=True, smoothing=0.25),
    dict(shape=(2, 3, 4), probs=True),
]


def make_ce_case(case, dtype):
    rng = np.random.default_rng(3)
    shape = case["shape"]
    C = shape[1] if len(shape) > 1 else shape[0]
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    if case.get("probs"):
        raw = rng.uniform(0, 1, shape)
        target = (raw / raw.sum(axis=1 if len(shape) > 1 else 0, keepdims=True)).astype(dtype)
    else:
        batch = shape[:1] + shape[2:] if len(shape) > 1 else ()
        target = rng.integers(0, C, batch)
        if case.get("ignore") and target.size > 1:
            target.reshape(-1)[::3] = -100 if not case.get("ignore_index") else case["ignore_index"]
    kwargs = {}
    if case.get("weight"):
        kwargs["weight"] = rng.uniform(0.2, 3.0, (C,)).astype(dtype)
    if case.get("smoothing"):
        kwargs["label_smoothing"] = case["smoothing"]
    return logits, target, kwargs


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_cross_entropy_matches_torch(case, reduction, dtype):
    logits, target, kwargs = make_ce_case(case, dtype)
    x, tx = pair(logits)
    probs = target.dtype.kind == "f"
    if probs:
        y, ty = pair(target)
    else:
        y, ty = fastdl.tensor(target), torch.from_numpy(target)
    ours, ref = module_pair("CrossEntropyLoss", reduction=reduction, **kwargs)
    inputs = [(x, tx)] + ([(y, ty)] if probs else [])
    compare(ours(x, y), ref(tx, ty), inputs, dtype, 4 * logits.size)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", [c for c in CE_CASES if not c.get("probs") and not c.get("smoothing")],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_nll_loss_matches_torch(case, reduction, dtype):
    logits, target, kwargs = make_ce_case(case, dtype)
    logp = logits - np.log(np.exp(logits).sum(axis=1 if logits.ndim > 1 else 0, keepdims=True))
    x, tx = pair(logp.astype(dtype))
    ours, ref = module_pair("NLLLoss", reduction=reduction, **kwargs)
    compare(ours(x, fastdl.tensor(target)), ref(tx, torch.from_numpy(target)), [(x, tx)], dtype, 4 * logits.size)


@needs_torch
def test_cross_entropy_ignore_index_value_and_all_ignored():
    x, tx = pair(np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32))
    target = np.array([2, 7, 7, 0])
    ours = nn.CrossEntropyLoss(ignore_index=7)(x, fastdl.tensor(target))
    ref = torch.nn.CrossEntropyLoss(ignore_index=7)(tx, torch.from_numpy(target))
    assert_close(ours.data, ref.detach().numpy(), np.float32, 12)
    everything_ignored = nn.CrossEntropyLoss()(x, fastdl.tensor(np.full(4, -100)))
    assert np.isnan(everything_ignored.item())  # 0 / 0, as PyTorch


def test_cross_entropy_is_stable_at_extreme_logits():
    x = fastdl.tensor([[1e4, -1e4, 0.0], [-3e4, 3e4, 1.0]], requires_grad=True)
    loss = nn.CrossEntropyLoss(reduction="none")(x, fastdl.tensor([1, 1]))
    np.testing.assert_allclose(loss.data, [2e4, 0.0], rtol=1e-6)
    loss.sum().backward()
    assert np.isfinite(x.grad.data).all()
    np.testing.assert_allclose(x.grad.data, [[1, -1, 0], [0, 0, 0]], atol=1e-6)


# ---- KL divergence and cosine embedding -------------------------------------------------------------

@needs_torch
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS + ["batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_matches_torch(reduction, dtype, log_target):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, 4))
    logq = (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(dtype)
    p = rng.uniform(0, 1, (6, 4))
    p[0, 0] = 0.0  # a zero target probability contributes 0
    p = p / p.sum(1, keepdims=True)
    target = (np.log(p + 1e-3) if log_target else p).astype(dtype)
    x, tx = pair(logq)
    y, ty = pair(target)
    ours, ref = module_pair("KLDivLoss", reduction=reduction, log_target=log_target)
    compare(ours(x, y), ref(tx, ty), [(x, tx)], dtype, 24)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_cosine_embedding_loss_matches_torch(reduction, dtype, margin):
    rng = np.random.default_rng(6)
    a, ta = pair(rng.standard_normal((7, 5)).astype(dtype))
    b, tb = pair(rng.standard_normal((7, 5)).astype(dtype))
    target = np.array([1, -1, 1, -1, -1, 1, -1])
    ours, ref = module_pair("CosineEmbeddingLoss", margin=margin, reduction=reduction)
    compare(ours(a, b, fastdl.tensor(target)), ref(ta, tb, torch.from_numpy(target)), [(a, ta), (b, tb)], dtype, 35)


# ---- float64 finite differences --------------------------------------------------------------------

def _rand(*shape, seed=0, low=None, high=None):
    rng = np.random.default_rng(seed)
    data = rng.uniform(low, high, shape) if low is not None else rng.standard_normal(shape)
    return fastdl.tensor(data, dtype=fastdl.float64, requires_grad=True)


F = fastdl.functional
GRADCHECKS = {
    "cross_entropy": lambda: ((lambda x: F.cross_entropy(
        x, fastdl.tensor([1, 0, 2, -100]), label_smoothing=0.1,
        weight=fastdl.tensor([1.0, 2.0, 0.5], dtype=fastdl.float64))), [_rand(4, 3)]),
    "cross_entropy_probs": lambda: ((lambda x, t: F.cross_entropy(x, t, reduction="sum", label_smoothing=0.2)),
                                    [_rand(3, 4), _rand(3, 4, seed=1, low=0.0, high=1.0)]),
    "cross_entropy_kdim": lambda: ((lambda x: F.cross_entropy(x, fastdl.tensor([[0, 1], [2, 2]]), reduction="none")),
                                   [_rand(2, 3, 2)]),
    "nll_loss": lambda: ((lambda x: F.nll_loss(x, fastdl.tensor([1, 0, 2]), reduction="mean")), [_rand(3, 3)]),
    "mse_loss": lambda: ((lambda x, y: F.mse_loss(x, y)), [_rand(3, 4), _rand(3, 4, seed=1)]),
    "l1_loss": lambda: ((lambda x, y: F.l1_loss(x, y, reduction="sum")), [_rand(3, 4), _rand(3, 4, seed=1)]),
    "smooth_l1_loss": lambda: ((lambda x, y: F.smooth_l1_loss(x, y, beta=0.5)), [_rand(3, 4), _rand(3, 4, seed=1)]),
    "binary_cross_entropy": lambda: ((lambda x, y: F.binary_cross_entropy(x, y)),
                                     [_rand(3, 4, low=0.05, high=0.95), _rand(3, 4, seed=1, low=0.0, high=1.0)]),
    "bce_with_logits": lambda: ((lambda x, y: F.binary_cross_entropy_with_logits(
        x, y, pos_weight=fastdl.tensor([1.0, 2.0, 3.0, 0.5], dtype=fastdl.float64))),
        [_rand(3, 4), _rand(3, 4, seed=1, low=0.0, high=1.0)]),
    "kl_div": lambda: ((lambda x: F.kl_div(x, fastdl.tensor(np.full((2, 3), 1 / 3)), reduction="batchmean")),
                       [_rand(2, 3)]),
    "cosine_embedding_loss": lambda: ((lambda a, b: F.cosine_embedding_loss(a, b, fastdl.tensor([1, -1]), 0.1)),
                                      [_rand(2, 4), _rand(2, 4, seed=1)]),
}


@pytest.mark.parametrize("name", sorted(GRADCHECKS))
def test_gradcheck(name):
    fn, inputs = GRADCHECKS[name]()
    assert gradcheck(fn, inputs)


# ---- bad inputs -------------------------------------------------------------------------------------

def _t(*shape, dtype=np.float32):
    return fastdl.tensor(np.zeros(shape, dtype))


BAD = [
    (lambda: nn.MSELoss()(_t(32, 1), _t(32)), ValueError, r"MSELoss\(\) got input of shape \(32, 1\) and target of "
                                                          r"shape \(32,\)"),
    (lambda: nn.MSELoss(reduction="avg"), ValueError, "reduction must be one of"),
    (lambda: nn.CrossEntropyLoss()(_t(4, 10), fastdl.tensor([1, 2, 10, 0])), ValueError,
     r"target contains class 10 but input \(4, 10\) has 10 classes"),
    (lambda: nn.CrossEntropyLoss()(_t(4, 10), fastdl.tensor([1, 2, -1, 0])), ValueError, "target contains class -1"),
    (lambda: nn.CrossEntropyLoss()(_t(4, 10), fastdl.tensor([[1], [2], [3], [0]])), ValueError,
     r"target \(4, 1\) must have shape \(4,\)"),
    (lambda: nn.CrossEntropyLoss()(_t(4, 10), _t(4, 9)), ValueError, "must have the same shape"),
    (lambda: nn.CrossEntropyLoss(weight=fastdl.ones(3))(_t(4, 10), fastdl.tensor([1, 2, 3, 0])), ValueError,
     r"weight has shape \(3,\), expected \(10,\)"),
    (lambda: nn.CrossEntropyLoss(label_smoothing=1.5)(_t(2, 3), fastdl.tensor([0, 1])), ValueError,
     "label_smoothing must be between"),
    (lambda: nn.NLLLoss()(_t(4, 3), _t(4)), ValueError, "integer class indices"),
    (lambda: nn.BCELoss()(fastdl.tensor([0.5, 1.5]), fastdl.tensor([0.0, 1.0])), ValueError, "between 0 and 1"),
    (lambda: nn.BCEWithLogitsLoss()(_t(3, 2), _t(3)), ValueError, "must match"),
    (lambda: nn.KLDivLoss(reduction="batch")(_t(2), _t(2)), ValueError, "batchmean"),
    (lambda: nn.CosineEmbeddingLoss()(_t(3, 4), _t(3, 5), fastdl.tensor([1, 1, 1])), ValueError, "same shape"),
    (lambda: nn.CosineEmbeddingLoss()(_t(3, 4), _t(3, 4), fastdl.tensor([1, 1])), ValueError,
     r"target \(2,\) must have shape \(3,\)"),
]


@pytest.mark.parametrize("make,error,words", BAD, ids=[w for _, _, w in BAD])
def test_bad_inputs(make, error, words):
    with pytest.raises(error, match=words):
        make()
