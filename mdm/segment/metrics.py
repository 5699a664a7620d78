"""Segmentation metrics (pure numpy / scipy; no model imports).

Every function accepts numpy arrays or torch tensors (tensors are moved to the CPU and converted
with ``np.asarray``); nothing here imports torch.

Conventions
-----------
* Semantic maps (``confusion_matrix``): integer class ids of any shape, ``pred`` and ``target`` of
  the same shape. Pixels whose *target* is ``ignore_index`` are excluded.
* Binary masks (``binary_dice_iou``): any shape; foreground is ``value > 0`` (or ``True``).
* Instance maps: the object metrics of ``object_metrics``.

Pooling
-------
* ``confusion_matrix`` / ``miou_from_confusion``: dataset level. Sum the confusion matrices of all
  test images, then compute one IoU per class from the summed matrix and average over classes (the
  FFHQ-34 convention).
* ``binary_dice_iou`` and the object metrics (``object_metrics``): one value per image; pool them
  with :func:`pool_per_image` (mean and std over images, NaN ignored).

Empty-case values are listed in each function's docstring and in ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..common.labels import IGNORE_INDEX

__all__ = [
    "confusion_matrix",
    "miou_from_confusion",
    "binary_dice_iou",
    "dice_to_iou",
    "pool_per_image",
]


def to_numpy(x: Any) -> np.ndarray:
    """numpy view of ``x``; torch tensors are detached and moved to the CPU first (duck-typed, no
    torch import)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------------
# Semantic segmentation: confusion matrix and dataset-level mIoU
# --------------------------------------------------------------------------------------------------


def confusion_matrix(pred: Any, target: Any, num_classes: int,
                     ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """Confusion matrix ``[C, C]`` (int64) of one image or batch; **rows = target class, columns =
    predicted class**.

    ``pred`` and ``target`` are integer class maps of the same (any) shape. Pixels whose target
    equals ``ignore_index`` are excluded (pass ``None`` to keep every pixel); their prediction is
    not checked. Every other value of ``pred`` and ``target`` must lie in ``[0, num_classes)``,
    otherwise ``ValueError`` is raised (a silent out-of-range id would corrupt the counts). Sum the
    matrices of all test images before calling :func:`miou_from_confusion` to get the dataset-level
    mIoU.
    """
    pred = to_numpy(pred)
    target = to_numpy(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = pred.reshape(-1).astype(np.int64)
    target = target.reshape(-1).astype(np.int64)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    for name, v in (("target", target), ("pred", pred)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(
                f"{name} has values outside [0, {num_classes}): min {v.min()}, max {v.max()}")
    counts = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def miou_from_confusion(cm: Any, absent: str = "skip") -> tuple[float, np.ndarray]:
    """Dataset-level mean IoU from a (summed) confusion matrix ``[C, C]`` (rows = target, columns =
    prediction).

    ``IoU_c = cm[c, c] / (row_sum_c + col_sum_c - cm[c, c])`` — intersections and unions are summed
    over all test images (they are already summed inside ``cm``), then averaged over classes (the
    FFHQ-34 convention).

    A class whose union is 0, i.e. absent from both the ground truth and the prediction on the whole
    set, has IoU ``NaN`` in ``per_class_iou``; ``absent="skip"`` **excludes it from the mean**,
    ``absent="zero"`` counts it as 0 (ddpm-segmentation's convention, which the published FFHQ-34
    numbers use). A class present in only one of the two has IoU 0 and counts either way. If every
    class has union 0 (e.g. all pixels ignored), ``miou`` is ``NaN`` with ``skip`` and 0 with
    ``zero``.

    Returns ``(miou, per_class_iou)`` with ``per_class_iou`` float64 ``[C]``.
    """
    cm = to_numpy(cm).astype(np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    inter = np.diag(cm)
    union = cm.sum(axis=1) + cm.sum(axis=0) - inter
    per_class = np.full(inter.shape, np.nan)
    valid = union > 0
    per_class[valid] = inter[valid] / union[valid]
    if absent == "zero":
        return float(np.nan_to_num(per_class, nan=0.0).mean()), per_class
    if absent != "skip":
        raise ValueError(f"absent: {absent!r} is not skip or zero")
    miou = float(per_class[valid].mean()) if valid.any() else float("nan")
    return miou, per_class


# --------------------------------------------------------------------------------------------------
# Binary masks
# --------------------------------------------------------------------------------------------------


def binary_dice_iou(pred: Any, target: Any, ignore_mask: Any = None) -> tuple[float, float]:
    """Dice and IoU of one image's binary masks (foreground = ``value > 0`` / ``True``); any shape,
    same for all.

    ``ignore_mask`` (optional, same shape, truthy = ignore) removes pixels from both masks before
    counting. ``dice = 2|P∩T| / (|P| + |T|)``, ``iou = |P∩T| / |P∪T|``.

    Empty cases (after removing ignored pixels): both masks empty -> ``(1.0, 1.0)``; exactly one
    empty -> ``(0.0, 0.0)``.
    """
    p = to_numpy(pred) > 0
    t = to_numpy(target) > 0
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != target shape {t.shape}")
    if ignore_mask is not None:
        keep = ~(to_numpy(ignore_mask).astype(bool))
        if keep.shape != p.shape:
            raise ValueError(f"ignore_mask shape {keep.shape} != mask shape {p.shape}")
        p, t = p & keep, t & keep
    inter = int(np.count_nonzero(p & t))
    n_p, n_t = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    if n_p + n_t == 0:
        return 1.0, 1.0
    union = n_p + n_t - inter
    return 2.0 * inter / (n_p + n_t), inter / union


def dice_to_iou(d: Any) -> Any:
    """IoU *derived* from a Dice value: ``d / (2 - d)``.

    This is the reference paper's reported IoU: it is computed from the (mean) Dice, not measured.
    It equals the measured IoU exactly for a single image, but not for a mean over images (the map
    is non-linear). Works on a float (returns a float) or an array (elementwise); NaN maps to NaN.
    """
    if np.isscalar(d):
        return float(d) / (2.0 - float(d))
    d = to_numpy(d).astype(np.float64)
    return d / (2.0 - d)


# --------------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------------


def pool_per_image(values: Any) -> tuple[float, float]:
    """Mean and standard deviation (population, ``ddof=0``) of per-image values, ignoring NaN.

    Returns ``(nan, nan)`` when there is no non-NaN value (including an empty input).
    """
    v = to_numpy(values).astype(np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())
