"""The label-efficiency study: label fractions x seeds x methods, then a table and plots.

Every method sees the same labeled subsets (``data.seed`` = the seed), validation pixels and test images. Pretraining
runs once per objective and is reused by every fraction and seed: ``mdm`` and ``ddpm`` train the same architecture on
the same unlabeled pool for ``bench.pretrain_steps`` steps; ``random`` and ``unet-scratch`` use the MDM run's
``exports/step_0``, i.e. the very same initial weights. Finished runs (a ``metrics.json``) are skipped, so an
interrupted sweep resumes, and a folder is only resumed by the same study (``check_same_study``). Output folder::

    pretrain_mdm/ pretrain_ddpm/        pretraining runs (exports/step_N for the budget curve; pool.json: the
                                        pool's size and the test images kept out of it, see ``pool``)
    runs/<method>/f<fraction>_s<seed>/  one segmentation run each
    results.csv results.md label_efficiency.png
    block_selection.png                 (seg.blocks / seg.timesteps auto) the probes' scores per frozen method
    budget.csv pretrain_budget.png      the metric at the lowest fraction vs pretraining steps (first seed)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..common.config import MASKED_OBJECTIVES, Config, DataConfig, check_crop, dump, load, to_dict
from ..common.errors import ConfigError
from ..common.io import write_text_atomic
from ..pretrain.export import open_export
from ..pretrain.trainer import list_checkpoints, train
from ..segment.run import run_segmentation
from .pool import pretraining_data
from .report import COLUMNS, plot_lines, plot_selections, result_row, summarize, write_csv


@dataclass(frozen=True)
class Method:
    """How a method segments: ``mode``/``arch`` as in ``SegConfig``; its U-Net comes from the pretraining run of
    ``objective`` (None: no export), folder ``export`` of that run (``export``: the last; ``exports/step_0``: the
    random initial weights)."""

    name: str
    mode: str
    arch: str
    objective: str | None
    export: str


METHODS = {m.name: m for m in (
    Method("mdm", "frozen", "unet", "mdm", "export"),
    Method("ddpm", "frozen", "unet", "ddpm", "export"),
    Method("mae", "frozen", "unet", "mae", "export"),
    Method("random", "frozen", "unet", "mdm", "exports/step_0"),
    Method("mdm-ft", "finetune", "unet", "mdm", "export"),
    Method("mae-ft", "finetune", "unet", "mae", "export"),
    Method("unet-scratch", "finetune", "unet", "mdm", "exports/step_0"),
    Method("smp-scratch", "finetune", "smp", None, ""),
)}


def pretrain_if_needed(cfg: Config, objective: str, pool: DataConfig, out: Path, device: torch.device,
                       log=print) -> Path:
    """Run (or resume) the pretraining of ``objective`` on ``pool`` (``pretraining_data(cfg)``) for
    ``bench.pretrain_steps``; returns the run folder."""
    run = out / f"pretrain_{objective}"
    steps = cfg.bench.pretrain_steps
    if (run / "exports" / f"step_{steps}").is_dir():
        return run
    tc = replace(cfg.train, max_steps=steps, out_dir=str(run), export_every=max(1, steps // cfg.bench.budget_exports),
                 checkpoint_every=max(1, steps // 4))
    log(f"pretraining {objective} for {steps} steps -> {run}")
    train(replace(cfg, data=pool, diffusion=replace(cfg.diffusion, objective=objective), train=tc),
          resume="latest" if list_checkpoints(run) else None, device=device)
    return run


def run_one(cfg: Config, method: str, fraction: float, seed: int, export: Path | None, out: Path,
            device: torch.device) -> dict:
    """One segmentation run (skipped when its ``metrics.json`` exists); returns its metrics."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    m = METHODS[method]
    seg = replace(cfg.seg, mode=m.mode, arch=m.arch, seed=seed)
    data = replace(cfg.data, label_fraction=fraction, seed=seed)
    opened = open_export(export, seg.weights) if export is not None else None
    return run_segmentation(seg, data, opened, out, device=device, progress=False)


# keys that decide which runs a study holds, or where and how fast it runs, but not what a run gives: a folder may
# be resumed with other values of these (more seeds, another method, another device)
RESUMABLE_KEYS = {"bench.fractions", "bench.seeds", "bench.methods", "bench.budget_methods", "bench.out_dir",
                  "train.out_dir", "seg.out_dir", "train.device", "seg.device", "train.log_every",
                  "train.image_every", "seg.cache_dir", "data.num_workers"}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_study(cfg: Config, out: Path) -> None:
    """Refuse to resume ``out`` with a config that would change what its finished runs give: they are skipped on
    resume, so their results would be mixed with runs of the new config in one table. ``RESUMABLE_KEYS`` may differ."""
    saved = out / "config.yaml"
    if not saved.is_file():
        return
    before, now = _flat(to_dict(load(saved))), _flat(to_dict(cfg))
    changed = [k for k in now if k not in RESUMABLE_KEYS and before.get(k) != now[k]]
    if changed:
        k = changed[0]
        raise ConfigError(f"{saved}: this folder holds a study with {k} = {before.get(k)!r}, this one has "
                          f"{now[k]!r}{f' (and {len(changed) - 1} more key(s))' if len(changed) > 1 else ''}; its "
                          f"finished runs would be mixed into the table: use another bench.out_dir or remove it")


