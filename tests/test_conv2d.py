"""conv2d family: convolution (forward, backward-input, backward-weight), conv_transpose2d and
pooling against direct float64 references (NumPy; PyTorch too when installed), on every CPU level.

The references loop over kernel taps with einsum on a zero-padded float64 copy: slow but plainly
right. Tolerances come from tol(dtype, k) with k the length of each output's sum.
"""
import numpy as np
import pytest

import fastdl
from fastdl import kernels
from fastdl.backend import _C

from .helpers import assert_close, randn, tol

DTYPES = (np.float32, np.float64)

try:
    import torch
except Exception:  # pragma: no cover - torch is a test-only reference
    torch = None


# ---- float64 references ---------------------------------------------------------------------------

def _pads(padding, KH, KW, dilation):
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        th, tw = dilation[0] * (KH - 1), dilation[1] * (KW - 1)
        return (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (ph, pw, ph, pw)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _taps(x, w_shape, stride, pads, dilation, out_hw=None):
    """Yields (kh, kw, index) where xp[index] is the (N, C, OH, OW) input slice tap (kh, kw) reads."""
    sh, sw = stride
    dh, dw = dilation
    KH, KW = w_shape[2:]
    if out_hw is None:
        OH = (x.shape[2] + pads[0] + pads[2] - dh * (KH - 1) - 1) // sh + 1
        OW = (x.shape[3] + pads[1] + pads[3] - dw * (KW - 1) - 1) // sw + 1
    else:
        OH, OW = out_hw
    for kh in range(KH):
        for kw in range(KW):
            yield kh, kw, (slice(None), slice(None), slice(kh * dh, kh * dh + (OH - 1) * sh + 1, sh),
                           slice(kw * dw, kw * dw + (OW - 1) * sw + 1, sw))


def _padded(x, pads, extra=(0, 0)):
    return np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2] + extra[0]), (pads[1], pads[3] + extra[1])))


def ref_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    stride, dilation = _pair(stride), _pair(dilation)
    pads = _pads(padding, w.shape[2], w.shape[3], dilation)
    xp, w64 = _padded(x, pads), w.astype(np.float64)
    C_out, Cig = w.shape[:2]
    Cog = C_out // groups
    out = None
    for kh, kw, idx in _taps(x, w.shape, stride, pads, dilation):
        patch = xp[idx]
        if out is None:
            out = np.zeros((x.shape[0], C_out) + patch.shape[2:])
        for g in range(groups):
            out[:, g * Cog:(g + 1) * Cog] += np.einsum(
                "nchw,oc->nohw", patch[:, g * Cig:(g + 1) * Cig], w64[g * Cog:(g + 1) * Cog, :, kh, kw])
    if b is not None:
        out += b.astype(np.float64)[None, :, None, None]
    return out


def ref_conv2d_backward(x_shape, w, dy, stride=1, padding=0, dilation=1, groups=1, x=None):
    """(dx, dw, db) of sum(dy · conv2d(x, w, b)); dw needs x."""
    stride, dilation = _pair(stride), _pair(dilation)
    pads = _pads(padding, w.shape[2], w.shape[3], dilation)
    N, C_in, H, W = x_shape
    C_out, Cig = w.shape[:2]
    Cog = C_out // groups
    w64, dy64 = w.astype(np.float64), dy.astype(np.float64)
    # Rows/columns past the last one the outputs read stay zero (conv_transpose2d's output_padding).
    dxp = np.zeros((N, C_in, H + pads[0] + pads[2] + 64, W + pads[1] + pads[3] + 64))
    dw = np.zeros(w.shape)
    xp = _padded(x, pads, (64, 64)) if x is not None else None
    for kh, kw, idx in _taps(dxp, w.shape, stride, pads, dilation, dy.shape[2:]):
        for g in range(groups):
            cin, cout = slice(g * Cig, (g + 1) * Cig), slice(g * Cog, (g + 1) * Cog)
            dxp[idx][:, cin] += np.einsum("nohw,oc->nchw", dy64[:, cout], w64[cout, :, kh, kw])
            if xp is not None:
                dw[cout, :, kh, kw] = np.einsum("nohw,nchw->oc", dy64[:, cout], xp[idx][:, cin])
    dx = dxp[:, :, pads[0]:pads[0] + H, pads[1]:pads[1] + W]
    return dx, dw, dy64.sum(axis=(0, 2, 3))


