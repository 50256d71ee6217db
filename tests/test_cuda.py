"""CUDA backend: the GEMM family on the GPU (vs a float64 reference and vs the CPU result), tensor
cores, batched matmul, tensors on "cuda", autodiff there, mixed-device errors, and the errors
raised where CUDA cannot run.

GPU tests take the ``cuda`` fixture (or ``device``): they are skipped with the reason on a machine
without a usable GPU, and fail instead under FASTDL_REQUIRE_CUDA=1. The tests of the errors for a
missing CUDA run everywhere else.
"""
import numpy as np
import pytest

import fastdl
from fastdl import kernels
from fastdl.backend import _C

from .helpers import AWKWARD_SIZES, assert_close, randn

DTYPES = (np.float32, np.float64)


def reference(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None):
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    r = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    if c is not None and beta != 0:
        r = r + beta * np.asarray(c, np.float64)
    return r


def host(x):
    """A GPU array (any float dtype, bfloat16 included) as float64 NumPy."""
    import cupy

    return cupy.asnumpy(x.astype(cupy.float32) if x.dtype.itemsize == 2 else x).astype(np.float64)


@pytest.fixture
def tf32():
    """Turn TF32 on for one test, restoring the setting after."""
    previous = fastdl.backends.allow_tf32
    fastdl.backends.allow_tf32 = True
    yield
    fastdl.backends.allow_tf32 = previous


# ---- without CUDA: what is missing, and how to fix it ---------------------------------------------

needs_no_cuda = pytest.mark.skipif(fastdl.cuda.is_available(), reason="CUDA is available on this machine")


class FakeCudaArray:
    """Something that exposes __cuda_array_interface__ (checked before any pointer is touched)."""

    def __init__(self, shape, typestr="<f4", strides=None, mask=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False), "version": 3,
                                         "strides": strides, "mask": mask}


def test_is_available_agrees_with_the_reason():
    reason = fastdl.cuda.unavailable_reason()
    assert fastdl.cuda.is_available() == (reason is None)
    if reason is not None:
        assert fastdl.cuda.device_count() == 0


@needs_no_cuda
@pytest.mark.parametrize("call", [
    lambda: fastdl.zeros(2, device="cuda"),
    lambda: fastdl.randn(2, 3, device="cuda:0"),
    lambda: fastdl.tensor([1.0], device="cuda"),
    lambda: fastdl.ones(3).to("cuda"),
    lambda: fastdl.ones(3).cuda(),
    lambda: fastdl.cuda.synchronize(),
    lambda: fastdl.cuda.manual_seed(0),
])
def test_asking_for_cuda_says_what_is_missing(call):
    with pytest.raises(RuntimeError) as info:
        call()
    message = str(info.value)
    assert "CUDA is not available" in message
    info_cuda = fastdl.backend_info()["cuda"]
    if not info_cuda["built"]:
        assert "built without CUDA" in message and "FASTDL_CUDA=ON" in message
    if info_cuda["cupy_version"] is None:
        assert "CuPy is not installed" in message and "fastdl[cuda]" in message
    if info_cuda["built"] and not info_cuda["devices"]:
        assert "no usable GPU" in message


@pytest.mark.skipif(fastdl.backend_info()["cuda"]["built"], reason="this build has CUDA")
def test_native_cuda_entry_points_say_built_without_cuda():
    a = FakeCudaArray((2, 3))
    with pytest.raises(ValueError, match="built without CUDA"):
        _C.gemm_cuda(a, FakeCudaArray((3, 2)), FakeCudaArray((2, 2)))
    with pytest.raises(ValueError, match="built without CUDA"):
        _C.matmul_batched_cuda(FakeCudaArray((4, 2, 3)), FakeCudaArray((4, 3, 2)), FakeCudaArray((4, 2, 2)))


