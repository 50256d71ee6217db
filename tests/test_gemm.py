"""GEMM family: fastdl.kernels.gemm / matmul against NumPy in float64, on every CPU level."""
import numpy as np
import pytest

import fastdl
from fastdl import kernels
from fastdl.backend import _C

from .helpers import AWKWARD_SIZES, assert_close, randn

DTYPES = (np.float32, np.float64)


def reference(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    r = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    if c is not None and beta != 0:
        r = r + beta * c.astype(np.float64)
    return r


def make(rng, M, N, K, dtype, trans_a=False, trans_b=False):
    a = randn(rng, (K, M) if trans_a else (M, K), dtype)
    b = randn(rng, (N, K) if trans_b else (K, N), dtype)
    return a, b


def blocking_sizes(dtype):
    b = _C.gemm_blocking(np.dtype(dtype).name)
    return sorted({b["MR"] - 1, b["MR"] + 1, b["NR"] - 1, b["NR"] + 1, b["KC"] + 1})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_awkward_sizes_all_transposes(cpu_level, dtype, trans_a, trans_b):
    rng = np.random.default_rng(1)
    sizes = AWKWARD_SIZES[:6] + tuple(blocking_sizes(dtype))
    for M, N, K in [(m, n, k) for m in sizes[::2] for n in sizes[1::2] for k in (1, 5, 17)] + [
        (s, s, s) for s in sizes
    ]:
        a, b = make(rng, M, N, K, dtype, trans_a, trans_b)
        out = kernels.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
        assert out.dtype == dtype and out.shape == (M, N)
        assert_close(out, reference(a, b, trans_a, trans_b), dtype, K)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", [(257, 1031, 129), (1031, 33, 257), (130, 130, 1031), (1, 1031, 777), (777, 1, 513)])
def test_gemm_block_edges(cpu_level, dtype, M, N, K):
    rng = np.random.default_rng(2)
    a, b = make(rng, M, N, K, dtype)
    assert_close(kernels.gemm(a, b), reference(a, b), dtype, K)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_mc_plus_one(dtype):
    # MC + 1 rows cross the outermost (L3) block boundary on the machine's best level.
    rng = np.random.default_rng(3)
    mc = _C.gemm_blocking(np.dtype(dtype).name)["MC"]
    a, b = make(rng, mc + 1, 40, 70, dtype)
    assert_close(kernels.gemm(a, b), reference(a, b), dtype, 70)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_matrix_vector_paths(cpu_level, dtype, trans_a, trans_b):
    # M == 1 and N == 1 take the streaming matrix-vector path: contiguous, transposed and strided.
    rng = np.random.default_rng(12)
    for M, N, K in [(1, 1, 1), (1, 3, 5), (1, 4099, 33), (1, 70, 1031), (3, 1, 5), (4099, 1, 33), (70, 1, 1031)]:
        a, b = make(rng, M, N, K, dtype, trans_a, trans_b)
        c = randn(rng, (M, N), dtype)
        expected = reference(a, b, trans_a, trans_b, alpha=0.75, beta=-0.5, c=c)
        kernels.gemm(a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=0.75, beta=-0.5)
        assert_close(c, expected, dtype, K)
    a = randn(rng, (3, 210), dtype)[1:2, ::3]          # a strided row vector
    b = randn(rng, (140, 90), dtype)[::2, 5:77]         # a strided matrix
    out = np.zeros((2, 144), dtype)[:1, ::2]            # a strided output row
    kernels.gemm(a, b, out)
    assert_close(out, reference(a, b), dtype, 70)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25), (0.0, 3.0), (1.5, -1.0)])
def test_gemm_alpha_beta(cpu_level, dtype, alpha, beta):
    rng = np.random.default_rng(4)
    for M, N, K in [(7, 13, 31), (64, 65, 300), (3, 2, 0)]:
        a, b = make(rng, M, N, K, dtype)
        c = randn(rng, (M, N), dtype)
        expected = reference(a, b, alpha=alpha, beta=beta, c=c)
        kernels.gemm(a, b, c, alpha=alpha, beta=beta)
        assert_close(c, expected, dtype, max(K, 1))


