"""Process groups and collectives for data-parallel training: MPI (mpi4py) between CPU processes,
NCCL (CuPy's bindings) between GPUs. fastdl has no transport of its own.

Start one process per CPU socket share or per GPU with the MPI launcher and call
:func:`init_process_group` in each: the rank and world size come from the launcher
(``MPI.COMM_WORLD``); for ``backend="nccl"`` rank 0 creates the NCCL unique id and broadcasts it
over MPI, and each process takes the GPU ``local_rank % device_count``.

    mpirun -n 2 python train.py                       # one machine
    mpirun -n 8 --hostfile hosts python train.py      # several machines

Collectives work in place on fastdl Tensors or raw NumPy (``"mpi"``) / CuPy (``"nccl"``) arrays:
:func:`all_reduce` (``"sum"``, ``"mean"``, ``"max"``), :func:`broadcast`, :func:`all_gather`,
:func:`barrier`. NCCL collectives are enqueued on CuPy's current stream and return at once, as in
PyTorch; MPI ones complete before returning unless ``async_op=True`` (then a :class:`Work` is
returned, and ``work.wait()`` finishes it).

Failing fast instead of hanging: a rank that raises an uncaught exception prints it, names itself
and aborts the whole job (``MPI_Abort``), and a watchdog thread aborts the job when one collective
waits longer than ``timeout`` seconds (a rank that hangs, exited or took another code path), naming
the rank, the collective and its sequence number.

>>> import fastdl.distributed as dist
>>> dist.is_initialized()
False
"""
from __future__ import annotations

import datetime
import os
import sys
import threading
import time

import numpy as np

__all__ = [
    "ReduceOp",
    "Work",
    "all_gather",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast",
    "bucket_assignment",
    "destroy_process_group",
    "distributed_info",
    "get_backend",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_available",
    "is_initialized",
    "is_nccl_available",
]

INSTALL_HINT = (
    "install an MPI library and mpi4py: `apt-get install openmpi-bin libopenmpi-dev` (Debian/Ubuntu), "
    "then `pip install mpi4py` (or `pip install 'fastdl[distributed]'`)"
)
DEFAULT_TIMEOUT = 1800.0


class ReduceOp:
    """Reductions of :func:`all_reduce` (the strings ``"sum"``, ``"mean"``, ``"max"`` work too)."""

    SUM = "sum"
    MEAN = "mean"
    AVG = "mean"
    MAX = "max"


_OPS = ("sum", "mean", "max")


