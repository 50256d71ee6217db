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
    """Run ``cases`` on ``n`` ranks; returns (returncode, stdout, stderr, seconds). The whole process
    group is killed at ``timeout`` so a hang cannot outlive the test."""
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
