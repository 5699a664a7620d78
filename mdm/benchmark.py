"""Label-efficiency benchmark: label fractions x seeds x methods, then a table and plots.

    python -m mdm.benchmark --config configs/bench_demo.yaml [--set key=value ...] [--out DIR]

Every method sees the same labeled subsets (``data.seed`` = the seed), validation pixels and test images. Pretraining
runs once per objective and is reused by every fraction and seed: ``mdm`` and ``ddpm`` train the same architecture on
the same unlabeled pool for ``bench.pretrain_steps`` steps; ``random`` and ``unet-scratch`` use the MDM run's
``exports/step_0``, i.e. the very same initial weights. Finished runs (a ``metrics.json``) are skipped, so an
interrupted sweep resumes. Output folder::

    pretrain_mdm/ pretrain_ddpm/        pretraining runs (exports/step_N for the budget curve)
    runs/<method>/f<fraction>_s<seed>/  one segmentation run each
    results.csv results.md label_efficiency.png
    budget.csv pretrain_budget.png      the metric at the lowest fraction vs pretraining steps (first seed)
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError
from .config import Config, ConfigError, dump, load
from .data import DataError

FROZEN = {"mdm": ("mdm", "export"), "ddpm": ("ddpm", "export"), "random": ("mdm", "exports/step_0")}
FINETUNE = {"mdm-ft": ("mdm", "export"), "unet-scratch": ("mdm", "exports/step_0"), "smp-scratch": (None, None)}
COLUMNS = ["method", "label_fraction", "seed", "labeled_images", "dice", "iou", "miou", "object_f1", "object_dice",
           "aji"]


def pretrain_if_needed(cfg: Config, objective: str, out: Path, log=print) -> Path:
    """Run (or resume) the pretraining of ``objective`` for ``bench.pretrain_steps``; returns the run folder."""
    from .trainer import list_checkpoints, train

    run = out / f"pretrain_{objective}"
    steps = cfg.bench.pretrain_steps
    if (run / "exports" / f"step_{steps}").is_dir():
        return run
    pc = copy.deepcopy(cfg)
    pc.diffusion.objective = objective
    pc.train.max_steps = steps
    pc.train.out_dir = str(run)
    pc.train.export_every = max(1, steps // cfg.bench.budget_exports)
    pc.train.checkpoint_every = max(1, steps // 4)
    log(f"pretraining {objective} for {steps} steps -> {run}")
    train(pc, resume="latest" if list_checkpoints(run) else None)
    return run


def run_one(cfg: Config, method: str, fraction: float, seed: int, export: Path | None, out: Path) -> dict:
    """One segmentation run (skipped when its ``metrics.json`` exists); returns its metrics."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    rc = copy.deepcopy(cfg)
    rc.data.label_fraction, rc.data.seed, rc.seg.seed = fraction, seed, seed
    rc.seg.out_dir = str(out)
    if method in FROZEN:
        from .segmentation import run_segmentation

        rc.seg.mode = "frozen"
        return run_segmentation(rc, export, progress=False)
    from .finetune import run_finetune

    rc.seg.mode, rc.seg.arch = "finetune", ("smp" if method == "smp-scratch" else "unet")
    return run_finetune(rc, export, progress=False)


def _row(method: str, fraction: float, seed: int, result: dict) -> dict:
    row = {"method": method, "label_fraction": fraction, "seed": seed,
           "labeled_images": result.get("labeled_images")}
    for k in COLUMNS[4:]:
        if k in result:
            row[k] = result[k]
    return row


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
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
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def run_benchmark(cfg: Config, log=print) -> dict:
    """The whole study; returns ``{"rows": [...], "budget": [...], "table": markdown}``."""
    bc = cfg.bench
    out = Path(bc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")
    objectives = sorted({obj for m in bc.methods for obj in [(FROZEN.get(m) or FINETUNE.get(m))[0]] if obj})
    pretrain = {obj: pretrain_if_needed(cfg, obj, out, log) for obj in objectives}

    def export_for(method: str, which: str | None = None) -> Path | None:
        obj, default = FROZEN.get(method) or FINETUNE[method]
        return pretrain[obj] / (which or default) if obj else None

    rows = []
    total = len(bc.fractions) * len(bc.seeds) * len(bc.methods)
    for fraction in bc.fractions:
        for seed in bc.seeds:
            for method in bc.methods:
                run = out / "runs" / method / f"f{fraction:g}_s{seed}"
                done = (run / "metrics.json").is_file()
                log(f"[{len(rows) + 1}/{total}] {method} at {fraction:g} labels, seed {seed}"
                    + (" (done, skipped)" if done else ""))
                rows.append(_row(method, fraction, seed, run_one(cfg, method, fraction, seed, export_for(method),
                                                                    run)))
    write_csv(out / "results.csv", rows, COLUMNS)
    table = summarize(rows, bc.metric, bc.methods, bc.fractions)
    (out / "results.md").write_text(f"# Label efficiency ({bc.metric}, mean ± std over seeds {bc.seeds})\n\n"
                                    f"{table}\n")
    plot_lines(out / "label_efficiency.png",
               {m: [(f, [r[bc.metric] for r in rows if r["method"] == m and r["label_fraction"] == f
                         and bc.metric in r]) for f in bc.fractions] for m in bc.methods},
               "label fraction", bc.metric, "Label efficiency")

    budget = []
    lowest = min(bc.fractions)
    for method in [m for m in bc.budget_methods if m in bc.methods and FROZEN.get(m, FINETUNE.get(m))[0] == "mdm"]:
        steps = sorted(int(p.name.split("_")[1]) for p in (pretrain["mdm"] / "exports").glob("step_*"))
        seed = bc.seeds[0]  # one seed: the curve shows the trend; the sweep above gives the spread
        for step in steps:
            run = out / "budget" / method / f"step_{step}_s{seed}"
            log(f"budget: {method} from pretraining step {step}, {lowest:g} labels, seed {seed}")
            result = run_one(cfg, method, lowest, seed, export_for(method, f"exports/step_{step}"), run)
            budget.append({"pretrain_steps": step, **_row(method, lowest, seed, result)})
    if budget:
        write_csv(out / "budget.csv", budget, ["pretrain_steps", *COLUMNS])
        plot_lines(out / "pretrain_budget.png",
                   {m: [(s, [b[bc.metric] for b in budget if b["method"] == m and b["pretrain_steps"] == s])
                        for s in sorted({b["pretrain_steps"] for b in budget})] for m in bc.budget_methods},
                   "pretraining steps", bc.metric, f"Pretraining budget at {lowest:g} labels (seed {bc.seeds[0]})")
    return {"rows": rows, "budget": budget, "table": table}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mdm.benchmark", description="Label-efficiency sweep.")
    p.add_argument("--config", required=True, help="e.g. configs/bench_demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="output folder (default: bench.out_dir)")
    args = p.parse_args(argv)
    try:
        cfg = load(args.config, args.overrides)
        if args.out:
            cfg.bench.out_dir = args.out
        result = run_benchmark(cfg)
    except (ConfigError, DataError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n{cfg.bench.metric}, mean ± std over seeds {cfg.bench.seeds}:\n{result['table']}")
    print(f"results in {cfg.bench.out_dir}/ (results.csv, results.md, label_efficiency.png, pretrain_budget.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
