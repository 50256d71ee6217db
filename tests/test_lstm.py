"""LSTM family: fastdl.kernels.lstm_forward / lstm_backward against a float64 NumPy step-by-step
reference (and PyTorch with copied weights where installed), on every CPU level and both paths."""
import functools

import numpy as np
import pytest

import fastdl
import fastdl.functional as F
from fastdl import kernels
from fastdl.backend import _C

from .helpers import assert_close, check_op, gradcheck

DTYPES = (np.float32, np.float64)
PATHS = ("fused", "stepwise")


def _torch():
    try:
        import torch
    except Exception:
        return None
    return torch


# ---- float64 reference ------------------------------------------------------------------------------

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None):
    """Step by step in float64; returns y, h_n, c_n and the per-step cache for the backward."""
    x, w_ih, w_hh = (np.asarray(a, np.float64) for a in (x, w_ih, w_hh))
    T, B, _ = x.shape
    H = w_hh.shape[1]
    b = sum((np.asarray(v, np.float64) for v in (b_ih, b_hh) if v is not None), np.zeros(w_ih.shape[0]))
    h = np.zeros((B, H)) if h0 is None else np.asarray(h0, np.float64)
    c = np.zeros((B, H)) if c0 is None else np.asarray(c0, np.float64)
    ys, cache = [], []
    for t in range(T):
        g = x[t] @ w_ih.T + h @ w_hh.T + b
        i, f, gg, o = np.split(g, 4, axis=1)
        i, f, gg, o = sigmoid(i), sigmoid(f), np.tanh(gg), sigmoid(o)
        cache.append((h, c, i, f, gg, o))
        c = f * c + i * gg
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), h, c, cache


def reference_backward(x, w_ih, w_hh, b, h0, c0, gy, gh, gc):
    """Backward through time in float64: (dx, dh0, dc0, dw_ih, dw_hh, db)."""
    x, w_ih, w_hh = (np.asarray(a, np.float64) for a in (x, w_ih, w_hh))
    y, _, _, cache = reference_forward(x, w_ih, w_hh, b, None, h0, c0)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dh = np.zeros((B, H)) if gh is None else np.asarray(gh, np.float64).copy()
    dc = np.zeros((B, H)) if gc is None else np.asarray(gc, np.float64).copy()
    dx, dw_ih, dw_hh, db = np.zeros_like(x), np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros(4 * H)
    for t in reversed(range(T)):
        hp, cp, i, f, gg, o = cache[t]
        tc = np.tanh(f * cp + i * gg)
        if gy is not None:
            dh = dh + gy[t]
        dct = dc + dh * o * (1 - tc**2)
        dG = np.concatenate([dct * gg * i * (1 - i), dct * cp * f * (1 - f), dct * i * (1 - gg**2),
                             dh * tc * o * (1 - o)], axis=1)
        dx[t] = dG @ w_ih
        dw_ih += dG.T @ x[t]
        dw_hh += dG.T @ hp
        db += dG.sum(0)
        dh, dc = dG @ w_hh, dct * f
    return dx, dh, dc, dw_ih, dw_hh, db


def make(rng, T, B, I, H, dtype, bias=True, state=True):
    """PyTorch's initialisation scale U(-1/sqrt(H), 1/sqrt(H)) keeps the gates in their working range."""
    k = 1.0 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-k, k, shape).astype(dtype)

    x = rng.standard_normal((T, B, I)).astype(dtype)
    w_ih, w_hh = u(4 * H, I), u(4 * H, H)
    b_ih, b_hh = (u(4 * H), u(4 * H)) if bias else (None, None)
    h0, c0 = (None, None)
    if state:
        h0, c0 = rng.standard_normal((B, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)
    return x, w_ih, w_hh, b_ih, b_hh, h0, c0


def seq_k(T, I, H):
    """Reduction length for the tolerance: I + H products per step, errors carried through T steps."""
    return (I + H + 4) * T


# The grid: T {1, 2, 17, 100}, B {1, 3, 32}, I and H {1, 3, 17, 64, 100, 256}; every value
# appears, crossed with vector-width edges (H = 17, 100 leave partial panels at every level).
SHAPES = [
    (1, 1, 1, 1), (2, 3, 3, 17), (17, 1, 17, 3), (17, 32, 64, 100), (1, 32, 256, 17), (2, 1, 100, 256),
    (100, 3, 1, 64), (17, 3, 256, 256), (100, 32, 17, 1), (2, 32, 3, 64), (100, 1, 64, 100),
]


# ---- forward ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _forward_case(T, B, I, H, dtype):
    """Seeded inputs and their float64 reference, computed once for every level and path."""
    rng = np.random.default_rng(T * 1000 + B * 100 + I + H)
    inputs = make(rng, T, B, I, H, dtype, state=(T + B) % 2 == 0)
    return inputs, reference_forward(*inputs)[:3]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_lstm_forward_matches_reference(cpu_level, dtype, path, T, B, I, H):
    (x, w_ih, w_hh, b_ih, b_hh, h0, c0), (ry, rh, rc) = _forward_case(T, B, I, H, np.dtype(dtype))
    y, h_n, c_n, saved = kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=(B != 3), path=path)
    assert y.dtype == dtype and y.shape == (T, B, H) and h_n.shape == c_n.shape == (B, H)
    k = seq_k(T, I, H)
    assert_close(y, ry, dtype, k)
    assert_close(h_n, rh, dtype, k)
    assert_close(c_n, rc, dtype, k)
    if saved is not None:
        gates, cell = saved
        assert gates.shape == (T, B, 4 * H) and cell.shape == (T, B, H)
        np.testing.assert_array_equal(cell[-1], c_n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("state", [(True, True), (True, False), (False, True), (False, False)])
def test_lstm_forward_optional_bias_and_state(dtype, bias, state):
    rng = np.random.default_rng(1)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, 5, 4, 6, 19, dtype)
    b_ih, b_hh = (b_ih if bias[0] else None), (b_hh if bias[1] else None)
    h0, c0 = (h0 if state[0] else None), (c0 if state[1] else None)
    ry, rh, rc, _ = reference_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    for path in PATHS:
        for training in (False, True):
            y, h_n, c_n, _ = kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=training, path=path)
            assert_close(y, ry, dtype, seq_k(5, 6, 19))
            assert_close(c_n, rc, dtype, seq_k(5, 6, 19))


def test_lstm_paths_and_training_agree():
    # Inference keeps c in place, training saves every c_t; fused and stepwise share the epilogue.
    rng = np.random.default_rng(2)
    args = make(rng, 9, 7, 11, 37, np.float64)
    results = [kernels.lstm_forward(*args, training=tr, path=p)[:3] for p in PATHS for tr in (False, True)]
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            assert_close(a, b, np.float64, seq_k(9, 11, 37))
    inference, training = results[0], results[1]
    for a, b in zip(inference, training):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_threads_agree_bitwise(dtype, threads):
    # Every element is computed by the same tile whatever the split between threads.
    rng = np.random.default_rng(3)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, 13, 29, 40, 70, dtype)
    gy = rng.standard_normal((13, 29, 70)).astype(dtype)
    runs = []
    for n in (1, 2, 3):
        fastdl.set_num_threads(n)
        y, h_n, c_n, saved = kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=True)
        grads = kernels.lstm_backward(gy, None, None, x, w_ih, w_hh, h0, c0, y, saved)
        runs.append((y, h_n, c_n) + grads)
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            np.testing.assert_array_equal(a, b)


