"""Tables and plots of a label-efficiency study: ``results.csv`` rows, markdown tables of mean ±
sample std over seeds (per method and fraction, or per variant and method), line plots with error
bars, the ablation's bars and the table of the pretraining runs' colour checks."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

from ..common.config_checks import as_block
from ..common.io import write_text_atomic
from ..pretrain.objectives import OBJECTIVES
from ..stage2.plots import draw_heatmap, save_figure
from ..stage2.tasks import TASKS

RUN_COLUMNS = ["method", "label_fraction", "seed", "labeled_images"]


def task_columns(task: str) -> list[str]:
    """The first columns of ``results.csv`` for ``bench.task``: the run's, then the task's
    metrics."""
    return RUN_COLUMNS + list(TASKS[task].columns)


def result_row(method: str, fraction: float, seed: int, result: dict,
               task: str = "segmentation") -> dict:
    """One ``results.csv`` row from a run's metrics; per-group metrics (GlaS testA / testB) as
    ``<group>_<metric>``."""
    row = {"method": method, "label_fraction": fraction, "seed": seed,
           "labeled_images": result.get("labeled_images")}
    for k in TASKS[task].columns:
        if k in result:
            row[k] = result[k]
    for group, values in result.get("groups", {}).items():
        row.update({f"{group}_{k}": v for k, v in values.items()})
    return row


def columns(rows: list[dict], first: list[str]) -> list[str]:
    """``first``, then every other key the rows hold, in order of appearance."""
    return list(dict.fromkeys([*first, *(k for r in rows for k in r)]))


STATS_NOTE = ("mean ± sample standard deviation (ddof 1) over the n seeds of each cell; the seeds draw the labeled "
              "images and the initialisations")


def sample_sd(vals: list[float]) -> float:
    """The sample standard deviation (ddof 1); 0 for fewer than two values (nothing to spread)."""
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def summarize(rows: list[dict], metric: str, methods: list[str], fractions: list[float]) -> str:
    """Markdown table: mean ± sample std (``STATS_NOTE``) of ``metric`` with n, one row per method,
    one column per fraction."""
    head = "| method | " + " | ".join(f"{f:g} labels" for f in fractions) + " |"
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for m in methods:
        cells = [_cell([r[metric] for r in rows if r["method"] == m and r["label_fraction"] == f and metric in r])
                 for f in fractions]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(vals: list[float], change: str = "") -> str:
    if not vals:
        return "–"
    spread = f" ± {sample_sd(vals):.3f}" if len(vals) > 1 else ""
    return f"{np.mean(vals):.3f}{spread}{change} (n={len(vals)})"


def summarize_variants(rows: list[dict], metric: str, variants: list[str], methods: list[str],
                       fraction: float) -> str:
    """Markdown table at one label fraction: mean ± sample std of ``metric`` over seeds with n, one
    row per variant, one column per method; from the second variant on, the change of the mean from
    the first variant's, in points (x100)."""
    def values(v, m):
        return [r[metric] for r in rows if r.get("variant") == v and r["method"] == m
                and r["label_fraction"] == fraction and metric in r]

    lines = ["| variant | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for k, v in enumerate(variants):
        cells = []
        for m in methods:
            vals, first = values(v, m), values(variants[0], m)
            change = f" ({100 * (np.mean(vals) - np.mean(first)):+.1f})" if k and vals and first else ""
            cells.append(_cell(vals, change))
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pretraining_table(runs: list[Path]) -> str:
    """Markdown table of pretraining runs: objective, loss, the last logged loss and the colour
    check of the EMA weights (``previews.colour_check``: mean absolute error and per-channel mean
    error on the pixels the model saw, at t = 0.05 T, [-1, 1] scale)."""
    lines = [
        "| run | objective | loss | steps | last loss | recon error | colour bias (per channel) |",
        "|---|---|---|---|---|---|---|"]
    for run in runs:
        diffusion = SimpleNamespace(
            **yaml.safe_load((run / "config.yaml").read_text())["diffusion"])
        log = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines() if r.strip()]
        last = log[-1] if log else {}
        bias = ", ".join(
            f"{last[k]:+.3f}" for k in sorted(k for k in last if k.startswith("recon_bias_c")))
        objective = diffusion.objective
        loss = OBJECTIVES[objective].loss(diffusion) if objective in OBJECTIVES else "?"
        nan = float("nan")
        lines.append(f"| {run.name} | {objective} | {loss} | {last.get('step', 0)} | {last.get('loss', nan):.4f} | "
                     f"{last.get('recon_error', nan):.3f} | {bias or '–'} |")
    return "\n".join(lines)


