"""pytest-benchmark view of the attention problems in fastdl.bench (fastdl's fused kernel next to
PyTorch's scaled_dot_product_attention and the naive composed formula).

    pytest bench/bench_attention.py --benchmark-group-by=param:problem

``fastdl bench attention`` prints the same problems as one table with ratios, % of peak and the
peak extra memory of each implementation.
"""
import pytest

from fastdl import bench

PROBLEMS = {p.name: p for p in bench.attention_problems()}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("impl", ["fastdl", "torch", "naive"])
def test_attention(benchmark, problem, impl):
    impls = PROBLEMS[problem].make()
    if impl not in impls:
        pytest.skip(f"{impl} is not available for {problem} (not installed, or too large for the naive formula)")
    benchmark.extra_info["gflop"] = PROBLEMS[problem].flops / 1e9
    benchmark(impls[impl])
