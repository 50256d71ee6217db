"""The ``fastdl`` command: ``fastdl info``, ``fastdl bench [family]`` and ``fastdl train EXAMPLE``."""
from __future__ import annotations

import argparse
import json
import os
import sys

# OpenBLAS reads these at load time; some machines set them to force an older kernel. The
# benchmark compares against NumPy's best kernel, so `fastdl bench` restarts itself without them.
_OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _info(args) -> int:
    import fastdl

    info = fastdl.backend_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cpu, cuda = info["cpu"], info["cuda"]
    print(f"fastdl {info['version']} (Python {info['python']}, NumPy {info['numpy']})")
    print(f"CPU      {cpu['model']}: kernels {cpu['capability']} (detected {cpu['detected_capability']}), "
          f"{cpu['threads']} threads")
    if cuda["built"]:
        print(f"CUDA     built for {cuda['architectures']} (runtime {cuda['runtime_version']})")
        for dev in cuda["devices"]:
            print(f"  GPU {dev['index']}: {dev['name']} (sm_{dev['compute_capability'].replace('.', '')}, "
                  f"{dev['total_memory'] / 2**30:.0f} GiB)")
        if not cuda["devices"]:
            print(f"  no GPU: {cuda['why_no_device']}")
    else:
        print(f"CUDA     not built: {cuda['why_no_device']}")
    print(f"CuPy     {cuda['cupy_version'] or 'not installed'}")
    dd = info["distributed"]
    print(f"MPI      mpi4py {dd['mpi4py'] or 'not installed'}, launcher {dd['launcher'] or 'not found'}; "
          f"NCCL {'available' if dd['nccl'] else 'not available'}"
          + (f"; process group {dd['backend']} rank {dd['rank']} of {dd['world_size']}" if dd["backend"] else ""))
    print("families")
    for name, impls in info["families"].items():
        print(f"  {name:<10} " + "; ".join(f"{dev}: {text}" for dev, text in impls.items()))
    for fb in info["fallbacks"]:
        print(f"  fallback  {fb['family']}/{fb['case']}: {fb['path']} (ran {fb['runs']}x)")
    return 0


def _bench(args) -> int:
    if not args.keep_openblas_env and any(v in os.environ for v in _OPENBLAS_OVERRIDES):
        env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_OVERRIDES}
        os.execve(sys.executable, [sys.executable, "-m", "fastdl.cli", *sys.argv[1:]], env)

    import fastdl
    from fastdl import bench

    if args.family == "train":
        return _bench_train(args)
    if args.family == "ddp":
        return _bench_ddp(args)
    families = list(bench.PROBLEMS) if args.family == "all" else [args.family]
    for family in families:
        if family not in bench.PROBLEMS:
            print(f"fastdl bench: unknown family {family!r}; choose from {', '.join(bench.PROBLEMS)} or all",
                  file=sys.stderr)
            return 2
    if args.device == "cuda":
        return _bench_cuda(args, families)
    info = fastdl.backend_info()
    print(f"# fastdl {info['version']} | CPU {info['cpu']['model']} | kernels {info['cpu']['capability']} | "
          f"{bench.openblas_description()}")
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for family in families:
        unit = "microseconds per call (x = fastdl / reference)" if family in bench.TIME_FAMILIES else "GFLOP/s"
        print(f"\n## {family}: {unit}, best of {args.repeats} interleaved repeats "
              "(1 thread: CPU time of the calling thread; more threads: wall time)")
        print(bench.format_header(family))
        rows += bench.run(family, threads_list=threads, full=args.full, repeats=args.repeats)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "rows": rows}, fh, indent=1)
    return 0


def _bench_ddp(args) -> int:
    """`fastdl bench ddp`: collectives and data-parallel training on --ranks MPI ranks."""
    import fastdl
    from fastdl import bench

    info = fastdl.backend_info()
    print(f"# fastdl {info['version']} | CPU {info['cpu']['model']} | kernels {info['cpu']['capability']} | "
          f"{args.ranks} MPI ranks x 1 thread")
    try:
        return bench.run_ddp(ranks=args.ranks, repeats=args.repeats, json_prefix=args.json)
    except FileNotFoundError as exc:
        print(f"fastdl bench ddp: {exc}", file=sys.stderr)
        return 2


