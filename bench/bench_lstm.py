"""pytest-benchmark view of the LSTM problems in fastdl.bench (fastdl next to torch.nn.LSTM).

    pytest bench/bench_lstm.py --benchmark-group-by=param:problem

``fastdl bench lstm`` prints the same problems as one table with µs/step, ratios and % of peak.
"""
import pytest

from fastdl import bench

PROBLEMS = {p.name + "-" + p.dtype: p for p in bench.lstm_problems()}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("impl", ["fastdl", "torch"])
def test_lstm(benchmark, problem, impl):
    impls = PROBLEMS[problem].make()
    if impl not in impls:
        pytest.skip(f"{impl} is not installed")
    benchmark.extra_info["gflop"] = PROBLEMS[problem].flops / 1e9
    benchmark.extra_info["steps"] = PROBLEMS[problem].steps
    benchmark(impls[impl])