BAD_CUDA_ARRAYS = [
    (lambda: _C.gemm_cuda(FakeCudaArray((2, 3), "<i4"), FakeCudaArray((3, 2)), FakeCudaArray((2, 2))), TypeError,
     "float32, float64, float16 or bfloat16"),
    (lambda: _C.gemm_cuda(np.ones((2, 3), np.float32), FakeCudaArray((3, 2)), FakeCudaArray((2, 2))), TypeError,
     "do not mix CPU and CUDA"),
    (lambda: _C.gemm_cuda(FakeCudaArray((2, 3)), FakeCudaArray((3, 2), "<f8"), FakeCudaArray((2, 2))), TypeError,
     "dtypes differ"),
    (lambda: _C.gemm_cuda(FakeCudaArray((2, 3)), FakeCudaArray((4, 2)), FakeCudaArray((2, 2))), ValueError,
     "inner dimensions differ"),
    (lambda: _C.gemm_cuda(FakeCudaArray((2, 3)), FakeCudaArray((3, 2)), FakeCudaArray((3, 2))), ValueError,
     "out must have shape (2, 2)"),
    (lambda: _C.gemm_cuda(FakeCudaArray((6,)), FakeCudaArray((3, 2)), FakeCudaArray((2, 2))), ValueError, "2-D"),
    (lambda: _C.gemm_cuda(FakeCudaArray((2, 3), strides=(12, 2)), FakeCudaArray((3, 2)), FakeCudaArray((2, 2))),
     ValueError, "multiples of the item size"),
    (lambda: _C.gemm_cuda(FakeCudaArray((2, 3), mask=1), FakeCudaArray((3, 2)), FakeCudaArray((2, 2))), ValueError,
     "mask"),
    (lambda: _C.matmul_batched_cuda(FakeCudaArray((4, 2, 3)), FakeCudaArray((5, 3, 2)), FakeCudaArray((4, 2, 2))),
     ValueError, "shapes do not match"),
]


@pytest.mark.parametrize("call,exc,words", BAD_CUDA_ARRAYS)
def test_cuda_array_interface_is_checked(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
    assert "gemm" in str(info.value) or "matmul" in str(info.value)


def test_unknown_device_names_are_refused():
    for bad in ("tpu", "gpu", "cuda0"):
        with pytest.raises(ValueError, match="device"):
            fastdl.zeros(2, device=bad)


def test_backend_info_lists_the_cuda_gemm():
    info = fastdl.backend_info()
    assert "cuda" in info["families"]["gemm"]
    assert fastdl.backends.allow_tf32 is False  # off by default, as in PyTorch


# ---- GEMM on the GPU --------------------------------------------------------------------------------

def gpu_pair(cp, rng, M, N, K, dtype, trans_a=False, trans_b=False):
    a = randn(rng, (K, M) if trans_a else (M, K), dtype)
    b = randn(rng, (N, K) if trans_b else (K, N), dtype)
    return a, b, cp.asarray(a), cp.asarray(b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_cuda_gemm_awkward_sizes_all_transposes(cuda, dtype, trans_a, trans_b):
    rng = np.random.default_rng(1)
    # 1, primes and the tile sizes ± 1 of every kernel (64, 128; BK 8 and 16).
    sizes = AWKWARD_SIZES + (8, 9, 15, 17, 63, 65, 127, 129)
    for M, N, K in [(m, n, k) for m in sizes[::3] for n in sizes[1::3] for k in (1, 5, 17, 130)] + [
        (s, s, s) for s in sizes
    ]:
        a, b, da, db = gpu_pair(cuda, rng, M, N, K, dtype, trans_a, trans_b)
        out = kernels.gemm(da, db, trans_a=trans_a, trans_b=trans_b)
        assert isinstance(out, cuda.ndarray) and out.dtype == dtype and out.shape == (M, N)
        assert_close(host(out), reference(a, b, trans_a, trans_b), dtype, K)
        # … and the same numbers as the CPU kernel, to the same tolerance.
        assert_close(host(out), kernels.gemm(a, b, trans_a=trans_a, trans_b=trans_b), dtype, K)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", [(257, 1031, 129), (1031, 33, 257), (130, 130, 1031), (1, 1031, 777),
                                   (777, 1, 513), (1024, 1024, 1024), (2049, 63, 2047)])
