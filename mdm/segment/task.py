"""The segmentation task, registered in ``stage2.tasks.TASKS`` (``bench.task: segmentation``): runs
of the ``seg`` section on a labeled source of masks (``segment.datasets``), scored per test image in
``per_image.csv``."""

from __future__ import annotations

from dataclasses import replace

from ..common.config import SegConfig
from ..stage2.tasks import TASKS, Task
from .evaluate import per_image_scores
from .finetune import NETWORKS
from .pixel_heads import PIXEL_HEADS
from .run import open_split, run_segmentation

COLUMNS = ("dice", "iou", "miou", "object_f1", "object_dice", "object_hausdorff", "aji",
           "member_dice_mean", "member_dice_std", "seconds")


def configure(seg: SegConfig, method, seed: int) -> SegConfig:
    """``seg`` for one study run of ``method``: its mode, its network when it fine-tunes, its pixel
    head when it names one (frozen; else ``seg.head`` as configured), the run's seed."""
    which = {"frozen": {"head": method.arch} if method.arch else {},
             "finetune": {"arch": method.arch}}.get(method.mode, {})
    return replace(seg, mode=method.mode, seed=seed, **which)


def known(method) -> bool:
    """A registered pixel head (frozen; none: the configured one), a registered network
    (fine-tuned), or the filter bank."""
    if method.mode == "classical":
        return method.arch == "filterbank"
    if method.mode == "frozen":
        return not method.arch or method.arch in PIXEL_HEADS
    return method.arch in NETWORKS


SEGMENTATION = TASKS.register("segmentation", Task(
    section="seg", noun="segmentation", methods="segmentation methods", metrics=None,
    columns=COLUMNS,
    run=run_segmentation, configure=configure, known=known, open_split=open_split,
    scores=per_image_scores, help="the `seg` section on masks", heads=PIXEL_HEADS.name,
    networks=NETWORKS.name, unet_network="unet", classical=("filterbank",)))
