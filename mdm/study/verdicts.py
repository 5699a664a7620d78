"""Paired verdicts between the methods of a study: is a method better than a reference, worse, or
can the study not tell? The method is written out in docs/statistics.md.

Every method of a study sees the same label draw per seed and the same test images, so two methods
are compared on their **paired difference**: per seed, metric(method) - metric(reference) on the
same test images, averaged over the seeds. Its 95% interval comes from a seeded **two-way
bootstrap** over the study's two sources of chance, which are crossed (every seed is scored on the
same test images): each replicate draws the seeds with replacement and one resample of the test
images with replacement, on which every drawn seed's two runs are scored (the same images for both
methods), recomputing both metrics exactly as the run computed them (a per-image mean for Dice, summed intersections and
unions for mIoU, per-class recalls for balanced accuracy, the Mann-Whitney statistic for ROC AUC).
The interval is the 2.5th to 97.5th percentile of the replicates' mean differences; the verdict is
``better`` or ``worse`` where it excludes 0, else ``tie``. A run without per-image scores for the
metric (a folder written before they were saved, GlaS's per-group columns) is resampled over seeds
only, and its rows say so.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.rng import Tag, make_key
from ..stage2.scores import Score
from ..stage2.tasks import TASKS
from .methods import RANDOM
from .report import write_csv

LOWER_IS_BETTER = {"object_hausdorff"}
SEEDS_CAP = 100  # a tie that would need more seeds than this is reported as "> SEEDS_CAP"


@dataclass(frozen=True)
class RunScores:
    """What the bootstrap needs of one run: its test images' names (to check that two runs are
    paired), the metric as the run reported it, and ``score`` (``None``: no per-image scores, the
    run counts as one number)."""

    images: tuple[str, ...]
    value: float
    score: Score | None


def run_scores(run: Path, task: str, metric: str, value: float) -> RunScores:
    """``RunScores`` of the run folder ``run`` (``value``: its reported metric, from
    ``metrics.json``)."""
    try:
        images, score = TASKS[task].scores(run, metric)
    except (OSError, KeyError, ValueError):
        images, score = (), None
    return RunScores(images, float(value), score)


@dataclass(frozen=True)
class Verdict:
    """One method against one reference at one label fraction (differences in metric units)."""

    method: str
    reference: str
    fraction: float
    seeds: int
    difference: float
    low: float
    high: float
    verdict: str  # better / worse / tie (for the method, against the reference)
    images_resampled: bool  # False: some seed had no per-image scores (resampled over seeds only)
    # how far towards 0 the interval reaches from the difference on the test images' resampling
    # alone (every seed kept once): the part more seeds cannot shrink
    test_set_reach: float = math.nan

    @property
    def seeds_to_decide(self) -> int | None:
        """For a tie of 2 or more seeds, about how many seeds would give an interval that excludes 0
        were the difference what this study measured (docs/statistics.md): the interval's reach
        towards 0 is split into the test set's part (``test_set_reach``, which more seeds leave as it
        is) and the seeds' part (which shrinks as 1 / sqrt(seeds), its bootstrap estimate scaled by
        n / (n - 1)). 0: the test set alone leaves the difference open, no number of seeds decides
        it; ``SEEDS_CAP + 1``: more than ``SEEDS_CAP``. ``None`` for a verdict already reached, one
        seed (no spread between draws measured) or no per-image scores."""
        n, d = self.seeds, self.difference
        if self.verdict != "tie" or n < 2 or math.isnan(self.test_set_reach):
            return None
        reach = d - self.low if d > 0 else self.high - d
        if d == 0 or self.test_set_reach >= abs(d):
            return 0
        seed_part = max(reach ** 2 - self.test_set_reach ** 2, 0.0) * n / (n - 1)
        need = math.ceil(n * seed_part / (d ** 2 - self.test_set_reach ** 2))
        return min(max(need, n + 1), SEEDS_CAP + 1)

    @property
    def seeds_text(self) -> str:
        """``seeds_to_decide`` as written in the tables: ``~12``, ``> 100``, ``test set`` (more test
        images, not seeds), or empty."""
        k = self.seeds_to_decide
        if k is None:
            return ""
        return "test set" if k == 0 else f"> {SEEDS_CAP}" if k > SEEDS_CAP else f"~{k}"


def paired_bootstrap(pairs: list[tuple[RunScores, RunScores]], replicates: int, seed: int,
                     resample_seeds: bool = True) -> tuple[float, np.ndarray]:
    """The mean over seeds of ``metric(a) - metric(b)`` (one ``(a, b)`` pair of runs per seed) and
    ``replicates`` two-way bootstrap draws of it: the seeds with replacement and one resample of the
    test images that every drawn seed is scored on (seeds whose test images differ each get their
    own); ``resample_seeds=False``: every seed once, the test images' resampling alone."""
    rng = np.random.default_rng(seed)
    n = len(pairs)
    point = float(np.mean([a.value - b.value for a, b in pairs]))
    shared: dict[tuple[str, ...], np.ndarray] = {}  # one image resample per test set and replicate
    per_seed = []  # [n seeds][B]: each seed's difference on the replicate's image resample
    for a, b in pairs:
        if a.score is None or b.score is None:
            per_seed.append(np.full(replicates, a.value - b.value))
            continue
        if a.images not in shared:
            m = len(a.images)
            shared[a.images] = rng.multinomial(m, np.full(m, 1.0 / m), size=replicates).astype(float)
        w = shared[a.images]
        per_seed.append(a.score(w) - b.score(w))
    stacked = np.stack(per_seed)  # [n, B]
    if not resample_seeds:
        return point, np.nanmean(stacked, axis=0)
    drawn = rng.integers(0, n, size=(replicates, n))  # which seed fills each slot
    return point, np.nanmean(stacked[drawn, np.arange(replicates)[:, None]], axis=1)