def check_conv(rng, dtype, N, C_in, H, W, C_out, K, stride=1, padding=0, dilation=1, groups=1, bias=True):
    KH, KW = _pair(K)
    x = randn(rng, (N, C_in, H, W), dtype)
    w = randn(rng, (C_out, C_in // groups, KH, KW), dtype)
    b = randn(rng, (C_out,), dtype) if bias else None
    y = kernels.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    expected = ref_conv2d(x, w, b, stride, padding, dilation, groups)
    assert y.dtype == dtype and y.shape == expected.shape
    assert_close(y, expected, dtype, C_in // groups * KH * KW)
    dy = randn(rng, y.shape, dtype)
    dx_ref, dw_ref, db_ref = ref_conv2d_backward(x.shape, w, dy, stride, padding, dilation, groups, x)
    dx = kernels.conv2d_backward_input(dy, w, x.shape, stride, padding, dilation, groups)
    assert_close(dx, dx_ref, dtype, C_out // groups * KH * KW)
    dw, db = kernels.conv2d_backward_weight(dy, x, w.shape, stride, padding, dilation, groups, bias=bias)
    assert_close(dw, dw_ref, dtype, N * y.shape[2] * y.shape[3])
    if bias:
        assert_close(db, db_ref, dtype, N * y.shape[2] * y.shape[3])
    else:
        assert db is None


# ---- convolution: shapes, paths, levels -----------------------------------------------------------

# (N, C_in, H, W, C_out, K, stride, padding, dilation, groups): batch 1 and odd batches; channels 1,
# 3, 5, 17, 64; sizes 1…37, non-square; kernels 1, 2, 3, 5, 7; strides 1–3; padding, dilation,
# groups and depthwise. Comments name the native path each case reaches first.
CONV_CASES = [
    (1, 3, 9, 11, 5, 3, 1, 1, 1, 1),        # implicit, channels on M (5 output channels)
    (3, 64, 14, 14, 64, 3, 1, 1, 1, 1),     # implicit, pixels on M (64 output channels)
    (2, 17, 13, 7, 64, 3, 2, 1, 1, 1),      # stride 2: col2im backward-input
    (1, 64, 16, 16, 17, 1, 1, 0, 1, 1),     # 1×1: plain GEMM
    (5, 5, 12, 12, 17, 1, 2, 0, 1, 1),      # strided 1×1
    (3, 3, 37, 23, 64, 7, 2, 3, 1, 1),      # ResNet stem shape, small
    (1, 1, 28, 28, 6, 5, 1, 0, 1, 1),       # LeNet conv1: C_in = 1, direct kernel
    (5, 6, 14, 14, 16, 5, 1, 0, 1, 1),      # LeNet conv2
    (3, 17, 11, 13, 5, 5, 1, 2, 2, 1),      # dilation 2, "same"-sized
    (1, 17, 37, 37, 17, 3, 3, 1, 1, 1),     # stride 3
    (3, 64, 9, 9, 64, 3, 1, 1, 1, 64),      # depthwise
    (2, 5, 10, 8, 15, 3, 2, 1, 1, 5),       # depthwise with multiplier 3, stride 2
    (2, 6, 10, 10, 9, 3, 1, 0, 1, 3),       # groups 3
    (1, 4, 6, 6, 12, 2, 3, 1, 1, 4),        # even kernel, stride 3, depthwise ×3
    (3, 8, 7, 9, 4, 2, 1, 0, 2, 2),         # even kernel, dilation 2, groups 2
    (1, 3, 1, 1, 5, 1, 1, 0, 1, 1),         # 1×1 image
    (2, 3, 1, 5, 5, 3, 1, 1, 1, 1),         # one-row image
    (2, 5, 3, 3, 3, 3, 1, 0, 1, 1),         # output 1×1
    (1, 5, 5, 5, 3, 5, 2, 2, 1, 1),         # kernel as large as the image
    (5, 3, 8, 8, 1, 3, 1, 1, 1, 1),         # one output channel: direct kernel
    (3, 64, 7, 7, 5, 7, 1, 3, 1, 1),        # K = 3136 > KC: several K blocks
    (1, 64, 5, 5, 64, 3, 2, 2, 3, 1),       # stride 2 + dilation 3
    (2, 3, 30, 20, 17, (3, 5), (1, 2), (1, 2), (2, 1), 1),  # non-square kernel, stride, padding, dilation
    (4, 16, 6, 6, 32, 3, 1, 1, 1, 2),       # groups 2, pixel blocks spanning images
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_conv2d_matches_reference(cpu_level, dtype, case):
    N, C_in, H, W, C_out, K, s, p, d, g = case
    check_conv(np.random.default_rng(1), dtype, N, C_in, H, W, C_out, K, s, p, d, g)


@pytest.mark.parametrize("seed", range(12))
def test_conv2d_random_shapes(cpu_level, seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(3):
        groups = int(rng.choice([1, 1, 2, 3]))
        C_in = groups * int(rng.choice([1, 2, 3, 5]))
        C_out = groups * int(rng.choice([1, 3, 4, 6]))
        KH, KW = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        s, d = (int(rng.integers(1, 4)), int(rng.integers(1, 4))), (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        H = int(rng.integers(max(1, d[0] * (KH - 1) + 1 - 2 * p[0]), 38))
        W = int(rng.integers(max(1, d[1] * (KW - 1) + 1 - 2 * p[1]), 38))
        check_conv(rng, np.float64, int(rng.integers(1, 4)), C_in, H, W, C_out, (KH, KW), s, p, d, groups,
                   bias=bool(rng.integers(0, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,dilation", [(2, 1), (4, 1), (3, 2), ((2, 3), (1, 2))])
def test_conv2d_padding_same_and_valid(dtype, K, dilation):
    rng = np.random.default_rng(2)
    check_conv(rng, dtype, 2, 3, 9, 8, 4, K, 1, "same", dilation)
    check_conv(rng, dtype, 2, 3, 9, 8, 4, K, 1, "valid", dilation)
    x = randn(rng, (1, 3, 9, 8), dtype)
    KH, KW = _pair(K)
    assert kernels.conv2d_forward(x, randn(rng, (4, 3, KH, KW), dtype), padding="same", dilation=dilation).shape == \
        (1, 4, 9, 8)


def test_conv2d_resnet_layer_shape(cpu_level):
    # A 3×3 64-channel 56×56 layer at batch 2: pixel blocks inside images, K split in two blocks.
    check_conv(np.random.default_rng(3), np.float32, 2, 64, 56, 56, 64, 3, 1, 1)


def test_conv2d_noncontiguous_inputs():
    rng = np.random.default_rng(4)
    base = randn(rng, (3, 10, 20, 18), np.float64)
    x = base[::2, 1::2, ::2, 3:]                      # sliced view (2, 5, 10, 15)
    w = randn(rng, (6, 3, 3, 5), np.float64).transpose(1, 0, 2, 3)[:, :5]  # (3, 5, 3, 5) transposed view
    b = randn(rng, (6,), np.float64)[::2]
    y = kernels.conv2d_forward(x, w, b, 1, 1)
    assert_close(y, ref_conv2d(x, w, b, 1, 1), np.float64, 75)
    dy = randn(rng, y.shape + (2,), np.float64)[..., 0]  # strided grad
    dx_ref, dw_ref, db_ref = ref_conv2d_backward(x.shape, w, dy, 1, 1, x=x)
    assert_close(kernels.conv2d_backward_input(dy, w, x.shape, 1, 1), dx_ref, np.float64, 45)
    dw, db = kernels.conv2d_backward_weight(dy, x, w.shape, 1, 1)
    assert_close(dw, dw_ref, np.float64, 300)
    assert_close(db, db_ref, np.float64, 300)


def test_conv2d_threads_agree(threads):
    rng = np.random.default_rng(5)
    x, w = randn(rng, (3, 17, 21, 19), np.float32), randn(rng, (64, 17, 3, 3), np.float32)
    fastdl.set_num_threads(1)
    one = kernels.conv2d_forward(x, w, padding=1)
    dw_one, _ = kernels.conv2d_backward_weight(one, x, w.shape, padding=1)
    fastdl.set_num_threads(2)
    two = kernels.conv2d_forward(x, w, padding=1)
    dw_two, _ = kernels.conv2d_backward_weight(one, x, w.shape, padding=1)
    np.testing.assert_array_equal(one, two)  # each output is summed in the same order by one task
    assert_close(dw_two, dw_one, np.float32, 3 * 21 * 19)
    # On a given thread count the weight gradient is the same bits on every call (each thread sums a
    # fixed share of the images): training runs repeat exactly.
    for _ in range(10):
        np.testing.assert_array_equal(kernels.conv2d_backward_weight(one, x, w.shape, padding=1)[0], dw_two)


def test_conv2d_levels_agree():
    rng = np.random.default_rng(6)
    x, w = randn(rng, (2, 8, 13, 11), np.float64), randn(rng, (16, 8, 3, 3), np.float64)
    previous = fastdl.cpu_capability()
    levels = ("portable", "avx2", "avx512")
    results = []
    try:
        for level in levels[: levels.index(_C.detected_cpu_capability()) + 1]:
            fastdl.set_cpu_capability(level)
            results.append(kernels.conv2d_forward(x, w, padding=1))
    finally:
        fastdl.set_cpu_capability(previous)
    for r in results:
        assert_close(r, results[0], np.float64, 72)


def test_conv2d_empty_batch():
    y = kernels.conv2d_forward(np.ones((0, 3, 5, 5), np.float32), np.ones((4, 3, 3, 3), np.float32))
    assert y.shape == (0, 4, 3, 3)
    assert kernels.conv2d_backward_input(y, np.ones((4, 3, 3, 3), np.float32), (0, 3, 5, 5)).shape == (0, 3, 5, 5)
    dw, db = kernels.conv2d_backward_weight(y, np.ones((0, 3, 5, 5), np.float32), (4, 3, 3, 3))
    assert np.all(dw == 0) and np.all(db == 0)


def test_conv2d_forward_workspace_independent_of_batch():
    # A ResNet 3×3 layer: scratch = packed weights + per-thread panels, the same at batch 8 and 32.
    args = _C.ConvArgs((1, 1), (1, 1, 1, 1), (1, 1), 1)
    sizes = [_C.conv2d_forward_workspace((n, 64, 56, 56), (64, 64, 3, 3), (56, 56), args, "float32", 2)
             for n in (1, 8, 32)]
    assert sizes[1] == sizes[2] and 0 < sizes[2] < 4 << 20


# ---- conv_transpose2d = conv2d's backward-input ---------------------------------------------------

@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C_in,C_out,K,s,p,op,d,g", [
    (4, 6, 3, 2, 1, 1, 1, 1), (3, 5, 4, 1, 0, 0, 1, 1), (6, 4, 3, 3, 2, 2, 1, 2), (4, 4, 3, 1, 1, 1, 2, 4),
    (2, 3, 5, 2, 2, 0, 2, 1),
])
def test_conv_transpose2d_via_backward_input_matches_torch(cpu_level, dtype, C_in, C_out, K, s, p, op, d, g):
    rng = np.random.default_rng(7)
    x = randn(rng, (2, C_in, 7, 6), dtype)
    w = randn(rng, (C_in, C_out // g, K, K), dtype)          # PyTorch's transposed-convolution layout
    expected = torch.nn.functional.conv_transpose2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                                    stride=s, padding=p, output_padding=op, groups=g,
                                                    dilation=d).numpy()
    y = kernels.conv2d_backward_input(x, w, (2, C_out) + expected.shape[2:], s, p, d, g)
    assert_close(y, expected, dtype, C_in // g * K * K)


# ---- gradients by finite differences (float64) -----------------------------------------------------

def _numeric_grad(f, a, eps=1e-6):
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("case", [
    (2, 4, 5, 6, 3, 3, 1, 1, 1, 1), (1, 3, 7, 5, 4, 3, 2, 1, 2, 1), (2, 4, 5, 5, 4, 3, 1, 1, 1, 4),
    (1, 4, 4, 6, 6, 2, 2, 0, 1, 2), (2, 3, 4, 4, 2, 1, 1, 0, 1, 1),
])
def test_conv2d_gradcheck(case):
    N, C_in, H, W, C_out, K, s, p, d, g = case
    rng = np.random.default_rng(8)
    x = rng.standard_normal((N, C_in, H, W))
    w = rng.standard_normal((C_out, C_in // g, K, K))
    b = rng.standard_normal(C_out)
    y = kernels.conv2d_forward(x, w, b, s, p, d, g)
    dy = rng.standard_normal(y.shape)

    def loss():
        return float(np.sum(dy * kernels.conv2d_forward(x, w, b, s, p, d, g)))

    gx = kernels.conv2d_backward_input(dy, w, x.shape, s, p, d, g)
    gw, gb = kernels.conv2d_backward_weight(dy, x, w.shape, s, p, d, g)
    for analytic, a in ((gx, x), (gw, w), (gb, b)):
        np.testing.assert_allclose(analytic, _numeric_grad(loss, a), rtol=1e-6, atol=1e-7)


def test_conv_transpose2d_gradcheck():
    # conv_transpose2d(x, w) = conv2d_backward_input(x, w); its gradients are conv2d_forward (for x) and
    # conv2d_backward_weight with the roles of input and output swapped (for w).
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 3, 4))
    w = rng.standard_normal((4, 3, 3, 3))
    out_shape = (2, 3, 6, 8)  # stride 2, padding 1, output_padding 1

    def forward():
        return kernels.conv2d_backward_input(x, w, out_shape, 2, 1)

    dy = rng.standard_normal(out_shape)

    def loss():
        return float(np.sum(dy * forward()))

    gx = kernels.conv2d_forward(dy, w, None, 2, 1)
    gw, _ = kernels.conv2d_backward_weight(x, dy, w.shape, 2, 1, bias=False)
    np.testing.assert_allclose(gx, _numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, _numeric_grad(loss, w), rtol=1e-6, atol=1e-7)


# ---- pooling ------------------------------------------------------------------------------------

def ref_pool(x, kernel, stride, padding, dilation, ceil_mode, mode, count_include_pad=True, divisor=None):
    """max/avg pooling by explicit windows, float64, with PyTorch's clipping rules."""
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride if stride is not None else kernel)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    N, C, H, W = x.shape
    OH = kernels.pool2d_output_size(H, kh, sh, ph, dh, ceil_mode)
    OW = kernels.pool2d_output_size(W, kw, sw, pw, dw, ceil_mode)
    out = np.zeros((N, C, OH, OW))
    idx = np.zeros((N, C, OH, OW), np.int64)
    x64 = x.astype(np.float64)
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * sh - ph, ow * sw - pw
            if mode == "max":
                rows = [h0 + i * dh for i in range(kh) if 0 <= h0 + i * dh < H]
                cols = [w0 + j * dw for j in range(kw) if 0 <= w0 + j * dw < W]
                win = x64[:, :, rows][:, :, :, cols].reshape(N, C, -1)
                flat = (np.array(rows)[:, None] * W + np.array(cols)[None, :]).reshape(-1)
                nan = np.isnan(win)
                arg = np.where(nan.any(-1), win.shape[-1] - 1 - np.argmax(nan[..., ::-1], -1), np.argmax(win, -1))
                out[:, :, oh, ow] = np.take_along_axis(win, arg[..., None], -1)[..., 0]
                idx[:, :, oh, ow] = flat[arg]
            else:
                h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)
                size = (h1 - h0) * (w1 - w0)
                h0c, w0c, h1c, w1c = max(h0, 0), max(w0, 0), min(h1, H), min(w1, W)
                s = x64[:, :, h0c:h1c, w0c:w1c].sum(axis=(2, 3))
                div = divisor or (size if count_include_pad else (h1c - h0c) * (w1c - w0c))
                out[:, :, oh, ow] = s / div
    return out, idx


POOL_CASES = [  # kernel, stride, padding, dilation, ceil_mode, (H, W)
    (2, None, 0, 1, False, (8, 8)),
    (3, 2, 1, 1, False, (11, 9)),
    (3, 2, 1, 1, True, (11, 9)),
    (2, 2, 0, 1, True, (5, 7)),
    ((3, 2), (2, 1), (1, 1), 1, False, (7, 6)),
    (3, 1, 1, 2, False, (9, 9)),
    (3, 3, 0, 2, True, (13, 10)),
    (1, 1, 0, 1, False, (1, 1)),
    (4, 3, 2, 1, True, (10, 10)),
    (3, 2, 0, 1, False, (9, 12)),  # windows inside the plane: the row-at-a-time path
    ((2, 3), (1, 2), 0, (2, 1), False, (7, 11)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool2d(dtype, case):
    kernel, stride, padding, dilation, ceil_mode, hw = case
    rng = np.random.default_rng(10)
    x = randn(rng, (3, 5) + hw, dtype)
    out, idx = kernels.max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode)
    ref, ref_idx = ref_pool(x, kernel, stride, padding, dilation, ceil_mode, "max")
    assert_close(out, ref, dtype)
    np.testing.assert_array_equal(idx, ref_idx)
    dy = randn(rng, out.shape, dtype)
    dx = kernels.max_pool2d_backward(dy, idx, x.shape, kernel, stride, padding, dilation, ceil_mode)
    expected = np.zeros(x.shape).reshape(3, 5, -1)
    np.add.at(expected, (np.arange(3)[:, None, None], np.arange(5)[None, :, None], idx.reshape(3, 5, -1)),
              dy.reshape(3, 5, -1).astype(np.float64))
    assert_close(dx, expected.reshape(x.shape), dtype, 4)


def test_max_pool2d_nan_and_ties():
    x = np.array([[[[1.0, np.nan, 3.0, 3.0], [0.0, 2.0, 3.0, 3.0]]]])
    out, idx = kernels.max_pool2d_forward(x, 2)
    assert np.isnan(out[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1
    assert out[0, 0, 0, 1] == 3.0 and idx[0, 0, 0, 1] == 2  # first of the ties
    # As in PyTorch: a NaN wins over larger values after it, and the last NaN of a window is taken.
    x = np.array([[[[np.nan, 5.0, 1.0, 2.0, 0.0], [7.0, np.nan, 9.0, 1.0, 0.0], [0.0] * 5]]], np.float32)
    out, idx = kernels.max_pool2d_forward(x, 2)
    assert np.isnan(out[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 6 and out[0, 0, 0, 1] == 9.0 and idx[0, 0, 0, 1] == 7


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in POOL_CASES if c[3] == 1], ids=str)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor", [None, 3])
def test_avg_pool2d(dtype, case, count_include_pad, divisor):
    kernel, stride, padding, _, ceil_mode, hw = case
    rng = np.random.default_rng(11)
    x = randn(rng, (2, 3) + hw, dtype)
    out = kernels.avg_pool2d_forward(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    ref, _ = ref_pool(x, kernel, stride, padding, 1, ceil_mode, "avg", count_include_pad, divisor)
    assert_close(out, ref, dtype, 16)
    # The backward is the adjoint: <dy, avg(x)> = <avg_backward(dy), x>.
    dy = randn(rng, out.shape, np.float64)
    dx = kernels.avg_pool2d_backward(dy.astype(dtype), x.shape, kernel, stride, padding, ceil_mode,
                                     count_include_pad, divisor)
    v = rng.standard_normal(x.shape)
    lhs = float(np.sum(dy * ref_pool(v, kernel, stride, padding, 1, ceil_mode, "avg", count_include_pad,
                                     divisor)[0]))
    assert abs(lhs - float(np.sum(dx.astype(np.float64) * v))) <= tol(dtype, x.size) * max(1.0, abs(lhs)) * 4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw,out", [((8, 8), (1, 1)), ((7, 5), (3, 2)), ((5, 7), (5, 7)), ((3, 4), (6, 9)),
                                    ((10, 10), (4, None)), ((1, 1), 2)])
def test_adaptive_avg_pool2d(dtype, hw, out):
    rng = np.random.default_rng(12)
    x = randn(rng, (2, 3) + hw, dtype)
    y = kernels.adaptive_avg_pool2d_forward(x, out)
    OH, OW = y.shape[2:]
    H, W = hw
    ref = np.zeros(y.shape)
    for i in range(OH):
        for j in range(OW):
            h0, h1 = i * H // OH, -(-(i + 1) * H // OH)
            w0, w1 = j * W // OW, -(-(j + 1) * W // OW)
            ref[:, :, i, j] = x[:, :, h0:h1, w0:w1].astype(np.float64).mean(axis=(2, 3))
    assert_close(y, ref, dtype, H * W)
    dy = randn(rng, y.shape, np.float64)
    dx = kernels.adaptive_avg_pool2d_backward(dy.astype(dtype), x.shape)
    v = rng.standard_normal(x.shape)
    lhs = float(np.sum(dy * kernels.adaptive_avg_pool2d_forward(v, out)))
    assert abs(lhs - float(np.sum(dx.astype(np.float64) * v))) <= tol(dtype, x.size) * max(1.0, abs(lhs)) * 4


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_pooling_matches_torch():
    rng = np.random.default_rng(13)
    x = randn(rng, (2, 3, 11, 10), np.float64)
    tx = torch.from_numpy(x)
    F = torch.nn.functional
    out, idx = kernels.max_pool2d_forward(x, 3, 2, 1, 2, True)
    t_out, t_idx = F.max_pool2d(tx, 3, 2, 1, 2, ceil_mode=True, return_indices=True)
    np.testing.assert_allclose(out, t_out.numpy())
    np.testing.assert_array_equal(idx, t_idx.numpy())
    for cip in (True, False):
        np.testing.assert_allclose(kernels.avg_pool2d_forward(x, 4, 3, 2, True, cip),
                                   F.avg_pool2d(tx, 4, 3, 2, True, cip).numpy(), rtol=1e-12)
    np.testing.assert_allclose(kernels.adaptive_avg_pool2d_forward(x, (4, 3)),
                               F.adaptive_avg_pool2d(tx, (4, 3)).numpy(), rtol=1e-12)


# ---- bad input ----------------------------------------------------------------------------------

f32 = np.float32
X = np.ones((2, 4, 8, 8), f32)
Wt = np.ones((6, 4, 3, 3), f32)

BAD_CONV = [
    (lambda: kernels.conv2d_forward(X, np.ones((6, 3, 3, 3), f32)), ValueError, "(6, 3, 3, 3)"),
    (lambda: kernels.conv2d_forward(X, np.ones((6, 2, 3, 3), f32), groups=3), ValueError, "groups 3"),
    (lambda: kernels.conv2d_forward(X, np.ones((5, 2, 3, 3), f32), groups=2), ValueError, "output channels 5"),
    (lambda: kernels.conv2d_forward(X, np.ones((6, 4, 9, 3), f32)), ValueError, "larger than the padded input"),
    (lambda: kernels.conv2d_forward(X, np.ones((6, 4, 5, 5), f32), dilation=3), ValueError, "larger"),
    (lambda: kernels.conv2d_forward(X, Wt, stride=0), ValueError, "stride"),
    (lambda: kernels.conv2d_forward(X, Wt, stride=(1, -2)), ValueError, "stride"),
    (lambda: kernels.conv2d_forward(X, Wt, dilation=0), ValueError, "dilation"),
    (lambda: kernels.conv2d_forward(X, Wt, padding=-1), ValueError, "padding"),
    (lambda: kernels.conv2d_forward(X, Wt, padding="full"), ValueError, "padding"),
    (lambda: kernels.conv2d_forward(X, Wt, stride=2, padding="same"), ValueError, "same"),
    (lambda: kernels.conv2d_forward(X[0], Wt), ValueError, "4-D"),
    (lambda: kernels.conv2d_forward(X, Wt[0]), ValueError, "(4, 3, 3)"),
    (lambda: kernels.conv2d_forward(X.astype(np.int32), Wt), TypeError, "int32"),
    (lambda: kernels.conv2d_forward(X, Wt.astype(np.float64)), TypeError, "float64"),
    (lambda: kernels.conv2d_forward(X, Wt, np.ones(5, f32)), ValueError, "bias"),
    (lambda: kernels.conv2d_forward(X, Wt, groups=0), ValueError, "groups"),
    (lambda: kernels.conv2d_forward(X, Wt, stride=1.5), TypeError, "stride"),
    (lambda: kernels.conv2d_backward_input(np.ones((2, 6, 9, 9), f32), Wt, X.shape), ValueError, "(2, 6, 9, 9)"),
    (lambda: kernels.conv2d_backward_weight(np.ones((2, 5, 6, 6), f32), X, Wt.shape), ValueError, "(2, 5, 6, 6)"),
    (lambda: kernels.max_pool2d_forward(X, 0), ValueError, "kernel_size"),
    (lambda: kernels.max_pool2d_forward(X, 2, padding=2), ValueError, "half the kernel"),
    (lambda: kernels.max_pool2d_forward(X, 2, stride=0), ValueError, "stride"),
    (lambda: kernels.max_pool2d_forward(X, 9), ValueError, "larger"),
    (lambda: kernels.max_pool2d_forward(X[0], 2), ValueError, "4-D"),
    (lambda: kernels.avg_pool2d_forward(X.astype(np.int64), 2), TypeError, "int64"),
    (lambda: kernels.avg_pool2d_forward(X, 2, divisor_override=0), ValueError, "divisor_override"),
    (lambda: kernels.max_pool2d_backward(np.ones((2, 4, 4, 4), f32), np.zeros((2, 4, 4, 4), np.int32), X.shape, 2),
     TypeError, "int64"),
    (lambda: kernels.max_pool2d_backward(np.ones((2, 4, 4, 4), f32), np.full((2, 4, 4, 4), 64), X.shape, 2),
     ValueError, "outside the input plane"),
    (lambda: kernels.adaptive_avg_pool2d_forward(X, 0), ValueError, "output_size"),
    (lambda: kernels.adaptive_avg_pool2d_forward(X, (2, 2, 2)), TypeError, "output_size"),
]


@pytest.mark.parametrize("call,exc,words", BAD_CONV)
def test_conv2d_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert words in message
    assert any(op in message for op in ("conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"))


def test_native_conv2d_checks_shapes_itself():
    # The bindings and kernels refuse inconsistent arrays even when the Python checks are bypassed.
    args = _C.ConvArgs((1, 1), (0, 0, 0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match=r"conv2d: output must be \(6, 6\)"):
        _C.conv2d_forward(X, Wt, None, np.empty((2, 6, 5, 5), f32), args)
    with pytest.raises(ValueError, match="input channels"):
        _C.conv2d_forward(X, np.ones((6, 3, 3, 3), f32), None, np.empty((2, 6, 6, 6), f32), args)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.conv2d_forward(X[:, :, ::2], Wt, None, np.empty((2, 6, 2, 6), f32), args)
    with pytest.raises(ValueError, match="padding"):
        _C.conv2d_forward(X, Wt, None, np.empty((2, 6, 6, 6), f32), _C.ConvArgs((1, 1), (-1, 0, 1, 0), (1, 1), 1))
    with pytest.raises(ValueError, match="read-only"):
        ro = np.empty((2, 6, 6, 6), f32)
        ro.flags.writeable = False
        _C.conv2d_forward(X, Wt, None, ro, args)
    with pytest.raises(ValueError, match="output size"):
        _C.max_pool2d_forward(X, np.empty((2, 4, 3, 3), f32), None, (2, 2), (2, 2), (0, 0), (1, 1))


# ---- the autodiff layer: fastdl.functional ------------------------------------------------------

needs_autodiff = pytest.mark.skipif(not hasattr(fastdl, "Tensor"), reason="fastdl.Tensor (the autodiff layer) is "
                                    "not on this branch yet")


def _t(rng, shape, requires_grad=True):
    return fastdl.tensor(rng.standard_normal(shape), requires_grad=requires_grad)


@needs_autodiff
@pytest.mark.parametrize("x_shape,w_shape,kwargs", [
    ((2, 4, 6, 5), (3, 4, 3, 3), dict(padding=1)),
    ((1, 3, 7, 7), (4, 3, 3, 2), dict(stride=2, padding=(1, 0), dilation=(2, 1))),
    ((2, 4, 5, 5), (4, 1, 3, 3), dict(padding="same", groups=4)),
    ((4, 6, 6), (4, 2, 2, 2), dict(groups=2, padding="same")),  # unbatched, even kernel
])
def test_functional_conv2d_gradcheck(x_shape, w_shape, kwargs):
    import fastdl.functional as F
    rng = np.random.default_rng(20)
    x, w, b = _t(rng, x_shape), _t(rng, w_shape), _t(rng, (w_shape[0],))
    assert fastdl.autograd.gradcheck(lambda x_, w_, b_: F.conv2d(x_, w_, b_, **kwargs), (x, w, b))


@needs_autodiff
@pytest.mark.parametrize("x_shape,w_shape,kwargs", [
    ((2, 4, 3, 4), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 4, 3), (4, 2, 3, 3), dict(groups=2, dilation=2, padding=1)),
    ((1, 2, 3, 3), (2, 2, 3, 3), dict(stride=1, dilation=2, output_padding=1)),  # output_padding >= stride
    ((2, 3, 3), (2, 3, 2, 2), dict(stride=3)),  # unbatched
])
def test_functional_conv_transpose2d_gradcheck(x_shape, w_shape, kwargs):
    import fastdl.functional as F
    rng = np.random.default_rng(21)
    x, w = _t(rng, x_shape), _t(rng, w_shape)
    b = _t(rng, (w_shape[1] * kwargs.get("groups", 1),))
    assert fastdl.autograd.gradcheck(lambda x_, w_, b_: F.conv_transpose2d(x_, w_, b_, **kwargs), (x, w, b))


@needs_autodiff
def test_functional_pooling_gradcheck():
    import fastdl.functional as F
    rng = np.random.default_rng(22)
    x = _t(rng, (2, 3, 7, 6))
    assert fastdl.autograd.gradcheck(lambda a: F.max_pool2d(a, 3, 2, 1, dilation=(1, 2), ceil_mode=True), (x,))
    assert fastdl.autograd.gradcheck(lambda a: F.avg_pool2d(a, 3, 2, 1, True, False, None), (x,))
    assert fastdl.autograd.gradcheck(lambda a: F.avg_pool2d(a, (2, 3), divisor_override=4), (x,))
    assert fastdl.autograd.gradcheck(lambda a: F.adaptive_avg_pool2d(a, (3, None)), (x,))
    assert fastdl.autograd.gradcheck(lambda a: F.adaptive_avg_pool2d(a[0], 4), (x,))  # unbatched


@needs_autodiff
@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_functional_matches_torch_float32():
    import fastdl.functional as F
    rng = np.random.default_rng(23)
    x = rng.standard_normal((3, 8, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    fx, fw, fb = (fastdl.tensor(a, requires_grad=True) for a in (x, w, b))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    fy = F.max_pool2d(F.relu(F.conv2d(fx, fw, fb, stride=2, padding=1)), 2)
    ty = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(tx, tw, tb, stride=2, padding=1)), 2)
    g = rng.standard_normal(ty.shape).astype(np.float32)
    (fy * fastdl.tensor(g)).sum().backward()
    (ty * torch.tensor(g)).sum().backward()
    assert_close(fy.numpy(), ty.detach().numpy(), np.float32, 72)
    for ours, theirs, k in ((fx, tx, 144), (fw, tw, 108), (fb, tb, 108)):
        assert_close(ours.grad.numpy(), theirs.grad.numpy(), np.float32, k)


@needs_autodiff
def test_functional_bad_input():
    import fastdl.functional as F
    x = fastdl.ones(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"conv2d: input must be 3-D \(C, H, W\) or 4-D"):
        F.conv2d(fastdl.ones(8, 8), fastdl.ones(6, 4, 3, 3))
    with pytest.raises(TypeError, match="conv2d: operands must share one floating-point dtype"):
        F.conv2d(x, fastdl.ones(6, 4, 3, 3, dtype=fastdl.float64))
    with pytest.raises(TypeError, match="conv2d: weight must be a Tensor"):
        F.conv2d(x, np.ones((6, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"conv2d: input has 4 channels but weight expects 3"):
        F.conv2d(x, fastdl.ones(6, 3, 3, 3))
    with pytest.raises(ValueError, match="conv_transpose2d: output_padding"):
        F.conv_transpose2d(x, fastdl.ones(4, 2, 3, 3), stride=2, output_padding=2)
    with pytest.raises(ValueError, match="max_pool2d: padding"):
        F.max_pool2d(x, 2, padding=3)


@pytest.mark.parametrize("name", ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
                                  "conv2d_output_size", "max_pool2d_forward", "max_pool2d_backward",
                                  "avg_pool2d_forward", "avg_pool2d_backward", "adaptive_avg_pool2d_forward",
                                  "adaptive_avg_pool2d_backward", "pool2d_output_size"])
def test_kernels_docstring_examples(name):
    import doctest
    fn = getattr(kernels, name)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(fn, name, globs={name: fn}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
