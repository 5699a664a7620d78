"""Both levels from one export (``bench.image_methods``): a segmentation study also judges its
exports at image level, so a user sees on their own images whether features that tell what a tile
is also tell where each pixel belongs.

The image level is a classification study of its own in ``image_level/`` of the study folder
(tables, verdicts, block selection; ``image_level_config``): the classification methods
``bench.image_methods`` on ``<source>-windows`` (``study.windows``: windows of
``bench.image_window`` px of the same labeled images, each labeled by the class covering more than
half of it), with the study's fractions, seeds and bootstrap, scored by ``bench.image_metric``. It
reads the segmentation study's own pretraining runs and trains none, so both levels judge the very
same weights.

The study's ``results.md`` then sets the levels side by side (``levels.csv``, ``levels.png``): each
export (a pretraining run's weights: ``export`` or the random initial ``exports/step_0``) that a
frozen method reads at both levels, per label fraction, with each level's mean and its paired
difference against the random initial weights of the same level, with its 95% interval and
verdict (``verdicts``; docs/statistics.md). The levels *agree* where both verdicts are the same.
A level's label fraction draws its own units: images at pixel level, windows at image level.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..classify.datasets import CLASS_SOURCES
from ..common.config import Config
from ..common.config_checks import as_block
from ..common.errors import ConfigError
from ..stage2.plots import save_figure
from ..stage2.taps import tap_name
from ..stage2.tasks import TASKS
from . import windows  # noqa: F401 - registers the <source>-windows image-label sources
from .methods import RANDOM, Method, methods_of
from .pool import pretraining_data
from .report import sample_sd, write_csv
from .verdicts import Verdict, judge

IMAGE_LEVEL = "image_level"  # the image level's study folder, inside the study's


def image_level_config(cfg: Config) -> Config:
    """The classification study of ``bench.image_methods`` beside the segmentation study ``cfg``
    (see the module); a ``ConfigError`` names what cannot be judged at image level."""
    bc = cfg.bench
    if bc.task != "segmentation":
        raise ConfigError(f"bench.image_methods: a {bc.task} study is judged at one level; image_methods "
                          f"belong to segmentation studies")
    if bc.variants:
        raise ConfigError("bench.image_methods: not with bench.variants (judge each variant's exports in a "
                          "study of its own)")
    metrics = TASKS["classification"].metrics
    if bc.image_metric not in metrics:
        raise ConfigError(f"bench.image_metric: {bc.image_metric!r} is not one of {', '.join(metrics)}")
    for level, names in (("bench.methods", bc.methods), ("bench.image_methods", bc.image_methods)):
        records = methods_of(bc.task if level == "bench.methods" else "classification")
        if not any(records[m].mode == "frozen" and records[m].export == RANDOM for m in names):
            raise ConfigError(f"{level}: both levels are judged against the random initial weights: add "
                              f"{'random' if level == 'bench.methods' else 'random-linear'}")
    source = f"{cfg.data.source}-windows"
    if source not in CLASS_SOURCES:
        raise ConfigError(f"bench.image_methods: data.source {cfg.data.source!r} has no windows source "
                          f"({source!r} is not registered)")
    # the study's own pool, resolved: the image level records it in its data.json; it pretrains
    # nothing and reads the study's pretraining runs
    return replace(cfg,
                   data=replace(cfg.data, source=source, crop_size=bc.image_window),
                   bench=replace(bc, task="classification", methods=list(bc.image_methods),
                                 metric=bc.image_metric, image_methods=[], budget_methods=[],
                                 references=[], out_dir=str(Path(bc.out_dir) / IMAGE_LEVEL),
                                 pretrain_data=pretraining_data(cfg)))


def _export(method: Method) -> str:
    return "random weights" if method.export == RANDOM else (
        method.objective if method.export == "export" else f"{method.objective} {method.export}")


@dataclass
class Level:
    """One level's results: its methods' records, ``results.csv`` rows, metric, and what the
    bootstrap needs of its runs (``sweep.study_arms``); ``chosen``: the features each frozen run
    chose on validation, ``{(method, fraction): [its runs' block selections]}``; ``verdicts``: each
    frozen method against the random initial weights (``judge_against_random``)."""

    methods: dict[str, Method]
    rows: list[dict]
    metric: str
    arms: dict
    chosen: dict = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)

    def judge_against_random(self, fractions: list[float], seeds: list[int], replicates: int,
                             seed: int) -> None:
        """Each frozen method against the level's random initial weights read the same way,
        whatever the study's references are."""
        reference = {m: self.random(m) for m in self.frozen()}
        pairs = [(m, reference[m], f) for f in fractions for m in self.frozen() if m != reference[m]]
        self.verdicts = judge(self.arms, pairs, seeds, self.metric, replicates, seed)

    def frozen(self) -> dict[str, Method]:
        return {m: rec for m, rec in self.methods.items() if rec.mode == "frozen"}

    def random(self, method: str | None = None) -> str | None:
        """The frozen method of the random initial weights, the level's reference: the one that
        reads them with ``method``'s head where the level has it (``random-linear`` for
        ``mdm-linear``, ``random-mlp`` for ``mdm-mlp``), else the first."""
        randoms = [m for m, rec in self.frozen().items() if rec.export == RANDOM]
        arch = self.methods[method].arch if method else None
        first = randoms[0] if randoms else None
        return next((m for m in randoms if self.methods[m].arch == arch), first)

    def values(self, method: str, fraction: float) -> list[float]:
        return [r[self.metric] for r in self.rows
                if r["method"] == method and r["label_fraction"] == fraction and self.metric in r]

    def against_random(self, method: str, fraction: float) -> Verdict | None:
        reference = self.random(method)
        return next((v for v in self.verdicts if v.method == method and v.reference == reference
                     and v.fraction == fraction), None)


def level_rows(pixel: Level, image: Level, fractions: list[float]) -> list[dict]:
    """One row per label fraction and pair of frozen methods that read the same export at the two
    levels: each level's mean, sample std, n and verdict against its random weights."""
    out = []
    for f in fractions:
        for p, prec in pixel.frozen().items():
            for i, irec in image.frozen().items():
                if (prec.objective, prec.export) != (irec.objective, irec.export):
                    continue
                row = {"label_fraction": f, "export": _export(prec)}
                for side, level, method in (("pixel", pixel, p), ("image", image, i)):
                    vals, v = level.values(method, f), level.against_random(method, f)
                    row.update({f"{side}_method": method, f"{side}_{level.metric}": _mean(vals),
                                f"{side}_sd": sample_sd(vals) if vals else float("nan"), f"{side}_n": len(vals),
                                f"{side}_vs_random": v.difference if v else float("nan"),
                                f"{side}_low": v.low if v else float("nan"),
                                f"{side}_high": v.high if v else float("nan"),
                                f"{side}_verdict": v.verdict if v else "",
                                f"{side}_features": features_chosen(
                                    level.chosen.get((method, f), []))})
                both = row["pixel_verdict"], row["image_verdict"]
                row["levels"] = "" if "" in both else "agree" if both[0] == both[1] else "differ"
                out.append(row)
    return out


def features_chosen(selections: list[dict]) -> str:
    """The most frequent choice of ``selections`` (block selections of a method's runs, one per
    seed), e.g. ``t=50 d3 d4 d5 (4 of 5)``; empty where the features were configured, not chosen."""
    if not selections:
        return ""
    choices = Counter(f"t={s['timestep']} " + " ".join(tap_name(as_block(b)) for b in s["blocks"])
                      for s in selections)
    choice, count = choices.most_common(1)[0]
    return f"{choice} ({count} of {len(selections)})"


def _mean(vals: list[float]) -> float:
    return float(np.mean(vals)) if vals else float("nan")


def _cell(row: dict, side: str, metric: str) -> str:
    mean, sd, n = row[f"{side}_{metric}"], row[f"{side}_sd"], row[f"{side}_n"]
    return f"{mean:.3f} ± {sd:.3f} (n={n})" if n > 1 else f"{mean:.3f} (n={n})" if n else "–"


def _against(row: dict, side: str) -> str:
    if not row[f"{side}_verdict"]:
        return "reference" if row["export"] == "random weights" else "–"
    return (f"{row[f'{side}_vs_random']:+.3f} [{row[f'{side}_low']:+.3f}, {row[f'{side}_high']:+.3f}] "
            f"**{row[f'{side}_verdict']}**")


def levels_table(rows: list[dict], pixel_metric: str, image_metric: str) -> str:
    """Markdown: one row per ``level_rows`` row."""
    lines = [f"| labels | export | pixel method | {pixel_metric} | vs random weights | image method | "
             f"{image_metric} | vs random weights | levels |", "|---" * 9 + "|"]
    for r in rows:
        lines.append(f"| {r['label_fraction']:g} | {r['export']} | {r['pixel_method']} | "
                     f"{_cell(r, 'pixel', pixel_metric)} | {_against(r, 'pixel')} | {r['image_method']} | "
                     f"{_cell(r, 'image', image_metric)} | {_against(r, 'image')} | {r['levels']} |")
    return "\n".join(lines)


def features_table(rows: list[dict]) -> str:
    """Markdown: the features each level chose on validation, per label fraction and export."""
    lines = ["| labels | export | pixel method | it chose | image method | it chose |",
             "|---" * 6 + "|"]
    for r in rows:
        pixel, image = r["pixel_features"] or "as configured", r["image_features"] or "as configured"
        lines.append(f"| {r['label_fraction']:g} | {r['export']} | {r['pixel_method']} | {pixel} | "
                     f"{r['image_method']} | {image} |")
    return "\n".join(lines)


def levels_sentences(rows: list[dict]) -> str:
    """The levels in words, one line per label fraction: where they differ, each level's verdict
    against the random weights; else that they agree."""
    out = []
    for f in dict.fromkeys(r["label_fraction"] for r in rows):
        judged = [r for r in rows if r["label_fraction"] == f and r["levels"]]
        differ = [r for r in judged if r["levels"] == "differ"]
        if not judged:
            continue
        if not differ:
            each = ", ".join(f"{r['export']}: {r['pixel_verdict']}" for r in judged)
            out.append(f"- At {f * 100:g}% labels the two levels agree for every export against the random "
                       f"weights ({each}).")
            continue
        said = [f"{r['export']}: {r['image_verdict']} at image level ({r['image_method']}, "
                f"{r['image_vs_random']:+.3f} [{r['image_low']:+.3f}, {r['image_high']:+.3f}]), "
                f"{r['pixel_verdict']} at pixel level ({r['pixel_method']}, {r['pixel_vs_random']:+.3f} "
                f"[{r['pixel_low']:+.3f}, {r['pixel_high']:+.3f}])" for r in differ]
        out.append(f"- At {f * 100:g}% labels the levels differ against the random weights: "
                   + "; ".join(said) + ".")
    return "\n".join(out)


def plot_levels(path: Path, rows: list[dict], pixel_metric: str, image_metric: str) -> None:
    """One panel per label fraction: each export at (pixel-level mean, image-level mean) with ± one
    sample std."""
    import matplotlib  # deferred: slow to import, and only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = list(dict.fromkeys(r["label_fraction"] for r in rows))
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.2 * len(fractions), 3.8), squeeze=False)
    for ax, f in zip(axes[0], fractions):
        for r in (r for r in rows if r["label_fraction"] == f):
            x, y = r[f"pixel_{pixel_metric}"], r[f"image_{image_metric}"]
            ax.errorbar(x, y, xerr=r["pixel_sd"], yerr=r["image_sd"], marker="o", capsize=3)
            ax.annotate(f"{r['export']}\n({r['image_method']})", (x, y), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(f"pixel level: {pixel_metric}")
        ax.set_ylabel(f"image level: {image_metric}")
        ax.set_title(f"{f * 100:g}% labels")
    save_figure(fig, path)


def write_levels(out: Path, pixel: Level, image: Level, bench) -> str:
    """``levels.csv`` and ``levels.png`` in the study folder ``out`` (``bench``: the study's
    ``BenchConfig``: fractions, seeds, bootstrap); returns the section of ``results.md`` (sentences
    and table)."""
    for level in (pixel, image):
        level.judge_against_random(bench.fractions, bench.seeds, bench.bootstrap, bench.bootstrap_seed)
    rows = level_rows(pixel, image, bench.fractions)
    if not rows:
        return ("## Both levels\n\nNo export is read by a frozen method at both levels (pair a frozen "
                "segmentation method with a frozen classification method of the same pretraining run).\n")
    write_csv(out / "levels.csv", rows, list(rows[0]))
    plot_levels(out / "levels.png", rows, pixel.metric, image.metric)
    return (f"## Both levels\n\nThe same exports judged per pixel ({pixel.metric}, this study) and per image "
            f"({image.metric} on windows of the same labeled images, labeled by their majority class; its "
            f"fractions draw windows, the bootstrap draws the images they were cut from; its own tables and "
            f"verdicts in the study folder's {IMAGE_LEVEL}/). Each level's paired difference against its own "
            f"random initial weights, 95% interval, verdict; the levels agree where both verdicts are the same "
            f"(plot: levels.png).\n\n"
            f"{levels_sentences(rows)}\n\n{levels_table(rows, pixel.metric, image.metric)}\n\n"
            f"The features each level chose on validation (blocks and timestep; the most frequent choice over "
            f"the seeds; `seg.sweep_blocks` and `seg.auto_timesteps` offer the pixel level the image level's "
            f"candidates):\n\n{features_table(rows)}\n")
