"""pytest-benchmark view of the conv2d problems in fastdl.bench (fastdl next to PyTorch/oneDNN).

    pytest bench/bench_conv2d.py --benchmark-group-by=param:problem

``fastdl bench conv2d`` prints the same problems as one table (wall time) with ratios and % of peak;
``python bench/bench_conv2d.py`` prints it from the calling thread's CPU time, one thread each,
which stays meaningful on a machine shared with other jobs.
"""
import time

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


def cpu_time_table(repeats: int = 7, min_time: float = 0.1) -> None:
    import fastdl

    fastdl.set_num_threads(1)
    torch = bench._torch()
    if torch is not None:
        torch.set_num_threads(1)
    # No % of peak here: the FMA peak is measured in wall time, which a loaded machine distorts.
    print(f"# one thread each, thread CPU time, best of {repeats}")
    print(f"{'problem':>22} {'fastdl':>9} {'torch':>9} {'x torch':>8}   (GFLOP/s)")
    for problem in PROBLEMS.values():
        best = {}
        for name, fn in problem.make().items():
            fn()
            t0 = time.thread_time()
            loops = 0
            while time.thread_time() - t0 < min_time or loops < 2:
                fn()
                loops += 1
            per_call = float("inf")
            for _ in range(repeats):
                t0 = time.thread_time()
                for _ in range(max(1, loops // 2)):
                    fn()
                per_call = min(per_call, (time.thread_time() - t0) / max(1, loops // 2))
            best[name] = problem.flops / per_call / 1e9
        fd, tc = best["fastdl"], best.get("torch")
        print(f"{problem.name:>22} {fd:9.1f} {tc if tc else float('nan'):9.1f} {fd / tc if tc else float('nan'):8.2f}")


if __name__ == "__main__":
    cpu_time_table()