def test_lstm_noncontiguous_inputs_are_copied():
    rng = np.random.default_rng(4)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, 6, 5, 8, 12, np.float64)
    x_view = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)   # batch-first memory
    w_ih_view = np.asfortranarray(w_ih)
    b_view = np.stack([b_ih, b_hh])[:, ::1][0]
    h0_view = np.ascontiguousarray(h0.T).T
    y, h_n, c_n, _ = kernels.lstm_forward(x_view, w_ih_view, w_hh[:, :], b_view, b_hh, h0_view, c0[::1])
    ry, rh, rc, _ = reference_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    assert_close(y, ry, np.float64, seq_k(6, 8, 12))


def test_lstm_forward_matches_torch():
    torch = _torch()
    if torch is None:
        pytest.skip("PyTorch is not installed")
    rng = np.random.default_rng(5)
    T, B, I, H = 17, 3, 17, 64
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, T, B, I, H, np.float64)
    lstm = torch.nn.LSTM(I, H).double()
    with torch.no_grad():
        for name, a in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(lstm, name).copy_(torch.from_numpy(a))
        ty, (th, tc) = lstm(torch.from_numpy(x), (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None]))
    y, h_n, c_n, _ = kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    assert_close(y, ty.numpy(), np.float64, seq_k(T, I, H))
    assert_close(c_n, tc.numpy()[0], np.float64, seq_k(T, I, H))


def test_lstm_nan_propagates_and_large_inputs_saturate():
    rng = np.random.default_rng(6)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, 3, 2, 4, 20, np.float32)
    x_nan = x.copy()
    x_nan[1, 0, 2] = np.nan
    y, _, _, _ = kernels.lstm_forward(x_nan, w_ih, w_hh, b_ih, b_hh, h0, c0)
    assert np.all(np.isfinite(y[0])) and np.all(np.isnan(y[1:, 0])) and np.all(np.isfinite(y[:, 1]))
    y, h_n, c_n, _ = kernels.lstm_forward(x * 1e30, w_ih, w_hh, b_ih, b_hh, h0, c0)
    assert np.all(np.isfinite(y)) and np.all(np.abs(y) <= 1)


def test_lstm_restores_denormal_mode():
    # The kernel flushes denormals inside its threads only; NumPy still sees gradual underflow after.
    rng = np.random.default_rng(7)
    args = make(rng, 4, 2, 3, 5, np.float32)
    kernels.lstm_forward(*args, training=True, path="fused")
    kernels.lstm_forward(*args, path="stepwise")
    tiny = np.array([1e-38], np.float32) / np.float32(100)
    assert tiny[0] != 0


# ---- backward -----------------------------------------------------------------------------------

BACKWARD_SHAPES = [(1, 1, 1, 1), (2, 3, 3, 17), (17, 3, 17, 64), (17, 32, 64, 100), (100, 1, 3, 17),
                   (2, 32, 256, 3), (17, 1, 100, 256)]


@functools.lru_cache(maxsize=None)
def _backward_case(T, B, I, H, dtype):
    """Seeded inputs, output gradients and the float64 reference gradients, computed once."""
    rng = np.random.default_rng(T * 1000 + B * 100 + I + H + 1)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, T, B, I, H, dtype, state=(T + B) % 2 == 1)
    gy = rng.standard_normal((T, B, H)).astype(dtype)
    gh = rng.standard_normal((B, H)).astype(dtype) if B != 3 else None
    gc = rng.standard_normal((B, H)).astype(dtype) if T != 2 else None
    expected = reference_backward(x, w_ih, w_hh, b_ih.astype(np.float64) + b_hh, h0, c0, gy, gh, gc)
    return (x, w_ih, w_hh, b_ih, b_hh, h0, c0), (gy, gh, gc), expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("T,B,I,H", BACKWARD_SHAPES)
def test_lstm_backward_matches_reference(cpu_level, dtype, path, T, B, I, H):
    (x, w_ih, w_hh, b_ih, b_hh, h0, c0), (gy, gh, gc), expected = _backward_case(T, B, I, H, np.dtype(dtype))
    y, h_n, c_n, saved = kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=True, path=path)
    grads = kernels.lstm_backward(gy, gh, gc, x, w_ih, w_hh, h0, c0, y, saved, path=path)
    names = ("x", "h0", "c0", "w_ih", "w_hh", "b")
    for name, got, ref in zip(names, grads, expected):
        if name in ("h0", "c0") and h0 is None:
            assert got is None
            continue
        # Weight gradients sum over T·B more products.
        k = seq_k(T, I, H) * (B if name in ("w_ih", "w_hh", "b") else 1)
        assert got.dtype == dtype
        assert_close(got, ref, dtype, k)


def test_lstm_backward_selected_grads_and_missing_output_grads():
    rng = np.random.default_rng(8)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, 6, 4, 5, 9, np.float64)
    y, h_n, c_n, saved = kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=True)
    gc = rng.standard_normal((4, 9))
    grads = kernels.lstm_backward(None, None, gc, x, w_ih, w_hh, h0, c0, y, saved, grads=("w_hh", "c0"))
    assert [g is None for g in grads] == [True, True, False, True, False, True]
    expected = reference_backward(x, w_ih, w_hh, b_ih + b_hh, h0, c0, None, None, gc)
    assert_close(grads[2], expected[2], np.float64, seq_k(6, 5, 9))
    assert_close(grads[4], expected[4], np.float64, seq_k(6, 5, 9) * 4)
    zero = kernels.lstm_backward(None, None, None, x, w_ih, w_hh, h0, c0, y, saved)
    assert all(np.all(g == 0) for g in zero)


def test_lstm_backward_finite_differences():
    # The kernel pair against central differences of L = Σ y·R + Σ h_n·S + Σ c_n·U in float64.
    rng = np.random.default_rng(9)
    T, B, I, H = 4, 2, 3, 5
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, T, B, I, H, np.float64)
    R, S, U = rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    inputs = {"x": x, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh, "b": b_ih}

    def loss(**kw):
        a = {**inputs, **kw}
        y, h_n, c_n, _ = kernels.lstm_forward(a["x"], a["w_ih"], a["w_hh"], a["b"], b_hh, a["h0"], a["c0"])
        return float((y * R).sum() + (h_n * S).sum() + (c_n * U).sum())

    y, h_n, c_n, saved = kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=True)
    grads = dict(zip(("x", "h0", "c0", "w_ih", "w_hh", "b"),
                     kernels.lstm_backward(R, S, U, x, w_ih, w_hh, h0, c0, y, saved)))
    eps = 1e-6
    for name, value in inputs.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[idx] += eps
            minus[idx] -= eps
            numeric[idx] = (loss(**{name: plus}) - loss(**{name: minus})) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)


def test_lstm_backward_matches_torch():
    torch = _torch()
    if torch is None:
        pytest.skip("PyTorch is not installed")
    rng = np.random.default_rng(10)
    T, B, I, H = 17, 3, 17, 33
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, T, B, I, H, np.float64)
    gy = rng.standard_normal((T, B, H))
    lstm = torch.nn.LSTM(I, H).double()
    with torch.no_grad():
        for name, a in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(lstm, name).copy_(torch.from_numpy(a))
    tx = torch.from_numpy(x).requires_grad_()
    th0, tc0 = (torch.from_numpy(a)[None].requires_grad_() for a in (h0, c0))
    ty, _ = lstm(tx, (th0, tc0))
    ty.backward(torch.from_numpy(gy))
    y, h_n, c_n, saved = kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=True)
    gx, gh0, gc0, gw_ih, gw_hh, gb = kernels.lstm_backward(gy, None, None, x, w_ih, w_hh, h0, c0, y, saved)
    k = seq_k(T, I, H) * B
    for got, ref in ((gx, tx.grad), (gh0, th0.grad[0]), (gc0, tc0.grad[0]), (gw_ih, lstm.weight_ih_l0.grad),
                     (gw_hh, lstm.weight_hh_l0.grad), (gb, lstm.bias_ih_l0.grad), (gb, lstm.bias_hh_l0.grad)):
        assert_close(got, ref.numpy(), np.float64, k)


