"""Attention family: fastdl.kernels.attention_forward / attention_backward (fused flash attention)
against a float64 NumPy reference and PyTorch, on every CPU level; F.scaled_dot_product_attention
and nn.MultiheadAttention on top of them."""
import math

import numpy as np
import pytest

import fastdl
import fastdl.functional as F
from fastdl import kernels, nn
from fastdl.backend import _C

from .helpers import assert_close, check_op, gradcheck, randn

try:
    import torch
except ImportError:  # pragma: no cover - torch is the optional second reference
    torch = None

DTYPES = (np.float32, np.float64)
HEAD_DIMS = (1, 3, 16, 17, 64, 80, 128, 256)
LEVELS = ("portable", "avx2", "avx512")[: ("portable", "avx2", "avx512").index(_C.detected_cpu_capability()) + 1]
LENGTHS = (1, 2, 7, 63, 64, 65, 257, 1000)


# ---- the float64 reference ------------------------------------------------------------------------

def _expand_gqa(q, x):
    if x.ndim >= 3 and q.ndim >= 3 and q.shape[-3] != x.shape[-3]:
        return np.repeat(x, q.shape[-3] // x.shape[-3], axis=-3)
    return x


def _scores(q, k, mask, causal, scale):
    q, k = q.astype(np.float64), k.astype(np.float64)
    k = _expand_gqa(q, k)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * scale
    L, S = s.shape[-2:]
    if causal:
        s = np.where(np.tril(np.ones((L, S), bool)), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == np.bool_ else s + mask.astype(np.float64)
    return s


def _softmax(s):
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m)
    l = e.sum(-1, keepdims=True)
    p = np.where(l > 0, e / np.where(l > 0, l, 1), 0.0)
    lse = np.where(l[..., 0] > 0, np.log(np.where(l[..., 0] > 0, l[..., 0], 1)) + m[..., 0], -np.inf)
    return p, lse


def reference(q, k, v, mask=None, causal=False, scale=None):
    """out, lse, P in float64: softmax over keys, fully masked rows → 0 (lse −inf)."""
    p, lse = _softmax(_scores(q, k, mask, causal, scale))
    return p @ _expand_gqa(q, v).astype(np.float64), lse, p


def _sum_to(g, shape):
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _sum_gqa(g, x):
    if g.shape[-3:] != x.shape[-3:] and x.ndim >= 3 and g.shape[-3] != x.shape[-3]:
        g = g.reshape(g.shape[:-3] + (x.shape[-3], -1) + g.shape[-2:]).sum(-3)
    return _sum_to(g, x.shape)


def reference_grads(grad_out, q, k, v, mask=None, causal=False, scale=None):
    """dq, dk, dv, dmask of sum(grad_out · out) in float64 (analytic softmax backward)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    _, _, p = reference(q, k, v, mask, causal, scale)
    g = grad_out.astype(np.float64)
    kk, vv = _expand_gqa(q, k).astype(np.float64), _expand_gqa(q, v).astype(np.float64)
    dv = np.swapaxes(p, -1, -2) @ g
    dp = g @ np.swapaxes(vv, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = ds @ kk * scale
    dk = np.swapaxes(ds, -1, -2) @ q.astype(np.float64) * scale
    dmask = None if mask is None or mask.dtype == np.bool_ else _sum_to(ds, mask.shape)
    return _sum_to(dq, q.shape), _sum_gqa(dk, k), _sum_gqa(dv, v), dmask


def make(rng, dtype, qshape, kshape, vshape):
    return randn(rng, qshape, dtype), randn(rng, kshape, dtype), randn(rng, vshape, dtype)


def check_forward(q, k, v, mask=None, causal=False, scale=None, enable_gqa=False):
    out, lse = kernels.attention_forward(q, k, v, mask, is_causal=causal, scale=scale, enable_gqa=enable_gqa)
    ref, ref_lse, _ = reference(q, k, v, mask, causal, scale)
    assert out.shape == ref.shape and out.dtype == q.dtype and lse.shape == ref_lse.shape
    assert_close(out, ref, q.dtype, k.shape[-2] + q.shape[-1])
    finite = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), finite)
    assert_close(lse[finite], ref_lse[finite], q.dtype, k.shape[-2] + q.shape[-1],
                 scale=max(1.0, float(np.abs(ref_lse[finite]).max(initial=0))))
    return out, lse


def check_backward(rng, q, k, v, mask=None, causal=False, scale=None, enable_gqa=False):
    out, lse = kernels.attention_forward(q, k, v, mask, is_causal=causal, scale=scale, enable_gqa=enable_gqa)
    grad_out = randn(rng, out.shape, q.dtype)
    mask_grad = mask is not None and mask.dtype != np.bool_
    grads = kernels.attention_backward(grad_out, q, k, v, out, lse, mask, is_causal=causal, scale=scale,
                                       enable_gqa=enable_gqa, mask_grad=mask_grad)
    refs = reference_grads(grad_out, q, k, v, mask, causal, scale)
    k_len = k.shape[-2] + q.shape[-1] + v.shape[-1]
    for name, got, want, like in zip(("q", "k", "v", "mask"), grads, refs, (q, k, v, mask)):
        assert got.shape == like.shape and got.dtype == q.dtype, name
        assert_close(got, want, q.dtype, k_len, scale=max(1.0, float(np.abs(want).max())))
    return grads


# ---- the vectorised exp2 -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_exp2_accuracy(cpu_level, dtype):
    # ≤ 2 ulp over the softmax's range (x ≤ 0, plus the small positive rounding slack), exactly 0
    # below the smallest normal exponent and for −inf, NaN for NaN.
    lo = -126.0 if dtype == np.float32 else -1022.0
    x = np.concatenate([np.linspace(lo, 1.0, 200_001), np.random.default_rng(0).uniform(-20, 0, 10_000)]).astype(dtype)
    y = _C.attention_exp2(x)
    exact = np.exp2(x.astype(np.float64))
    rel = np.abs(y.astype(np.float64) - exact) / exact
    assert rel.max() <= 2 * np.finfo(dtype).eps, rel.max()
    below = np.array([lo - 1.0, lo * 2, -np.inf], dtype)
    assert np.all(_C.attention_exp2(below) == 0)
    assert np.all(_C.attention_exp2(np.zeros(37, dtype)) == 1)
    assert np.all(np.isnan(_C.attention_exp2(np.full(19, np.nan, dtype))))


# ---- forward and backward against the reference ----------------------------------------------------

SHAPE_PAIRS = [(1, 1), (2, 7), (7, 2), (63, 64), (64, 65), (65, 63), (257, 1000), (1000, 257), (1, 1000), (1000, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_forward_head_dims_and_lengths(cpu_level, dtype, D):
    rng = np.random.default_rng(D)
    for n, (L, S) in enumerate(SHAPE_PAIRS):
        if D >= 128 and L * S > 70_000 and cpu_level == "portable":
            continue  # the portable path covers these sizes at D ≤ 80
        q, k, v = make(rng, dtype, (1, 2, L, D), (1, 2, S, D), (1, 2, S, D))
        check_forward(q, k, v, causal=n % 2 == 1)


def test_every_length_both_sides():
    rng = np.random.default_rng(1)
    for L in LENGTHS:
        for S in LENGTHS:
            q, k, v = make(rng, np.float32, (1, 1, L, 17), (1, 1, S, 17), (1, 1, S, 9))
            check_forward(q, k, v, causal=(L + S) % 2 == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D,Dv", [(1, 1), (3, 5), (17, 16), (64, 64), (80, 80), (128, 128), (256, 256)])
def test_backward_head_dims(cpu_level, dtype, D, Dv):
    rng = np.random.default_rng(D + 1000)
    for n, (L, S) in enumerate([(1, 1), (7, 2), (65, 63), (64, 257), (130, 65)]):
        q, k, v = make(rng, dtype, (2, 1, L, D), (2, 1, S, D), (2, 1, S, Dv))
        check_backward(rng, q, k, v, causal=n % 2 == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_long_sequences(dtype):
    rng = np.random.default_rng(3)
    for causal in (False, True):
        q, k, v = make(rng, dtype, (1, 2, 1000, 64), (1, 2, 1000, 64), (1, 2, 1000, 64))
        check_backward(rng, q, k, v, causal=causal)
    q, k, v = make(rng, dtype, (1, 1, 257, 64), (1, 1, 1000, 64), (1, 1, 1000, 32))
    check_backward(rng, q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_with_l_not_s_is_top_left_aligned(cpu_level, dtype):
    # PyTorch's is_causal: key j takes part for query i when j ≤ i, whatever L and S.
    rng = np.random.default_rng(4)
    for L, S in [(5, 9), (9, 5), (1, 300), (300, 1), (70, 300), (300, 70)]:
        q, k, v = make(rng, dtype, (3, L, 8), (3, S, 8), (3, S, 4))
        out, _ = check_forward(q, k, v, causal=True)
        assert_close(out[:, 0], v[:, 0].astype(np.float64), dtype, 1)   # query 0 sees key 0 only
        check_backward(rng, q, k, v, causal=True)


# ---- masks ---------------------------------------------------------------------------------------------

MASK_SHAPES = [(33, 70), (2, 3, 33, 70), (2, 1, 33, 70), (1, 3, 1, 70), (33, 1), (3, 33, 70)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("mask_shape", MASK_SHAPES)
def test_masks_broadcast(cpu_level, dtype, kind, mask_shape):
    rng = np.random.default_rng(5)
    q, k, v = make(rng, dtype, (2, 3, 33, 24), (2, 3, 70, 24), (2, 3, 70, 16))
    if kind == "bool":
        mask = rng.random(mask_shape) > 0.4
    else:
        mask = (rng.standard_normal(mask_shape) * 2).astype(dtype)
        mask[rng.random(mask_shape) < 0.2] = -np.inf
    for causal in (False, True):
        check_forward(q, k, v, mask, causal=causal)
    check_backward(rng, q, k, v, mask, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_fully_masked_rows_give_zeros_and_zero_gradients(cpu_level, dtype, kind):
    rng = np.random.default_rng(6)
    L, S = 70, 300
    q, k, v = make(rng, dtype, (2, 2, L, 32), (2, 2, S, 32), (2, 2, S, 32))
    keep = rng.random((2, 2, L, S)) > 0.5
    keep[:, :, [0, 5, 64, 69]] = False              # rows with no key at all
    keep[0, 1, 33, 299] = True                        # a row with a single key, the last one
    keep[0, 1, 33, :299] = False
    mask = keep if kind == "bool" else np.where(keep, 0.0, -np.inf).astype(dtype)
    out, lse = check_forward(q, k, v, mask)
    assert np.all(out[:, :, [0, 5, 64, 69]] == 0) and np.all(np.isneginf(lse[:, :, [0, 5, 64, 69]]))
    assert_close(out[0, 1, 33], v[0, 1, 299].astype(np.float64), dtype, 1)
    gq, gk, gv, *rest = check_backward(rng, q, k, v, mask)
    assert np.all(np.isfinite(gq)) and np.all(np.isfinite(gk)) and np.all(np.isfinite(gv))
    assert np.all(gq[:, :, [0, 5, 64, 69]] == 0)
    # a row masked out only by the causal mask and a key-padding mask together
    pad = np.ones((2, 1, 1, S), bool)
    pad[..., 0] = False
    out, _ = check_forward(q, k, v, pad, causal=True)
    assert np.all(out[:, :, 0] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inputs_propagate_like_the_formula(cpu_level, dtype):
    # NaN is never swallowed: a NaN query row, or a NaN key a row can see, makes that row NaN; a NaN
    # key that a boolean mask removes does not take part.
    rng = np.random.default_rng(30)
    q, k, v = make(rng, dtype, (1, 2, 300, 8), (1, 2, 300, 8), (1, 2, 300, 8))
    q[0, 0, 1, 3] = np.nan
    k[0, 1, 290, 0] = np.nan
    out, lse = kernels.attention_forward(q, k, v, is_causal=True)
    nan_rows = np.isnan(out).any(-1)[0]
    assert np.array_equal(np.flatnonzero(nan_rows[0]), [1]) and np.isnan(lse[0, 0, 1])
    assert np.array_equal(np.flatnonzero(nan_rows[1]), np.arange(290, 300))
    grads = kernels.attention_backward(np.ones_like(out), q, k, v, out, lse, is_causal=True)
    assert np.isnan(grads[0][0, 0, 1]).all() and np.isfinite(grads[0][0, 0, 2:]).all()
    keep = np.ones((300, 300), bool)
    keep[:, 290] = False
    clean = k.copy()
    clean[0, 1, 290] = 0
    out, _ = kernels.attention_forward(q[:, 1:], k[:, 1:], v[:, 1:], keep)
    assert_close(out, reference(q[:, 1:], clean[:, 1:], v[:, 1:], keep)[0], dtype, 308)


def test_mask_broadcast_along_keys_zero_column_stride():
    rng = np.random.default_rng(7)
    q, k, v = make(rng, np.float64, (1, 2, 9, 8), (1, 2, 11, 8), (1, 2, 11, 8))
    check_forward(q, k, v, randn(rng, (1, 2, 9, 1), np.float64))
    check_backward(rng, q, k, v, randn(rng, (9, 1), np.float64))


# ---- heads, batches, layouts ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hq,hk", [(8, 2), (6, 3), (4, 1), (5, 5)])
def test_grouped_query_attention(cpu_level, dtype, hq, hk):
    rng = np.random.default_rng(8)
    q, k, v = make(rng, dtype, (2, hq, 65, 16), (2, hk, 130, 16), (2, hk, 130, 24))
    mask = rng.random((65, 130)) > 0.3
    check_forward(q, k, v, enable_gqa=True)
    check_forward(q, k, v, mask, causal=True, enable_gqa=True)
    check_backward(rng, q, k, v, causal=True, enable_gqa=True)
    check_backward(rng, q, k, v, randn(rng, (2, hq, 65, 130), dtype), enable_gqa=True)


@pytest.mark.parametrize("qs,ks,vs", [
    ((2, 3, 10, 8), (1, 3, 12, 8), (2, 1, 12, 5)),     # batch and head broadcasting
    ((10, 8), (12, 8), (12, 5)),                      # unbatched
    ((4, 10, 8), (1, 12, 8), (4, 12, 5)),             # 3-D
    ((2, 2, 3, 10, 8), (2, 1, 3, 12, 8), (1, 2, 3, 12, 5)),  # 5-D, broadcasting that needs a copy
    ((3, 10, 8), (2, 1, 12, 8), (12, 5)),             # the batch grows from key
])
def test_batch_and_head_broadcasting(cpu_level, qs, ks, vs):
    rng = np.random.default_rng(9)
    q, k, v = make(rng, np.float64, qs, ks, vs)
    check_forward(q, k, v, causal=True)
    check_backward(rng, q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_noncontiguous_inputs(cpu_level, dtype):
    rng = np.random.default_rng(10)
    # (B, L, H, E) projections viewed as (B, H, L, E), as multi-head attention produces them
    q = randn(rng, (2, 40, 3, 20), dtype).transpose(0, 2, 1, 3)
    k = randn(rng, (2, 50, 3, 20), dtype).transpose(0, 2, 1, 3)
    v = randn(rng, (2, 50, 3, 12), dtype).transpose(0, 2, 1, 3)
    check_forward(q, k, v)
    check_backward(rng, q, k, v, causal=True)
    # sliced, reversed and column-strided views
    big = randn(rng, (3, 90, 40), dtype)
    q, k, v = big[:, ::2, ::2], big[::-1, 10:80, 1::2], big[:, ::-1, :7][:, :70]
    mask = (rng.random((2, 3, 45, 140)) > 0.2)[1, :, :, ::2]
    check_forward(q, k, v, mask, causal=True)
    check_backward(rng, q, k, v, mask)


def test_scale_argument_and_zero_sizes():
    rng = np.random.default_rng(11)
    q, k, v = make(rng, np.float64, (2, 9, 6), (2, 13, 6), (2, 13, 4))
    check_forward(q, k, v, scale=0.3)
    check_backward(rng, q, k, v, scale=2.5)
    check_forward(q, k, v, scale=0.0)               # uniform attention
    out, lse = kernels.attention_forward(np.ones((2, 0, 6)), np.ones((2, 5, 6)), np.ones((2, 5, 4)))
    assert out.shape == (2, 0, 4) and lse.shape == (2, 0)
    out, lse = kernels.attention_forward(np.ones((2, 3, 6)), np.ones((2, 0, 6)), np.ones((2, 0, 4)))
    assert np.all(out == 0) and np.all(np.isneginf(lse))
    gq, gk, gv = kernels.attention_backward(np.ones((2, 3, 4)), np.ones((2, 3, 6)), np.ones((2, 0, 6)),
                                            np.ones((2, 0, 4)), out, lse)
    assert np.all(gq == 0) and gk.shape == (2, 0, 6)
    out, _ = kernels.attention_forward(np.ones((0, 3, 6)), np.ones((0, 5, 6)), np.ones((0, 5, 4)))
    assert out.shape == (0, 3, 4)


def test_threads_agree(threads):
    rng = np.random.default_rng(12)
    q, k, v = make(rng, np.float32, (3, 4, 300, 64), (3, 2, 500, 64), (3, 2, 500, 64))
    results = []
    for n in (1, 2):
        fastdl.set_num_threads(n)
        out, lse = kernels.attention_forward(q, k, v, is_causal=True, enable_gqa=True)
        grads = kernels.attention_backward(np.ones_like(out), q, k, v, out, lse, is_causal=True, enable_gqa=True)
        results.append((out, lse) + grads)
    # The forward's tasks are independent: bitwise equal. dQ sums key blocks in thread order.
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    for a, b in zip(results[0][2:], results[1][2:]):
        assert_close(a, b, np.float32, 500, scale=float(np.abs(b).max()))


def test_levels_agree():
    rng = np.random.default_rng(13)
    q, k, v = make(rng, np.float64, (2, 2, 100, 40), (2, 2, 150, 40), (2, 2, 150, 40))
    previous = fastdl.cpu_capability()
    outs = []
    try:
        for level in LEVELS:
            fastdl.set_cpu_capability(level)
            outs.append(kernels.attention_forward(q, k, v, is_causal=True)[0])
    finally:
        fastdl.set_cpu_capability(previous)
    for o in outs:
        assert_close(o, outs[0], np.float64, 150)


def test_blocking_is_consistent():
    for dtype in ("float32", "float64"):
        for D in (64, 256):
            b = _C.attention_blocking(dtype, D, D)
            assert b["Br"] % b["MR"] == 0 and b["Bc"] % b["MR"] == 0 and b["Bc"] % b["W"] == 0


# ---- float64 finite-difference gradient checks ----------------------------------------------------------

def _numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("gqa", [False, True])
def test_gradcheck_float64(causal, gqa):
    rng = np.random.default_rng(14)
    q = rng.standard_normal((1, 4, 5, 3))
    k = rng.standard_normal((1, 2 if gqa else 4, 6, 3))
    v = rng.standard_normal((1, 2 if gqa else 4, 6, 2))
    mask = rng.standard_normal((5, 6))
    mask[1, 2] = -np.inf
    w = rng.standard_normal((1, 4, 5, 2))

    def loss():
        out, _ = kernels.attention_forward(q, k, v, mask, is_causal=causal, enable_gqa=gqa)
        return float((out * w).sum())

    out, lse = kernels.attention_forward(q, k, v, mask, is_causal=causal, enable_gqa=gqa)
    grads = kernels.attention_backward(w, q, k, v, out, lse, mask, is_causal=causal, enable_gqa=gqa, mask_grad=True)
    for x, g in zip((q, k, v, mask), grads):
        numeric = _numeric_grad(loss, x)
        finite = np.isfinite(x)
        np.testing.assert_allclose(g[finite], numeric[finite], rtol=1e-5, atol=1e-7)
        assert np.all(g[~finite] == 0)


def test_gradcheck_with_dropout_fixed_seed():
    # With a fixed seed the dropout mask is a constant, so the backward is the exact gradient.
    rng = np.random.default_rng(15)
    q, k, v = rng.standard_normal((2, 7, 4)), rng.standard_normal((2, 9, 4)), rng.standard_normal((2, 9, 3))
    w = rng.standard_normal((2, 7, 3))

    def loss():
        return float((kernels.attention_forward(q, k, v, dropout_p=0.4, seed=1234)[0] * w).sum())

    out, lse = kernels.attention_forward(q, k, v, dropout_p=0.4, seed=1234)
    grads = kernels.attention_backward(w, q, k, v, out, lse, dropout_p=0.4, seed=1234)
    for x, g in zip((q, k, v), grads):
        np.testing.assert_allclose(g, _numeric_grad(loss, x), rtol=1e-5, atol=1e-7)


# ---- dropout --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_keeps_one_minus_p_scaled(cpu_level, dtype):
    # With V = I (Ev = S) the output rows are the dropped-out probabilities themselves.
    rng = np.random.default_rng(16)
    L, S, p = 300, 260, 0.3
    q, k = randn(rng, (2, L, 16), dtype), randn(rng, (2, S, 16), dtype)
    v = np.broadcast_to(np.eye(S, dtype=dtype), (2, S, S))
    out, _ = kernels.attention_forward(q, k, v, dropout_p=p, seed=99)
    _, _, probs = reference(q, k, v)
    kept = out != 0
    assert abs(kept.mean() - (1 - p)) < 0.01
    assert_close(out[kept], probs[kept] / (1 - p), dtype, S, scale=float(probs.max() / (1 - p)))
    again, _ = kernels.attention_forward(q, k, v, dropout_p=p, seed=99)
    np.testing.assert_array_equal(out, again)
    other, _ = kernels.attention_forward(q, k, v, dropout_p=p, seed=100)
    assert 0.5 < ((other != 0) == kept).mean() < 0.7       # independent masks agree ≈ p² + (1−p)²
    # rows and heads do not share a pattern
    assert not np.array_equal(kept[0, 0], kept[0, 1]) and not np.array_equal(kept[0], kept[1])


def test_dropout_mask_independent_of_level_and_threads(threads):
    rng = np.random.default_rng(17)
    q, k, v = make(rng, np.float64, (2, 2, 100, 8), (2, 2, 120, 8), (2, 2, 120, 8))
    ref = kernels.attention_forward(q, k, v, dropout_p=0.5, seed=7)[0]
    previous = fastdl.cpu_capability()
    try:
        for level in LEVELS:
            fastdl.set_cpu_capability(level)
            for n in (1, 2):
                fastdl.set_num_threads(n)
                out = kernels.attention_forward(q, k, v, dropout_p=0.5, seed=7)[0]
                assert np.array_equal(out != 0, ref != 0)
                assert_close(out, ref, np.float64, 120)
    finally:
        fastdl.set_cpu_capability(previous)


# ---- PyTorch as a second reference ---------------------------------------------------------------------

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    dict(q=(2, 4, 65, 64), k=(2, 4, 63, 64), v=(2, 4, 63, 64)),
    dict(q=(2, 4, 65, 80), k=(2, 4, 257, 80), v=(2, 4, 257, 80), causal=True),
    dict(q=(2, 4, 257, 17), k=(2, 4, 65, 17), v=(2, 4, 65, 3), causal=True),
    dict(q=(1, 8, 64, 32), k=(1, 2, 100, 32), v=(1, 2, 100, 32), gqa=True, causal=True),
    dict(q=(3, 2, 40, 16), k=(3, 2, 50, 16), v=(3, 2, 50, 16), mask="bool"),
    dict(q=(3, 2, 40, 16), k=(3, 2, 50, 16), v=(3, 2, 50, 16), mask="additive", scale=0.7),
    dict(q=(3, 2, 40, 16), k=(3, 2, 50, 16), v=(3, 2, 50, 16), mask="bool", causal=True),
])
def test_matches_torch(cpu_level, dtype, case):
    rng = np.random.default_rng(18)
    q, k, v = make(rng, dtype, case["q"], case["k"], case["v"])
    L, S = case["q"][-2], case["k"][-2]
    mask = None
    if case.get("mask") == "bool":
        mask = rng.random((L, S)) > 0.3
    elif case.get("mask") == "additive":
        mask = randn(rng, (1, 1, L, S), dtype)
    kw = dict(is_causal=case.get("causal", False), scale=case.get("scale"), enable_gqa=case.get("gqa", False))
    out, lse = kernels.attention_forward(q, k, v, mask, **kw)
    grad = randn(rng, out.shape, dtype)
    grads = kernels.attention_backward(grad, q, k, v, out, lse, mask, **kw)
    tq, tk, tv = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (q, k, v))
    tmask = None if mask is None else torch.from_numpy(mask if mask.dtype == np.bool_ else mask.astype(np.float64))
    tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, **kw)
    tout.backward(torch.from_numpy(grad.astype(np.float64)))
    k_len = S + case["q"][-1] + case["v"][-1]
    assert_close(out, tout.detach().numpy(), dtype, k_len)
    for got, t in zip(grads, (tq, tk, tv)):
        assert_close(got, t.grad.numpy(), dtype, k_len, scale=max(1.0, float(t.grad.abs().max())))


# ---- bad input -------------------------------------------------------------------------------------------

def _a(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


BAD_ATTENTION = [
    (lambda: kernels.attention_forward(_a(2, 4, 8), _a(2, 5, 7), _a(2, 5, 8)), ValueError, "(2, 5, 7)"),
    (lambda: kernels.attention_forward(_a(2, 4, 8), _a(2, 5, 8), _a(2, 6, 8)), ValueError, "lengths differ"),
    (lambda: kernels.attention_forward(_a(2, 4, 8), _a(3, 5, 8), _a(3, 5, 8)), ValueError, "do not broadcast"),
    (lambda: kernels.attention_forward(_a(1, 6, 4, 8), _a(1, 4, 5, 8), _a(1, 4, 5, 8), enable_gqa=True),
     ValueError, "enable_gqa"),
    (lambda: kernels.attention_forward(_a(1, 6, 4, 8), _a(1, 3, 5, 8), _a(1, 2, 5, 8), enable_gqa=True),
     ValueError, "(1, 2, 5, 8)"),
    (lambda: kernels.attention_forward(_a(1, 6, 4, 8), _a(1, 3, 5, 8), _a(1, 3, 5, 8)), ValueError, "broadcast"),
    (lambda: kernels.attention_forward(_a(8), _a(5, 8), _a(5, 8)), ValueError, "at least 2 dimensions"),
    (lambda: kernels.attention_forward(_a(4, 8), _a(5, 8), _a(5, 8, dtype=np.float64)), TypeError, "dtypes differ"),
    (lambda: kernels.attention_forward(_a(4, 8, dtype=np.int64), _a(5, 8), _a(5, 8)), TypeError, "int64"),
    (lambda: kernels.attention_forward(_a(4, 8), _a(5, 8), _a(5, 8), _a(4, 6)), ValueError, "(4, 6)"),
    (lambda: kernels.attention_forward(_a(4, 8), _a(5, 8), _a(5, 8), _a(2, 4, 5)), ValueError, "does not broadcast"),
    (lambda: kernels.attention_forward(_a(4, 8), _a(5, 8), _a(5, 8), _a(4, 5, dtype=np.float64)), TypeError,
     "attn_mask must be bool or float32"),
    (lambda: kernels.attention_forward(_a(4, 8), _a(5, 8), _a(5, 8), _a(4, 5, dtype=np.int32)), TypeError, "int32"),
    (lambda: kernels.attention_forward(_a(4, 8), _a(5, 8), _a(5, 8), dropout_p=1.0), ValueError, "dropout_p"),
    (lambda: kernels.attention_backward(_a(4, 3), _a(4, 8), _a(5, 8), _a(5, 8), _a(4, 8), _a(4)), ValueError,
     "grad_out must be float32 of shape (4, 8)"),
    (lambda: kernels.attention_backward(_a(4, 8), _a(4, 8), _a(5, 8), _a(5, 8), _a(4, 8), _a(4), _a(4, 5, dtype=bool),
                                        mask_grad=True), ValueError, "mask_grad"),
]


@pytest.mark.parametrize("call,exc,words", BAD_ATTENTION)
def test_attention_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
    assert "attention" in str(info.value)


def test_native_attention_checks_shapes_itself():
    q, k, v = _a(1, 2, 4, 8), _a(1, 2, 5, 8), _a(1, 2, 5, 8)
    out, lse = np.empty((1, 2, 4, 8), np.float32), np.empty((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="4-D"):
        _C.attention_forward(q[0], k, v, None, out, lse, False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="shapes do not match"):
        _C.attention_forward(q, _a(1, 2, 5, 7), v, None, out, lse, False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="heads"):
        _C.attention_forward(_a(1, 3, 4, 8), k, v, None, np.empty((1, 3, 4, 8), np.float32),
                             np.empty((1, 3, 4), np.float32), False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="out must have shape"):
        _C.attention_forward(q, k, v, None, np.empty((1, 2, 4, 7), np.float32), lse, False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.attention_forward(q, k, v, None, np.empty((1, 2, 8, 4), np.float32).swapaxes(2, 3), lse, False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="mask"):
        _C.attention_forward(q, k, v, _a(1, 2, 4, 4, dtype=bool), out, lse, False, 1.0, 0.0, 0)
    with pytest.raises(TypeError, match="mask must be bool or float32"):
        _C.attention_forward(q, k, v, _a(1, 2, 4, 5, dtype=np.float64), out, lse, False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="dropout_p"):
        _C.attention_forward(q, k, v, None, out, lse, False, 1.0, 1.5, 0)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.empty((1, 2, 4, 8), np.float32)
        ro.flags.writeable = False
        _C.attention_forward(q, k, v, None, ro, lse, False, 1.0, 0.0, 0)


# ---- F.scaled_dot_product_attention: the autodiff layer -------------------------------------------------

def _sdpa_torch(**kw):
    def fn(q, k, v, *mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, *mask, **kw)
    return fn


def _sdpa_numpy(**kw):
    def fn(q, k, v, *mask):
        return reference(q, k, v, mask[0] if mask else None, kw.get("is_causal", False), kw.get("scale"))[0]
    return fn


SDPA_CASES = [
    dict(shapes=[(2, 3, 17, 16), (2, 3, 33, 16), (2, 3, 33, 8)]),
    dict(shapes=[(2, 3, 33, 16), (2, 3, 17, 16), (2, 3, 17, 8)], kw=dict(is_causal=True, scale=0.4)),
    dict(shapes=[(1, 4, 20, 8), (1, 2, 30, 8), (1, 2, 30, 8)], kw=dict(enable_gqa=True, is_causal=True)),
    dict(shapes=[(2, 1, 9, 8), (3, 11, 8), (11, 5)], kw=dict()),
    dict(shapes=[(2, 3, 9, 8), (2, 3, 11, 8), (2, 3, 11, 8), (3, 9, 11)], mask="additive"),
    dict(shapes=[(2, 3, 9, 8), (2, 3, 11, 8), (2, 3, 11, 8), (2, 1, 9, 11)], mask="bool", kw=dict(is_causal=True)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SDPA_CASES)
def test_sdpa_matches_reference_with_gradients(dtype, case):
    rng = np.random.default_rng(19)
    arrays = [rng.standard_normal(s) for s in case["shapes"]]
    if case.get("mask") == "bool":
        arrays[3] = rng.random(case["shapes"][3]) > 0.3
    kw = case.get("kw", {})
    check_op(lambda *t: F.scaled_dot_product_attention(*t, **kw), arrays, torch_fn=_sdpa_torch(**kw),
             numpy_fn=_sdpa_numpy(**kw), dtype=dtype, k=case["shapes"][1][-2] + case["shapes"][0][-1])


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_gradcheck_float64(causal):
    rng = np.random.default_rng(20)
    q, k, v = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 6, 4)), rng.standard_normal((2, 2, 6, 3))
    mask = rng.standard_normal((5, 6))
    gradcheck(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, m, is_causal=causal), [q, k, v, mask])
    keep = rng.random((2, 1, 5, 6)) > 0.3
    keep[0, 0, 2] = False                              # a row with no key: zero output, zero gradient
    gradcheck(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, m, is_causal=causal), [q, k, v, keep])
    q3, k3, v3 = rng.standard_normal((1, 4, 5, 3)), rng.standard_normal((1, 2, 7, 3)), rng.standard_normal((1, 2, 7, 2))
    gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True), [q3, k3, v3])


def test_sdpa_fully_masked_rows_in_autodiff():
    rng = np.random.default_rng(21)
    q, k, v = (fastdl.tensor(rng.standard_normal(s), requires_grad=True) for s in ((1, 4, 8), (1, 6, 8), (1, 6, 8)))
    keep = np.ones((4, 6), bool)
    keep[2] = False
    out = F.scaled_dot_product_attention(q, k, v, fastdl.tensor(keep))
    out.sum().backward()
    assert np.all(out.numpy()[0, 2] == 0) and np.all(q.grad.numpy()[0, 2] == 0)
    assert all(np.all(np.isfinite(t.grad.numpy())) for t in (q, k, v))


def test_sdpa_without_grad_records_nothing():
    rng = np.random.default_rng(22)
    q, k, v = (fastdl.tensor(rng.standard_normal((2, 5, 4)), requires_grad=True) for _ in range(3))
    with fastdl.no_grad():
        out = F.scaled_dot_product_attention(q, k, v)
    assert out.grad_fn is None and not out.requires_grad
    assert_close(out.numpy(), reference(q.numpy(), k.numpy(), v.numpy())[0], np.float64, 9)


def test_sdpa_dropout_is_seeded_by_fastdl_generator():
    rng = np.random.default_rng(23)
    q, k, v = (fastdl.tensor(rng.standard_normal((2, 40, 8)), requires_grad=True) for _ in range(3))
    fastdl.manual_seed(5)
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    fastdl.manual_seed(5)
    b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    c = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert np.array_equal(a.numpy(), b.numpy()) and not np.array_equal(a.numpy(), c.numpy())
    # The backward regenerates the forward's mask: the same gradients as the kernels with that seed.
    fastdl.manual_seed(5)
    seed = int(fastdl.random.generator().integers(0, 2**63))
    grad = rng.standard_normal(a.shape)
    a.backward(fastdl.tensor(grad))
    out, lse = kernels.attention_forward(q.numpy(), k.numpy(), v.numpy(), dropout_p=0.5, seed=seed)
    np.testing.assert_array_equal(out, a.numpy())
    expected = kernels.attention_backward(grad, q.numpy(), k.numpy(), v.numpy(), out, lse, dropout_p=0.5, seed=seed)
    for t, g in zip((q, k, v), expected):
        np.testing.assert_allclose(t.grad.numpy(), g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(), dict(is_causal=True), dict(enable_gqa=True, scale=0.3)])
def test_composed_path_matches_fused(kw):
    # The composed formula serves CUDA tensors and need_weights; on the CPU it must agree with the kernel.
    rng = np.random.default_rng(24)
    shapes = ((2, 4, 7, 5), (2, 2 if kw.get("enable_gqa") else 4, 9, 5), (2, 2 if kw.get("enable_gqa") else 4, 9, 3))
    keep = rng.random((7, 9)) > 0.3
    keep[3] = False
    for mask in (None, fastdl.tensor(keep), fastdl.tensor(rng.standard_normal((1, 1, 7, 9)), requires_grad=True)):
        fused = [fastdl.tensor(rng.standard_normal(s), requires_grad=True) for s in shapes]
        composed = [fastdl.tensor(t.numpy(), requires_grad=True) for t in fused]
        out = F.scaled_dot_product_attention(*fused, mask, **kw)
        ref, weights = F._attention_composed("test", *composed, mask, 0.0, kw.get("is_causal", False),
                                             kw.get("scale"), kw.get("enable_gqa", False))
        assert_close(out.numpy(), ref.numpy(), np.float64, 9)
        assert np.all(np.isfinite(weights.numpy()))
        grad = rng.standard_normal(out.shape)
        out.backward(fastdl.tensor(grad))
        ref.backward(fastdl.tensor(grad))
        for a, b in zip(fused, composed):
            assert_close(a.grad.numpy(), b.grad.numpy(), np.float64, 9)


def test_sdpa_on_each_device(device):
    # CPU: the fused kernel. CUDA: the composed formula (a declared fallback) until attention.cu exists.
    rng = np.random.default_rng(29)
    arrays = [rng.standard_normal(s) for s in ((2, 4, 33, 16), (2, 2, 40, 16), (2, 2, 40, 8))]
    keep = rng.random((33, 40)) > 0.3
    keep[5] = False
    q, k, v = (fastdl.tensor(a, device=device, requires_grad=True) for a in arrays)
    out = F.scaled_dot_product_attention(q, k, v, fastdl.tensor(keep, device=device), is_causal=True, enable_gqa=True)
    assert out.device == q.device
    grad = rng.standard_normal(out.shape)
    out.backward(fastdl.tensor(grad, device=device))
    ref = reference(*arrays[:1], np.repeat(arrays[1], 2, 1), np.repeat(arrays[2], 2, 1), keep, True)[0]
    assert_close(out.cpu().numpy(), ref, np.float64, 40)
    refs = reference_grads(grad, arrays[0], arrays[1], arrays[2], keep, True)
    for t, r in zip((q, k, v), refs):
        assert_close(t.grad.cpu().numpy(), r, np.float64, 64, scale=max(1.0, float(np.abs(r).max())))


BAD_SDPA = [
    (lambda: F.scaled_dot_product_attention(np.ones((2, 3)), fastdl.ones(2, 3), fastdl.ones(2, 3)), TypeError, "query"),
    (lambda: F.scaled_dot_product_attention(fastdl.ones(2, 4, 8), fastdl.ones(2, 5, 7), fastdl.ones(2, 5, 8)),
     ValueError, "(2, 5, 7)"),
    (lambda: F.scaled_dot_product_attention(fastdl.ones(2, 4, 8), fastdl.ones(3, 5, 8), fastdl.ones(3, 5, 8)),
     ValueError, "do not broadcast"),
    (lambda: F.scaled_dot_product_attention(fastdl.ones(8), fastdl.ones(5, 8), fastdl.ones(5, 8)), ValueError,
     "at least 2 dimensions"),
    (lambda: F.scaled_dot_product_attention(fastdl.ones(1, 6, 4, 8), fastdl.ones(1, 4, 5, 8), fastdl.ones(1, 4, 5, 8),
                                            enable_gqa=True), ValueError, "enable_gqa"),
    (lambda: F.scaled_dot_product_attention(fastdl.ones(4, 8), fastdl.ones(5, 8), fastdl.ones(5, 8),
                                            fastdl.ones(4, 6)), ValueError, "(4, 6)"),
    (lambda: F.scaled_dot_product_attention(fastdl.ones(4, 8), fastdl.ones(5, 8), fastdl.ones(5, 8),
                                            fastdl.ones(4, 5, dtype=fastdl.int64)), TypeError, "int64"),
    (lambda: F.scaled_dot_product_attention(fastdl.ones(4, 8), fastdl.ones(5, 8), fastdl.ones(5, 8),
                                            fastdl.ones(4, 5, dtype=fastdl.float64)), TypeError, "float64"),
    (lambda: F.scaled_dot_product_attention(fastdl.ones(4, 8), fastdl.ones(5, 8, dtype=fastdl.float64),
                                            fastdl.ones(5, 8)), TypeError, "dtypes differ"),
    (lambda: F.scaled_dot_product_attention(fastdl.ones(4, 8), fastdl.ones(5, 8), fastdl.ones(5, 8), dropout_p=1.5),
     ValueError, "dropout_p"),
]


@pytest.mark.parametrize("call,exc,words", BAD_SDPA)
def test_sdpa_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
    assert "scaled_dot_product_attention" in str(info.value)


def test_backend_info_reports_attention():
    info = fastdl.backend_info()
    assert info["families"]["attention"]["cpu"].startswith("native: fused flash attention")
    cases = {(f["family"], f["case"]) for f in info["fallbacks"]}
    assert ("attention", "cuda") in cases and ("attention", "need_weights") in cases


# ---- nn.MultiheadAttention ---------------------------------------------------------------------------------

def _mha_pair(dtype, **kw):
    """A fastdl MultiheadAttention and PyTorch's with the same (copied) parameters."""
    tm = torch.nn.MultiheadAttention(dtype=torch.float64, **kw)
    m = nn.MultiheadAttention(dtype=dtype, **kw)
    assert list(m.state_dict()) == list(tm.state_dict())
    m.load_state_dict({name: fastdl.tensor(p.detach().numpy().astype(dtype)) for name, p in tm.state_dict().items()})
    return m, tm


MHA_CONFIGS = [
    dict(embed_dim=16, num_heads=4),
    dict(embed_dim=16, num_heads=2, batch_first=True),
    dict(embed_dim=12, num_heads=3, kdim=5, vdim=7),
    dict(embed_dim=8, num_heads=1, bias=False),
    dict(embed_dim=8, num_heads=2, add_bias_kv=True, add_zero_attn=True),
]


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", MHA_CONFIGS)
@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_matches_torch(dtype, config, need_weights):
    rng = np.random.default_rng(25)
    m, tm = _mha_pair(dtype, **config)
    E, N, L, S = config["embed_dim"], 3, 5, 9
    bf = config.get("batch_first", False)

    def shape(n, length, e):
        return (n, length, e) if bf else (length, n, e)
    q = rng.standard_normal(shape(N, L, E))
    k = rng.standard_normal(shape(N, S, config.get("kdim", E)))
    v = rng.standard_normal(shape(N, S, config.get("vdim", E)))
    kpm = rng.random((N, S)) > 0.7
    kpm[:, 0] = False                                  # PyTorch gives NaN for rows without keys
    mask_sets = [{}, dict(key_padding_mask=kpm), dict(attn_mask=rng.standard_normal((L, S))),
                 dict(attn_mask=rng.random((N * config["num_heads"], L, S)) > 0.8, key_padding_mask=kpm),
                 dict(attn_mask=np.triu(np.ones((L, S), bool), 1), is_causal=True)]
    for masks in mask_sets:
        kw = {a: b for a, b in masks.items() if a != "is_causal"}
        causal = masks.get("is_causal", False)
        tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
        t_out, t_w = tm(tq, tk, tv, need_weights=need_weights, is_causal=causal,
                        **{a: torch.from_numpy(b.astype(np.float64) if b.dtype != bool else b) for a, b in kw.items()})
        fq, fk, fv = (fastdl.tensor(x.astype(dtype), requires_grad=True) for x in (q, k, v))
        f_out, f_w = m(fq, fk, fv, need_weights=need_weights, is_causal=causal,
                       **{a: fastdl.tensor(b.astype(dtype) if b.dtype != bool else b) for a, b in kw.items()})
        assert f_out.shape == tuple(t_out.shape) and f_out.dtype == dtype
        assert_close(f_out.numpy(), t_out.detach().numpy(), dtype, S + E)
        if need_weights:
            assert_close(f_w.numpy(), t_w.detach().numpy(), dtype, S + E)
        else:
            assert f_w is None
        grad = rng.standard_normal(f_out.shape)
        t_out.backward(torch.from_numpy(grad))
        f_out.backward(fastdl.tensor(grad.astype(dtype)))
        for ft, tt in zip((fq, fk, fv), (tq, tk, tv)):
            assert_close(ft.grad.numpy(), tt.grad.numpy(), dtype, S + E)
        for (name, p), (_, tp) in zip(m.named_parameters(), tm.named_parameters()):
            assert_close(p.grad.numpy(), tp.grad.numpy(), dtype, N * (S + E)), name
            p.grad, tp.grad = None, None


@needs_torch
def test_multihead_attention_unbatched_and_head_weights():
    rng = np.random.default_rng(26)
    m, tm = _mha_pair(np.float64, embed_dim=8, num_heads=2)
    q, kv = rng.standard_normal((4, 8)), rng.standard_normal((6, 8))
    kpm = np.array([False, True, False, False, True, False])
    t_out, t_w = tm(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv),
                    key_padding_mask=torch.from_numpy(kpm), average_attn_weights=False)
    f_out, f_w = m(fastdl.tensor(q), fastdl.tensor(kv), fastdl.tensor(kv), key_padding_mask=fastdl.tensor(kpm),
                   average_attn_weights=False)
    assert f_out.shape == (4, 8) and f_w.shape == (2, 4, 6)
    assert_close(f_out.numpy(), t_out.detach().numpy(), np.float64, 14)
    assert_close(f_w.numpy(), t_w.detach().numpy(), np.float64, 14)


