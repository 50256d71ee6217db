"""Saving and loading state dicts: ``fastdl.save(obj, path)`` / ``fastdl.load(path)``.

The file is a safetensors file (https://github.com/huggingface/safetensors: an 8-byte
little-endian header length, a JSON header naming each tensor's dtype, shape and byte range, then
the raw little-endian bytes), so a flat state dict saved here opens with ``safetensors`` in any
framework, and a plain safetensors file (e.g. from ``safetensors.torch.save_file``) loads here.
What a state dict holds besides tensors (nested dicts, lists, tuples, int keys, numbers, strings,
None — an optimizer's ``param_groups``, a scheduler's counters) is kept as JSON in the header's
metadata, with a CRC-32 of the data so a damaged file is refused rather than loaded wrong. No
pickle: loading a file never runs code.

Writes are atomic: the bytes go to a temporary file in the same directory, are flushed to disk,
and replace ``path`` in one rename, so a crash leaves the previous checkpoint intact.

>>> import os, tempfile, numpy as np, fastdl
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
>>> fastdl.save({"w": np.arange(3, dtype=np.float32), "epoch": 4, "betas": (0.9, 0.999)}, path)
>>> ckpt = fastdl.load(path)
>>> ckpt["w"], ckpt["epoch"], ckpt["betas"]
(array([0., 1., 2.], dtype=float32), 4, (0.9, 0.999))
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib

import numpy as np

__all__ = ["save", "load", "load_torch_state_dict"]

_FORMAT = "fastdl-1"
# safetensors dtype names ↔ NumPy (little-endian).
_DTYPES = {
    "BOOL": np.dtype("bool"),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "F64": np.dtype("<f8"),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def _is_torch_tensor(value) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach") and hasattr(value, "numpy")


def _tensor_class():
    from .tensor import Tensor

    return Tensor


# ---- save ---------------------------------------------------------------------------------------

class _Writer:
    """Walks the object: tensors become named entries, everything else a JSON tree."""

    def __init__(self):
        self.arrays: list[tuple[str, np.ndarray]] = []
        self.names: set[str] = set()

    def _name(self, path: str) -> str:
        name = path or "tensor"
        k = 1
        while name in self.names or name == "__metadata__":
            name = f"{path}#{k}"
            k += 1
        self.names.add(name)
        return name

    def _add(self, path: str, array: np.ndarray, kind: str):
        if array.dtype.newbyteorder("<") not in _NAMES and array.dtype not in _NAMES:
            raise TypeError(f"fastdl.save: cannot store dtype {array.dtype} at '{path}' "
                            f"(supported: {', '.join(sorted(str(d) for d in _NAMES))})")
        name = self._name(path)
        # (np.ascontiguousarray would turn a 0-d array into shape (1,).)
        array = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
        self.arrays.append((name, array))
        return {"tensor": name, "kind": kind}

    def encode(self, value, path: str):
        def child(key) -> str:
            return f"{path}.{key}" if path else str(key)

        if isinstance(value, np.ndarray):
            return self._add(path, value, "numpy")
        if _is_torch_tensor(value):
            return self._add(path, value.detach().cpu().numpy(), "tensor")
        data = getattr(value, "data", None)
        if isinstance(data, np.ndarray) and hasattr(value, "requires_grad"):
            return self._add(path, data, "tensor")
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, (bool, int, str)):
            return {"value": value}
        if isinstance(value, float):
            return {"value": value} if math.isfinite(value) else {"float": repr(value)}
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if isinstance(key, np.generic):
                    key = key.item()
                if not (key is None or isinstance(key, (str, int, float, bool))):
                    raise TypeError(f"fastdl.save: dict key {key!r} at '{path}' is a {type(key).__name__}; "
                                    "keys must be str, int, float, bool or None")
                items.append([key, self.encode(item, child(key))])
            return {"dict": items}
        if isinstance(value, (list, tuple)):
            kind = "list" if isinstance(value, list) else "tuple"
            return {kind: [self.encode(item, child(i)) for i, item in enumerate(value)]}
        raise TypeError(
            f"fastdl.save: cannot store a {type(value).__name__} at '{path or '<root>'}'; a checkpoint holds "
            "tensors, arrays, numbers, strings, None and dicts/lists/tuples of them (no pickle)"
        )


def save(obj, f) -> None:
    """Save a tensor or a (nested) state dict to ``f`` (a path, or a binary file object).

    obj: Tensors, NumPy arrays (or PyTorch tensors), Python numbers, strings, None, and dicts
    (keys str/int/float/bool/None), lists and tuples of them — e.g.
    ``{"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}``.
    Writing to a path is atomic (temporary file + rename).
    """
    writer = _Writer()
    tree = writer.encode(obj, "")
    header, offset = {}, 0
    for name, array in writer.arrays:
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    crc = 0
    for _, array in writer.arrays:
        crc = zlib.crc32(memoryview(array).cast("B") if array.nbytes else b"", crc)
    header["__metadata__"] = {
        "format": _FORMAT,
        "fastdl.structure": json.dumps(tree, separators=(",", ":")),
        "fastdl.crc32": str(crc),
        "fastdl.data_bytes": str(offset),
    }
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8-byte alignment

    def write(fh):
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for _, array in writer.arrays:
            if array.nbytes:
                fh.write(memoryview(array).cast("B"))

    if hasattr(f, "write"):
        write(f)
        return
    path = os.fspath(f)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


# ---- load ---------------------------------------------------------------------------------------

def _corrupt(where: str, why: str) -> ValueError:
    return ValueError(f"fastdl.load: {where} is truncated or corrupted: {why}")


def load(f, map_location=None, weights_only: bool = True):
    """Load what :func:`save` wrote (or any safetensors file) from a path or binary file object.

    Tensors come back as fastdl Tensors (NumPy arrays where NumPy arrays were saved); a plain
    safetensors file gives a flat dict name → Tensor. A truncated or damaged file raises
    ValueError naming what is wrong. ``map_location`` may be None or "cpu";
    ``weights_only`` is accepted for PyTorch compatibility (loading never unpickles).
    """
    if map_location not in (None, "cpu"):
        raise ValueError(f"fastdl.load: map_location={map_location!r} is not supported (only 'cpu')")
    if hasattr(f, "read"):
        raw, where = f.read(), "the file object"
    else:
        where = repr(os.fspath(f))
        with open(f, "rb") as fh:
            raw = fh.read()
    size = len(raw)
    if size < 8:
        raise _corrupt(where, f"it has {size} bytes, fewer than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER or 8 + n > size:
        raise _corrupt(where, f"the header claims {n} bytes but the file has {size - 8} after the length")
    try:
        header = json.loads(raw[8: 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(where, f"the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(where, "the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    data = memoryview(raw)[8 + n:]
    arrays = {}
    end = 0
    for name, entry in header.items():
        try:
            dtype_name = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, stop = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(where, f"the header entry of tensor '{name}' is malformed ({exc!r})") from None
        dtype = _DTYPES.get(dtype_name)
        if dtype is None:
            raise TypeError(f"fastdl.load: tensor '{name}' in {where} has unsupported dtype {dtype_name}")
        if any(d < 0 for d in shape) or begin < 0 or stop - begin != math.prod(shape) * dtype.itemsize:
            raise _corrupt(where, f"tensor '{name}' {shape} {dtype} has byte range [{begin}, {stop})")
        if stop > len(data):
            raise _corrupt(where, f"tensor '{name}' needs bytes [{begin}, {stop}) but the data section has "
                                  f"{len(data)} bytes")
        arrays[name] = (dtype, shape, begin, stop)
        end = max(end, stop)
    expected = meta.get("fastdl.data_bytes")
    if expected is not None and int(expected) != len(data):
        raise _corrupt(where, f"the data section has {len(data)} bytes, {expected} were written")
    if "fastdl.crc32" in meta:
        crc = zlib.crc32(data)
        if str(crc) != meta["fastdl.crc32"]:
            raise _corrupt(where, f"checksum mismatch (CRC-32 {crc}, {meta['fastdl.crc32']} was written)")
    elif end != len(data):
        raise _corrupt(where, f"the data section has {len(data)} bytes but the tensors cover {end}")

    def array(name):
        dtype, shape, begin, stop = arrays[name]
        return np.frombuffer(data[begin:stop], dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)

    structure = meta.get("fastdl.structure")
    if structure is None:
        tensor = _tensor_class()
        return {name: tensor(array(name)) for name in arrays}
    try:
        tree = json.loads(structure)
        return _decode(tree, array)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise _corrupt(where, f"the structure metadata is damaged ({exc!r})") from None


def _decode(node, array):
    if "tensor" in node:
        value = array(node["tensor"])
        return value if node.get("kind") == "numpy" else _tensor_class()(value)
    if "value" in node:
        return node["value"]
    if "float" in node:
        return float(node["float"])
    if "dict" in node:
        return {key: _decode(item, array) for key, item in node["dict"]}
    if "list" in node:
        return [_decode(item, array) for item in node["list"]]
    if "tuple" in node:
        return tuple(_decode(item, array) for item in node["tuple"])
    raise ValueError(f"unknown node {sorted(node)}")


# ---- PyTorch state dicts ---------------------------------------------------------------------------

def load_torch_state_dict(module, state_dict, strict: bool = True):
    """Copy a PyTorch model's weights into the matching fastdl module.

    state_dict: a ``torch.nn.Module``, its ``state_dict()`` (torch tensors), or a dict of NumPy
    arrays, with PyTorch's key names (``0.weight``, ``bn.running_mean``). Values are copied and
    cast to each fastdl parameter's dtype. Returns ``module.load_state_dict``'s result
    (missing and unexpected keys).
    """
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        state_dict = state_dict.state_dict()
    converted = {}
    for key, value in state_dict.items():
        if _is_torch_tensor(value):
            value = value.detach().cpu().numpy()
        converted[key] = value
    return module.load_state_dict(converted, strict=strict)