# ---- GRU kernels ----------------------------------------------------------------------------------

def reference_gru(x, w_ih, w_hh, b_ih, b_hh, h0, gy=None, gh=None):
    """Step by step in float64: (y, h_n) and, given output gradients, (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    x, w_ih, w_hh = (np.asarray(a, np.float64) for a in (x, w_ih, w_hh))
    T, B, _ = x.shape
    H = w_hh.shape[1]
    b_ih = np.zeros(3 * H) if b_ih is None else np.asarray(b_ih, np.float64)
    b_hh = np.zeros(3 * H) if b_hh is None else np.asarray(b_hh, np.float64)
    h = np.zeros((B, H)) if h0 is None else np.asarray(h0, np.float64)
    ys, cache = [], []
    for t in range(T):
        gx, gh_ = x[t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r = sigmoid(gx[:, :H] + gh_[:, :H])
        z = sigmoid(gx[:, H:2 * H] + gh_[:, H:2 * H])
        n = np.tanh(gx[:, 2 * H:] + r * gh_[:, 2 * H:])
        cache.append((h, r, z, n, gh_[:, 2 * H:]))
        h = (1 - z) * n + z * h
        ys.append(h)
    y = np.stack(ys)
    if gy is None and gh is None:
        return y, h
    dh = np.zeros((B, H)) if gh is None else np.asarray(gh, np.float64).copy()
    grads = [np.zeros_like(x), None, np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros(3 * H), np.zeros(3 * H)]
    for t in reversed(range(T)):
        hp, r, z, n, ghn = cache[t]
        if gy is not None:
            dh = dh + gy[t]
        dn = dh * (1 - z) * (1 - n * n)
        dr = dn * ghn * r * (1 - r)
        dz = dh * (hp - n) * z * (1 - z)
        dgx, dgh = np.concatenate([dr, dz, dn], 1), np.concatenate([dr, dz, dn * r], 1)
        grads[0][t] = dgx @ w_ih
        grads[2] += dgx.T @ x[t]
        grads[3] += dgh.T @ hp
        grads[4] += dgx.sum(0)
        grads[5] += dgh.sum(0)
        dh = dh * z + dgh @ w_hh
    grads[1] = dh
    return y, h, grads


def make_gru(rng, T, B, I, H, dtype, state=True):
    k = 1.0 / np.sqrt(H)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    w = [rng.uniform(-k, k, s).astype(dtype) for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,))]
    h0 = rng.standard_normal((B, H)).astype(dtype) if state else None
    return (x, *w, h0)


@functools.lru_cache(maxsize=None)
def _gru_case(T, B, I, H, dtype):
    rng = np.random.default_rng(T * 1000 + B * 100 + I + H + 2)
    inputs = make_gru(rng, T, B, I, H, dtype, state=(T + B) % 2 == 0)
    gy = rng.standard_normal((T, B, H)).astype(dtype)
    gh = rng.standard_normal((B, H)).astype(dtype) if B != 3 else None
    return inputs, (gy, gh), reference_gru(*inputs, gy, gh)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,I,H", BACKWARD_SHAPES + [(100, 32, 17, 1), (2, 3, 3, 64)])
def test_gru_kernels_match_reference(cpu_level, dtype, T, B, I, H):
    (x, w_ih, w_hh, b_ih, b_hh, h0), (gy, gh), (ry, rh, rgrads) = _gru_case(T, B, I, H, np.dtype(dtype))
    k = seq_k(T, I, H)
    y, h_n, _ = kernels.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0)
    assert_close(y, ry, dtype, k)
    y, h_n, saved = kernels.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, training=True)
    assert_close(y, ry, dtype, k)
    assert_close(h_n, rh, dtype, k)
    grads = kernels.gru_backward(gy, gh, x, w_ih, w_hh, h0, y, saved)
    for name, got, ref in zip(("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"), grads, rgrads):
        if name == "h0" and h0 is None:
            assert got is None
            continue
        assert_close(got, ref, dtype, k * (B if name.startswith(("w", "b")) else 1))


def test_gru_kernels_without_bias_and_selected_grads(threads):
    rng = np.random.default_rng(12)
    x, w_ih, w_hh, b_ih, b_hh, h0 = make_gru(rng, 9, 5, 4, 21, np.float64)
    ry, rh, rgrads = reference_gru(x, w_ih, w_hh, None, b_hh, h0, None, np.ones((5, 21)))
    runs = []
    for n in (1, 2, 3):
        fastdl.set_num_threads(n)
        y, h_n, saved = kernels.gru_forward(x, w_ih, w_hh, None, b_hh, h0, training=True)
        grads = kernels.gru_backward(None, np.ones((5, 21)), x, w_ih, w_hh, h0, y, saved, grads=("w_hh", "h0"))
        assert [g is None for g in grads] == [True, False, True, False, True, True]
        runs.append((y, h_n, grads[1], grads[3]))
    assert_close(runs[0][0], ry, np.float64, seq_k(9, 4, 21))
    assert_close(runs[0][2], rgrads[1], np.float64, seq_k(9, 4, 21))
    assert_close(runs[0][3], rgrads[3], np.float64, seq_k(9, 4, 21) * 5)
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            np.testing.assert_array_equal(a, b)


BAD_GRU = [
    (lambda: kernels.gru_forward(np.ones((4, 5)), np.ones((6, 5)), np.ones((6, 2))), ValueError, "3-D (T, B, I)"),
    (lambda: kernels.gru_forward(np.ones((4, 3, 5)), np.ones((6, 5)), np.ones((8, 2))), ValueError,
     "w_hh must be (3H, H), got (8, 2)"),
    (lambda: kernels.gru_forward(np.ones((4, 3, 5)), np.ones((6, 4)), np.ones((6, 2))), ValueError,
     "w_ih must be (3H, I) = (6, 5)"),
    (lambda: kernels.gru_forward(np.ones((4, 3, 5)), np.ones((6, 5)), np.ones((6, 2)), h0=np.ones((2, 2))),
     ValueError, "h0 must be (3, 2)"),
    (lambda: kernels.gru_forward(np.ones((4, 3, 5)), np.ones((6, 5), np.float32), np.ones((6, 2))), TypeError,
     "dtypes differ"),
    (lambda: kernels.gru_backward(None, None, np.ones((4, 3, 5)), np.ones((6, 5)), np.ones((6, 2)), None,
                                  np.ones((4, 3, 2)), None), ValueError, "training=True"),
    (lambda: _C.gru_forward(np.ones((4, 3, 5)), np.ones((6, 5)), np.ones((6, 2)), None, None, None,
                            np.empty((4, 3, 2)), np.empty((3, 2)), np.empty((4, 3, 5)), None), ValueError,
     "gru_forward: gates must have shape (4, 3, 6)"),
]


@pytest.mark.parametrize("call,exc,words", BAD_GRU)
def test_gru_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
    assert "gru" in str(info.value)


# ---- vectorised sigmoid / tanh / exp ------------------------------------------------------------

def _ulp_error(got, ref, dtype):
    """|got − ref| in units of the dtype's spacing at |ref| (ref in float64 or better)."""
    spacing = np.spacing(np.abs(ref).astype(dtype)).astype(np.float64)
    return np.abs(got.astype(np.float64) - ref) / spacing


