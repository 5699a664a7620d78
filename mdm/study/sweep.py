"""The label-efficiency study: label fractions x seeds x methods, then a table and plots; with
``bench.variants``, an ablation: the same study once per variant (see ``variants``). ``bench.task``
says what each run measures, a task registered in ``stage2.tasks.TASKS``: segmentation
(``segment.run``, methods ``METHODS``) or image classification (``classify.run``,
``CLASS_METHODS``).

Every method sees the same labeled subsets (``data.seed`` = the seed), validation pixels and test
images. Pretraining runs once per objective and is reused by every fraction and seed (and by every
variant that does not change it): ``mdm``, ``ddpm`` and ``mae`` train the same architecture on the
same unlabeled pool for ``bench.pretrain_steps`` steps; ``random`` and ``unet-scratch`` use the MDM
run's ``exports/step_0``, i.e. the very same initial weights. Finished runs (a ``metrics.json``) are
skipped, so an interrupted sweep resumes, and a folder is only resumed by the same study on the same
data (``check_same_study``, ``manifest``). Output folder::

    pretrain_mdm/ pretrain_ddpm/        pretraining runs (exports/step_N for the budget curve; pool.json: the
                                        pool's size and the test images kept out of it, see ``pool``);
                                        pretrain_<objective>_<variant>/ where a variant pretrains otherwise
    data.json                           every file the study read, with its content hash
    pretraining.md                      each pretraining run's last loss and colour check
    runs/[<variant>/]<method>/f<fraction>_s<seed>/  one segmentation (or classification) run each
    results.csv results.md label_efficiency.png (ablation.png: variants x methods at the lowest fraction)
    verdicts.csv                        each method against bench.references (an ablation: each variant against
                                        the first), paired 95% bootstrap intervals (``verdicts``)
    block_selection.png                 (seg.blocks / probe.blocks auto) the probes' scores per frozen method
    budget.csv pretrain_budget.png      the metric at the lowest fraction vs images seen in pretraining (the first
                                        bench.budget_seeds seeds; the first variant)
    image_level/ levels.csv levels.png  (bench.image_methods) the same exports judged at image level, a
                                        classification study of its own, and both levels side by side (``levels``)
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from ..common.config import Config, DataConfig, check_crop, keys_with_role
from ..common.config_io import dump, load, to_dict
from ..common.devices import machine_summary
from ..common.errors import ConfigError
from ..common.io import write_text_atomic
from ..pretrain.export import export_is_current, publish_export
from ..pretrain.identity import changed_weight_keys
from ..pretrain.objectives import OBJECTIVES
from ..pretrain.trainer import list_checkpoints, train
from ..stage2.tasks import TASKS
from .budget import budget_curve, budget_steps
from .levels import IMAGE_LEVEL, Level, image_level_config, write_levels
from .manifest import check_same_data, data_manifest, write_manifest
from .methods import methods_of
from .pool import pretraining_data
from .report import (
    STATS_NOTE,
    plot_ablation,
    plot_lines,
    plot_selections,
    pretraining_table,
    result_row,
    summarize,
    summarize_variants,
    task_columns,
    write_csv,
)
from .runs import budget_runs, sweep_runs
from .shards import Shard, finished, method_by_method, refuse_unfinished, run_when_ready, wait_for
from .variants import PretrainFolders, arms
from .verdicts import Verdict, default_references, judge, run_scores, verdict_sentences, verdict_table, write_verdicts


def pretrain_if_needed(cfg: Config, objective: str, pool: DataConfig, run: Path,
                       device: torch.device, log=print) -> Path:
    """Run (or resume) the pretraining of ``objective`` on ``pool`` (``pretraining_data(cfg)``) for
    ``bench.pretrain_steps`` into ``run``, keeping the exports of ``budget_steps``; returns
    ``run``."""
    bc = cfg.bench
    steps = bc.pretrain_steps
    tc = replace(cfg.train, max_steps=steps, out_dir=str(run), export_every=0,
                 export_at=budget_steps(steps, bc.budget_exports, bc.budget_spacing),
                 checkpoint_every=max(1, steps // 4))
    ours = replace(cfg, data=pool, diffusion=replace(cfg.diffusion, objective=objective), train=tc)
    # a run of this study, or one copied in to be reused: the same weights?
    if (run / "config.yaml").is_file():
        changed = changed_weight_keys(load(run / "config.yaml"), ours)
        if changed:
            raise ConfigError(f"{run}: was pretrained with {changed}; this study would score weights it did not ask "
                              f"for (another pool, test images among them, another recipe): move the folder away or "
                              f"give another bench.out_dir")
    if (run / "exports" / f"step_{steps}").is_dir():
        # killed after exports/step_N, before export/ was replaced
        if not export_is_current(run, steps):
            publish_export(run, steps)
            log(f"{run / 'export'}: replaced by exports/step_{steps} (a kill had left an older export there)")
        return run
    log(f"pretraining {objective} for {steps} steps -> {run}")
    train(ours, resume="latest" if list_checkpoints(run) else None, device=device)
    return run


# keys that decide which runs a study holds, or where and how fast it runs, but not what a run
# gives: a folder may be resumed with other values of these (more seeds, another method, another
# device, more variants); each declares the role beside its declaration
RESUMABLE_KEYS = keys_with_role("resumable")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_study(cfg: Config, out: Path) -> None:
    """Refuse to resume ``out`` with a config that would change what its finished runs give: they
    are skipped on resume, so their results would be mixed with runs of the new config in one table.
    ``RESUMABLE_KEYS`` may differ; variants may be added or dropped, but a variant that keeps its
    name keeps its overrides."""
    saved = out / "config.yaml"
    if not saved.is_file():
        return
    old = load(saved)
    before, now = _flat(to_dict(old)), _flat(to_dict(cfg))
    changed = [k for k in now if k not in RESUMABLE_KEYS and before.get(k) != now[k]]
    if changed:
        k = changed[0]
        raise ConfigError(
            f"{saved}: this folder holds a study with {k} = {before.get(k)!r}, this one has "
            f"{now[k]!r}{f' (and {len(changed) - 1} more key(s))' if len(changed) > 1 else ''}; its "
            f"finished runs would be mixed into the table: use another bench.out_dir or remove it")
    kept = {v.name: v.set for v in old.bench.variants}
    for v in cfg.bench.variants:
        if v.name in kept and kept[v.name] != v.set:
            raise ConfigError(f"{saved}: this folder holds variant {v.name!r} with set = {kept[v.name]}, this one has "
                              f"{v.set}; its finished runs would be mixed into the table: rename the variant or use "
                              f"another bench.out_dir")


STUDY_FILES = {"config.yaml", "data.json", "pretraining.md", "results.csv", "results.md",
               "verdicts.csv", "label_efficiency.png", "ablation.png", "block_selection.png",
               "budget.csv", "pretrain_budget.png", "runs", "budget", "new_images", "predict",
               IMAGE_LEVEL, "levels.csv", "levels.png"}


def check_study_folder(out: Path, caches: list[str] = ()) -> None:
    """Refuse a study folder that holds anything a study does not write (``STUDY_FILES``,
    ``pretrain_*``, hidden temporary files, the feature caches ``caches`` the config puts there), or
    files but no ``config.yaml`` (a study writes that first), unless they are only pretraining runs
    (another study's, copied in to be reused): its tables would overwrite the user's files."""
    # hidden names aside: another shard's temporary files while it writes config.yaml
    if out.is_dir():
        names = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        inside = [Path(c).resolve() for c in caches if c and Path(c).resolve().is_relative_to(out.resolve())]
        own = {c.relative_to(out.resolve()).parts[0] for c in inside if c != out.resolve()}
        foreign = sorted(
            n for n in names if n not in STUDY_FILES | own and not n.startswith("pretrain_"))
        only_pretraining = all(n.startswith("pretrain_") for n in names)
        if not foreign and names and "config.yaml" not in names and not only_pretraining:
            foreign = sorted(names)
        if foreign:
            raise ConfigError(
                f"{out}: holds files a study does not write ({', '.join(foreign[:3])}); give a new "
                f"bench.out_dir (--out), a study writes its tables there")


def _objectives(cfg: Config) -> list[str]:
    """The objectives the study pretrains: its methods' and its image-level methods'."""
    bc = cfg.bench
    named = [methods_of(bc.task)[m] for m in bc.methods]
    named += [methods_of("classification")[m] for m in bc.image_methods]
    return sorted({m.objective for m in named} - {None})


def run_benchmark(cfg: Config, train_device: torch.device, seg_device: torch.device, log=print,
                  shard: Shard | None = None, report: bool = False,
                  pretrain_root: Path | None = None) -> dict:
    """The whole study (once per variant of ``bench.variants``), pretraining on ``train_device`` and
    running stage 2 on ``seg_device``; returns ``{"rows": [...], "budget": [...], "table": markdown,
    "verdicts", "arms" (``study_arms``), "seconds", "phases": {phase: seconds}, "image_level" (its
    own result), "levels" (the section), "chosen" (each frozen run's block selection by method and
    fraction)}`` (phases: each pretraining run, the stage-2 runs of each
    method, the budget curve). ``shard``: only that slice of the runs, no tables (``shards``); ``report``:
    the tables of a study whose runs have all finished, nothing trained (a ``ConfigError`` naming
    the first unfinished run otherwise). ``bench.image_methods``: the image level too, a study of
    its own in ``image_level/`` (``levels``), and both levels side by side in ``results.md``;
    ``pretrain_root``: the study folder whose pretraining runs this one reads without training
    them (the image level's: its segmentation study's)."""
    bc = cfg.bench
    image_cfg = image_level_config(cfg) if bc.image_methods else None
    task, methods = TASKS[bc.task], methods_of(bc.task)
    budget_methods = [m for m in bc.budget_methods if m in bc.methods]
    for m in bc.methods:  # every record's names, before anything is pretrained
        method = methods[m]
        if (method.objective is not None and method.objective not in OBJECTIVES) or not task.known(method):
            raise ConfigError(f"bench.methods: {m!r} names objective {method.objective!r} / head or "
                              f"network {method.arch or '(configured)'!r}, which are not registered")
    wrong = [m for m in budget_methods if not methods[m].pretrained]
    if wrong:
        raise ConfigError(f"bench.budget_methods: {wrong[0]!r} has no pretraining budget (use methods of pretrained "
                          f"weights: {', '.join(m for m, v in methods.items() if v.pretrained)})")
    studies = arms(cfg)  # every variant's config checked before anything is written
    pools = {}
    for name, vcfg in studies:
        pools[name] = pool = pretraining_data(vcfg)
        if any(OBJECTIVES[obj].masks for obj in _objectives(vcfg)):
            check_crop("data.crop_size" if pool is vcfg.data else "bench.pretrain_data.crop_size",
                       pool.crop_size, vcfg.diffusion.patch_size)
    started = time.perf_counter()
    out = Path(bc.out_dir)
    check_study_folder(
        out, [c.seg.cache_dir for _, c in studies] + [c.probe.cache_dir for _, c in studies])
    check_same_study(cfg, out)
    manifest = data_manifest(studies)
    check_same_data(out, manifest)
    folders = PretrainFolders(pretrain_root or out, cfg, pretraining_data(cfg))
    pretrain: dict[tuple[str, str], Path] = {}  # (variant, objective): its pretraining run folder
    # each pretraining run once: variant, config, objective, folder
    units: list[tuple[str, Config, str, Path]] = []
    for name, vcfg in studies:
        for obj in _objectives(vcfg):
            pretrain[name, obj] = run = folders.folder(name, vcfg, obj, pools[name])
            if run not in [u[3] for u in units]:
                units.append((name, vcfg, obj, run))
    name0, cfg0 = studies[0]  # the selection heatmap and the budget curve: the first variant's
    if report:  # trains nothing: every pretraining run and every run must have finished
        refuse_unfinished(out,
                          [u[3] for u in units if not finished(u[3], u[1].bench.pretrain_steps)])
        every = sweep_runs(cfg, studies, pretrain, out) + budget_runs(cfg0, name0, pretrain, out)
        refuse_unfinished(out, [r.folder for r in every if not r.done])
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")
    write_manifest(out, manifest)
    # seconds per phase of this call (a run done before counts as what its skip cost)
    phases: dict[str, float] = {}
    mine = [] if pretrain_root else shard.mine(units) if shard else units
    for name, vcfg, obj, run in mine:
        t = time.perf_counter()
        pretrain_if_needed(vcfg, obj, pools[name], run, train_device, log)
        phases[f"pretraining ({run.name})"] = seconds = time.perf_counter() - t
        log(f"pretraining {obj} ({run.name}): {seconds:.1f} s")
    image = None
    if image_cfg is not None:
        image = run_benchmark(image_cfg, train_device, seg_device, lambda text: log(f"image level: {text}"),
                              shard=shard, report=report, pretrain_root=out)
        phases.update({f"image level: {k}": v for k, v in image["phases"].items()})
    if shard is not None:
        t = time.perf_counter()
        trained = run_when_ready(
            shard.mine(method_by_method(sweep_runs(cfg, studies, pretrain, out))), seg_device,
            log)
        wait_for([pretrain[name0, methods[m].objective] for m in budget_methods],
                 cfg0.bench.pretrain_steps, log)
        trained += run_when_ready(
            shard.mine(method_by_method(budget_runs(cfg0, name0, pretrain, out))), seg_device,
            log)
        phases[f"{task.noun} runs of shard {shard}"] = time.perf_counter() - t
        elapsed = time.perf_counter() - started
        log(f"shard {shard}: {trained} run(s) trained in {elapsed:.0f} s; once every shard is done, --report writes "
            f"the tables")
        return {"rows": [], "budget": [], "table": "", "verdicts": [], "arms": {}, "seconds": elapsed,
                "phases": phases, "shard": str(shard)}
    pretrained = pretraining_table(sorted(set(pretrain.values())))
    write_text_atomic(out / "pretraining.md", pretrained + "\n")

    rows, results, skipped = [], {}, 0
    runs = sweep_runs(cfg, studies, pretrain, out)
    for k, run in enumerate(runs):
        done, t = run.done, time.perf_counter()
        result = run.run(seg_device)
        key = f"{task.noun}: {run.method}"
        phases[key] = phases.get(key, 0.0) + time.perf_counter() - t
        skipped += done
        log(f"[{k + 1}/{len(runs)}] {run.label}: " + ("done before, skipped" if done else f"{result['seconds']:.1f} s"))
        results[run.variant, run.method, run.fraction, run.seed] = result
        rows.append({**({"variant": run.variant} if run.variant else {}),
                     **result_row(run.method, run.fraction, run.seed, result, bc.task)})
    columns = task_columns(bc.task)
    write_csv(out / "results.csv", rows, ["variant", *columns] if bc.variants else columns)
    lowest = min(bc.fractions)
    if bc.variants:
        names = [n for n, _ in studies]
        table = "\n\n".join(
            f"{f:g} labels:\n\n{summarize_variants(rows, bc.metric, names, bc.methods, f)}"
             for f in bc.fractions)
        plot_ablation(out / "ablation.png", rows, bc.metric, names, bc.methods, lowest)
    else:
        table = summarize(rows, bc.metric, bc.methods, bc.fractions)
        plot_lines(out / "label_efficiency.png",
                   {m: [(f, [r[bc.metric] for r in rows if r["method"] == m and r["label_fraction"] == f
                             and bc.metric in r]) for f in bc.fractions] for m in bc.methods},
                   "label fraction", bc.metric, "Label efficiency")
    scores = study_arms(cfg, out, results)
    verdicts = verdicts_of(cfg, [n for n, _ in studies], results, scores)
    write_verdicts(out / "verdicts.csv", verdicts)

    # the features each frozen run chose on validation (blocks / timesteps auto), by method and fraction
    chosen = {(m, f): [results[name0, m, f, s]["selection"] for s in bc.seeds
                       if "selection" in results[name0, m, f, s]]
              for m in bc.methods if methods[m].mode == "frozen" for f in bc.fractions}
    selections = {m: chosen[m, lowest] for m in bc.methods if methods[m].mode == "frozen"}
    if any(selections.values()):
        plot_selections(out / "block_selection.png", selections,
                        f"{task.probe}' validation loss at "
                        f"{lowest:g} labels (mean over seeds {bc.seeds}; red: chosen)")
    t = time.perf_counter()
    budget = budget_curve(cfg0, name0, results, pretrain, out, seg_device, log)
    if budget:
        phases["budget curve"] = time.perf_counter() - t
    elapsed = time.perf_counter() - started
    took = f"{elapsed // 60:.0f} min {elapsed % 60:.0f} s"
    log(f"study finished in {took}")
    where = (f"Computed on {machine_summary(train_device)}" + (f" (stage 2: {machine_summary(seg_device)})"
             if seg_device.type != train_device.type else "") + f"; this call took {took} (runs finished before it "
             f"count only as their skip: {skipped} of {len(runs)} runs).")
    both = ""
    if image is not None:
        image_methods = methods_of("classification")
        pixel = Level({m: methods[m] for m in bc.methods}, rows, bc.metric, scores, chosen)
        both = write_levels(out, pixel,
                            Level({m: image_methods[m] for m in bc.image_methods}, image["rows"],
                                  bc.image_metric, image["arms"], image["chosen"]), bc)
    write_text_atomic(out / "results.md",
                      results_text(cfg, verdicts, table, pretrained) + both + f"\n{where}\n")
    return {"rows": rows, "budget": budget, "table": table, "verdicts": verdicts,
            "seconds": elapsed, "phases": phases, "image_level": image, "levels": both, "arms": scores,
            "chosen": chosen}


def study_arms(cfg: Config, out: Path, results: dict) -> dict:
    """What the bootstrap needs of every run of the study (``verdicts.RunScores``), keyed by
    ``(arm, fraction, seed)``; an arm is a method, ``method (variant)`` in an ablation."""
    bc, arms = cfg.bench, {}
    for (name, m, f, s), result in results.items():
        arm = f"{m} ({name})" if bc.variants else m
        run = out / "runs" / name / m / f"f{f:g}_s{s}"
        arms[arm, f, s] = run_scores(run, bc.task, bc.metric, result.get(bc.metric, float("nan")))
    return arms


def verdicts_of(cfg: Config, names: list[str], results: dict, arms: dict) -> list[Verdict]:
    """The verdict table of the study (``verdicts``): each method against ``bench.references``
    (default: the best scratch method and the random features, per fraction); in an ablation, each
    variant of a method against the first variant of the same method (``arms``: ``study_arms``)."""
    bc, methods = cfg.bench, methods_of(cfg.bench.task)
    pairs = []
    for f in bc.fractions:
        if bc.variants:
            pairs += [(f"{m} ({v})", f"{m} ({names[0]})", f) for v in names[1:] for m in bc.methods]
            continue
        means = {m: sum(vals) / len(vals) for m in bc.methods
                 if (vals := [results[names[0], m, f, s][bc.metric] for s in bc.seeds
                              if bc.metric in results[names[0], m, f, s]])}
        references = bc.references or default_references({m: methods[m] for m in bc.methods}, means)
        pairs += [(m, r, f) for r in references for m in bc.methods if m != r]
    return judge(arms, pairs, bc.seeds, bc.metric, bc.bootstrap, bc.bootstrap_seed)


def results_text(cfg: Config, verdicts: list[Verdict], table: str, pretrained: str) -> str:
    """``results.md``: the verdicts in words and as a table, the means, the pretraining runs."""
    bc = cfg.bench
    against = "the first variant of the same method" if bc.variants else (
        ", ".join(bc.references) if bc.references else "the best method trained from scratch and the random features")
    return (f"# Label efficiency ({bc.metric})\n\n## Verdicts\n\nEach method against {against}, at each label "
            f"fraction: the mean paired difference over the seeds (the same labeled images and test images for both), "
            f"with a 95% interval from a two-way bootstrap ({bc.bootstrap} replicates: the seeds and the test images "
            f"they share, resampled together; docs/statistics.md). better / worse: the interval excludes 0; tie: it "
            f"does not, and its last column says about how many seeds would decide it (test set: no number of "
            f"seeds, the test images alone leave it open).\n\n"
            f"{verdict_sentences(verdicts, bc.metric) or '(no pair of runs to compare)'}\n\n"
            f"{verdict_table(verdicts)}\n\n## {bc.metric} per method\n\n{STATS_NOTE} ({bc.seeds}).\n\n{table}\n\n"
            f"## Pretraining runs\n\n{pretrained}\n")
