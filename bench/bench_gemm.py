"""pytest-benchmark view of the GEMM problems in fastdl.bench (fastdl next to NumPy and PyTorch).

    pytest bench/bench_gemm.py --benchmark-group-by=param:problem

``fastdl bench gemm`` prints the same problems as one table with ratios and % of peak.
"""
import pytest

from fastdl import bench

PROBLEMS = {p.name + "-" + p.dtype: p for p in bench.gemm_problems()}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("impl", ["fastdl", "numpy", "torch"])
def test_gemm(benchmark, problem, impl):
    impls = PROBLEMS[problem].make()
    if impl not in impls:
        pytest.skip(f"{impl} is not installed")
    benchmark.extra_info["gflop"] = PROBLEMS[problem].flops / 1e9
    benchmark(impls[impl])