@pytest.mark.parametrize("dtype", DTYPES)
def test_simd_math_accuracy(cpu_level, dtype):
    # The bounds stated in csrc/cpu/simd.h: exp ≤ 2 ulp in its range, sigmoid and tanh ≤ 4 ulp.
    f32 = dtype == np.float32
    lo, hi = (-87.0, 88.0) if f32 else (-708.0, 709.0)
    grid = np.concatenate([np.linspace(-20, 20, 400_001), np.linspace(lo, hi, 100_001),
                           np.geomspace(1e-30, 1, 20_001), -np.geomspace(1e-30, 1, 20_001), [0.0, 0.625, -0.625]])
    x = grid.astype(dtype)
    xl = x.astype(np.longdouble)
    ref_exp = np.exp(xl)
    assert _ulp_error(_C.lstm_vector_math("exp", x), ref_exp, dtype).max() <= 2
    ref_tanh = np.tanh(xl)
    assert _ulp_error(_C.lstm_vector_math("tanh", x), ref_tanh, dtype).max() <= 4
    ref_sig = 1 / (1 + np.exp(-xl))
    sig = _C.lstm_vector_math("sigmoid", x)
    normal = ref_sig >= np.exp(np.longdouble(lo))
    assert _ulp_error(sig[normal], ref_sig[normal], dtype).max() <= 4
    assert np.all(np.abs(sig[~normal]) <= 2 * np.exp(np.longdouble(lo)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_simd_math_special_values(cpu_level, dtype):
    x = np.array([np.nan, np.inf, -np.inf, 1e6, -1e6, 0.0, -0.0], dtype)
    e = _C.lstm_vector_math("exp", x)
    s = _C.lstm_vector_math("sigmoid", x)
    t = _C.lstm_vector_math("tanh", x)
    assert np.isnan(e[0]) and np.isnan(s[0]) and np.isnan(t[0])
    np.testing.assert_array_equal(s[[1, 3, 5, 6]], np.array([1, 1, 0.5, 0.5], dtype))
    floor = 2 * np.exp(-87.0 if dtype == np.float32 else -708.0)   # σ(x) below e^lo: stated absolute bound
    assert 0 <= s[2] <= floor and 0 <= s[4] <= floor
    np.testing.assert_array_equal(t[1:], np.array([1, -1, 1, -1, 0, 0], dtype))
    assert np.isfinite(e[1]) and e[2] >= 0 and e[5] == 1


# ---- bad input ----------------------------------------------------------------------------------

def _good(dtype=np.float32):
    rng = np.random.default_rng(11)
    return make(rng, 4, 3, 5, 6, dtype)


def _fwd(**changes):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = _good()
    a = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "h0": h0, "c0": c0, **changes}
    return lambda: kernels.lstm_forward(a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"])


BAD_LSTM = [
    (_fwd(x=np.ones((4, 5), np.float32)), ValueError, "3-D (T, B, I), got (4, 5)"),
    (_fwd(x=np.ones((4, 3, 7), np.float32)), ValueError, "(24, 7)"),
    (_fwd(x=np.ones((0, 3, 5), np.float32)), ValueError, "positive"),
    (_fwd(w_hh=np.ones((24, 5), np.float32)), ValueError, "w_hh must be (4H, H), got (24, 5)"),
    (_fwd(w_ih=np.ones((20, 5), np.float32)), ValueError, "w_ih must be (4H, I) = (24, 5)"),
    (_fwd(b_ih=np.ones(23, np.float32)), ValueError, "b_ih must be (24,)"),
    (_fwd(h0=np.ones((3, 7), np.float32)), ValueError, "h0 must be (3, 6)"),
    (_fwd(c0=np.ones((2, 6), np.float32)), ValueError, "c0 must be (3, 6)"),
    (_fwd(h0=np.ones((1, 3, 6), np.float32)), ValueError, "h0 must be (3, 6)"),
    (_fwd(w_hh=np.ones((24, 6), np.float64)), TypeError, "dtypes differ"),
    (_fwd(x=np.ones((4, 3, 5), np.int32)), TypeError, "int32"),
    (lambda: kernels.lstm_forward(*_good(), path="fast"), ValueError, "'auto', 'fused' or 'stepwise'"),
    (lambda: kernels.lstm_backward(None, None, None, *_good()[:3], None, None, np.ones((4, 3, 6)), None),
     ValueError, "training=True"),
    (lambda: kernels.lstm_backward(np.ones((4, 3, 5), np.float32), None, None, *_good()[:3], None, None,
                                   *_fwd_saved()), ValueError, "grad_y must be float32 (4, 3, 6)"),
    (lambda: kernels.lstm_backward(None, None, None, *_good()[:3], None, None, *_fwd_saved(), grads=("y",)),
     ValueError, "unknown gradient names"),
]


def _fwd_saved():
    x, w_ih, w_hh = _good()[:3]
    y, _, _, saved = kernels.lstm_forward(x, w_ih, w_hh, training=True)
    return y, saved


@pytest.mark.parametrize("call,exc,words", BAD_LSTM)
def test_lstm_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
    assert "lstm" in str(info.value)


def test_native_lstm_checks_sizes_itself():
    # The C++ entry points refuse inconsistent arrays even when the Python checks are bypassed.
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = _good()
    T, B, H = 4, 3, 6
    out = dict(y=np.empty((T, B, H), np.float32), h_n=np.empty((B, H), np.float32), c_n=np.empty((B, H), np.float32),
               gates=np.empty((T, B, 4 * H), np.float32), cell=None)
    with pytest.raises(ValueError, match=r"lstm_forward: w_ih must have shape \(24, 5\)"):
        _C.lstm_forward(x, w_ih[:, :4].copy(), w_hh, b_ih, b_hh, h0, c0, **out)
    with pytest.raises(ValueError, match=r"lstm_forward: gates must have shape \(4, 3, 24\)"):
        _C.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, **{**out, "gates": np.empty((4, 3, 23), np.float32)})
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, np.asfortranarray(h0), c0, **out)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.empty((T, B, H), np.float32)
        ro.flags.writeable = False
        _C.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, **{**out, "y": ro})
    shared = np.zeros(200, np.float32)
    x_in, y_out = shared[:60].reshape(4, 3, 5), shared[50:122].reshape(4, 3, 6)
    with pytest.raises(ValueError, match=r"y \(4, 3, 6\) overlaps x"):
        _C.lstm_forward(x_in, w_ih, w_hh, b_ih, b_hh, h0, c0, **{**out, "y": y_out})
    with pytest.raises(TypeError, match="does not match x's dtype"):
        _C.lstm_forward(x, w_ih.astype(np.float64), w_hh, b_ih, b_hh, h0, c0, **out)
    with pytest.raises(ValueError, match="is required"):
        _C.lstm_backward(None, None, None, x, w_ih, w_hh, None, None, out["y"], out["gates"], None,
                         None, None, None, None, None, None, np.empty((T, B, 4 * H), np.float32))


# ---- autodiff: fastdl.functional.lstm / lstm_cell, gru, rnn -------------------------------------------

