"""pytest-benchmark view of the LSTM problems in fastdl.bench (fastdl next to torch.nn.LSTM).

    pytest bench/bench_lstm.py --benchmark-group-by=param:problem

``fastdl bench lstm`` prints the same problems as one table (wall time) with GFLOP/s, ratios, % of
the FMA peak and µs per step. On a shared, loaded machine wall time mostly measures the other
processes; run this file as a script to time the one-thread problems by the calling thread's CPU
time instead (interleaved, best of 7):

    python bench/bench_lstm.py [--peak GFLOPS]
"""
import time
import timeit

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


def cpu_time_table(repeats: int = 7, min_time: float = 0.2, peak=None) -> None:
    import fastdl

    fastdl.set_num_threads(1)
    torch = bench._torch()
    if torch is not None:
        torch.set_num_threads(1)
    # The peak loop is timed by wall clock (the best of several runs is the least disturbed one);
    # on a loaded machine pass the peak measured while it was quiet.
    source = "given" if peak else "measured, best of 7"
    peak = peak or max(bench.peak_gflops("float32", 1) for _ in range(7))
    print(f"FMA peak ({fastdl.cpu_capability()}, float32, 1 thread, {source}): {peak:.1f} GFLOP/s")
    print(f"{'problem':>26} {'fastdl us/step':>15} {'torch us/step':>14} {'fastdl GF/s':>12} {'x torch':>8} "
          f"{'% peak':>7}")
    for problem in PROBLEMS.values():
        impls = problem.make()
        timers = {k: timeit.Timer(f, timer=time.thread_time) for k, f in impls.items()}
        loops = {k: max(1, int(min_time / max(t.timeit(1), 1e-7))) for k, t in timers.items()}
        best = {k: float("inf") for k in timers}
        for _ in range(repeats):
            for k, t in timers.items():
                best[k] = min(best[k], t.timeit(loops[k]) / loops[k])
        per_step = {k: v / problem.steps * 1e6 for k, v in best.items()}
        gflops = problem.flops / best["fastdl"] / 1e9
        ratio = f"{best['torch'] / best['fastdl']:.2f}" if "torch" in best else "-"
        torch_cell = f"{per_step['torch']:.1f}" if "torch" in per_step else "-"
        print(f"{problem.name:>26} {per_step['fastdl']:>15.1f} {torch_cell:>14} {gflops:>12.1f} {ratio:>8} "
              f"{100 * gflops / peak:>7.0f}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="LSTM problems timed by thread CPU time, one thread")
    parser.add_argument("--peak", type=float, help="float32 FMA peak of one core in GFLOP/s (default: measure)")
    cpu_time_table(peak=parser.parse_args().peak)
