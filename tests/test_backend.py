"""backend_info(), the CPU level override, threads, and the `fastdl` command."""
import json
import os
import subprocess
import sys

import pytest

import fastdl
from fastdl.backend import _C

LEVELS = ("portable", "avx2", "avx512")


def run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, check=True)


def test_backend_info_reports_everything():
    info = fastdl.backend_info()
    assert info["version"] == fastdl.__version__
    assert info["cpu"]["capability"] in LEVELS
    assert LEVELS.index(info["cpu"]["capability"]) <= LEVELS.index(info["cpu"]["detected_capability"])
    assert info["cpu"]["threads"] == fastdl.get_num_threads() >= 1
    cuda = info["cuda"]
    assert isinstance(cuda["built"], bool)
    if cuda["built"]:
        assert "90" in cuda["architectures"] and "80" in cuda["architectures"]
    if not cuda["devices"]:
        assert cuda["why_no_device"]
    assert info["families"]["gemm"]["cpu"].startswith("native")
    json.dumps(info)  # plain data, printable by `fastdl info --json`


@pytest.mark.parametrize("level", LEVELS)
def test_env_forces_a_lower_level(level):
    detected = _C.detected_cpu_capability()
    out = run_python("import fastdl; print(fastdl.cpu_capability())", FASTDL_CPU_CAPABILITY=level).stdout.strip()
    expected = level if LEVELS.index(level) <= LEVELS.index(detected) else detected
    assert out == expected


def test_set_cpu_capability_above_machine_raises():
    detected = _C.detected_cpu_capability()
    if detected == "avx512":
        pytest.skip("this machine has the highest level")
    with pytest.raises(ValueError, match="above this CPU"):
        fastdl.set_cpu_capability("avx512")


def test_threads(threads):
    fastdl.set_num_threads(1)
    assert fastdl.get_num_threads() == 1
    fastdl.set_num_threads(2)
    assert fastdl.get_num_threads() == 2
    with pytest.raises(ValueError, match="set_num_threads"):
        fastdl.set_num_threads(0)


def test_peak_measurement_is_positive():
    assert _C.measure_peak_gflops("portable", False, 1, 0.01) > 0
    with pytest.raises(ValueError):
        _C.measure_peak_gflops("avx2", False, 0, 0.01)


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "fastdl.cli", "info"], capture_output=True, text=True, check=True).stdout
    assert "kernels" in out and "gemm" in out
    info = json.loads(
        subprocess.run([sys.executable, "-m", "fastdl.cli", "info", "--json"], capture_output=True, text=True,
                       check=True).stdout
    )
    assert info["cpu"]["capability"] in LEVELS


def test_cli_bench_rejects_unknown_family():
    proc = subprocess.run([sys.executable, "-m", "fastdl.cli", "bench", "nonsense", "--keep-openblas-env"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown family" in proc.stderr
