"""pytest-benchmark view of the conv2d problems in fastdl.bench (fastdl next to PyTorch/oneDNN).

    pytest bench/bench_conv2d.py --benchmark-group-by=param:problem

``fastdl bench conv2d`` prints the same problems as one table with ratios and % of peak.
"""
import pytest

from fastdl import bench

PROBLEMS = {p.name: p for p in bench.conv2d_problems()}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("impl", ["fastdl", "torch"])
def test_conv2d(benchmark, problem, impl):
    impls = PROBLEMS[problem].make()
    if impl not in impls:
        pytest.skip(f"{impl} is not installed")
    benchmark.extra_info["gflop"] = PROBLEMS[problem].flops / 1e9
    benchmark(impls[impl])