def _torch_lstm_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """PyTorch's own LSTM with the given tensors as its weights (gradients flow to them)."""
    torch = _torch()
    y, (h, c) = torch.func.functional_call(
        torch.nn.LSTM(x.shape[2], w_hh.shape[1]).double(),
        {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh},
        (x, (h0[None], c0[None])))
    return y, h[0], c[0]


def _numpy_lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    y, h, c, _ = reference_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    return y, h, c


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (5, 3, 4, 17), (17, 2, 3, 5)])
def test_functional_lstm_values_and_grads(dtype, T, B, I, H):
    rng = np.random.default_rng(20)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, T, B, I, H, np.float64)

    def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, (h, c) = F.lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
        return y, h, c

    check_op(fn, [x, h0, c0, w_ih, w_hh, b_ih, b_hh], torch_fn=_torch_lstm_reference, numpy_fn=_numpy_lstm,
             dtype=dtype, k=seq_k(T, I, H) * B)


def test_functional_lstm_gradcheck_every_input():
    rng = np.random.default_rng(21)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = make(rng, 4, 2, 3, 5, np.float64)

    def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, (h, c) = F.lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
        return y, h, c

    gradcheck(fn, [x, h0, c0, w_ih, w_hh, b_ih, b_hh])


def test_functional_lstm_without_state_or_bias_and_partial_grads():
    rng = np.random.default_rng(22)
    x, w_ih, w_hh, _, _, _, _ = make(rng, 6, 3, 4, 7, np.float64)
    tx = fastdl.Tensor(x)
    tw_ih, tw_hh = fastdl.Tensor(w_ih, requires_grad=True), fastdl.Tensor(w_hh)
    y, (h, c) = F.lstm(tx, None, tw_ih, tw_hh)
    ry, rh, rc, _ = reference_forward(x, w_ih, w_hh)
    assert_close(y.numpy(), ry, np.float64, seq_k(6, 4, 7))
    (y.sum() + c.sum()).backward()
    assert tw_ih.grad.shape == (28, 4) and tw_hh.grad is None and tx.grad is None
    expected = reference_backward(x, w_ih, w_hh, 0.0, None, None, np.ones((6, 3, 7)), None, np.ones((3, 7)))
    assert_close(tw_ih.grad.numpy(), expected[3], np.float64, seq_k(6, 4, 7) * 3)
    with fastdl.no_grad():
        y2, _ = F.lstm(tx, None, tw_ih, tw_hh)
    assert y2.grad_fn is None and not y2.requires_grad
    np.testing.assert_array_equal(y2.numpy(), y.numpy())


def _torch_cell_reference(name):
    def run(x, h, c_or_w, *rest):
        torch = _torch()
        if name == "lstm_cell":
            c, w_ih, w_hh, b_ih, b_hh = c_or_w, *rest
            return torch.func.functional_call(torch.nn.LSTMCell(x.shape[1], h.shape[1]).double(),
                                              {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih,
                                               "bias_hh": b_hh}, (x, (h, c)))
        w_ih, (w_hh, b_ih, b_hh) = c_or_w, rest
        module = {"gru_cell": torch.nn.GRUCell(x.shape[1], h.shape[1]),
                  "rnn_tanh_cell": torch.nn.RNNCell(x.shape[1], h.shape[1]),
                  "rnn_relu_cell": torch.nn.RNNCell(x.shape[1], h.shape[1], nonlinearity="relu")}[name].double()
        return torch.func.functional_call(module, {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih,
                                                   "bias_hh": b_hh}, (x, h))
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,gates", [("lstm_cell", 4), ("gru_cell", 3), ("rnn_tanh_cell", 1),
                                        ("rnn_relu_cell", 1)])
def test_functional_cells_match_torch(dtype, name, gates):
    if _torch() is None:
        pytest.skip("PyTorch is not installed")
    rng = np.random.default_rng(23)
    B, I, H = 3, 5, 7
    k = 1 / np.sqrt(H)
    x, h, c = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    w_ih, w_hh = rng.uniform(-k, k, (gates * H, I)), rng.uniform(-k, k, (gates * H, H))
    b_ih, b_hh = rng.uniform(-k, k, gates * H), rng.uniform(-k, k, gates * H)
    fn = getattr(F, name)
    if name == "lstm_cell":
        check_op(lambda x, h, c, *w: fn(x, (h, c), *w), [x, h, c, w_ih, w_hh, b_ih, b_hh],
                 torch_fn=_torch_cell_reference(name), dtype=dtype, k=I + H)
    else:
        check_op(lambda x, h, *w: fn(x, h, *w), [x, h, w_ih, w_hh, b_ih, b_hh], torch_fn=_torch_cell_reference(name),
                 dtype=dtype, k=I + H)


@pytest.mark.parametrize("name", ["lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"])
def test_functional_cells_gradcheck(name):
    rng = np.random.default_rng(24)
    gates = {"lstm_cell": 4, "gru_cell": 3}.get(name, 1)
    B, I, H = 2, 3, 4
    arrays = [rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((gates * H, I)) * 0.5,
              rng.standard_normal((gates * H, H)) * 0.5, rng.standard_normal(gates * H), rng.standard_normal(gates * H)]
    fn = getattr(F, name)
    if name == "lstm_cell":
        arrays.insert(2, rng.standard_normal((B, H)))
        gradcheck(lambda x, h, c, *w: fn(x, (h, c), *w), arrays)
    else:
        gradcheck(lambda x, h, *w: fn(x, h, *w), arrays)


def test_functional_cells_without_state():
    rng = np.random.default_rng(25)
    x = fastdl.Tensor(rng.standard_normal((2, 3)))
    for name, gates in (("lstm_cell", 4), ("gru_cell", 3), ("rnn_tanh_cell", 1), ("rnn_relu_cell", 1)):
        w_ih = fastdl.Tensor(rng.standard_normal((gates * 4, 3)))
        w_hh = fastdl.Tensor(rng.standard_normal((gates * 4, 4)))
        b = fastdl.Tensor(rng.standard_normal(gates * 4))
        zero = fastdl.zeros(2, 4, dtype=fastdl.float64)
        fn = getattr(F, name)
        if name == "lstm_cell":
            for a, r in zip(fn(x, None, w_ih, w_hh, b, b), fn(x, (zero, zero), w_ih, w_hh, b, b)):
                np.testing.assert_allclose(a.numpy(), r.numpy(), rtol=1e-14, atol=1e-15)
        else:
            np.testing.assert_allclose(fn(x, None, w_ih, w_hh, b, b).numpy(), fn(x, zero, w_ih, w_hh, b, b).numpy(),
                                       rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name,gates", [("gru", 3), ("rnn", 1)])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (17, 3, 4, 5), (2, 32, 17, 3)])
def test_functional_gru_rnn_sequences_match_torch(name, gates, T, B, I, H):
    torch = _torch()
    if torch is None:
        pytest.skip("PyTorch is not installed")
    rng = np.random.default_rng(26)
    k = 1 / np.sqrt(H)
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    w = [rng.uniform(-k, k, s) for s in ((gates * H, I), (gates * H, H), (gates * H,), (gates * H,))]
    for nonlinearity in (("tanh", "relu") if name == "rnn" else (None,)):
        module = (torch.nn.GRU(I, H) if name == "gru" else torch.nn.RNN(I, H, nonlinearity=nonlinearity)).double()
        with torch.no_grad():
            for p, a in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), w):
                getattr(module, p).copy_(torch.from_numpy(a))
        ty, th = module(torch.from_numpy(x), torch.from_numpy(h0)[None])
        extra = {} if name == "gru" else {"nonlinearity": nonlinearity}
        y, h = getattr(F, name)(fastdl.Tensor(x), fastdl.Tensor(h0), *(fastdl.Tensor(a) for a in w), **extra)
        assert_close(y.numpy(), ty.detach().numpy(), np.float64, seq_k(T, I, H))
        assert_close(h.numpy(), th.detach().numpy()[0], np.float64, seq_k(T, I, H))