def _import_mpi():
    """mpi4py's MPI module, or an ImportError that says what to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"fastdl.distributed: the MPI backend needs mpi4py and an MPI library "
                          f"({exc}); {INSTALL_HINT}") from exc
    except (RuntimeError, OSError) as exc:  # mpi4py is installed but libmpi cannot be loaded
        raise ImportError(f"fastdl.distributed: mpi4py is installed but no MPI library could be loaded "
                          f"({exc}); {INSTALL_HINT}") from exc
    return MPI


def distributed_info() -> dict:
    """What ``fastdl info`` reports about data parallelism, without starting MPI: the mpi4py
    version, the launcher found on PATH, whether CuPy has NCCL, and the process group if one is up."""
    import importlib.metadata
    import shutil

    try:
        mpi4py_version = importlib.metadata.version("mpi4py")
    except importlib.metadata.PackageNotFoundError:
        mpi4py_version = None
    try:
        from cupy.cuda import nccl

        has_nccl = bool(nccl.available)
    except Exception:
        has_nccl = False
    group = _group
    return {
        "mpi4py": mpi4py_version,
        "launcher": shutil.which("mpirun") or shutil.which("mpiexec"),
        "nccl": has_nccl,
        "backend": group.backend if group else None,
        "rank": group.rank if group else None,
        "world_size": group.world_size if group else None,
    }


def is_available() -> bool:
    """Whether the MPI backend can start here (mpi4py and an MPI library are installed)."""
    try:
        _import_mpi()
    except ImportError:
        return False
    return True


def is_nccl_available() -> bool:
    """Whether the NCCL backend can start here (CuPy with NCCL, a GPU, and the MPI backend)."""
    try:
        import cupy
        from cupy.cuda import nccl
    except Exception:
        return False
    try:
        return bool(nccl.available) and cupy.cuda.runtime.getDeviceCount() > 0 and is_available()
    except Exception:
        return False


# ---- the watchdog -------------------------------------------------------------------------------

class _Watchdog:
    """Aborts the job when one collective has waited longer than ``timeout`` seconds.

    A collective sets ``name`` and counts ``entered`` before the MPI call and ``left`` after it
    (three attribute stores, so the wrapper stays cheap next to a 1 µs all-reduce). A daemon thread
    wakes every ``timeout / 8`` seconds; when it sees the same collective in flight (entered > left,
    entered unchanged) for longer than ``timeout``, it prints which rank waited where and calls
    ``abort``. mpi4py releases the GIL inside MPI calls, so the thread runs while the main thread is
    blocked in one.
    """

    def __init__(self, rank: int, world_size: int, timeout: float, abort):
        self.rank, self.world_size, self.timeout, self._abort = rank, world_size, timeout, abort
        self.name, self.entered, self.left = "", 0, 0
        self._stop = threading.Event()
        self._period = min(max(timeout / 8, 0.05), 2.0)
        self._thread = threading.Thread(target=self._run, name="fastdl-distributed-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen, since = 0, 0.0
        while not self._stop.wait(self._period):
            entered, left = self.entered, self.left
            if entered == left:
                seen = 0
            elif entered != seen:
                seen, since = entered, time.monotonic()
            elif time.monotonic() - since > self.timeout:
                sys.stdout.flush()
                sys.stderr.write(
                    f"\nfastdl.distributed: rank {self.rank} of {self.world_size} waited more than "
                    f"{self.timeout:g} s in {self.name} (collective #{entered} of this rank): another rank "
                    "failed, hangs, or did not call the same collectives in the same order; aborting the job\n")
                sys.stderr.flush()
                self._abort()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---- the process group --------------------------------------------------------------------------

class Work:
    """A collective started with ``async_op=True``: :meth:`wait` completes it (for NCCL: makes the
    current stream wait for it) and :meth:`is_completed` polls without blocking."""

    def __init__(self, group, name: str, request, finish=None):
        self._group, self._name, self._request, self._finish = group, name, request, finish
        self._done = False

    def is_completed(self) -> bool:
        if not self._done and self._group._test(self._request):
            self._complete()
        return self._done

    def wait(self) -> None:
        if not self._done:
            self._group._wait(self._name, self._request)
            self._complete()

    def _complete(self) -> None:
        self._done = True
        if self._finish is not None:
            self._finish()


class _MPIGroup:
    """Collectives on NumPy arrays over an MPI communicator."""

    backend = "mpi"

    def __init__(self, MPI, comm, timeout: float):
        self.MPI, self.comm = MPI, comm
        self.rank, self.world_size = comm.Get_rank(), comm.Get_size()
        self._ops = {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX}
        self._types = {np.dtype(name): getattr(MPI, mpi) for name, mpi in (
            ("float32", "FLOAT"), ("float64", "DOUBLE"), ("int32", "INT32_T"), ("int64", "INT64_T"),
            ("uint8", "UINT8_T"))}
        # MPI_Abort from the watchdog thread needs MPI_THREAD_MULTIPLE (mpi4py's default request);
        # with less, ending this process makes the launcher stop the others.
        if MPI.Query_thread() == MPI.THREAD_MULTIPLE:
            def abort():
                comm.Abort(124)
        else:
            def abort():
                os._exit(124)
        self.watchdog = _Watchdog(self.rank, self.world_size, timeout, abort)

    def check_array(self, op: str, arr) -> None:
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{op}: the 'mpi' backend works on CPU arrays, got {type(arr).__name__} "
                            f"{getattr(arr, 'shape', '')} (use backend='nccl' for GPU tensors)")
        if arr.dtype.hasobject:
            raise TypeError(f"{op}: cannot send an object array {arr.shape}")

    def _buffer(self, arr: np.ndarray) -> np.ndarray:
        """A contiguous buffer MPI can reduce: ``arr`` itself when possible, else a copy (float16 is
        reduced in float32, since MPI has no half type)."""
        if arr.dtype == np.float16:
            return arr.astype(np.float32)
        if arr.dtype in self._types:
            return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
        raise TypeError(f"all_reduce: dtype {arr.dtype} {arr.shape} is not supported by the 'mpi' backend "
                        "(float16, float32, float64, int32, int64, uint8)")

    def _run(self, name, fn, *args, **kwargs):
        watchdog = self.watchdog
        watchdog.name = name
        watchdog.entered += 1
        try:
            return fn(*args, **kwargs)
        finally:
            watchdog.left += 1

    def _test(self, request) -> bool:
        return request.Test()

    def _wait(self, name: str, request) -> None:
        self._run(name, request.Wait)

    def all_reduce(self, arr: np.ndarray, op: str, async_op: bool):
        # The common case (contiguous, writable, an MPI type) goes straight to MPI: the wrapper's
        # cost must stay small next to a latency-bound all-reduce of a few bytes (~1 µs).
        if not isinstance(arr, np.ndarray):
            self.check_array("all_reduce", arr)
        flags = arr.flags
        if not flags.writeable:
            _writable("all_reduce", arr)
        if op == "mean" and arr.dtype.kind != "f":
            _mean_needs_float(arr)
        mpi_type = self._types.get(arr.dtype)
        if mpi_type is not None and flags.c_contiguous:
            buf = arr
        else:
            self.check_array("all_reduce", arr)
            buf = self._buffer(arr)
            mpi_type = self._types[buf.dtype]
        if async_op:
            request = self.comm.Iallreduce(self.MPI.IN_PLACE, [buf, mpi_type], self._ops[op])
            return Work(self, "all_reduce", request, lambda: self._finish_reduce(arr, buf, op))
        watchdog = self.watchdog
        watchdog.name = "all_reduce"
        watchdog.entered += 1
        try:
            self.comm.Allreduce(self.MPI.IN_PLACE, [buf, mpi_type], self._ops[op])
        finally:
            watchdog.left += 1
        if op == "mean" or buf is not arr:
            self._finish_reduce(arr, buf, op)
        return None

    def _finish_reduce(self, arr, buf, op: str) -> None:
        if op == "mean":
            np.divide(buf, self.world_size, out=buf)
        if buf is not arr:
            arr[...] = buf

    # Broadcast and all-gather move bytes, so they take every dtype (float16 and bool included).

    def broadcast(self, arr: np.ndarray, src: int, async_op: bool):
        buf = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
        spec = [buf, self.MPI.BYTE]

        def finish():
            if buf is not arr:
                arr[...] = buf

        if async_op:
            return Work(self, "broadcast", self.comm.Ibcast(spec, root=src), finish)
        self._run("broadcast", self.comm.Bcast, spec, root=src)
        finish()
        return None

    def all_gather(self, outs: list, arr: np.ndarray, async_op: bool):
        send = np.ascontiguousarray(arr)
        recv = np.empty((self.world_size,) + arr.shape, arr.dtype)
        specs = ([send, self.MPI.BYTE], [recv, self.MPI.BYTE])

        def finish():
            for k, out in enumerate(outs):
                out[...] = recv[k]

        if async_op:
            return Work(self, "all_gather", self.comm.Iallgather(*specs), finish)
        self._run("all_gather", self.comm.Allgather, *specs)
        finish()
        return None

    def barrier(self) -> None:
        self._run("barrier", self.comm.Barrier)

    def close(self) -> None:
        self.watchdog.stop()


class _NCCLGroup(_MPIGroup):
    """Collectives on CuPy arrays over an NCCL communicator, enqueued on CuPy's current stream.

    MPI provides the ranks, the unique-id broadcast and the host-side barrier. Untested in fastdl's
    CI (no GPU there); the calls follow ``cupy.cuda.nccl.NcclCommunicator``'s documented signatures.
    """

    backend = "nccl"

    def __init__(self, MPI, comm, timeout: float):
        super().__init__(MPI, comm, timeout)
        import cupy
        from cupy.cuda import nccl

        self.cupy, self.nccl = cupy, nccl
        n_devices = cupy.cuda.runtime.getDeviceCount()
        if n_devices == 0:
            raise RuntimeError(f"init_process_group: backend 'nccl' on rank {self.rank} found no GPU")
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank = local.Get_rank()
        local.Free()
        self.device = self.local_rank % n_devices
        cupy.cuda.Device(self.device).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self._run("init_process_group (NCCL unique id)", comm.bcast, uid, root=0)
        self.nccl_comm = self._run("init_process_group (ncclCommInitRank)", nccl.NcclCommunicator,
                                   self.world_size, uid, self.rank)
        self._dtypes = {
            np.dtype("float16"): nccl.NCCL_FLOAT16, np.dtype("float32"): nccl.NCCL_FLOAT32,
            np.dtype("float64"): nccl.NCCL_FLOAT64, np.dtype("int32"): nccl.NCCL_INT32,
            np.dtype("int64"): nccl.NCCL_INT64, np.dtype("uint8"): nccl.NCCL_UINT8,
        }
        self._nccl_ops = {"sum": nccl.NCCL_SUM, "mean": nccl.NCCL_SUM, "max": nccl.NCCL_MAX}

    def check_array(self, op: str, arr) -> None:
        if not isinstance(arr, self.cupy.ndarray):
            raise TypeError(f"{op}: the 'nccl' backend works on GPU arrays, got {type(arr).__name__} "
                            f"{getattr(arr, 'shape', '')} (move the tensor with .to('cuda'))")
        if arr.dtype not in self._dtypes:
            raise TypeError(f"{op}: dtype {arr.dtype} {arr.shape} is not supported by the 'nccl' backend")

    def _stream(self) -> int:
        return self.cupy.cuda.get_current_stream().ptr

    def _event(self):
        event = self.cupy.cuda.Event(disable_timing=True)
        event.record()
        return event

    def _test(self, event) -> bool:
        return event.done

    def _wait(self, name: str, event) -> None:
        self.cupy.cuda.get_current_stream().wait_event(event)

    def _finish_async(self, name, finish, async_op):
        finish()
        return Work(self, name, self._event()) if async_op else None

    def all_reduce(self, arr, op: str, async_op: bool):
        self.check_array("all_reduce", arr)
        if op == "mean" and arr.dtype.kind != "f":
            _mean_needs_float(arr)
        buf = arr if arr.flags.c_contiguous else self.cupy.ascontiguousarray(arr)
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._dtypes[buf.dtype],
                                 self._nccl_ops[op], self._stream())

        def finish():
            if op == "mean":
                self.cupy.divide(buf, self.world_size, out=buf)
            if buf is not arr:
                arr[...] = buf

        return self._finish_async("all_reduce", finish, async_op)

    def broadcast(self, arr, src: int, async_op: bool):
        buf = arr if arr.flags.c_contiguous else self.cupy.ascontiguousarray(arr)
        self.nccl_comm.broadcast(buf.data.ptr, buf.data.ptr, buf.size, self._dtypes[buf.dtype], src,
                                 self._stream())

        def finish():
            if buf is not arr:
                arr[...] = buf

        return self._finish_async("broadcast", finish, async_op)

    def all_gather(self, outs: list, arr, async_op: bool):
        send = self.cupy.ascontiguousarray(arr)
        recv = self.cupy.empty((self.world_size,) + arr.shape, arr.dtype)
        self.nccl_comm.allGather(send.data.ptr, recv.data.ptr, send.size, self._dtypes[send.dtype],
                                 self._stream())

        def finish():
            for k, out in enumerate(outs):
                out[...] = recv[k]

        return self._finish_async("all_gather", finish, async_op)

    def barrier(self) -> None:
        stream = self.cupy.cuda.get_current_stream()
        self._run("barrier (GPU stream)", stream.synchronize)
        super().barrier()

    def close(self) -> None:
        self.nccl_comm.destroy()
        super().close()


_group = None
_previous_excepthook = None


def _abort_on_exception(exc_type, exc, tb):
    """sys.excepthook while a group of several ranks is up: print the traceback, name the rank,
    and abort every rank instead of leaving the others blocked in their next collective."""
    group = _group
    _previous_excepthook(exc_type, exc, tb)
    if group is None:
        return
    sys.stderr.write(f"fastdl.distributed: rank {group.rank} of {group.world_size} raised "
                     f"{exc_type.__name__}: {exc}; aborting all {group.world_size} ranks\n")
    sys.stderr.flush()
    group.comm.Abort(1)


def _seconds(timeout) -> float:
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"init_process_group: timeout must be a positive number of seconds or a timedelta, "
                         f"got {timeout!r}")
    return float(timeout)


def init_process_group(backend: str = "mpi", timeout=None) -> None:
    """Join the job started by the MPI launcher (``mpirun -n N python script.py``).

    backend: ``"mpi"`` (CPU tensors, through mpi4py) or ``"nccl"`` (GPU tensors, through CuPy's NCCL
    bindings; MPI still starts the processes and carries the unique id). timeout: seconds (or a
    ``datetime.timedelta``) one collective may wait before the job is aborted; default
    ``FASTDL_DIST_TIMEOUT`` or 1800. Run without a launcher, the process is a group of one.

    Raises ImportError naming the packages to install when mpi4py or an MPI library is missing.

    >>> import fastdl.distributed as dist
    >>> dist.init_process_group("gloo")
    Traceback (most recent call last):
    ...
    ValueError: init_process_group: backend must be 'mpi' or 'nccl', got 'gloo'
    """
    global _group, _previous_excepthook
    if backend not in ("mpi", "nccl"):
        raise ValueError(f"init_process_group: backend must be 'mpi' or 'nccl', got {backend!r}")
    if _group is not None:
        raise RuntimeError(f"init_process_group: a '{_group.backend}' process group is already initialized "
                           "(call destroy_process_group() first)")
    if timeout is None:
        timeout = float(os.environ.get("FASTDL_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    timeout = _seconds(timeout)
    MPI = _import_mpi()
    if backend == "nccl":
        try:
            import cupy  # noqa: F401
            from cupy.cuda import nccl  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"init_process_group: backend 'nccl' needs CuPy built with NCCL ({exc}); "
                              "install it with `pip install 'fastdl[cuda]'`") from exc
    comm = MPI.COMM_WORLD.Dup()
    group = (_NCCLGroup if backend == "nccl" else _MPIGroup)(MPI, comm, timeout)
    _group = group
    if group.world_size > 1 and sys.excepthook is not _abort_on_exception:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _abort_on_exception


def destroy_process_group() -> None:
    """Leave the process group (collectives raise afterwards; :func:`init_process_group` may be
    called again)."""
    global _group, _previous_excepthook
    group = _require("destroy_process_group")
    _group = None
    if sys.excepthook is _abort_on_exception:
        sys.excepthook = _previous_excepthook
        _previous_excepthook = None
    group.close()
    group.comm.Free()


def is_initialized() -> bool:
    """Whether :func:`init_process_group` has been called (and not destroyed)."""
    return _group is not None


def _require(op: str):
    if _group is None:
        raise RuntimeError(f"{op}: the process group is not initialized; call "
                           "fastdl.distributed.init_process_group() first")
    return _group


def get_backend() -> str:
    """``"mpi"`` or ``"nccl"``."""
    return _require("get_backend").backend


def get_rank() -> int:
    """This process's rank, 0 … world_size - 1."""
    return _require("get_rank").rank