def test_cuda_gemm_block_edges_and_grid_sizes(cuda, dtype, M, N, K):
    rng = np.random.default_rng(2)
    a, b, da, db = gpu_pair(cuda, rng, M, N, K, dtype)
    assert_close(host(kernels.gemm(da, db)), reference(a, b), dtype, K)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25), (0.0, 3.0), (1.5, -1.0)])
def test_cuda_gemm_alpha_beta(cuda, dtype, alpha, beta):
    rng = np.random.default_rng(4)
    for M, N, K in [(7, 13, 31), (64, 65, 300), (129, 257, 9), (3, 2, 0)]:
        a, b, da, db = gpu_pair(cuda, rng, M, N, K, dtype)
        c = randn(rng, (M, N), dtype)
        dc = cuda.asarray(c)
        kernels.gemm(da, db, dc, alpha=alpha, beta=beta)
        assert_close(host(dc), reference(a, b, alpha=alpha, beta=beta, c=c), dtype, max(K, 1))


def test_cuda_gemm_beta_zero_ignores_nan_in_out(cuda):
    c = cuda.full((5, 4), np.nan, np.float32)
    kernels.gemm(cuda.ones((5, 3), np.float32), cuda.ones((3, 4), np.float32), c)
    assert bool((c == 3.0).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_gemm_strided_transposed_and_misaligned_views(cuda, dtype):
    rng = np.random.default_rng(5)
    big_a, big_b = randn(rng, (90, 70), dtype), randn(rng, (80, 110), dtype)
    dA, dB = cuda.asarray(big_a), cuda.asarray(big_b)
    views = [
        (np.s_[::2, 1:70], np.s_[3:72, ::2]),      # row step, odd offsets (unaligned vectors)
        (np.s_[1:31, 3:20], np.s_[5:22, 1:99]),    # leading dimensions ≠ widths, unaligned
        (np.s_[::2, ::3], np.s_[:24, :50]),        # no unit stride: a contiguous copy is made
    ]
    for sa, sb in views:
        a, b = big_a[sa], big_b[sb]
        k = min(a.shape[1], b.shape[0])
        a, b = a[:, :k], b[:k]
        out = kernels.gemm(dA[sa][:, :k], dB[sb][:k])
        assert_close(host(out), reference(a, b), dtype, k)
        out_t = kernels.gemm(cuda.asarray(np.ascontiguousarray(a.T)).T, dB[sb][:k])  # column-major a
        assert_close(host(out_t), reference(a, b), dtype, k)
    base = cuda.zeros((60, 60), dtype)
    out = base[::2, 1::3]                                # strided output
    kernels.gemm(dA[:30, :11], dB[:11, :20], out)
    assert_close(host(out), reference(big_a[:30, :11], big_b[:11, :20]), dtype, 11)
    assert bool((base[1::2] == 0).all())


def test_cuda_gemm_out_aliasing_input(cuda):
    rng = np.random.default_rng(6)
    a, b = randn(rng, (20, 20), np.float64), randn(rng, (20, 20), np.float64)
    da = cuda.asarray(a)
    kernels.gemm(da, cuda.asarray(b), da, beta=1.0)
    assert_close(host(da), reference(a, b, beta=1.0, c=a), np.float64, 20)


@pytest.mark.parametrize("M,N,K", [(0, 5, 3), (4, 0, 3), (0, 0, 0), (4, 5, 0)])
def test_cuda_gemm_zero_sizes(cuda, M, N, K):
    out = kernels.gemm(cuda.ones((M, K), np.float32), cuda.ones((K, N), np.float32))
    assert out.shape == (M, N) and bool((out == 0).all())


def test_cuda_gemm_runs_on_the_current_stream(cuda):
    rng = np.random.default_rng(7)
    a, b, da, db = gpu_pair(cuda, rng, 300, 200, 100, np.float32)
    stream = cuda.cuda.Stream(non_blocking=True)
    with stream:
        out = kernels.gemm(da, db)
        stream.synchronize()
    assert_close(host(out), reference(a, b), np.float32, 100)


# ---- tensor cores ----------------------------------------------------------------------------------

@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_cuda_tf32_gemm(cuda, tf32, trans_a, trans_b):
    rng = np.random.default_rng(8)
    for M, N, K in [(1, 1, 1), (7, 13, 31), (129, 127, 33), (257, 300, 1031), (64, 64, 8)]:
        a, b, da, db = gpu_pair(cuda, rng, M, N, K, np.float32, trans_a, trans_b)
        out = kernels.gemm(da, db, trans_a=trans_a, trans_b=trans_b)
        assert_close(host(out), reference(a, b, trans_a, trans_b), "tf32", K)
    c = randn(rng, (129, 127), np.float32)
    a, b, da, db = gpu_pair(cuda, rng, 129, 127, 40, np.float32)
    dc = cuda.asarray(c)
    kernels.gemm(da, db, dc, alpha=0.5, beta=-2.0)
    assert_close(host(dc), reference(a, b, alpha=0.5, beta=-2.0, c=c), "tf32", 40)


def test_cuda_float32_is_not_tf32_by_default(cuda):
    # 1 + 2^-12 is not a TF32 number: a TF32 product would lose it, CUDA cores keep it.
    a = cuda.full((1, 8), 1.0 + 2.0**-12, np.float32)
    b = cuda.ones((8, 1), np.float32)
    assert float(kernels.gemm(a, b)[0, 0]) == pytest.approx(8 * (1.0 + 2.0**-12), rel=1e-7)


def half_dtypes(cp):
    out = [("float16", np.float16)]
    try:
        import ml_dtypes

        cp.zeros(1, dtype=ml_dtypes.bfloat16)
        out.append(("bfloat16", ml_dtypes.bfloat16))
    except Exception:
        pass
    return out


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_cuda_half_precision_gemm(cuda, trans_a, trans_b):
    rng = np.random.default_rng(9)
    for name, dt in half_dtypes(cuda):
        for M, N, K in [(1, 1, 1), (7, 13, 31), (129, 127, 33), (257, 300, 1031), (16, 16, 16)]:
            a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dt)
            b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dt)
            out = kernels.gemm(cuda.asarray(a), cuda.asarray(b), trans_a=trans_a, trans_b=trans_b)
            assert out.dtype == np.dtype(dt)
            # Exact products of the rounded inputs, float32 sums, one rounding to the output format.
            expected = reference(a.astype(np.float64), b.astype(np.float64), trans_a, trans_b)
            assert_close(host(out), expected, name, K)