def test_multihead_attention_self_attention_uses_fused_kernel_and_matches_weights_path():
    rng = np.random.default_rng(27)
    m = nn.MultiheadAttention(32, 4, batch_first=True, dtype=np.float64)
    x = fastdl.tensor(rng.standard_normal((2, 70, 32)))
    causal = fastdl.tensor(np.triu(np.ones((70, 70), bool), 1))
    runs = {f["case"]: f["runs"] for f in fastdl.backend_info()["fallbacks"] if f["family"] == "attention"}
    fused, none = m(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
    after = {f["case"]: f["runs"] for f in fastdl.backend_info()["fallbacks"] if f["family"] == "attention"}
    assert none is None and after["need_weights"] == runs["need_weights"]
    composed, w = m(x, x, x, attn_mask=causal)
    after = {f["case"]: f["runs"] for f in fastdl.backend_info()["fallbacks"] if f["family"] == "attention"}
    assert after["need_weights"] == runs["need_weights"] + 1
    assert_close(fused.numpy(), composed.numpy(), np.float64, 100)
    assert np.all(np.triu(w.numpy()[0], 1) == 0)


def test_multihead_attention_fully_masked_rows_and_dropout():
    rng = np.random.default_rng(28)
    m = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True, dtype=np.float64)
    x = fastdl.tensor(rng.standard_normal((2, 5, 8)), requires_grad=True)
    all_padded = fastdl.tensor(np.array([[True] * 5, [False] * 5]))
    m.eval()
    out, _ = m(x, x, x, key_padding_mask=all_padded, need_weights=False)
    assert np.all(np.isfinite(out.numpy()))
    bias = m.out_proj.bias.numpy()
    np.testing.assert_allclose(out.numpy()[0], np.broadcast_to(bias, (5, 8)))   # no key: only the output bias
    a, _ = m(x, x, x, need_weights=False)
    b, _ = m(x, x, x, need_weights=False)
    np.testing.assert_array_equal(a.numpy(), b.numpy())                        # eval: no dropout
    m.train()
    c, _ = m(x, x, x, need_weights=False)
    d, _ = m(x, x, x, need_weights=False)
    assert not np.array_equal(c.numpy(), d.numpy())
    c.sum().backward()
    assert np.all(np.isfinite(x.grad.numpy()))