def get_world_size() -> int:
    """The number of processes in the job."""
    return _require("get_world_size").world_size


def barrier() -> None:
    """Wait until every rank has reached this call (for NCCL, and finished its queued GPU work)."""
    _require("barrier").barrier()


def _array(op: str, x):
    """The array a collective works on in place: a Tensor's ``.data`` or the array itself."""
    if isinstance(x, np.ndarray) or hasattr(x, "__cuda_array_interface__"):
        return x
    data = getattr(x, "data", None)
    if isinstance(data, np.ndarray) or hasattr(data, "__cuda_array_interface__"):
        return data
    raise TypeError(f"{op}: expected a fastdl Tensor or an array, got {type(x).__name__}")


def _mean_needs_float(arr) -> None:
    raise TypeError(f"all_reduce: op 'mean' needs a floating-point tensor, got {arr.dtype} {tuple(arr.shape)}")


def _writable(op: str, arr) -> None:
    flags = getattr(arr, "flags", None)
    if flags is not None and hasattr(flags, "writeable") and not flags.writeable:
        raise ValueError(f"{op}: the tensor {tuple(arr.shape)} is read-only; collectives work in place")


def all_reduce(tensor, op: str = "sum", async_op: bool = False):
    """Reduce ``tensor`` over all ranks, in place: every rank ends with the elementwise sum, mean
    or max. tensor: any shape; float16/32/64, int32/64, uint8 (mean: floating point only).

    Returns None, or a :class:`Work` with ``async_op=True``.

    >>> import numpy as np, fastdl.distributed as dist
    >>> dist.all_reduce(np.ones(3), op="median")
    Traceback (most recent call last):
    ...
    ValueError: all_reduce: op must be one of 'sum', 'mean', 'max', got 'median'
    """
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of 'sum', 'mean', 'max', got {op!r}")
    arr = tensor if tensor.__class__ is np.ndarray else _array("all_reduce", tensor)
    group = _group if _group is not None else _require("all_reduce")
    return group.all_reduce(arr, op, async_op)