@pytest.mark.parametrize("name,gates", [("gru", 3), ("rnn", 1)])
def test_functional_gru_rnn_gradcheck(name, gates):
    rng = np.random.default_rng(27)
    T, B, I, H = 3, 2, 3, 4
    arrays = [rng.standard_normal((T, B, I)), rng.standard_normal((B, H)), rng.standard_normal((gates * H, I)) * 0.5,
              rng.standard_normal((gates * H, H)) * 0.5, rng.standard_normal(gates * H), rng.standard_normal(gates * H)]

    def fn(x, h0, *w):
        return getattr(F, name)(x, h0, *w)

    gradcheck(fn, arrays)


def test_composed_rnn_is_declared_and_counted():
    runs = {(f["family"], f["case"]): f["runs"] for f in fastdl.backend_info()["fallbacks"]}
    before = runs[("lstm", "RNN")]
    F.gru(fastdl.ones(2, 1, 3), None, fastdl.ones(6, 3), fastdl.ones(6, 2))
    F.rnn(fastdl.ones(2, 1, 3), None, fastdl.ones(2, 3), fastdl.ones(2, 2))
    runs = {(f["family"], f["case"]): f["runs"] for f in fastdl.backend_info()["fallbacks"]}
    assert runs[("lstm", "RNN")] == before + 1
    assert fastdl.backend_info()["families"]["lstm"]["cpu"].startswith("native")


BAD_FUNCTIONAL = [
    (lambda: F.lstm(fastdl.ones(4, 5), None, fastdl.ones(8, 5), fastdl.ones(8, 2)), ValueError, "3-D (T, B, I)"),
    (lambda: F.lstm(fastdl.ones(4, 3, 5), (fastdl.ones(3, 2), fastdl.ones(2, 2)), fastdl.ones(8, 5),
                    fastdl.ones(8, 2)), ValueError, "c0 must be (3, 2)"),
    (lambda: F.lstm(fastdl.ones(4, 3, 5), fastdl.ones(3, 2), fastdl.ones(8, 5), fastdl.ones(8, 2)), TypeError,
     "pair (h, c)"),
    (lambda: F.lstm(fastdl.ones(4, 3, 5), None, fastdl.ones(8, 5, dtype=fastdl.float64), fastdl.ones(8, 2)),
     TypeError, "dtypes differ"),
    (lambda: F.lstm(np.ones((4, 3, 5)), None, fastdl.ones(8, 5), fastdl.ones(8, 2)), TypeError, "must be a Tensor"),
    (lambda: F.lstm_cell(fastdl.ones(3, 5), None, fastdl.ones(8, 4), fastdl.ones(8, 2)), ValueError,
     "weight_ih must be (8, 5)"),
    (lambda: F.lstm_cell(fastdl.ones(3, 5), (fastdl.ones(2, 2), fastdl.ones(3, 2)), fastdl.ones(8, 5),
                         fastdl.ones(8, 2)), ValueError, "h must be (B, H) = (3, 2)"),
    (lambda: F.lstm_cell(fastdl.ones(3, 4, 5), None, fastdl.ones(8, 5), fastdl.ones(8, 2)), ValueError,
     "lstm_cell: input must be 2-D"),
    (lambda: F.gru_cell(fastdl.ones(3, 5), None, fastdl.ones(8, 5), fastdl.ones(8, 2)), ValueError,
     "weight_hh must be (3H, H)"),
    (lambda: F.gru(fastdl.ones(3, 5), None, fastdl.ones(6, 5), fastdl.ones(6, 2)), ValueError,
     "gru: input must be 3-D"),
    (lambda: F.rnn(fastdl.ones(2, 3, 5), None, fastdl.ones(2, 5), fastdl.ones(2, 2), nonlinearity="gelu"),
     ValueError, "nonlinearity"),
    (lambda: F.rnn_tanh_cell(fastdl.ones(3, 5), fastdl.ones(3, 4), fastdl.ones(2, 5), fastdl.ones(2, 2)), ValueError,
     "hx must be (B, H) = (3, 2)"),
]


@pytest.mark.parametrize("call,exc,words", BAD_FUNCTIONAL)
def test_functional_recurrent_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
    assert any(op in str(info.value) for op in ("lstm", "gru", "rnn"))


# ---- nn layers: LSTM, GRU, RNN and cells against torch.nn with copied state dicts -----------------------

def _nn():
    from fastdl import nn
    return nn


def _pair(torch_cls, fastdl_cls, *args, dtype=np.float64, **kwargs):
    """The same layer in PyTorch and fastdl, fastdl's parameters loaded from PyTorch's state dict."""
    torch = _torch()
    torch.manual_seed(0)
    t = torch_cls(*args, **kwargs).double()  # the reference runs in float64 on weights rounded to dtype
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.from_numpy(p.numpy().astype(dtype).astype(np.float64)))
    f = fastdl_cls(*args, **kwargs, dtype=dtype)
    assert sorted(f.state_dict()) == sorted(t.state_dict())
    f.load_state_dict(t.state_dict())
    return t, f


def _compare_layer(t, f, x, hx, dtype, k, lengths=None):
    """Outputs, final states and every gradient (input, states, parameters) of fastdl vs PyTorch."""
    torch = _torch()
    rng = np.random.default_rng(0)
    tx = torch.tensor(x, requires_grad=True)
    fx = fastdl.Tensor(x.astype(dtype), requires_grad=True)
    thx = fhx = None
    if hx is not None:
        thx = tuple(torch.tensor(h, requires_grad=True) for h in hx)
        fhx = tuple(fastdl.Tensor(h.astype(dtype), requires_grad=True) for h in hx)
    if lengths is None:
        tout, tstate = t(tx, thx if thx is None or len(thx) == 2 else thx[0])
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths), batch_first=t.batch_first,
                                                         enforce_sorted=False)
        tout, tstate = t(packed, thx if thx is None or len(thx) == 2 else thx[0])
        tout, _ = torch.nn.utils.rnn.pad_packed_sequence(tout, batch_first=t.batch_first, total_length=x.shape[
            1 if t.batch_first else 0])
    fout, fstate = f(fx, fhx if fhx is None or len(fhx) == 2 else fhx[0], lengths=lengths)
    touts = [tout] + (list(tstate) if isinstance(tstate, tuple) else [tstate])
    fouts = [fout] + (list(fstate) if isinstance(fstate, tuple) else [fstate])
    grads = [rng.standard_normal(tuple(o.shape)) for o in touts]
    for a, b in zip(fouts, touts):
        assert a.shape == tuple(b.shape)
        assert_close(a.numpy(), b.detach().numpy(), dtype, k)
    torch.autograd.backward(touts, [torch.tensor(g, dtype=o.dtype) for g, o in zip(grads, touts)])
    fastdl.autograd.backward(fouts, [fastdl.tensor(g, dtype=dtype) for g in grads])
    assert_close(fx.grad.numpy(), tx.grad.numpy(), dtype, k)
    for a, b in zip(fhx or (), thx or ()):
        assert_close(a.grad.numpy(), b.grad.numpy(), dtype, k)
    tparams = dict(t.named_parameters())
    for name, p in f.named_parameters():
        assert_close(p.grad.numpy(), tparams[name].grad.numpy(), dtype, k)