BAD_MHA = [
    (lambda m: m(fastdl.ones(5, 8), fastdl.ones(2, 6, 8), fastdl.ones(2, 6, 8)), ValueError, "3-D (batched) or 2-D"),
    (lambda m: m(fastdl.ones(5, 2, 7), fastdl.ones(6, 2, 8), fastdl.ones(6, 2, 8)), ValueError, "query (5, 2, 7)"),
    (lambda m: m(fastdl.ones(5, 2, 8), fastdl.ones(6, 3, 8), fastdl.ones(6, 3, 8)), ValueError, "equal batch"),
    (lambda m: m(fastdl.ones(5, 2, 8), fastdl.ones(6, 2, 8), fastdl.ones(7, 2, 8)), ValueError, "value (7, 2, 8)"),
    (lambda m: m(fastdl.ones(5, 2, 8), fastdl.ones(6, 2, 8), fastdl.ones(6, 2, 8),
                 key_padding_mask=fastdl.ones(2, 5, dtype=fastdl.bool)), ValueError,
     "key_padding_mask of shape (2, 5)"),
    (lambda m: m(fastdl.ones(5, 2, 8), fastdl.ones(6, 2, 8), fastdl.ones(6, 2, 8),
                 attn_mask=fastdl.ones(5, 5, dtype=fastdl.bool)), ValueError, "(5, 6) or (4, 5, 6)"),
    (lambda m: m(fastdl.ones(5, 2, 8), fastdl.ones(6, 2, 8), fastdl.ones(6, 2, 8),
                 attn_mask=fastdl.ones(5, 6, dtype=fastdl.int64)), TypeError, "int64"),
    (lambda m: m(fastdl.ones(5, 2, 8), fastdl.ones(6, 2, 8), fastdl.ones(6, 2, 8), is_causal=True), ValueError,
     "is_causal"),
]


@pytest.mark.parametrize("call,exc,words", BAD_MHA)
def test_multihead_attention_bad_input(call, exc, words):
    m = nn.MultiheadAttention(8, 2)
    with pytest.raises(exc) as info:
        call(m)
    assert words in str(info.value) and "MultiheadAttention" in str(info.value)


def test_multihead_attention_bad_configuration():
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="positive"):
        nn.MultiheadAttention(0, 1)


@pytest.mark.parametrize("is_causal", [False, True])
def test_backward_is_reproducible_on_two_threads(threads, is_causal):
    # One head, several key blocks: two threads work on the same query tiles at once, and each
    # tile's dQ must still be summed in key-block order (the same bits on every call).
    fastdl.set_num_threads(2)
    rng = np.random.default_rng(31)
    q, k, v = (randn(rng, (1, 1, 700, 32), np.float32) for _ in range(3))
    out, lse = kernels.attention_forward(q, k, v, is_causal=is_causal)
    dout = randn(rng, out.shape, np.float32)
    first = kernels.attention_backward(dout, q, k, v, out, lse, is_causal=is_causal)
    for _ in range(15):
        again = kernels.attention_backward(dout, q, k, v, out, lse, is_causal=is_causal)
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
