"""pytest-benchmark view of the per-op overhead problems in fastdl.bench (fastdl next to NumPy and
PyTorch): tiny ops where Python dispatch and autograd bookkeeping dominate.

    pytest bench/bench_overhead.py --benchmark-group-by=param:problem

``fastdl bench overhead`` prints the same problems as one table of µs per call and ratios (wall
time). On a shared, loaded machine wall time mostly measures the other processes; run this file as
a script to time the same problems by the calling thread's CPU time instead (single-threaded
problems only, interleaved, best of 7):

    python bench/bench_overhead.py
"""
import time
import timeit

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


def cpu_time_table(repeats: int = 7, min_time: float = 0.05) -> None:
    import fastdl

    fastdl.set_num_threads(1)
    torch = bench._torch()
    if torch is not None:
        torch.set_num_threads(1)
    print(f"{'problem':>22} {'fastdl us':>10} {'numpy us':>10} {'torch us':>10} {'x torch':>8}")
    for problem in PROBLEMS.values():
        impls = problem.make()
        timers = {k: timeit.Timer(f, timer=time.thread_time) for k, f in impls.items()}
        loops = {k: max(t.autorange()[0], int(min_time / max(t.timeit(1), 1e-7))) for k, t in timers.items()}
        best = {k: min(timers[k].timeit(loops[k]) / loops[k] for _ in range(repeats)) * 1e6 for k in timers}
        cells = [f"{best[k]:.2f}" if k in best else "-" for k in ("fastdl", "numpy", "torch")]
        ratio = f"{best['fastdl'] / best['torch']:.2f}" if "torch" in best else "-"
        print(f"{problem.name:>22} {cells[0]:>10} {cells[1]:>10} {cells[2]:>10} {ratio:>8}")


if __name__ == "__main__":
    cpu_time_table()
