"""A study spread over processes: ``--shard K/N`` runs the K-th of N slices of its runs,
``--report`` merges.

Every run of a study has a place in one fixed order (the pretraining runs; the sweep's runs and the
budget curve's, each list method by method, ``method_by_method``); shard K of N takes places K-1,
K-1+N, K-1+2N, ... of each list. A shard pretrains its own objectives first, then does its stage-2
runs, each as soon as the pretraining run it reads has finished (one of another shard's: it waits,
polling, and runs the ready ones meanwhile). Each run writes only its own folder, and the study's
shared files are written atomically (a temporary name per process) with the same content by every
shard (its config and data manifest, checked against the folder as in one process). Each run is
seeded by its own fraction and seed, so what it gives does not depend on the process or the order:
the merged ``results.csv`` is the one-process study's. ``--report`` (``run_benchmark(report=True)``)
writes the tables, plots and verdicts from the finished runs and trains nothing; it names the first
missing run while any is missing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from ..common.errors import ConfigError
from ..pretrain.export import export_is_current
from .runs import StudyRun

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` (1 .. ``count``) of a study's runs."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` with ``1 <= K <= N``, or a ``ConfigError`` naming ``--shard``."""
        found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not found or not 1 <= int(found[1]) <= int(found[2]):
            raise ConfigError(f"--shard: {text!r} is not K/N with 1 <= K <= N (e.g. --shard 2/4; in a SLURM array: "
                              f"--shard $((SLURM_ARRAY_TASK_ID + 1))/$SLURM_ARRAY_TASK_COUNT with --array=0-3)")
        return cls(int(found[1]), int(found[2]))

    def mine(self, items: Sequence[T]) -> list[T]:
        """The items at this shard's places of ``items``."""
        return list(items[self.index - 1::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WAITING = "another shard pretrains it (a shard that failed must be run again; this one waits for it)"


def method_by_method(runs: list[StudyRun]) -> list[StudyRun]:
    """``runs`` ordered method by method (variant, method, fraction, seed, step), so that the slices
    give every shard about the same share of each method's runs: in the sweep's own order (method
    innermost) a shard would get whole methods whenever the number of methods is a multiple of N,
    and methods differ in cost many times over."""
    return sorted(runs, key=lambda r: (r.variant, r.method, r.fraction, r.seed, r.step or 0))


def finished(pretraining: Path | None, steps: int) -> bool:
    """Whether the pretraining run folder ``pretraining`` has its last export in place (``None``:
    nothing to wait for)."""
    return pretraining is None or export_is_current(pretraining, steps)


def wait_for(pretraining: list[Path], steps: int, log, poll: float = 10.0) -> None:
    """Poll every ``poll`` seconds until every run folder of ``pretraining`` has finished
    (``finished``)."""
    told = False
    while unfinished := [p for p in pretraining if not finished(p, steps)]:
        if not told:
            log(f"waiting for {', '.join(sorted({p.name for p in unfinished}))}: {WAITING}")
            told = True
        time.sleep(poll)


def run_when_ready(runs: list[StudyRun], device: torch.device, log, poll: float = 10.0) -> int:
    """Do ``runs`` (this shard's), each once its pretraining run (of its ``bench.pretrain_steps``)
    has finished, the ready ones first, in order; returns how many were trained (the rest were
    finished before)."""
    pending, trained, told = [r for r in runs if not r.done], 0, set()
    while pending:
        ready = [r for r in pending if finished(r.pretraining, r.cfg.bench.pretrain_steps)]
        if not ready:
            names = {r.pretraining.name for r in pending}
            if names - told:
                log(f"waiting for {', '.join(sorted(names))}: {WAITING}")
            told |= names
            time.sleep(poll)
            continue
        run = ready[0]
        pending.remove(run)
        t = time.perf_counter()
        run.run(device)
        trained += 1
        log(f"{run.label}: {time.perf_counter() - t:.1f} s")
    return trained


def refuse_unfinished(out: Path, missing: list[Path]) -> None:
    """``--report`` before every shard is done: a ``ConfigError`` naming the first missing run
    folder (``missing``: the unfinished pretraining or stage-2 run folders)."""
    if missing:
        raise ConfigError(f"{out}: {len(missing)} run(s) of this study are not finished (the first: {missing[0]}); "
                          f"--report merges finished shards: run the missing shards (--shard K/N) first")