LAYER_CONFIGS = [
    dict(num_layers=1), dict(num_layers=2), dict(bidirectional=True), dict(num_layers=2, bidirectional=True),
    dict(batch_first=True), dict(bias=False, num_layers=2), dict(num_layers=3, batch_first=True, bidirectional=True),
]


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("config", LAYER_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("with_state", [False, True])
def test_nn_recurrent_matches_torch(mode, config, with_state):
    torch = _torch()
    if torch is None:
        pytest.skip("PyTorch is not installed")
    nn = _nn()
    T, B, I, H = 7, 3, 5, 6
    t, f = _pair(getattr(torch.nn, mode), getattr(nn, mode), I, H, **config)
    rng = np.random.default_rng(30)
    x = rng.standard_normal((B, T, I) if config.get("batch_first") else (T, B, I))
    D = 2 if config.get("bidirectional") else 1
    L = config.get("num_layers", 1)
    hx = None
    if with_state:
        hx = (rng.standard_normal((L * D, B, H)),) * (2 if mode == "LSTM" else 1)
        hx = tuple(rng.standard_normal((L * D, B, H)) for _ in hx)
    _compare_layer(t, f, x, hx, np.float64, seq_k(T, I + H * D, H) * B * L)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nn_lstm_float32_and_large_shapes_match_torch(dtype):
    torch = _torch()
    if torch is None:
        pytest.skip("PyTorch is not installed")
    nn = _nn()
    T, B, I, H = 9, 32, 64, 100
    t, f = _pair(torch.nn.LSTM, nn.LSTM, I, H, num_layers=2, dtype=dtype)
    x = np.random.default_rng(31).standard_normal((T, B, I))
    _compare_layer(t, f, x.astype(dtype).astype(np.float64) if dtype == np.float32 else x, None, dtype,
                   seq_k(T, I + H, H) * B * 2)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("config", [dict(), dict(bidirectional=True, num_layers=2), dict(batch_first=True)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_nn_recurrent_lengths_match_torch_packed(mode, config):
    torch = _torch()
    if torch is None:
        pytest.skip("PyTorch is not installed")
    nn = _nn()
    T, B, I, H = 6, 5, 3, 4
    t, f = _pair(getattr(torch.nn, mode), getattr(nn, mode), I, H, **config)
    rng = np.random.default_rng(32)
    x = rng.standard_normal((B, T, I) if config.get("batch_first") else (T, B, I))
    lengths = [6, 2, 6, 1, 4]
    D = 2 if config.get("bidirectional") else 1
    L = config.get("num_layers", 1)
    hx = tuple(rng.standard_normal((L * D, B, H)) for _ in range(2 if mode == "LSTM" else 1))
    _compare_layer(t, f, x, hx, np.float64, seq_k(T, I + H * D, H) * B * L, lengths=lengths)
    _compare_layer(t, f, x, None, np.float64, seq_k(T, I + H * D, H) * B * L, lengths=lengths)


def test_nn_lstm_projection_matches_torch():
    torch = _torch()
    if torch is None:
        pytest.skip("PyTorch is not installed")
    nn = _nn()
    t, f = _pair(torch.nn.LSTM, nn.LSTM, 5, 6, num_layers=2, proj_size=3, bidirectional=True)
    rng = np.random.default_rng(33)
    x = rng.standard_normal((4, 2, 5))
    _compare_layer(t, f, x, (rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 6))), np.float64, 400)
    assert any(fb["case"] == "LSTM proj_size > 0" and fb["runs"] > 0 for fb in fastdl.backend_info()["fallbacks"])


def test_nn_lstm_dropout_between_layers_train_vs_eval():
    torch = _torch()
    nn = _nn()
    lstm = nn.LSTM(4, 5, num_layers=3, dropout=0.5, dtype=np.float64)
    x = fastdl.Tensor(np.random.default_rng(34).standard_normal((6, 2, 4)))
    lstm.eval()
    a, _ = lstm(x)
    b, _ = lstm(x)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    lstm.train()
    fastdl.manual_seed(1)
    c, _ = lstm(x)
    fastdl.manual_seed(1)
    d, _ = lstm(x)
    np.testing.assert_array_equal(c.numpy(), d.numpy())
    assert not np.allclose(c.numpy(), a.numpy())
    # dropout = 1 zeroes every layer's output but the last: deterministic, so PyTorch must agree.
    if torch is not None:
        t, f = _pair(torch.nn.LSTM, nn.LSTM, 4, 5, num_layers=2, dropout=1.0)
        t.train(), f.train()
        ty, _ = t(torch.from_numpy(x.numpy()))
        fy, _ = f(x)
        assert_close(fy.numpy(), ty.detach().numpy(), np.float64, seq_k(6, 9, 5))
        t.eval(), f.eval()
        assert_close(f(x)[0].numpy(), t(torch.from_numpy(x.numpy()))[0].detach().numpy(), np.float64, seq_k(6, 9, 5))


def test_nn_lstm_gradcheck_two_layers_bidirectional():
    nn = _nn()
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64)
    x = fastdl.Tensor(np.random.default_rng(35).standard_normal((4, 2, 3)), requires_grad=True)
    h0 = fastdl.Tensor(np.random.default_rng(36).standard_normal((4, 2, 4)), requires_grad=True)
    c0 = fastdl.Tensor(np.random.default_rng(37).standard_normal((4, 2, 4)), requires_grad=True)
    params = list(lstm.parameters())

    def fn(x, h0, c0, *ps):
        out, (h, c) = lstm(x, (h0, c0))
        return out, h, c

    assert fastdl.autograd.gradcheck(fn, [x, h0, c0, *params])


@pytest.mark.parametrize("mode", ["GRU", "RNN"])
def test_nn_gru_rnn_gradcheck(mode):
    nn = _nn()
    layer = getattr(nn, mode)(3, 4, num_layers=2, bidirectional=True, dtype=np.float64)
    x = fastdl.Tensor(np.random.default_rng(38).standard_normal((3, 2, 3)), requires_grad=True)
    assert fastdl.autograd.gradcheck(lambda x, *ps: layer(x), [x, *layer.parameters()])


