"""The folder of one stage-2 run, for every task: it replaces ``--out`` as a whole, appears at once
(``common.io.atomic_dir``: a killed run leaves the old folder as it was) and ends with
``metrics.json``, the run's "finished" marker, written last. What a run writes in between is its
task's; what every task writes the same way is here: the refusal of a folder of other files, the
labeled subset, the block selection with its heatmap, the finish."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..common.io import refuse_foreign
from .plots import save_heatmap

FINISHED = "metrics.json"


def check_replaceable(out: Path, files: set[str], what: str) -> None:
    """``out`` is replaced as a whole by a run: refuse when it holds anything ``what`` does not
    write (``files``)."""
    refuse_foreign(out, files, what,
                   "choose a new --out folder, a run replaces its folder as a whole")


def save_selection(folder: Path, selection: dict) -> None:
    """``block_selection.json`` and a block x timestep heatmap of the probes' scores
    (``selection["metric"]``: their validation loss, or the training loss where nothing
    validates)."""
    (folder / "block_selection.json").write_text(json.dumps(selection, indent=1))
    timesteps = sorted(selection["scores"])
    # in the order probed
    blocks = list(dict.fromkeys(b for row in selection["scores"].values() for b in row))
    save_heatmap(folder / "block_selection.png",
                 [[selection["scores"][t].get(b) for t in timesteps] for b in blocks],
                 [f"block {b}" for b in blocks], [f"t={t}" for t in timesteps],
                 f"{selection['metric']}\nchosen: t={selection['timestep']}, blocks {selection['blocks']}")


def save_label_subset(folder: Path, record: dict) -> None:
    """``label_subset.json``: which training images were labeled (``indices``, ``names``) and which
    of them validate."""
    (folder / "label_subset.json").write_text(json.dumps(record, indent=1))


def finish(folder: Path, result: dict, started: float) -> dict:
    """Write ``metrics.json`` last, with the seconds since ``started`` (``time.perf_counter``) kept
    in it, so a resumed study still knows what the run cost; returns ``result``."""
    result["seconds"] = time.perf_counter() - started
    (folder / FINISHED).write_text(json.dumps(result, indent=1))
    return result
