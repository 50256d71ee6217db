"""pytest-benchmark view of the optimizer-step problems in fastdl.bench: one ``step()`` of fastdl's
fused optimizers next to ``torch.optim`` (foreach) and a per-parameter NumPy Adam.

    pytest bench/bench_optim.py --benchmark-group-by=param:problem

``fastdl bench optim`` prints the same problems as one table (µs per step and ratios).
"""
import pytest

from fastdl import bench

PROBLEMS = {p.name + "-" + p.dtype: p for p in bench.optim_problems()}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("impl", ["fastdl", "numpy", "torch"])
def test_optim(benchmark, problem, impl):
    impls = PROBLEMS[problem].make()
    if impl not in impls:
        pytest.skip(f"{impl} has no implementation of {problem} (or is not installed)")
    benchmark(impls[impl])