# ---- batched matmul -----------------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3,), (3,)), ((3,), (3, 4)), ((2, 3), (3,)), ((5, 2, 3), (3,)), ((3,), (5, 3, 4)), ((2, 3), (3, 4)),
    ((7, 2, 3), (7, 3, 4)), ((7, 2, 3), (3, 4)), ((2, 3), (6, 3, 4)), ((2, 1, 5, 3), (4, 3, 6)),
    ((32, 32, 32), (32, 32, 32)), ((0, 2, 3), (3, 4)), ((1, 1, 1), (1, 1, 1)), ((3, 129, 65), (3, 65, 130)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_cuda_matmul_matches_numpy_and_cpu(cuda, dtype, sa, sb):
    rng = np.random.default_rng(10)
    a, b = randn(rng, sa, dtype), randn(rng, sb, dtype)
    out = kernels.matmul(cuda.asarray(a), cuda.asarray(b))
    assert isinstance(out, cuda.ndarray) and out.dtype == dtype
    assert_close(host(out), np.matmul(a.astype(np.float64), b.astype(np.float64)), dtype, sa[-1])
    assert_close(host(out), kernels.matmul(a, b), dtype, sa[-1])


def test_cuda_matmul_noncontiguous_batches_and_tf32(cuda, tf32):
    rng = np.random.default_rng(11)
    a = randn(rng, (6, 9, 40), np.float32)
    b = randn(rng, (40, 6, 30), np.float32)
    da = cuda.asarray(a)[::2, ::3]                          # (3, 3, 40)
    db = cuda.asarray(b).transpose(1, 0, 2)[::2]            # (3, 40, 30)
    expected = np.matmul(a[::2, ::3].astype(np.float64), b.transpose(1, 0, 2)[::2].astype(np.float64))
    assert_close(host(kernels.matmul(da, db)), expected, "tf32", 40)


# ---- tensors on the GPU -----------------------------------------------------------------------------

def test_tensor_moves_only_when_asked(cuda):
    x = fastdl.randn(3, 4)
    y = x.to("cuda")
    assert y.device == "cuda:0" and y.is_cuda and isinstance(y.data, cuda.ndarray)
    assert y.to("cuda") is y and y.cuda() is y
    back = y.cpu()
    assert back.device == "cpu" and np.array_equal(back.numpy(), x.numpy())
    assert x.cpu() is x
    with pytest.raises(TypeError, match="cpu"):
        y.numpy()
    z = fastdl.zeros(2, 3, device="cuda")
    assert z.device == "cuda:0" and z.dtype == fastdl.float32
    assert fastdl.tensor(cuda.ones(3)).device == "cuda:0"       # a CuPy array stays on its GPU
    assert fastdl.tensor([1.0, 2.0], device="cuda:0").tolist() == [1.0, 2.0]
    assert (y * 2).device == "cuda:0" and (y @ y.T).device == "cuda:0"
    assert y.sum().item() == pytest.approx(float(x.sum().item()), rel=1e-5)


@pytest.mark.parametrize("make", [
    lambda d: fastdl.zeros(2, 3, device=d), lambda d: fastdl.ones(4, device=d), lambda d: fastdl.empty(2, device=d),
    lambda d: fastdl.full((2,), 7.0, device=d), lambda d: fastdl.arange(5, device=d),
    lambda d: fastdl.linspace(0, 1, 5, device=d), lambda d: fastdl.eye(3, device=d),
    lambda d: fastdl.rand(3, device=d), lambda d: fastdl.randn(3, device=d), lambda d: fastdl.randint(0, 5, (3,), device=d),
    lambda d: fastdl.randperm(4, device=d),
])
def test_creation_functions_take_device(device, make):
    t = make(device)
    assert t.device == ("cpu" if device == "cpu" else "cuda:0")


def test_same_seed_same_numbers_on_both_devices(cuda):
    fastdl.manual_seed(3)
    a = fastdl.randn(5)
    fastdl.manual_seed(3)
    b = fastdl.randn(5, device="cuda")
    assert np.array_equal(a.numpy(), b.cpu().numpy())


def test_mixed_devices_raise(cuda):
    x, y = fastdl.ones(2, 3), fastdl.ones(3, 2, device="cuda")
    for call in (lambda: x @ y, lambda: x + y.T, lambda: fastdl.matmul(y, x.T)):
        with pytest.raises(ValueError, match="different devices"):
            call()
    with pytest.raises(TypeError, match="CPU"):
        kernels.gemm(np.ones((2, 3), np.float32), cuda.ones((3, 2), np.float32))
    with pytest.raises(TypeError, match="CPU"):
        kernels.matmul(cuda.ones((2, 3), np.float32), np.ones((3, 2), np.float32))


@pytest.mark.parametrize("shapes", [((5, 7), (7, 3)), ((4, 5, 7), (7, 3)), ((2, 4, 5, 7), (2, 4, 7, 3)), ((7,), (7, 3))])
def test_matmul_autodiff_on_cuda_matches_cpu(cuda, shapes):
    rng = np.random.default_rng(12)
    sa, sb = shapes
    a0, b0 = randn(rng, sa, np.float64), randn(rng, sb, np.float64)
    grads = {}
    for dev in ("cpu", "cuda"):
        a = fastdl.tensor(a0, device=dev, requires_grad=True)
        b = fastdl.tensor(b0, device=dev, requires_grad=True)
        w = fastdl.tensor(randn(np.random.default_rng(13), np.matmul(a0, b0).shape, np.float64), device=dev)
        ((a @ b) * w).sum().backward()
        assert a.grad.device == a.device and b.grad.device == b.device
        grads[dev] = (a.grad.cpu().numpy(), b.grad.cpu().numpy())
    for g_cpu, g_gpu in zip(grads["cpu"], grads["cuda"]):
        assert_close(g_gpu, g_cpu, np.float64, sa[-1] * 4)


def test_gradient_flows_back_through_to(cuda):
    x = fastdl.randn(3, 4, dtype=fastdl.float64, requires_grad=True)
    (x.to("cuda") * 3.0).sum().backward()
    assert x.grad.device == "cpu" and np.allclose(x.grad.numpy(), 3.0)


def test_linear_autodiff_on_cuda_matches_cpu(cuda):
    rng = np.random.default_rng(14)
    x0, w0, b0 = randn(rng, (9, 17), np.float64), randn(rng, (5, 17), np.float64), randn(rng, (5,), np.float64)
    results = {}
    for dev in ("cpu", "cuda"):
        x, w, b = (fastdl.tensor(v, device=dev, requires_grad=True) for v in (x0, w0, b0))
        y = fastdl.functional.linear(x, w, b)
        (y * y).sum().backward()
        results[dev] = [t.cpu().detach().numpy() for t in (y, x.grad, w.grad, b.grad)]
    for r_gpu, r_cpu in zip(results["cuda"], results["cpu"]):
        assert_close(r_gpu, r_cpu, np.float64, 17 * 9)


# The Tensor op suite on CUDA: each op's value and gradient on the GPU against the same op on the CPU.
OPS = [
    ("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / (b * b + 1)), ("pow", lambda a, b: (a * a + 1) ** 1.5),
    ("exp", lambda a, b: a.exp()), ("log", lambda a, b: (a * a + 1).log()), ("tanh", lambda a, b: a.tanh()),
    ("sigmoid", lambda a, b: a.sigmoid()), ("relu", lambda a, b: fastdl.relu(a)), ("sqrt", lambda a, b: (a * a + 1).sqrt()),
    ("sum", lambda a, b: a.sum(dim=1)), ("mean", lambda a, b: a.mean(dim=0)), ("max", lambda a, b: a.max(dim=1)[0]),
    ("softmax", lambda a, b: fastdl.softmax(a, dim=1)), ("log_softmax", lambda a, b: fastdl.log_softmax(a, dim=1)),
    ("logsumexp", lambda a, b: fastdl.logsumexp(a, dim=1)), ("var", lambda a, b: a.var(dim=1)),
    ("transpose", lambda a, b: a.T * b.T), ("reshape", lambda a, b: a.reshape(3, 10)),
    ("cat", lambda a, b: fastdl.cat([a, b], dim=0)), ("stack", lambda a, b: fastdl.stack([a, b])),
    ("index", lambda a, b: a[1:, ::2]), ("where", lambda a, b: fastdl.where(a > 0, a, b)),
    ("matmul", lambda a, b: a @ b.T), ("clamp", lambda a, b: a.clamp(-0.5, 0.5)),
]


@pytest.mark.parametrize("name,fn", OPS, ids=[n for n, _ in OPS])
def test_tensor_op_suite_on_cuda(cuda, name, fn):
    rng = np.random.default_rng(15)
    a0, b0 = randn(rng, (5, 6), np.float64), randn(rng, (5, 6), np.float64)
    results = {}
    for dev in ("cpu", "cuda"):
        a = fastdl.tensor(a0, device=dev, requires_grad=True)
        b = fastdl.tensor(b0, device=dev, requires_grad=True)
        out = fn(a, b)
        assert out.device == a.device
        (out * out).sum().backward()
        results[dev] = [out.detach().cpu().numpy(), a.grad.cpu().numpy()] + (
            [b.grad.cpu().numpy()] if b.grad is not None else [])
    assert len(results["cuda"]) == len(results["cpu"])
    for r_gpu, r_cpu in zip(results["cuda"], results["cpu"]):
        assert_close(r_gpu, r_cpu, np.float64, 64)


@needs_no_cuda
def test_cli_bench_cuda_explains_why_it_cannot_run():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "fastdl.cli", "bench", "gemm", "--device", "cuda",
                           "--keep-openblas-env"], capture_output=True, text=True)
    assert proc.returncode == 1 and "CUDA is not available" in proc.stderr