def plot_lines(path: Path, series: dict[str, list[tuple[float, list[float]]]], xlabel: str,
               ylabel: str, title: str, log_x: bool = False,
               references: dict[str, list[float]] | None = None) -> None:
    """One line per series with mean ± sample std error bars; ``series[name] = [(x, [values over
    seeds]), ...]``; ``references[name]``: values drawn as a dashed horizontal line at their
    mean."""
    import matplotlib  # deferred: matplotlib takes a second to import and only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        points = [(x, v) for x, v in points if v]
        if not points:
            continue
        xs = [x for x, _ in points]
        ax.errorbar(xs, [np.mean(v) for _, v in points], yerr=[sample_sd(v) for _, v in points],
                    marker="o", capsize=3, label=name)
    for name, values in (references or {}).items():
        if values:
            ax.axhline(float(np.mean(values)), color="grey", linestyle="--", label=name)
    # ticks at the measured points, written out (log axes otherwise label crowded minor ticks)
    if log_x:
        from matplotlib.ticker import FixedLocator, NullFormatter, StrMethodFormatter

        ax.set_xscale("log")
        measured = sorted({x for points in series.values() for x, v in points if v and x > 0})
        ax.xaxis.set_major_locator(FixedLocator(measured))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # beside the plot: never over a line
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    save_figure(fig, path, dpi=120)


def plot_ablation(path: Path, rows: list[dict], metric: str, variants: list[str],
                  methods: list[str], fraction: float) -> None:
    """Grouped bars at one label fraction: one group per variant, one bar per method (mean ± sample
    std over seeds)."""
    import matplotlib  # deferred, as above

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(13.0, 2.0 + 0.9 * len(variants)), 4.2))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        vals = [[r[metric] for r in rows if r.get("variant") == v and r["method"] == m
                 and r["label_fraction"] == fraction and metric in r] for v in variants]
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(variants))]
        ax.bar(xs, [np.mean(v) if v else 0 for v in vals], width, yerr=[sample_sd(v) for v in vals],
               capsize=2, label=m)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"Ablation at {fraction:g} labels (mean ± sample std over seeds)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    save_figure(fig, path, dpi=120)


def plot_selections(path: Path, selections: dict[str, list[dict]], title: str) -> None:
    """One block x timestep heatmap per method: the probes' validation loss averaged over the runs
    given (the ``selection`` of each run's metrics), the blocks most often chosen outlined."""
    import matplotlib  # deferred, as above

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m, runs in selections.items() if runs]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        # JSON made the numbers keys strings
        runs = [{int(t): {as_block(b): v for b, v in row.items()} for t, row in r["scores"].items()}
                for r in selections[method]]
        timesteps = sorted({t for r in runs for t in r})
        # in the order probed
        blocks = list(dict.fromkeys(b for r in runs for row in r.values() for b in row))
        grid = np.array([[np.mean([r[t][b] for r in runs]) for t in timesteps] for b in blocks])
        image = draw_heatmap(ax, grid, [f"block {b}" for b in blocks],
                             [f"t={t}" for t in timesteps], fontsize=6)
        for r in selections[method]:
            j = timesteps.index(int(r["timestep"]))
            for b in r["blocks"]:
                ax.add_patch(plt.Rectangle((j - 0.5, blocks.index(as_block(b)) - 0.5), 1, 1,
                                           fill=False, lw=1.2, edgecolor="red",
                                           alpha=len(runs) ** -0.5))
        ax.set_title(method, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=110)


def write_csv(path: Path, rows: list[dict], first: list[str]) -> None:
    """``rows`` as CSV (columns: ``first``, then the rest the rows hold), written by a rename."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns(rows, first), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())