def run_benchmark(cfg: Config, train_device: torch.device, seg_device: torch.device, log=print) -> dict:
    """The whole study, pretraining on ``train_device`` and segmenting on ``seg_device``; returns
    ``{"rows": [...], "budget": [...], "table": markdown}``."""
    bc = cfg.bench
    wrong = [m for m in bc.budget_methods if m not in METHODS or METHODS[m].export != "export"]
    if wrong:
        raise ConfigError(f"bench.budget_methods: {wrong[0]!r} has no pretraining budget (use methods of pretrained "
                          f"weights: {', '.join(m for m, v in METHODS.items() if v.export == 'export')})")
    objectives = sorted({METHODS[m].objective for m in bc.methods} - {None})
    pool = pretraining_data(cfg)
    if set(objectives) & set(MASKED_OBJECTIVES):  # before anything is written
        check_crop("data.crop_size" if pool is cfg.data else "bench.pretrain_data.crop_size", pool.crop_size,
                   cfg.diffusion.patch_size)
    started = time.perf_counter()
    out = Path(bc.out_dir)
    check_same_study(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")
    pretrain = {}
    for obj in objectives:
        t = time.perf_counter()
        pretrain[obj] = pretrain_if_needed(cfg, obj, pool, out, train_device, log)
        log(f"pretraining {obj}: {time.perf_counter() - t:.1f} s")

    def export_for(method: str, which: str | None = None) -> Path | None:
        m = METHODS[method]
        return pretrain[m.objective] / (which or m.export) if m.objective else None

    rows, results = [], {}
    total = len(bc.fractions) * len(bc.seeds) * len(bc.methods)
    for fraction in bc.fractions:
        for seed in bc.seeds:
            for method in bc.methods:
                run = out / "runs" / method / f"f{fraction:g}_s{seed}"
                done = (run / "metrics.json").is_file()
                result = run_one(cfg, method, fraction, seed, export_for(method), run, seg_device)
                log(f"[{len(rows) + 1}/{total}] {method} at {fraction:g} labels, seed {seed}: "
                    + ("done before, skipped" if done else f"{result['seconds']:.1f} s"))
                results[method, fraction, seed] = result
                rows.append(result_row(method, fraction, seed, result))
    write_csv(out / "results.csv", rows, COLUMNS)
    table = summarize(rows, bc.metric, bc.methods, bc.fractions)
    write_text_atomic(out / "results.md", f"# Label efficiency ({bc.metric}, mean ± std over seeds {bc.seeds})\n\n"
                                    f"{table}\n")
    plot_lines(out / "label_efficiency.png",
               {m: [(f, [r[bc.metric] for r in rows if r["method"] == m and r["label_fraction"] == f
                         and bc.metric in r]) for f in bc.fractions] for m in bc.methods},
               "label fraction", bc.metric, "Label efficiency")

    lowest = min(bc.fractions)
    selections = {m: [results[m, lowest, s]["selection"] for s in bc.seeds if "selection" in results[m, lowest, s]]
                  for m in bc.methods if METHODS[m].mode == "frozen"}
    if any(selections.values()):
        plot_selections(out / "block_selection.png", selections,
                        f"one-block probes' validation loss at {lowest:g} labels (mean over seeds {bc.seeds}; red: "
                        f"chosen)")

    budget = []
    for method in [m for m in bc.budget_methods if m in bc.methods and METHODS[m].objective]:
        exports = pretrain[METHODS[method].objective] / "exports"
        steps = sorted(int(p.name.split("_")[1]) for p in exports.glob("step_*") if p.name.split("_")[1].isdigit())
        seed = bc.seeds[0]  # one seed: the curve shows the trend; the sweep above gives the spread
        for step in steps:
            if step == bc.pretrain_steps:  # the sweep's own run: ``export`` is a copy of exports/step_N
                result = results[method, lowest, seed]
                log(f"budget: {method} from pretraining step {step}: the sweep's run at {lowest:g} labels, seed {seed}")
            else:
                run = out / "budget" / method / f"step_{step}_s{seed}"
                t = time.perf_counter()
                result = run_one(cfg, method, lowest, seed, export_for(method, f"exports/step_{step}"), run,
                                 seg_device)
                log(f"budget: {method} from pretraining step {step}, {lowest:g} labels, seed {seed}: "
                    f"{time.perf_counter() - t:.1f} s")
            budget.append({"pretrain_steps": step, **result_row(method, lowest, seed, result)})
    if budget:
        write_csv(out / "budget.csv", budget, ["pretrain_steps", *COLUMNS])
        plot_lines(out / "pretrain_budget.png",
                   {m: [(s, [b[bc.metric] for b in budget if b["method"] == m and b["pretrain_steps"] == s])
                        for s in sorted({b["pretrain_steps"] for b in budget})] for m in bc.budget_methods},
                   "pretraining steps", bc.metric, f"Pretraining budget at {lowest:g} labels (seed {bc.seeds[0]})")
    elapsed = time.perf_counter() - started
    log(f"study finished in {elapsed // 60:.0f} min {elapsed % 60:.0f} s")
    return {"rows": rows, "budget": budget, "table": table, "seconds": elapsed}
