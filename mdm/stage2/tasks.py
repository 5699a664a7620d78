"""Stage-2 tasks, registered in ``TASKS`` (``bench.task``): everything the config checks, the study
and the entry points need to know of a task, so that none of them branches on its name. A task
registers itself in its own package (``segment/task.py``, ``classify/task.py``); a new one is one
module and one ``register`` call::

    TASKS.register("regression", Task(section="probe", noun="regression", methods="regression methods", ...))

Conventions of the callables (``section``: the run's config section, ``seg`` or ``probe`` of
``Config``): ``run(section, data, export, out, *, device, progress) -> metrics`` writes one run
folder (``stage2.run_folder``); ``configure(section, method, seed) -> section`` is the section of
one study run of ``method`` (a study method: ``mode``, ``arch``); ``known(method)`` says whether the
head or network it names is registered; ``open_split(data, split)`` gives a labeled split with
``image_files`` and ``files`` (the study keeps them out of its pretraining pool);
``scores(run_folder, metric) -> (test image names, Score | None)`` reads a finished run's per-image
file for the verdicts' bootstrap (``stage2.scores``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..common.registry import Registry
from .scores import Score


@dataclass(frozen=True)
class Task:
    """One stage-2 task.

    ``section``: the ``Config`` section a run reads; ``noun``: what its runs are called in logs and
    plot titles; ``methods``: the name of the registry of its study methods (``study.methods``);
    ``metrics``: what ``bench.metric`` may name (``None``: any column its runs report); ``columns``:
    the metric columns of ``results.csv``, in order; ``probe``: the one-block probes of its block
    selection, in words (a plot title); ``help``: its line in the README's config table.

    What its study methods are made of (``study.methods.generated_methods``): ``heads``, the
    registry of the heads its frozen methods read features with; ``networks``, the registry of the
    networks it fine-tunes whole; ``unet_network``, the one of them built on the pretraining U-Net;
    ``classical``, its methods without a network (``filterbank``)."""

    section: str
    noun: str
    methods: str
    metrics: tuple[str, ...] | None
    columns: tuple[str, ...]
    run: Callable[..., dict]
    configure: Callable[..., object]
    known: Callable[[object], bool]
    open_split: Callable[..., object]
    scores: Callable[[Path, str], tuple[tuple[str, ...], Score | None]]
    probe: str = "one-block probes"
    help: str = ""
    heads: str = ""
    networks: str = ""
    unet_network: str = ""
    classical: tuple[str, ...] = ()

    def config_of(self, cfg) -> object:
        """This task's section of the ``Config`` ``cfg``."""
        return getattr(cfg, self.section)


TASKS: Registry[Task] = Registry("tasks", "bench.task", "task")
