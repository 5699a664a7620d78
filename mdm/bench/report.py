"""Tables and plots of a label-efficiency study: ``results.csv`` rows, a markdown table of mean ± std over seeds,
and line plots with error bars."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..common.io import write_text_atomic
from ..segment.visualize import draw_heatmap

COLUMNS = ["method", "label_fraction", "seed", "labeled_images", "dice", "iou", "miou", "object_f1", "object_dice",
           "object_hausdorff", "aji", "member_dice_mean", "member_dice_std", "seconds"]


def result_row(method: str, fraction: float, seed: int, result: dict) -> dict:
    """One ``results.csv`` row from a run's metrics; per-group metrics (GlaS testA / testB) as ``<group>_<metric>``."""
    row = {"method": method, "label_fraction": fraction, "seed": seed,
           "labeled_images": result.get("labeled_images")}
    for k in COLUMNS[4:]:
        if k in result:
            row[k] = result[k]
    for group, values in result.get("groups", {}).items():
        row.update({f"{group}_{k}": v for k, v in values.items()})
    return row


def columns(rows: list[dict], first: list[str]) -> list[str]:
    """``first``, then every other key the rows hold, in order of appearance."""
    return list(dict.fromkeys([*first, *(k for r in rows for k in r)]))


def summarize(rows: list[dict], metric: str, methods: list[str], fractions: list[float]) -> str:
    """Markdown table: mean ± std of ``metric`` over seeds, one row per method, one column per fraction."""
    head = "| method | " + " | ".join(f"{f:g} labels" for f in fractions) + " |"
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for m in methods:
        cells = []
        for f in fractions:
            vals = [r[metric] for r in rows if r["method"] == m and r["label_fraction"] == f and metric in r]
            cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f} (n={len(vals)})" if vals else "–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_lines(path: Path, series: dict[str, list[tuple[float, list[float]]]], xlabel: str, ylabel: str,
               title: str) -> None:
    """One line per series with mean ± std error bars; ``series[name] = [(x, [values over seeds]), ...]``."""
    import matplotlib  # deferred: matplotlib takes a second to import and only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        points = [(x, v) for x, v in points if v]
        if not points:
            continue
        xs = [x for x, _ in points]
        ax.errorbar(xs, [np.mean(v) for _, v in points], yerr=[np.std(v) for _, v in points], marker="o",
                    capsize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)  # beside the plot: never over a line
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_selections(path: Path, selections: dict[str, list[dict]], title: str) -> None:
    """One block x timestep heatmap per method: the probes' validation loss averaged over the runs given (the
    ``selection`` of each run's metrics), the blocks most often chosen outlined."""
    import matplotlib  # deferred, as above

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m, runs in selections.items() if runs]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        # JSON made the numbers keys strings
        runs = [{int(t): {int(b): v for b, v in row.items()} for t, row in r["scores"].items()}
                for r in selections[method]]
        timesteps = sorted({t for r in runs for t in r})
        blocks = sorted({b for r in runs for row in r.values() for b in row})
        grid = np.array([[np.mean([r[t][b] for r in runs]) for t in timesteps] for b in blocks])
        image = draw_heatmap(ax, grid, [f"block {b}" for b in blocks], [f"t={t}" for t in timesteps], fontsize=6)
        for r in selections[method]:
            j = timesteps.index(int(r["timestep"]))
            for b in r["blocks"]:
                ax.add_patch(plt.Rectangle((j - 0.5, blocks.index(int(b)) - 0.5), 1, 1, fill=False, lw=1.2,
                                           edgecolor="red", alpha=len(runs) ** -0.5))
        ax.set_title(method, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(path: Path, rows: list[dict], first: list[str]) -> None:
    """``rows`` as CSV (columns: ``first``, then the rest the rows hold), written by a rename."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns(rows, first), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())