def broadcast(tensor, src: int = 0, async_op: bool = False):
    """Copy rank ``src``'s ``tensor`` into every rank's ``tensor`` (same shape and dtype everywhere).

    Returns None, or a :class:`Work` with ``async_op=True``.
    """
    arr = _array("broadcast", tensor)
    group = _require("broadcast")
    group.check_array("broadcast", arr)
    _writable("broadcast", arr)
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < group.world_size:
        raise ValueError(f"broadcast: src must be a rank in 0..{group.world_size - 1}, got {src!r}")
    return group.broadcast(arr, int(src), async_op)


def all_gather(tensor_list: list, tensor, async_op: bool = False):
    """Gather ``tensor`` from every rank: ``tensor_list[r]`` receives rank r's tensor, in place.

    tensor_list: ``world_size`` tensors of ``tensor``'s shape and dtype. Returns None, or a
    :class:`Work` with ``async_op=True``.
    """
    arr = _array("all_gather", tensor)
    group = _require("all_gather")
    group.check_array("all_gather", arr)
    if not isinstance(tensor_list, (list, tuple)) or len(tensor_list) != group.world_size:
        n = len(tensor_list) if isinstance(tensor_list, (list, tuple)) else type(tensor_list).__name__
        raise ValueError(f"all_gather: tensor_list must hold world_size = {group.world_size} tensors, got {n}")
    outs = [_array("all_gather", t) for t in tensor_list]
    for k, out in enumerate(outs):
        if out.shape != arr.shape or out.dtype != arr.dtype:
            raise ValueError(f"all_gather: tensor_list[{k}] is {out.dtype} {tuple(out.shape)}, expected "
                             f"{arr.dtype} {tuple(arr.shape)} like the input")
        _writable("all_gather", out)
    return group.all_gather(outs, arr, async_op)


