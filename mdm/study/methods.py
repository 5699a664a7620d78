"""The methods a study compares (``bench.methods``), one registry per task (``Task.methods``):
``METHODS`` (segmentation) and ``CLASS_METHODS`` (classification). Their names are made from what is
registered, so a new objective, head or network brings its methods with it, named the same way in
every task (``generated_methods``):

================================  ===========================================================
``<export>``                      frozen features of the export, read by the configured head
                                  (``seg.head`` / ``probe.head``)
``<export>-<head>``               the same features read by that head (``mdm-mlp``,
                                  ``mdm-linear``, ``ddpm-knn``, ``mae-attn``)
``<objective>-ft``                the task's U-Net network fine-tuned from the export
``unet-scratch``                  the same network from the random initial weights
``<network>-scratch``             a network that needs no export (``smp-scratch``,
                                  ``resnet18-scratch``)
``filterbank``                    the classical baseline: filter features, no network
================================  ===========================================================

An export is a pretraining objective's last weights (``mdm``, ``ddpm``, ``mae``) or ``random``: the
random initial weights (``exports/step_0`` of the first objective's run). A record registered by
hand under a generated name replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..common.registry import Registry, registry
from ..stage2.tasks import TASKS

RANDOM = "exports/step_0"  # the export of the random initial weights


@dataclass(frozen=True)
class Method:
    """What a method runs: ``mode`` as in ``seg.mode`` / ``probe.mode``; ``arch``: the head that
    reads frozen features (empty: the configured one), the network that is fine-tuned, or the
    classical method; its U-Net comes from the pretraining run of ``objective`` (``None``: no
    export), folder ``export`` of that run (``export``: the last; ``exports/step_0``: the random
    initial weights)."""

    mode: str
    arch: str
    objective: str | None
    export: str

    @property
    def pretrained(self) -> bool:
        """Its weights come from pretraining (a point on the pretraining-budget curve)."""
        return self.objective is not None and self.export == "export"


def _records(name: str) -> dict:
    found = registry(name) if name else None
    return dict(found.items()) if found is not None else {}


def generated_methods(task: str) -> dict[str, Method]:
    """Every method of ``task`` that its registered objectives, heads and networks make (see the
    module), in that order."""
    objectives = list(_records("objectives"))
    if task not in TASKS or not objectives:  # their modules not imported yet
        return {}
    record = TASKS[task]
    out: dict[str, Method] = {}

    def add(name: str, method: Method) -> None:
        if name in out and out[name] != method:
            raise ValueError(f"two {task} methods would be called {name!r}: rename an objective, a "
                             f"head's method suffix or a network")
        out[name] = method

    for export, objective, folder in [*((o, o, "export") for o in objectives),
                                      ("random", objectives[0], RANDOM)]:
        add(export, Method("frozen", "", objective, folder))
        for head, spec in _records(record.heads).items():
            suffix = getattr(spec, "method", "") or head
            add(f"{export}-{suffix}", Method("frozen", head, objective, folder))
    if record.unet_network:
        for o in objectives:
            add(f"{o}-ft", Method("finetune", record.unet_network, o, "export"))
        add("unet-scratch", Method("finetune", record.unet_network, objectives[0], RANDOM))
    for network, spec in _records(record.networks).items():
        if not spec.needs_export:
            add(f"{network}-scratch", Method("finetune", network, None, ""))
    for name in record.classical:
        add(name, Method("classical", name, None, ""))
    return out


METHODS: Registry[Method] = Registry("segmentation methods", "bench.methods", "segmentation method",
                                     derive=lambda: generated_methods("segmentation"))
CLASS_METHODS: Registry[Method] = Registry("classification methods", "bench.methods",
                                           "classification method",
                                           derive=lambda: generated_methods("classification"))


def methods_of(task: str) -> Registry[Method]:
    """The registry of the study methods of ``task`` (``bench.task``)."""
    return registry(TASKS[task].methods)
