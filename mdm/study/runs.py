"""The stage-2 runs of a study, each a folder that ends with ``metrics.json``: their one fixed order
(the sweep's runs variant x fraction x seed x method, then the budget curve's), which a study in one
process and a study spread over shards (``shards``) both walk, and ``run_one``, which runs one of
them (or reads it back when finished)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..common.config import Config
from ..pretrain.export import open_export
from ..stage2.run_folder import FINISHED
from ..stage2.tasks import TASKS
from .methods import methods_of


def run_one(cfg: Config, method: str, fraction: float, seed: int, export: Path | None, out: Path,
            device: torch.device) -> dict:
    """One run of ``bench.task`` (skipped when its ``metrics.json`` exists); returns its metrics."""
    if (out / FINISHED).is_file():
        return json.loads((out / FINISHED).read_text())
    task = TASKS[cfg.bench.task]
    section = task.configure(task.config_of(cfg), methods_of(cfg.bench.task)[method], seed)
    data = replace(cfg.data, label_fraction=fraction, seed=seed)
    opened = open_export(export, section.weights) if export is not None else None
    return task.run(section, data, opened, out, device=device, progress=False)


@dataclass(frozen=True)
class StudyRun:
    """One stage-2 run of a study: ``method`` at ``fraction`` labels with ``seed`` in variant
    ``variant`` (config ``cfg``), reading ``export`` (``None``: no U-Net) of the pretraining run
    folder ``pretraining`` (``None``: none), writing ``folder``; ``step``: the pretraining step of a
    budget-curve run (``None``: a run of the sweep)."""

    variant: str
    cfg: Config
    method: str
    fraction: float
    seed: int
    export: Path | None
    pretraining: Path | None
    folder: Path
    step: int | None = None

    @property
    def done(self) -> bool:
        return (self.folder / FINISHED).is_file()

    def run(self, device: torch.device) -> dict:
        return run_one(self.cfg, self.method, self.fraction, self.seed, self.export,
                       self.folder, device)

    @property
    def label(self) -> str:
        what = f"{self.method} at {self.fraction:g} labels, seed {self.seed}"
        if self.step is not None:
            return f"budget: {what}, from pretraining step {self.step}"
        return f"{self.variant}: {what}" if self.variant else what


def sweep_runs(cfg: Config, studies: list[tuple[str, Config]],
               pretrain: dict[tuple[str, str], Path], out: Path) -> list[StudyRun]:
    """The sweep's runs in order: variant x fraction x seed x method of ``cfg.bench`` (``studies``:
    each variant's name and config; ``pretrain``: the pretraining run folder of each
    ``(variant, objective)``)."""
    bc, methods, runs = cfg.bench, methods_of(cfg.bench.task), []
    for name, vcfg in studies:
        for fraction in bc.fractions:
            for seed in bc.seeds:
                for method in bc.methods:
                    m = methods[method]
                    source = pretrain[name, m.objective] if m.objective else None
                    runs.append(StudyRun(name, vcfg, method, fraction, seed,
                                         source / m.export if source else None, source,
                                         out / "runs" / name / method / f"f{fraction:g}_s{seed}"))
    return runs


def budget_points(cfg: Config, variant: str,
                  pretrain: dict[tuple[str, str], Path]) -> list[tuple[str, int, int]]:
    """The budget curve's points in order, ``(method, seed, step)``: for each method of
    ``bench.budget_methods`` (pretrained ones in the study), each of the first
    ``bench.budget_seeds`` seeds, every kept export (``exports/step_N``) of its pretraining run.
    Read from the pretraining folders: call it once they have finished."""
    bc, methods = cfg.bench, methods_of(cfg.bench.task)
    return [(method, seed, step)
            for method in bc.budget_methods if method in bc.methods and methods[method].objective
            for seed in bc.seeds[:bc.budget_seeds]
            for step in export_steps(pretrain[variant, methods[method].objective])]


def budget_runs(cfg: Config, variant: str,
                pretrain: dict[tuple[str, str], Path], out: Path) -> list[StudyRun]:
    """The runs of the budget curve's points (``budget_points``) but the last step's, which are the
    sweep's own runs at the lowest fraction."""
    bc, methods = cfg.bench, methods_of(cfg.bench.task)
    runs = []
    for method, seed, step in budget_points(cfg, variant, pretrain):
        if step != bc.pretrain_steps:
            source = pretrain[variant, methods[method].objective]
            runs.append(StudyRun(variant, cfg, method, min(bc.fractions), seed,
                                 source / "exports" / f"step_{step}", source,
                                 out / "budget" / variant / method / f"step_{step}_s{seed}", step))
    return runs


def export_steps(pretraining: Path) -> list[int]:
    """The steps of the exports a pretraining run kept (``exports/step_N``), in order."""
    names = (p.name.split("_")[1] for p in (pretraining / "exports").glob("step_*"))
    return sorted(int(n) for n in names if n.isdigit())
