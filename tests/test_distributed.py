"""fastdl.distributed: collectives, timeouts and failure handling on 2 ranks under mpirun, plus the
single-process checks (errors before initialization, the message when MPI is missing).

The 2-rank cases live in tests/mpi_cases.py; each test here launches
``mpirun -n 2 [--allow-run-as-root] --oversubscribe python tests/mpi_cases.py CASE`` with a time
limit. Without mpirun or mpi4py they are skipped with the reason; FASTDL_REQUIRE_MPI=1 turns the
skip into a failure (CI sets it).
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import fastdl
import fastdl.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "mpi_cases.py")


def _mpi_unavailable_reason():
    if shutil.which("mpirun") is None:
        return "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"
    if not dist.is_available():
        return "mpi4py or its MPI library is missing (pip install mpi4py)"
    return None


def require_mpi():
    reason = _mpi_unavailable_reason()
    if reason:
        if os.environ.get("FASTDL_REQUIRE_MPI") == "1":
            pytest.fail(f"FASTDL_REQUIRE_MPI=1 but the 2-rank tests cannot run: {reason}")
        pytest.skip(reason)


def mpirun_command(n=2):
    """mpirun with the flags a CI container needs: Open MPI refuses root without
    --allow-run-as-root, and 2 ranks on fewer cores need --oversubscribe."""
    version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout
    cmd = ["mpirun", "-n", str(n)]
    if "Open MPI" in version or "OpenRTE" in version:
        cmd.append("--oversubscribe")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
    return cmd


def launch(*cases, timeout=180, script=CASES, case_timeout=60, n=2):
    """Run ``script`` with arguments ``cases`` on ``n`` ranks; returns (returncode, stdout, stderr,
    seconds). The whole process group is killed at ``timeout`` so a hang cannot outlive the test."""
    require_mpi()
    python_dir = os.path.dirname(os.path.dirname(os.path.abspath(fastdl.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = python_dir + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", FASTDL_TEST_TIMEOUT=str(case_timeout), PYTHONUNBUFFERED="1")
    cmd = mpirun_command(n) + [sys.executable, script, *cases]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpirun {' '.join(cases)} hung for {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err, time.monotonic() - t0


def run_ok(*cases, **kwargs):
    rc, out, err, _ = launch(*cases, **kwargs)
    assert rc == 0, f"mpirun exited with {rc}\nstdout:\n{out}\nstderr:\n{err}"
    for name in cases:
        assert f"CASE-OK {name}" in out, f"case {name} did not finish\nstdout:\n{out}\nstderr:\n{err}"
    return out


# ---- 2 ranks ------------------------------------------------------------------------------------

def test_collectives_match_numpy():
    run_ok("collectives")


def test_collectives_on_tensors():
    pytest.importorskip("fastdl.tensor", reason="fastdl.tensor has not landed")
    run_ok("collectives_on_tensors")


def test_bad_arguments_raise_on_every_rank():
    run_ok("bad_arguments")


def test_timeout_aborts_the_job_naming_the_rank():
    rc, out, err, seconds = launch("timeout_names_the_rank", case_timeout=1.5, timeout=60)
    assert rc != 0
    assert "rank 0 of 2 waited more than 1.5 s in all_reduce" in err, err
    assert seconds < 30, f"the job took {seconds:.1f} s to fail"


def test_raising_rank_aborts_the_job_naming_the_rank():
    rc, out, err, seconds = launch("raising_rank_aborts_the_job", case_timeout=600, timeout=120)
    assert rc != 0
    assert "rank-one failure on purpose" in err
    assert "rank 1 of 2 raised ValueError" in err, err
    assert seconds < 30, f"the job took {seconds:.1f} s to fail (the 600 s collective timeout must not be needed)"


# ---- one process, no launcher -------------------------------------------------------------------

def test_not_initialized():
    assert not dist.is_initialized()
    for fn in (dist.get_rank, dist.get_world_size, dist.get_backend, dist.barrier, dist.destroy_process_group):
        with pytest.raises(RuntimeError, match="init_process_group"):
            fn()
    import numpy as np

    with pytest.raises(RuntimeError, match="not initialized"):
        dist.all_reduce(np.ones(2))


@pytest.mark.parametrize("backend, timeout, exc, words", [
    ("gloo", None, ValueError, "backend must be 'mpi' or 'nccl', got 'gloo'"),
    ("mpi", 0, ValueError, "timeout must be a positive number"),
    ("mpi", -3.0, ValueError, "timeout must be a positive number"),
    ("mpi", "10", ValueError, "timeout must be a positive number"),
])
def test_init_bad_arguments(backend, timeout, exc, words):
    with pytest.raises(exc, match=words):
        dist.init_process_group(backend, timeout=timeout)


def test_missing_mpi4py_names_the_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert not dist.is_available()
    with pytest.raises(ImportError) as info:
        dist.init_process_group("mpi")
    message = str(info.value)
    for words in ("mpi4py", "apt-get install openmpi-bin libopenmpi-dev", "pip install mpi4py"):
        assert words in message
    assert not dist.is_initialized()


# ---- DistributedSampler (no MPI needed: num_replicas and rank given) ----------------------------

from fastdl.data.distributed import DistributedSampler  # noqa: E402


@pytest.mark.parametrize("n", [1, 2, 7, 10, 64])
@pytest.mark.parametrize("replicas", [1, 2, 3, 8])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shares(n, replicas, shuffle, drop_last):
    if drop_last and n < replicas:
        with pytest.raises(ValueError, match="leaves no sample"):
            DistributedSampler(range(n), replicas, 0, shuffle=shuffle, drop_last=True)
        return
    shares = [list(DistributedSampler(range(n), replicas, r, shuffle=shuffle, seed=5, drop_last=drop_last))
              for r in range(replicas)]
    lengths = {len(s) for s in shares}
    assert len(lengths) == 1
    per_rank = lengths.pop()
    assert per_rank == len(DistributedSampler(range(n), replicas, 0, drop_last=drop_last))
    flat = [i for s in shares for i in s]
    assert all(0 <= i < n for i in flat)
    if drop_last:
        assert per_rank == n // replicas and len(set(flat)) == len(flat)
    else:
        assert per_rank == -(-n // replicas) and set(flat) == set(range(n))
        assert len(flat) - n < replicas
    if not shuffle:
        # rank r holds samples r, r + R, ... : the global batch split across ranks
        assert shares[0][: min(per_rank, 3)] == [replicas * k % max(n, 1) for k in range(min(per_rank, 3))]


def test_sampler_matches_torch_without_shuffle():
    torch_data = pytest.importorskip("torch.utils.data")
    for n, replicas, drop_last in [(10, 3, False), (10, 3, True), (7, 2, False), (5, 4, False), (64, 8, True)]:
        for r in range(replicas):
            ours = list(DistributedSampler(range(n), replicas, r, shuffle=False, drop_last=drop_last))
            theirs = list(torch_data.DistributedSampler(range(n), replicas, r, shuffle=False, drop_last=drop_last))
            assert ours == theirs, (n, replicas, r, drop_last)


def test_sampler_epochs_and_seeds():
    a = DistributedSampler(range(100), 2, 0, seed=3)
    b = DistributedSampler(range(100), 2, 1, seed=3)
    first = list(a)
    assert first == list(a)                                  # the same epoch repeats
    assert not set(first) & set(b)                           # ranks agree on the permutation
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) != first and not set(a) & set(b)
    assert list(DistributedSampler(range(100), 2, 0, seed=4)) != first
    assert first != list(range(0, 100, 2))                    # shuffled


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"num_replicas": 0, "rank": 0}, ValueError, "num_replicas must be an integer >= 1"),
    ({"num_replicas": 2, "rank": 2}, ValueError, r"rank 2 is not in 0..1"),
    ({"num_replicas": 2, "rank": -1}, ValueError, "rank must be an integer >= 0"),
    ({"num_replicas": 2.0, "rank": 0}, ValueError, "num_replicas must be an integer"),
    ({"num_replicas": 2, "rank": 0, "seed": -1}, ValueError, "seed must be an integer >= 0"),
    ({}, RuntimeError, "init_process_group"),
])
def test_sampler_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        DistributedSampler(range(10), **kwargs)


def test_sampler_bad_dataset_and_epoch():
    with pytest.raises(TypeError, match="must define __len__"):
        DistributedSampler(iter(range(3)), 2, 0)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        DistributedSampler(range(3), 2, 0).set_epoch(-1)


# ---- DistributedDataParallel on 2 ranks -----------------------------------------------------------

def _need_nn():
    pytest.importorskip("fastdl.tensor", reason="fastdl.tensor has not landed")
    pytest.importorskip("fastdl.nn.module", reason="fastdl.nn has not landed")


@pytest.mark.parametrize("case", ["ddp_matches_single_process", "ddp_buckets_fire_during_backward",
                                  "ddp_no_sync_accumulates", "ddp_errors"])
def test_ddp(case):
    _need_nn()
    run_ok(case)


def test_fit_under_the_launcher_and_checkpoint_without_mpi(tmp_path, monkeypatch):
    _need_nn()
    pytest.importorskip("fastdl.train", reason="fastdl.train has not landed")
    import numpy as np

    monkeypatch.setenv("FASTDL_TEST_DIR", str(tmp_path))
    out = run_ok("fit_under_the_launcher")
    assert out.count("epoch 1/2") == 1 and out.count("epoch 2/2") == 1, out   # rank 0 prints, rank 1 does not
    sys.path.insert(0, HERE)
    try:
        from mpi_cases import mlp
    finally:
        sys.path.remove(HERE)
    final = np.load(tmp_path / "final.npz")
    state = fastdl.load(str(tmp_path / "ckpt-2.safetensors"))
    model = mlp(0)
    model.load_state_dict(state["model"])              # plain keys ("0.weight"), no "module." prefix
    assert not dist.is_initialized()
    for name, p in model.state_dict().items():
        np.testing.assert_array_equal(p.numpy(), final[name])


# ---- the autograd hook DDP is built on: Tensor.register_post_accumulate_grad_hook -----------------

def test_post_accumulate_grad_hook_runs_once_after_all_contributions():
    import numpy as np

    w = fastdl.tensor([1.0, 2.0], requires_grad=True)
    v = fastdl.tensor([3.0], requires_grad=True)
    seen = []
    w.register_post_accumulate_grad_hook(lambda t: seen.append(("w", t.grad.tolist())))
    v.register_post_accumulate_grad_hook(lambda t: seen.append(("v", t.grad.tolist())))
    # w reaches the loss through three edges; the hook sees the sum of all of them
    ((w * w + w).sum() * v + (w * 2).sum()).sum().backward()
    assert sorted(seen) == [("v", [8.0]), ("w", [11.0, 17.0])]
    seen.clear()
    (w * 1).sum().backward()                          # accumulates into the existing .grad
    assert seen == [("w", [12.0, 18.0])]
    seen.clear()
    w.grad = None
    w.backward(fastdl.tensor(np.ones(2)))             # a leaf as the root
    assert seen == [("w", [1.0, 1.0])]


def test_post_accumulate_grad_hook_order_follows_backward():
    x = fastdl.tensor([[1.0, 2.0]])
    a = fastdl.tensor([[0.5], [0.25]], requires_grad=True)
    b = fastdl.tensor([[2.0]], requires_grad=True)
    order = []
    a.register_post_accumulate_grad_hook(lambda t: order.append("a"))
    b.register_post_accumulate_grad_hook(lambda t: order.append("b"))
    ((x @ a) @ b).sum().backward()                    # b is nearer the loss: its gradient is ready first
    assert order == ["b", "a"]


def test_post_accumulate_grad_hook_remove_and_autograd_grad():
    w = fastdl.tensor([1.0], requires_grad=True)
    seen = []
    handle = w.register_post_accumulate_grad_hook(seen.append)
    fastdl.autograd.grad((w * 3).sum(), [w])           # accumulates nothing: no hook
    assert seen == [] and w.grad is None
    handle.remove()
    (w * 3).sum().backward()
    assert seen == [] and w.grad.tolist() == [3.0]


@pytest.mark.parametrize("make, hook, exc, words", [
    (lambda: fastdl.tensor([1.0]), print, RuntimeError, "requires_grad=False"),
    (lambda: fastdl.tensor([1.0], requires_grad=True) * 2, print, RuntimeError, "non-leaf"),
    (lambda: fastdl.tensor([1.0], requires_grad=True), 3, TypeError, "hook must be callable"),
])
def test_post_accumulate_grad_hook_errors(make, hook, exc, words):
    with pytest.raises(exc, match=words):
        make().register_post_accumulate_grad_hook(hook)


# ---- the DDP cost model in fastdl.bench -----------------------------------------------------------

def test_cost_model_ring_and_overlap():
    from fastdl import bench

    net = bench.Network("test", alpha_intra=2e-6, busbw_intra=10e9, alpha_inter=5e-6, busbw_inter=1e9, gpus_per_node=4)
    assert net.ring_allreduce(1e6, 1) == 0.0
    assert net.ring_allreduce(1e6, 2) == pytest.approx(2 * 2e-6 + 1e6 / 10e9)
    assert net.ring_allreduce(1e6, 8) == pytest.approx(14 * 5e-6 + 2 * 7 / 8 * 1e6 / 1e9)   # leaves the node
    assert net.tree_allreduce(1e6, 8) == pytest.approx(6 * 5e-6 + 2 * 7 / 8 * 1e6 / 1e9)
    # one bucket: nothing overlaps, the whole all-reduce is exposed
    one = bench.ddp_step_time([4e5, 4e5], 1e-3, 2e-3, 0.0, 8, net, bucket_cap_mb=25)
    assert one["buckets"] == 1
    assert one["exposed"] == pytest.approx(net.ring_allreduce(8e5, 8))
    # one bucket per tensor: the first all-reduce runs while backward goes on
    two = bench.ddp_step_time([4e5, 4e5], 1e-3, 2e-3, 0.0, 8, net, bucket_cap_mb=0.5)
    assert two["buckets"] == 2 and two["exposed"] < one["exposed"]
    assert bench.ddp_step_time([4e5], 1e-3, 2e-3, 0.0, 1, net)["efficiency"] == 1.0
    assert bench.ddp_bucket_sizes([3, 3, 3, 3, 3], 7) == [6, 6, 3]


def test_cost_model_fit_recovers_alpha_and_bandwidth():
    from fastdl import bench

    rows = [{"ranks": 2, "bytes": b, "seconds": {"fastdl": 2 * 3e-6 + b / 2e9}} for b in bench.DDP_MESSAGE_BYTES]
    alpha, busbw = bench.fit_alpha_beta(rows)
    assert alpha == pytest.approx(3e-6, rel=1e-6) and busbw == pytest.approx(2e9, rel=1e-6)
    table = bench.ddp_cost_table(printer=lambda *a: None)
    assert [r["model"] for r in table] == list(bench.DDP_EXAMPLE_MODELS)
    for row in table:
        effs = [r["efficiency"] for r in row["ring"]]
        assert effs == sorted(effs, reverse=True) and 0 < effs[-1] <= effs[0] <= 1


def test_backend_info_reports_distributed():
    info = fastdl.backend_info()["distributed"]
    assert set(info) == {"mpi4py", "launcher", "nccl", "backend", "rank", "world_size"}
    assert info["backend"] is None and not dist.is_initialized()   # reporting starts no MPI
    if dist.is_available():
        assert info["mpi4py"]


def test_ddp_lenet_example(tmp_path):
    """examples/ddp_lenet.py --fast on 2 ranks: one report (rank 0), and its weights load into the
    plain LeNet-5 in this process, without MPI."""
    _need_nn()
    pytest.importorskip("fastdl.train", reason="fastdl.train has not landed")
    from fastdl import nn

    if not hasattr(nn, "Conv2d"):
        pytest.skip("nn.Conv2d has not landed")
    examples = os.path.join(os.path.dirname(HERE), "examples")
    rc, out, err, _ = launch("--fast", "--out", str(tmp_path), script=os.path.join(examples, "ddp_lenet.py"),
                             timeout=600)
    assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert out.count("ddp_lenet: ranks 2") == 1, out
    sys.path.insert(0, examples)
    try:
        from lenet_digits import build_model
    finally:
        sys.path.remove(examples)
    model = build_model()
    model.load_state_dict(fastdl.load(str(tmp_path / "lenet.safetensors")))
    assert (tmp_path / "metrics.json").is_file()


def test_nccl_collectives_on_the_gpus(monkeypatch):
    """The NCCL backend on one rank per GPU (one GPU is enough); skipped without CuPy, NCCL and a GPU."""
    if not dist.is_nccl_available():
        if os.environ.get("FASTDL_REQUIRE_CUDA") == "1":
            pytest.fail("FASTDL_REQUIRE_CUDA=1 but the NCCL backend is not available (CuPy with NCCL and a GPU)")
        pytest.skip("the NCCL backend needs CuPy with NCCL and a GPU")
    import cupy

    monkeypatch.setenv("FASTDL_TEST_BACKEND", "nccl")
    run_ok("nccl_collectives", n=cupy.cuda.runtime.getDeviceCount())


def test_dataloader_with_a_distributed_sampler():
    import numpy as np

    from fastdl.data import DataLoader, TensorDataset

    ds = TensorDataset(np.arange(10, dtype=np.float32), np.arange(10))
    shares = []
    for rank in range(3):
        sampler = DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=True, seed=2)
        loader = DataLoader(ds, batch_size=2, sampler=sampler)
        assert len(loader) == 2                            # 4 indices per rank (10 padded to 12)
        got = [int(v) for _, y in loader for v in y.numpy()]
        assert got == sampler.indices().tolist()
        shares.append(got)
        sampler.set_epoch(1)
        assert [int(v) for _, y in loader for v in y.numpy()] == sampler.indices().tolist() != got
    assert sorted(set(i for s in shares for i in s)) == list(range(10))
    with pytest.raises(ValueError, match="sampler and shuffle=True exclude each other"):
        DataLoader(ds, sampler=DistributedSampler(ds, 2, 0), shuffle=True)
    with pytest.raises(TypeError, match="sampler must be an iterable of indices with len"):
        DataLoader(ds, sampler=5)
