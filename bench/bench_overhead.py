"""pytest-benchmark view of the per-op overhead problems in fastdl.bench (fastdl next to NumPy and
PyTorch): tiny ops where Python dispatch and autograd bookkeeping dominate.

    pytest bench/bench_overhead.py --benchmark-group-by=param:problem

``fastdl bench overhead`` prints the same problems as one table of µs per call and ratios.
"""
import pytest

from fastdl import bench

PROBLEMS = {p.name: p for p in bench.overhead_problems()}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("impl", ["fastdl", "numpy", "torch"])
def test_overhead(benchmark, problem, impl):
    impls = PROBLEMS[problem].make()
    if impl not in impls:
        pytest.skip(f"{impl} is not installed or has no equivalent")
    benchmark(impls[impl])
