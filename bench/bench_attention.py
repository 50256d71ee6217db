"""pytest-benchmark view of the attention problems in fastdl.bench (fastdl's fused kernel next to
PyTorch's scaled_dot_product_attention and the naive composed formula).

    pytest bench/bench_attention.py --benchmark-group-by=param:problem

``fastdl bench attention`` prints the same problems as one table with ratios, % of peak and the
peak extra memory of each implementation (wall time, 1 and 2 threads). On a shared, loaded machine
wall time mostly measures the other processes; run this file as a script to time the problems on
one thread by the calling thread's CPU time instead (interleaved, best of 5):

    python bench/bench_attention.py [--full]
"""
import sys
import time

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


def cpu_time_table(full: bool = False, repeats: int = 5) -> None:
    import fastdl

    fastdl.set_num_threads(1)
    torch = bench._torch()
    if torch is not None:
        torch.set_num_threads(1)
    peak = bench.peak_gflops("float32", 1)
    print(f"# single thread, calling thread's CPU time, best of {repeats}; FMA peak {peak:.0f} GFLOP/s")
    print(f"{'problem':>26} {'fastdl':>8} {'torch':>8} {'naive':>8} {'x torch':>7} {'x naive':>7} {'% peak':>6}")
    for problem in bench.attention_problems(full=full):
        impls = problem.make()
        best = {}
        for name, fn in impls.items():
            fn()
        for _ in range(repeats):
            for name, fn in impls.items():
                t0 = time.thread_time()
                fn()
                best[name] = min(best.get(name, float("inf")), time.thread_time() - t0)
        g = {name: problem.flops / t / 1e9 for name, t in best.items()}

        def cell(v, width, fmt="{:.1f}"):
            return f"{fmt.format(v) if v is not None else '-':>{width}}"
        fd, tch, nv = g["fastdl"], g.get("torch"), g.get("naive")
        print(f"{problem.name:>26} {cell(fd, 8)} {cell(tch, 8)} {cell(nv, 8)} "
              f"{cell(fd / tch if tch else None, 7, '{:.2f}')} {cell(fd / nv if nv else None, 7, '{:.2f}')} "
              f"{cell(100 * fd / peak, 6, '{:.0f}')}")


if __name__ == "__main__":
    cpu_time_table(full="--full" in sys.argv)