def _bench_cuda(args, families) -> int:
    """`fastdl bench gemm --device cuda`: the GPU table, or a clear message where no GPU is usable."""
    import fastdl
    from fastdl import bench

    reason = fastdl.cuda.unavailable_reason()
    if reason:
        print(f"fastdl bench --device cuda: CUDA is not available: {reason}", file=sys.stderr)
        return 1
    if families != ["gemm"]:
        print("fastdl bench --device cuda: only the gemm family has CUDA benchmarks so far", file=sys.stderr)
        return 2
    info = fastdl.backend_info()
    gpu = info["cuda"]["devices"][fastdl.cuda.current_device()]
    print(f"# fastdl {info['version']} | GPU {gpu['name']} (sm_{gpu['compute_capability'].replace('.', '')}, "
          f"{gpu['multiprocessors']} SMs) | CUDA runtime {info['cuda']['runtime_version']} | "
          f"CuPy {info['cuda']['cupy_version']}")
    print(f"\n## gemm on CUDA: TFLOP/s (CUDA events, best of {args.repeats} interleaved repeats after warm-up); "
          "cuBLAS through cupy.matmul; % of the GPU's dense peak for the format")
    print(bench.format_cuda_header())
    rows = bench.run_cuda(full=args.full, repeats=args.repeats)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "rows": rows}, fh, indent=1)
    return 0


# ---- fastdl train: the course examples --------------------------------------------------------

def examples_dir():
    """The example scripts: packaged as fastdl/examples in an installed wheel, or the checkout's
    examples/ folder when fastdl runs from source (PYTHONPATH=python)."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for candidate in (here / "examples", here.parent.parent / "examples"):
        if (candidate / "_common.py").is_file():
            return candidate
    return None


def list_examples() -> dict[str, str]:
    """Example name -> the first line of its docstring."""
    import ast

    folder = examples_dir()
    if folder is None:
        return {}
    found = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        found[path.stem] = doc.splitlines()[0] if doc else ""
    return found


def load_example(name: str):
    """Import example ``name`` as a module (its folder goes on sys.path for its shared helpers)."""
    import importlib.util

    folder = examples_dir()
    if folder is None or name not in list_examples():
        raise ValueError(f"no example {name!r}; choose from {', '.join(list_examples()) or '(none found)'}")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"fastdl_example_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_train(args) -> int:
    """`fastdl bench train`: whole training runs, fastdl against PyTorch, on each thread count."""
    import fastdl
    from fastdl.train import benchmark

    info = fastdl.backend_info()
    print(f"# fastdl {info['version']} | CPU {info['cpu']['model']} | kernels {info['cpu']['capability']}")
    for threads in (int(t) for t in args.threads.split(",")):
        print(f"\n## training, {threads} thread(s){'' if args.full else ' (short runs; --full for the long ones)'}")
        benchmark.run(threads=threads, full=args.full)
    return 0


def _train(args) -> int:
    examples = list_examples()
    if args.name in (None, "list") or args.name not in examples:
        if args.name not in (None, "list"):
            print(f"fastdl train: unknown example {args.name!r}", file=sys.stderr)
        print("examples (fastdl train NAME [--fast] [--epochs N] [--seed S] [--out DIR]):")
        for name, doc in examples.items():
            print(f"  {name:<18} {doc}")
        return 0 if args.name in (None, "list") else 2
    # Examples take sys.argv-style arguments: the program name first.
    result = load_example(args.name).main([f"{args.name}.py", *args.rest])
    return result if isinstance(result, int) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastdl", description="fastdl: native deep-learning kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="backends, CPU level, CUDA devices, kernel implementations")
    p_info.add_argument("--json", action="store_true", help="print backend_info() as JSON")
    p_info.set_defaults(func=_info)
    p_bench = sub.add_parser("bench", help="time fastdl against NumPy and PyTorch in the same run")
    p_bench.add_argument("family", nargs="?", default="gemm",
                         help="kernel family, 'all', 'train' (whole models vs PyTorch) or 'ddp' (data parallel on MPI ranks) (default gemm)")
    p_bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                         help="cpu (default) or cuda (fastdl vs cuBLAS and PyTorch on the current GPU)")
    p_bench.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p_bench.add_argument("--full", action="store_true", help="include the largest problems")
    p_bench.add_argument("--repeats", type=int, default=5)
    p_bench.add_argument("--json", help="also write the rows to this JSON file (ddp: a prefix)")
    p_bench.add_argument("--ranks", type=int, default=2, help="MPI ranks for 'fastdl bench ddp' (default 2)")
    p_bench.add_argument("--keep-openblas-env", action="store_true",
                         help="do not unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for the NumPy reference")
    p_bench.set_defaults(func=_bench)
    p_train = sub.add_parser("train", help="run a course example (fastdl train list: the examples)")
    p_train.add_argument("name", nargs="?", help="example name, or 'list'")
    p_train.add_argument("rest", nargs=argparse.REMAINDER, help="the example's options (--fast, --epochs, ...)")
    p_train.set_defaults(func=_train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
