"""The pretraining-budget curve of a study: the metric at the lowest label fraction from every kept
export of the pretraining runs of ``bench.budget_methods``, against the images seen in
pretraining."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..common.config import Config
from .methods import RANDOM, methods_of
from .report import plot_lines, result_row, task_columns, write_csv
from .runs import budget_points, budget_runs


def budget_steps(steps: int, exports: int, spacing: str) -> list[int]:
    """The pretraining steps (besides step 0) whose exports the budget curve scores: ``linear``, the
    multiples of ``steps // exports`` up to ``steps``; ``log``, ``steps / 2^k`` for
    ``k = exports - 1 .. 0`` (rounded)."""
    if spacing == "log":
        return sorted({max(1, round(steps / 2 ** k)) for k in range(exports)})
    every = max(1, steps // exports)
    return sorted({*range(every, steps + 1, every), steps})


def budget_curve(cfg: Config, variant: str, results: dict, pretrain: dict[tuple[str, str], Path],
                 out: Path, device: torch.device, log=print) -> list[dict]:
    """The budget curve of variant ``variant`` (the first ``bench.budget_seeds`` seeds; ``results``:
    the sweep's metrics by ``(variant, method, fraction, seed)``, whose runs are the curve's last
    points); writes ``budget.csv`` and ``pretrain_budget.png`` (against images seen, with the
    ``random`` method's runs as a reference line when the study has it)."""
    bc, methods = cfg.bench, methods_of(cfg.bench.task)
    lowest, seeds = min(bc.fractions), bc.seeds[:bc.budget_seeds]
    scored = {}
    for run in budget_runs(cfg, variant, pretrain, out):
        t = time.perf_counter()
        scored[run.method, run.seed, run.step] = run.run(device)
        log(f"{run.label}: {time.perf_counter() - t:.1f} s")
    budget = []
    for method, seed, step in budget_points(cfg, variant, pretrain):
        result = results[variant, method, lowest, seed] if step == bc.pretrain_steps else scored[method, seed, step]
        budget.append({"pretrain_steps": step, "images_seen": step * cfg.train.batch_size,
                       **result_row(method, lowest, seed, result, bc.task)})
    if budget:
        write_csv(out / "budget.csv", budget,
                  ["pretrain_steps", "images_seen", *task_columns(bc.task)])
        # the frozen features of the initial weights (``random``): the line pretraining has to rise
        # above
        initial = [m for m in bc.methods if methods[m].mode == "frozen" and methods[m].export == RANDOM]
        reference = {f"{m} (step 0)": [results[variant, m, lowest, s][bc.metric] for s in seeds
                                       if bc.metric in results[variant, m, lowest, s]] for m in initial[:1]}
        log_x = bc.budget_spacing == "log"
        plot_lines(out / "pretrain_budget.png",
                   {m: [(n, [b[bc.metric] for b in budget if b["method"] == m and b["images_seen"] == n])
                        for n in sorted({b["images_seen"] for b in budget}) if n > 0 or not log_x]
                    for m in bc.budget_methods},
                   "images seen in pretraining", bc.metric,
                   f"Pretraining budget at {lowest:g} labels (seeds {seeds})", log_x=log_x,
                   references=reference)
    return budget
