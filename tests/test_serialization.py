"""fastdl.save / fastdl.load: round trips of nested state dicts, model and optimizer checkpoints
(identical outputs, identical continuation), interoperation with safetensors and PyTorch, atomic
writes, and truncated or corrupted files refused with a clear error."""
import io
import math
import os

import numpy as np
import pytest

import fastdl
from fastdl import nn, optim
from fastdl.serialization import load_torch_state_dict

from .helpers import needs_torch, torch

try:
    import safetensors.numpy as safetensors_numpy
except ImportError:  # pragma: no cover
    safetensors_numpy = None

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def nested_object():
    rng = np.random.default_rng(0)
    return {
        "model": {"0.weight": fastdl.Tensor(rng.standard_normal((3, 4)).astype(np.float32)),
                  "0.bias": fastdl.Tensor(np.zeros(3, np.float32)),
                  "bn.num_batches_tracked": fastdl.Tensor(np.array(7, np.int64))},
        "raw": {"f64": rng.standard_normal((2, 1, 5)), "f16": np.arange(4, dtype=np.float16),
                "i32": np.array([[1, -2]], np.int32), "u8": np.arange(3, dtype=np.uint8),
                "flags": np.array([True, False]), "empty": np.zeros((0, 3), np.float32),
                "scalar": np.array(2.5, np.float32), "sliced": np.arange(12.0).reshape(3, 4)[:, ::2]},
        "state": {0: {"step": 3, "exp_avg": np.ones(2, np.float32)}, 1: {}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1], "foreach": None,
                          "amsgrad": False, "name": "group 0"}],
        "epoch": 12, "best": math.inf, "worst": -math.inf, "nan": math.nan, 1.5: "float key",
        "numpy_scalar": np.float32(0.25), "nested_list": [[1, 2], (3, [4.5])],
    }


def assert_same(a, b, path="root"):
    if isinstance(a, fastdl.Tensor):
        assert isinstance(b, fastdl.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a.data, b.data)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape, path
        np.testing.assert_array_equal(a, b)
        assert b.flags.writeable and b.flags.c_contiguous
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b and type(a if not isinstance(a, np.generic) else a.item()) is type(b), path


def test_nested_round_trip(tmp_path):
    obj = nested_object()
    path = tmp_path / "ckpt.safetensors"
    fastdl.save(obj, path)
    assert_same(obj, fastdl.load(path))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]  # no temporary file left


def test_file_object_and_single_tensor_round_trip():
    buffer = io.BytesIO()
    t = fastdl.Tensor(np.arange(6, dtype=np.float64).reshape(2, 3))
    fastdl.save(t, buffer)
    buffer.seek(0)
    assert_same(t, fastdl.load(buffer))


@pytest.mark.skipif(safetensors_numpy is None, reason="safetensors is not installed")
def test_safetensors_interoperation(tmp_path):
    flat = {"0.weight": fastdl.Tensor(np.ones((2, 3), np.float32)), "1.bias": fastdl.Tensor(np.arange(2.0))}
    fastdl.save(flat, tmp_path / "ours.safetensors")
    theirs = safetensors_numpy.load_file(str(tmp_path / "ours.safetensors"))
    assert sorted(theirs) == ["0.weight", "1.bias"]
    np.testing.assert_array_equal(theirs["1.bias"], np.arange(2.0))
    safetensors_numpy.save_file({"w": np.full((4,), 3, np.int64)}, str(tmp_path / "theirs.safetensors"))
    loaded = fastdl.load(tmp_path / "theirs.safetensors")
    assert list(loaded) == ["w"] and isinstance(loaded["w"], fastdl.Tensor)
    np.testing.assert_array_equal(loaded["w"].data, 3)


def small_model():
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))


def train_steps(model, opt, xs, ys):
    for x, y in zip(xs, ys):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


def test_model_and_optimizer_checkpoint_resumes_identically(tmp_path):
    rng = np.random.default_rng(1)
    xs = [fastdl.Tensor(rng.standard_normal((16, 5)).astype(np.float32)) for _ in range(6)]
    ys = [fastdl.Tensor(rng.integers(0, 3, 16)) for _ in range(6)]
    fastdl.manual_seed(0)
    model = small_model()
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    train_steps(model, opt, xs[:3], ys[:3])
    sched.step()
    path = tmp_path / "ckpt.safetensors"
    fastdl.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                 "rng": fastdl.random.get_rng_state()}, path)
    train_steps(model, opt, xs[3:], ys[3:])
    model.eval()
    expected = model(xs[0]).data.copy()

    ckpt = fastdl.load(path)
    fastdl.manual_seed(123)  # a different initialisation, overwritten by the checkpoint
    model2 = small_model()
    opt2 = optim.Adam(model2.parameters(), lr=0.5)
    sched2 = optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    fastdl.random.set_rng_state(ckpt["rng"])
    train_steps(model2, opt2, xs[3:], ys[3:])
    model2.eval()
    np.testing.assert_array_equal(model2(xs[0]).data, expected)


@needs_torch
def test_load_torch_state_dict_gives_identical_outputs():
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                    torch.nn.Dropout(0.1), torch.nn.Linear(8, 3))
    reference(torch.randn(10, 5))  # move the running statistics away from their initial values
    reference.eval()
    model = small_model().eval()
    result = load_torch_state_dict(model, reference)
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    with torch.no_grad():
        ref = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(fastdl.Tensor(x)).data, ref, rtol=1e-5, atol=1e-6)
    # A dict of NumPy arrays works too, and the fastdl file loads back into torch.
    arrays = {k: v.numpy() for k, v in reference.state_dict().items()}
    load_torch_state_dict(small_model(), arrays)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    fastdl.save({"w": np.ones(3, np.float32)}, path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        fastdl.save({"w": np.zeros(1000, np.float32)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]
    np.testing.assert_array_equal(fastdl.load(path)["w"], 1.0)


def test_unsupported_objects_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"cannot store a object at 'a\.b'.*no pickle"):
        fastdl.save({"a": {"b": object()}}, tmp_path / "x")
    with pytest.raises(TypeError, match="dict key"):
        fastdl.save({(1, 2): 3}, tmp_path / "x")
    with pytest.raises(TypeError, match="cannot store dtype complex128"):
        fastdl.save({"c": np.zeros(2, np.complex128)}, tmp_path / "x")
    assert not os.listdir(tmp_path)


def _good_file(tmp_path):
    path = tmp_path / "good.safetensors"
    fastdl.save({"w": np.arange(64, dtype=np.float32), "meta": {"epoch": 1}}, path)
    return path, path.read_bytes()


@pytest.mark.parametrize("cut", [0, 3, 8, 20, -300, -1])
def test_truncated_files_are_refused(tmp_path, cut):
    path, raw = _good_file(tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        fastdl.load(bad)


@pytest.mark.parametrize("where,words", [("data", "checksum mismatch"), ("header", "truncated or corrupted"),
                                         ("length", "truncated or corrupted")])
def test_corrupted_files_are_refused(tmp_path, where, words):
    path, raw = _good_file(tmp_path)
    data = bytearray(raw)
    if where == "data":
        data[-10] ^= 0xFF
    elif where == "header":
        data[9] = ord("[")
    else:
        data[0:8] = (10**6).to_bytes(8, "little")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=words):
        fastdl.load(bad)


def test_load_rejects_other_devices(tmp_path):
    path, _ = _good_file(tmp_path)
    with pytest.raises(ValueError, match="map_location"):
        fastdl.load(path, map_location="cuda:3")