def _stable(*parts) -> int:
    return zlib.crc32(json.dumps(parts).encode())


def compare(runs: dict[tuple[str, float, int], RunScores], method: str, reference: str,
            fraction: float,
            seeds: list[int], metric: str, replicates: int, seed: int) -> Verdict | None:
    """The verdict of ``method`` against ``reference`` at ``fraction`` over the ``seeds`` both ran
    (``runs[method, fraction, seed]``); ``None`` where they share no seed or their test images
    differ."""
    pairs = [(runs[method, fraction, s], runs[reference, fraction, s]) for s in seeds
             if (method, fraction, s) in runs and (reference, fraction, s) in runs]
    pairs = [(a, b) for a, b in pairs if not (math.isnan(a.value) or math.isnan(b.value))]
    if not pairs:
        return None
    resampled = all(
        a.score is not None and b.score is not None and a.images == b.images for a, b in pairs)
    if not resampled:  # unpaired images cannot be resampled together
        pairs = [(RunScores(a.images, a.value, None),
                  RunScores(b.images, b.value, None)) for a, b in pairs]
    point, draws = paired_bootstrap(pairs, replicates, make_key(seed, Tag.BOOTSTRAP,
                                                               _stable(method, reference,
                                                                       fraction, metric)))
    low, high = (float(v) for v in np.nanpercentile(draws, [2.5, 97.5]))
    higher = low > 0  # the interval lies above 0 (or below it: high < 0)
    verdict = "tie" if low <= 0 <= high else ("better" if higher != (metric in LOWER_IS_BETTER) else "worse")
    reach = math.nan
    if resampled:  # the test set's part of the interval: the images resampled, the seeds kept
        _, fixed = paired_bootstrap(pairs, replicates, make_key(seed, Tag.BOOTSTRAP, _stable(
            method, reference, fraction, metric, "test set")), resample_seeds=False)
        low_t, high_t = np.nanpercentile(fixed, [2.5, 97.5])
        reach = float(point - low_t if point > 0 else high_t - point)
    return Verdict(method, reference, fraction, len(pairs), point, low, high, verdict, resampled, reach)


def default_references(methods: dict, means: dict[str, float]) -> list[str]:
    """``bench.references`` left empty: the best method trained from scratch (highest
    ``means[method]``: not frozen, no pretrained weights; the classical baseline counts) and the
    frozen features of the initial weights."""
    scratch = [m for m, rec in methods.items() if rec.mode != "frozen" and not rec.pretrained and m in means]
    random = [
        m for m, rec in methods.items() if rec.mode == "frozen" and rec.export == RANDOM]
    best = [max(scratch, key=lambda m: means[m])] if scratch else []
    return best + random


def judge(arms: dict[tuple[str, float, int], RunScores], pairs: list[tuple[str, str, float]],
          seeds: list[int], metric: str, replicates: int, seed: int) -> list[Verdict]:
    """``compare`` for each ``(arm, reference arm, fraction)`` of ``pairs`` that shares a seed."""
    found = (compare(arms, a, r, f, seeds, metric, replicates, seed) for a, r, f in pairs)
    return [v for v in found if v is not None]


def verdict_table(verdicts: list[Verdict]) -> str:
    """Markdown: one row per verdict (difference = method - reference, in metric units)."""
    lines = ["| labels | method | reference | n | difference | 95% interval | verdict | seeds to decide |",
             "|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        star = "" if v.images_resampled else " (seeds only)"
        lines.append(
            f"| {v.fraction:g} | {v.method} | {v.reference} | {v.seeds} | {v.difference:+.3f} | "
            f"[{v.low:+.3f}, {v.high:+.3f}]{star} | **{v.verdict}** | {v.seeds_text} |")
    return "\n".join(lines)


def _to_decide(v: Verdict) -> str:
    text = v.seeds_text
    if not text:
        return ""
    return "; the test set alone leaves it open" if text == "test set" else f"; {text} seeds to decide"


def verdict_sentences(verdicts: list[Verdict], metric: str) -> str:
    """The verdicts in words: one line per label fraction and reference, the methods grouped by
    verdict, each with its paired difference and 95% interval."""
    out = []
    for fraction in dict.fromkeys(v.fraction for v in verdicts):
        at = [v for v in verdicts if v.fraction == fraction]
        for reference in dict.fromkeys(v.reference for v in at):
            rows = [v for v in at if v.reference == reference]
            groups = []
            for verdict in ("better", "tie", "worse"):
                said = [f"{v.method} ({v.difference:+.3f} [{v.low:+.3f}, {v.high:+.3f}]{_to_decide(v)})"
                        for v in rows if v.verdict == verdict]
                if said:
                    groups.append(f"{'ties' if verdict == 'tie' else verdict}: " + ", ".join(said))
            out.append(f"- At {fraction * 100:g}% labels ({metric}, {rows[0].seeds} seeds), against {reference}: "
                       + "; ".join(groups) + ".")
    return "\n".join(out)


def write_verdicts(path: Path, verdicts: list[Verdict]) -> None:
    """``verdicts.csv``: one row per verdict."""
    rows = [{**v.__dict__, "seeds_to_decide": v.seeds_text} for v in verdicts]
    write_csv(path, rows, [*Verdict.__dataclass_fields__, "seeds_to_decide"])
