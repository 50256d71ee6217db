"""What the example scripts share: their command-line options, the output folder, and the report
of the final metrics (printed, and written to ``metrics.json`` beside the curves)."""
from __future__ import annotations

import argparse
import json
import os

import fastdl


def parser(description: str, epochs: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--fast", action="store_true", help="a few steps only, to check that it runs")
    p.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for curves, images and metrics.json (default runs/NAME)")
    p.add_argument("--threads", type=int, default=None, help="native kernel threads (default: all cores)")
    return p


def parse(doc: str, argv: list[str] | None, epochs: int) -> argparse.Namespace:
    """The options of an example: ``argv`` as ``sys.argv`` (program name first); None: sys.argv."""
    return parser(doc.splitlines()[0], epochs).parse_args(None if argv is None else argv[1:])


def setup(name: str, seed: int, out: str | None, threads: int | None = None) -> str:
    """Seed fastdl, set the thread count, create and return the output folder."""
    fastdl.manual_seed(seed)
    if threads is not None:
        fastdl.set_num_threads(threads)
    out = out or os.path.join("runs", name)
    os.makedirs(out, exist_ok=True)
    return out


def report(name: str, metrics: dict, out: str) -> dict:
    """Print ``metrics`` on one line and save them to ``out/metrics.json``."""
    shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    print(f"{name}: {shown}  (files in {out})", flush=True)
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=1)
    return metrics


def image_grid(path: str, rows: list, titles: list[str] | None = None, title: str | None = None) -> str:
    """Save rows of images ((N, H, W) arrays in [0, 1]) as one PNG grid."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(0.9 * n, 0.95 * len(rows) + 0.4), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j], cmap="gray_r", vmin=0.0, vmax=1.0)
        if titles:
            axes[i][0].set_title(titles[i], fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