def all_gather_object(object_list: list, obj) -> None:
    """Gather a picklable Python object from every rank into ``object_list`` (``world_size`` long),
    in place; it always travels over MPI (host memory), also with the NCCL backend.

    >>> import fastdl.distributed as dist
    >>> dist.all_gather_object([None], {"rank": 0})
    Traceback (most recent call last):
    ...
    RuntimeError: all_gather_object: the process group is not initialized; call fastdl.distributed.init_process_group() first
    """
    group = _require("all_gather_object")
    if not isinstance(object_list, list) or len(object_list) != group.world_size:
        n = len(object_list) if isinstance(object_list, list) else type(object_list).__name__
        raise ValueError(f"all_gather_object: object_list must be a list of world_size = {group.world_size} "
                         f"entries, got {n}")
    object_list[:] = group._run("all_gather_object", group.comm.allgather, obj)


# ---- gradient buckets (DistributedDataParallel and the cost model in fastdl.bench) ---------------

def bucket_assignment(nbytes: list, keys: list, cap_bytes: float) -> list:
    """Group parameters into buckets: indices taken in reverse order, one bucket open per key (dtype,
    device), a bucket closed when the next parameter would take it past ``cap_bytes``. Returns the
    buckets (lists of indices) in the order they are all-reduced.

    >>> from fastdl.distributed import bucket_assignment
    >>> bucket_assignment([4, 4, 4, 4], ["f"] * 4, 8)
    [[3, 2], [1, 0]]
    """
    buckets, open_buckets = [], {}
    for k in reversed(range(len(nbytes))):
        group = open_buckets.get(keys[k])
        if group is not None and group[1] + nbytes[k] > cap_bytes:
            buckets.append(group[0])
            group = None
        if group is None:
            group = ([], 0)
        group[0].append(k)
        open_buckets[keys[k]] = (group[0], group[1] + nbytes[k])
    buckets.extend(g[0] for g in open_buckets.values())
    return buckets