def test_nn_lengths_gradcheck():
    nn = _nn()
    lstm = nn.LSTM(2, 3, bidirectional=True, dtype=np.float64)
    x = fastdl.Tensor(np.random.default_rng(39).standard_normal((4, 3, 2)), requires_grad=True)

    def fn(x, *ps):
        out, (h, c) = lstm(x, lengths=[2, 4, 1])
        return out, h, c

    assert fastdl.autograd.gradcheck(fn, [x, *lstm.parameters()])


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_nn_recurrent_unbatched_input(mode):
    nn = _nn()
    layer = getattr(nn, mode)(3, 4, num_layers=2, dtype=np.float64)
    x = np.random.default_rng(40).standard_normal((5, 3))
    out, state = layer(fastdl.Tensor(x))
    batched, bstate = layer(fastdl.Tensor(x[:, None]))
    assert out.shape == (5, 4)
    np.testing.assert_allclose(out.numpy(), batched.numpy()[:, 0], rtol=1e-12, atol=1e-14)
    h = state[0] if mode == "LSTM" else state
    assert h.shape == (2, 4)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nn_cells_match_torch(name, dtype):
    torch = _torch()
    if torch is None:
        pytest.skip("PyTorch is not installed")
    nn = _nn()
    t, f = _pair(getattr(torch.nn, name), getattr(nn, name), 5, 7, dtype=dtype)
    rng = np.random.default_rng(41)
    x = rng.standard_normal((3, 5)).astype(dtype).astype(np.float64)
    h = rng.standard_normal((3, 7)).astype(dtype).astype(np.float64)
    c = rng.standard_normal((3, 7)).astype(dtype).astype(np.float64)
    tx, th, tc = (torch.tensor(a, requires_grad=True) for a in (x, h, c))
    fx, fh, fc = (fastdl.Tensor(a.astype(dtype), requires_grad=True) for a in (x, h, c))
    if name == "LSTMCell":
        touts, fouts = t(tx, (th, tc)), f(fx, (fh, fc))
    else:
        touts, fouts = (t(tx, th),), (f(fx, fh),)
    for a, b in zip(fouts, touts):
        assert_close(a.numpy(), b.detach().numpy(), dtype, 12)
    sum(o.sum() for o in touts).backward()
    fastdl.autograd.backward(list(fouts), [fastdl.ones(*o.shape, dtype=dtype) for o in fouts])
    assert_close(fx.grad.numpy(), tx.grad.numpy(), dtype, 40)
    assert_close(fh.grad.numpy(), th.grad.numpy(), dtype, 40)
    tparams = dict(t.named_parameters())
    for pname, p in f.named_parameters():
        assert_close(p.grad.numpy(), tparams[pname].grad.numpy(), dtype, 40)
    single = f(fastdl.Tensor(x[0].astype(dtype)))
    assert (single[0] if name == "LSTMCell" else single).shape == (7,)


def test_nn_cell_loop_equals_lstm_layer():
    nn = _nn()
    lstm = nn.LSTM(3, 4, dtype=np.float64)
    cell = nn.LSTMCell(3, 4, dtype=np.float64)
    cell.load_state_dict({k[:-3]: v for k, v in lstm.state_dict().items()})
    x = fastdl.Tensor(np.random.default_rng(42).standard_normal((5, 2, 3)))
    out, (h, c) = lstm(x)
    state = None
    for t in range(5):
        state = cell(x[t], state)
    np.testing.assert_allclose(state[0].numpy(), h.numpy()[0], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(state[1].numpy(), c.numpy()[0], rtol=1e-13, atol=1e-14)


def test_nn_lstm_exploding_gradients_clipped():
    # Large recurrent weights over a long sequence blow the gradient up; clip_grad_norm_ and
    # clip_grad_value_ bring it back, as in PyTorch.
    nn = _nn()
    lstm = nn.LSTM(3, 8, dtype=np.float64)
    with fastdl.no_grad():
        lstm.weight_hh_l0.data[...] = np.random.default_rng(43).standard_normal((32, 8)) * 3
    x = fastdl.Tensor(np.random.default_rng(44).standard_normal((60, 2, 3)))
    out, _ = lstm(x)
    (out ** 2).sum().backward()
    params = list(lstm.parameters())
    total = float(np.sqrt(sum((p.grad.numpy() ** 2).sum() for p in params)))
    assert total > 10
    returned = nn.utils.clip_grad_norm_(params, max_norm=1.0)
    assert abs(float(returned) - total) <= 1e-9 * total
    clipped = float(np.sqrt(sum((p.grad.numpy() ** 2).sum() for p in params)))
    assert abs(clipped - 1.0) < 1e-6
    nn.utils.clip_grad_value_(params, 0.01)
    assert max(float(np.abs(p.grad.numpy()).max()) for p in params) <= 0.01


def test_nn_lstm_repr_and_state_dict_names():
    nn = _nn()
    lstm = nn.LSTM(10, 20, num_layers=2, batch_first=True, bidirectional=True, proj_size=5)
    assert repr(lstm) == "LSTM(10, 20, proj_size=5, num_layers=2, batch_first=True, bidirectional=True)"
    names = list(lstm.state_dict())
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0"]
    assert "weight_hr_l1_reverse" in names and len(names) == 20
    assert lstm.weight_hh_l1.shape == (80, 5) and lstm.weight_ih_l1.shape == (80, 10)
    bound = 1 / np.sqrt(20)
    assert all(np.abs(p.numpy()).max() <= bound for p in lstm.parameters())
    assert repr(nn.RNN(3, 4, nonlinearity="relu")) == "RNN(3, 4, nonlinearity='relu')"


def _bad_layer_calls():
    nn = _nn()
    lstm = nn.LSTM(5, 6, num_layers=2)
    cell = nn.LSTMCell(5, 6)
    x = fastdl.ones(4, 3, 5)
    return [
        (lambda: lstm(fastdl.ones(4, 3, 7)), ValueError, "last dimension 7 != input_size 5"),
        (lambda: lstm(fastdl.ones(2, 3, 4, 5)), ValueError, "got input of shape (2, 3, 4, 5)"),
        (lambda: lstm(x, (fastdl.ones(2, 3, 6), fastdl.ones(1, 3, 6))), ValueError, "c_0 of shape (1, 3, 6)"),
        (lambda: lstm(x, (fastdl.ones(2, 2, 6), fastdl.ones(2, 3, 6))), ValueError, "expected (2, 3, 6)"),
        (lambda: lstm(x, fastdl.ones(2, 3, 6)), TypeError, "pair (h_0, c_0)"),
        (lambda: lstm(x.double()), TypeError, "dtype"),
        (lambda: lstm(x, lengths=[1, 2]), ValueError, "lengths must be B = 3"),
        (lambda: lstm(x, lengths=[1, 5, 2]), ValueError, "lengths must lie in [1, T = 4]"),
        (lambda: lstm(x, lengths=[0, 1, 2]), ValueError, "lengths must lie"),
        (lambda: cell(fastdl.ones(3, 4)), ValueError, "expected (B, 5)"),
        (lambda: cell(fastdl.ones(3, 5), (fastdl.ones(2, 6), fastdl.ones(3, 6))), ValueError, "h of shape (2, 6)"),
        (lambda: nn.GRU(5, 6)(x, fastdl.ones(1, 3, 5)), ValueError, "hx of shape (1, 3, 5)"),
        (lambda: nn.LSTM(5, 0), ValueError, "hidden_size must be an integer >= 1"),
        (lambda: nn.LSTM(5, 6, dropout=1.5), ValueError, "dropout"),
        (lambda: nn.LSTM(5, 6, proj_size=6), ValueError, "proj_size"),
        (lambda: nn.GRU(5, 6, proj_size=2), TypeError, "proj_size"),
        (lambda: nn.RNN(5, 6, nonlinearity="gelu"), ValueError, "nonlinearity"),
    ]


@pytest.mark.parametrize("index", range(17))
def test_nn_recurrent_bad_input(index):
    call, exc, words = _bad_layer_calls()[index]
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
    assert any(name in str(info.value) for name in ("LSTM", "GRU", "RNN"))


# ---- docstring examples -------------------------------------------------------------------------

def test_lstm_docstring_examples():
    import doctest

    from fastdl.nn import recurrent

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(recurrent, globs={})
    tests += [t for t in finder.find(kernels, globs={}) if t.name.split(".")[-1].startswith("lstm")]
    assert len(tests) >= 8
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
