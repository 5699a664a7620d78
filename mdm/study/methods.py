"""The methods a study compares, one registry per task (``Task.methods``, ``bench.task``):
``METHODS`` (segmentation) and ``CLASS_METHODS`` (classification), chosen by ``bench.methods``: how
each segments (``seg.mode`` / ``seg.arch``) or classifies (``probe.mode`` / ``probe.head`` or
``probe.network``) and which pretraining run's weights it starts from. A new method is one
``register`` call; a new objective or network registers itself where it is defined
(``pretrain.objectives``, ``segment.finetune``, ``classify.heads``, ``classify.finetune``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..common.registry import Registry, registry
from ..stage2.tasks import TASKS


@dataclass(frozen=True)
class Method:
    """What a method runs: ``mode`` / ``arch`` as in ``SegConfig`` (classification: ``probe.mode``
    and the head of ``frozen`` or the network of ``finetune``; ``classical``: ``filterbank``, filter
    features and no network); its U-Net comes from the pretraining run of ``objective`` (``None``:
    no export), folder ``export`` of that run (``export``: the last; ``exports/step_0``: the random
    initial weights)."""

    mode: str
    arch: str
    objective: str | None
    export: str

    @property
    def pretrained(self) -> bool:
        """Its weights come from pretraining (a point on the pretraining-budget curve)."""
        return self.objective is not None and self.export == "export"


METHODS: Registry[Method] = Registry("segmentation methods", "bench.methods", "segmentation method")
METHODS.register("mdm", Method("frozen", "unet", "mdm", "export"))
METHODS.register("ddpm", Method("frozen", "unet", "ddpm", "export"))
METHODS.register("mae", Method("frozen", "unet", "mae", "export"))
METHODS.register("random", Method("frozen", "unet", "mdm", "exports/step_0"))
METHODS.register("mdm-ft", Method("finetune", "unet", "mdm", "export"))
METHODS.register("mae-ft", Method("finetune", "unet", "mae", "export"))
METHODS.register("unet-scratch", Method("finetune", "unet", "mdm", "exports/step_0"))
METHODS.register("smp-scratch", Method("finetune", "smp", None, ""))
METHODS.register("filterbank", Method("classical", "filterbank", None, ""))

CLASS_METHODS: Registry[Method] = Registry("classification methods", "bench.methods",
                                           "classification method")
CLASS_METHODS.register("mdm-linear", Method("frozen", "linear", "mdm", "export"))
CLASS_METHODS.register("mdm-attn", Method("frozen", "attention", "mdm", "export"))
CLASS_METHODS.register("mdm-knn", Method("frozen", "knn", "mdm", "export"))
CLASS_METHODS.register("ddpm-linear", Method("frozen", "linear", "ddpm", "export"))
CLASS_METHODS.register("ddpm-attn", Method("frozen", "attention", "ddpm", "export"))
CLASS_METHODS.register("mae-linear", Method("frozen", "linear", "mae", "export"))
CLASS_METHODS.register("random-linear", Method("frozen", "linear", "mdm", "exports/step_0"))
CLASS_METHODS.register("mdm-ft", Method("finetune", "unet-encoder", "mdm", "export"))
CLASS_METHODS.register("ddpm-ft", Method("finetune", "unet-encoder", "ddpm", "export"))
CLASS_METHODS.register("unet-scratch", Method("finetune", "unet-encoder", "mdm", "exports/step_0"))
CLASS_METHODS.register("resnet18-scratch", Method("finetune", "resnet18", None, ""))
CLASS_METHODS.register("filterbank", Method("classical", "filterbank", None, ""))



def methods_of(task: str) -> Registry[Method]:
    """The registry of the study methods of ``task`` (``bench.task``)."""
    return registry(TASKS[task].methods)