def test_gemm_beta_zero_ignores_nan_in_out():
    a = np.ones((5, 3), np.float32)
    c = np.full((5, 4), np.nan, np.float32)
    kernels.gemm(a, np.ones((3, 4), np.float32), c)
    assert np.all(c == 3.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_strided_and_transposed_views(cpu_level, dtype):
    rng = np.random.default_rng(5)
    big_a = randn(rng, (90, 70), dtype)
    big_b = randn(rng, (80, 110), dtype)
    views = [
        (big_a[::2, 1::3], big_b[3:26:1, ::2]),        # sliced rows and columns
        (big_a[5:40].T[:, :20], big_b[:35, :50]),       # transposed view
        (big_a[::-1, ::-2][:30, :17], big_b[::-3, :9]),  # negative strides
    ]
    for a, b in views:
        k = min(a.shape[1], b.shape[0])
        a, b = a[:, :k], b[:k]
        assert_close(kernels.gemm(a, b), reference(a, b), dtype, k)
    out_base = np.zeros((60, 60), dtype)
    out = out_base[::2, 1::3]                            # strided output
    a, b = big_a[:30, :11], big_b[:11, :20]
    kernels.gemm(a, b, out)
    assert_close(out, reference(a, b), dtype, 11)
    assert np.all(out_base[1::2] == 0)


def test_gemm_broadcast_zero_stride_input():
    a = np.broadcast_to(np.arange(4, dtype=np.float64), (6, 4))
    b = np.arange(12, dtype=np.float64).reshape(4, 3)
    assert_close(kernels.gemm(a, b), reference(np.ascontiguousarray(a), b), np.float64, 4)


def test_gemm_out_aliasing_input_gives_correct_result():
    rng = np.random.default_rng(6)
    a = randn(rng, (20, 20), np.float64)
    b = randn(rng, (20, 20), np.float64)
    expected = reference(a, b, beta=1.0, c=a)
    kernels.gemm(a, b, a, beta=1.0)
    assert_close(a, expected, np.float64, 20)


@pytest.mark.parametrize("M,N,K", [(0, 5, 3), (4, 0, 3), (0, 0, 0), (4, 5, 0)])
def test_gemm_zero_sizes(M, N, K):
    a, b = np.ones((M, K), np.float32), np.ones((K, N), np.float32)
    out = kernels.gemm(a, b)
    assert out.shape == (M, N) and np.all(out == 0)
    c = np.full((M, N), 2.0, np.float32)
    kernels.gemm(a, b, c, beta=0.5)
    assert np.all(c == 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_threads_agree(dtype, threads):
    rng = np.random.default_rng(7)
    a, b = make(rng, 301, 299, 517, dtype)
    fastdl.set_num_threads(1)
    one = kernels.gemm(a, b)
    fastdl.set_num_threads(2)
    two = kernels.gemm(a, b)
    # Each C element is summed in the same order whatever the thread split.
    np.testing.assert_array_equal(one, two)


def test_gemm_levels_agree_within_tolerance():
    rng = np.random.default_rng(8)
    a, b = make(rng, 123, 77, 211, np.float64)
    previous = fastdl.cpu_capability()
    results = []
    try:
        for level in ("portable", "avx2", "avx512")[: ("portable", "avx2", "avx512").index(_C.detected_cpu_capability()) + 1]:
            fastdl.set_cpu_capability(level)
            results.append(kernels.gemm(a, b))
    finally:
        fastdl.set_cpu_capability(previous)
    for r in results:
        assert_close(r, results[0], np.float64, 211)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_large_residual(dtype):
    # A 1024³ product checked through the residual C·x − A·(B·x), O(n²) in float64.
    rng = np.random.default_rng(9)
    n = 1024
    a, b = make(rng, n, n, n, dtype)
    c = kernels.gemm(a, b).astype(np.float64)
    x = rng.standard_normal(n)
    residual = c @ x - a.astype(np.float64) @ (b.astype(np.float64) @ x)
    scale = np.abs(a).astype(np.float64) @ (np.abs(b).astype(np.float64) @ np.abs(x))
    assert np.all(np.abs(residual) <= 16 * np.sqrt(n) * np.finfo(dtype).eps * scale + 1e-300)


# ---- matmul: NumPy's batching and broadcasting ----------------------------------------------------

MATMUL_SHAPES = [
    ((3,), (3,)),
    ((3,), (3, 4)),
    ((2, 3), (3,)),
    ((5, 2, 3), (3,)),
    ((3,), (5, 3, 4)),
    ((2, 3), (3, 4)),
    ((7, 2, 3), (7, 3, 4)),
    ((7, 2, 3), (3, 4)),
    ((2, 3), (6, 3, 4)),
    ((2, 1, 5, 3), (4, 3, 6)),
    ((32, 32, 32), (32, 32, 32)),
    ((0, 2, 3), (3, 4)),
    ((1, 1, 1), (1, 1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_matches_numpy(cpu_level, dtype, sa, sb):
    rng = np.random.default_rng(10)
    a, b = randn(rng, sa, dtype), randn(rng, sb, dtype)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    out = kernels.matmul(a, b)
    assert out.shape == expected.shape and out.dtype == dtype
    assert_close(out, expected, dtype, sa[-1])


def test_matmul_noncontiguous_batches():
    rng = np.random.default_rng(11)
    a = randn(rng, (6, 9, 4), np.float64)[::2, ::3]          # (3, 3, 4)
    b = randn(rng, (4, 6, 3), np.float64).transpose(1, 0, 2)[::2]  # (3, 4, 3)
    assert_close(kernels.matmul(a, b), np.matmul(a, b), np.float64, 4)


def test_matmul_out():
    a, b = np.ones((2, 3, 4)), np.ones((4, 5))
    out = np.empty((2, 3, 5))
    assert kernels.matmul(a, b, out=out) is out
    assert np.all(out == 4)


# ---- bad input ----------------------------------------------------------------------------------

BAD_GEMM = [
    (lambda: kernels.gemm(np.ones(3, np.float32), np.ones((3, 2), np.float32)), ValueError, "2-D"),
    (lambda: kernels.gemm(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32)), ValueError, "(2, 3)"),
    (lambda: kernels.gemm(np.ones((2, 3), np.float32), np.ones((3, 2), np.float64)), TypeError, "dtypes differ"),
    (lambda: kernels.gemm(np.ones((2, 3), np.int64), np.ones((3, 2), np.int64)), TypeError, "int64"),
    (lambda: kernels.gemm(np.ones((2, 3), np.complex64), np.ones((3, 2), np.complex64)), TypeError, "complex64"),
    (lambda: kernels.gemm(np.ones((2, 3)), np.ones((3, 2)), np.empty((2, 3))), ValueError, "(2, 2)"),
    (lambda: kernels.gemm(np.ones((2, 3)), np.ones((3, 2)), np.empty((2, 2), np.float32)), TypeError, "float32"),
    (lambda: kernels.gemm(np.ones((2, 3)), np.ones((3, 2)), beta=1.0), ValueError, "beta"),
    (lambda: kernels.gemm(np.ones((2, 3)), np.ones((3, 2)), [[0, 0], [0, 0]]), TypeError, "out"),
    (lambda: kernels.matmul(np.ones((2, 3)), np.ones((2, 3))), ValueError, "matmul"),
    (lambda: kernels.matmul(np.ones((2, 2, 3)), np.ones((3, 3, 4))), ValueError, "broadcast"),
    (lambda: kernels.matmul(np.float64(1.0), np.ones(3)), ValueError, "at least one dimension"),
]


@pytest.mark.parametrize("call,exc,words", BAD_GEMM)
def test_gemm_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
    assert "gemm" in str(info.value) or "matmul" in str(info.value)


def test_native_gemm_checks_sizes_itself():
    # The C++ entry point refuses inconsistent arrays even when the Python checks are bypassed.
    with pytest.raises(ValueError, match="gemm: inner dimensions differ"):
        _C.gemm(np.ones((2, 3)), np.ones((4, 2)), np.empty((2, 2)), False, False, 1.0, 0.0)
    with pytest.raises(ValueError, match="out must have shape"):
        _C.gemm(np.ones((2, 3)), np.ones((3, 2)), np.empty((3, 2)), False, False, 1.0, 0.0)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.empty((2, 2))
        ro.flags.writeable = False
        _C.gemm(np.ones((2, 3)), np.ones((3, 2)), ro, False, False, 1.0, 0.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        _C.gemm(np.ones((2, 3), np.int32), np.ones((3, 2)), np.empty((2, 2)), False, False, 1.0, 0.0)


def test_set_cpu_capability_rejects_unknown_and_restores():
    with pytest.raises(ValueError, match="portable"):
        fastdl.set_cpu_capability("sse9")
