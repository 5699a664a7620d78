"""The image-classification task, registered in ``stage2.tasks.TASKS``
(``bench.task: classification``): runs of the ``probe`` section on a source of image labels
(``classify.datasets``), scored per test image in ``predictions.csv``."""

from __future__ import annotations

from dataclasses import replace

from ..common.config import ProbeConfig
from ..stage2.tasks import TASKS, Task
from .finetune import CLASS_NETWORKS
from .heads import HEADS
from .metrics import prediction_scores
from .run import open_split, run_classification

METRICS = ("accuracy", "balanced_accuracy", "roc_auc")


def configure(probe: ProbeConfig, method, seed: int) -> ProbeConfig:
    """``probe`` for one study run of ``method``: its mode, its head (frozen; none named: the
    configured ``probe.head``) or network (fine-tuned), the seed."""
    which = {"frozen": {"head": method.arch} if method.arch else {},
             "finetune": {"network": method.arch}}.get(method.mode, {})
    return replace(probe, mode=method.mode, seed=seed, **which)


def known(method) -> bool:
    """A registered head (frozen; none: the configured one), a registered network (fine-tuned), or
    the filter bank."""
    if method.mode == "classical":
        return method.arch == "filterbank"
    if method.mode == "frozen":
        return not method.arch or method.arch in HEADS
    return method.arch in CLASS_NETWORKS


CLASSIFICATION = TASKS.register("classification", Task(
    section="probe", noun="classification", methods="classification methods", metrics=METRICS,
    columns=(*METRICS, "modal_share", "seconds"), run=run_classification, configure=configure,
    known=known, open_split=open_split, scores=prediction_scores, probe="one-block linear probes",
    help="the `probe` section on image labels", heads=HEADS.name, networks=CLASS_NETWORKS.name,
    unet_network="unet-encoder", classical=("filterbank",)))
