"""Segmentation metrics (pure numpy / scipy; no model imports).

Every function accepts numpy arrays or torch tensors (tensors are moved to the CPU and converted with
``np.asarray``); nothing here imports torch.

Conventions
-----------
* Semantic maps (``confusion_matrix``): integer class ids of any shape, ``pred`` and ``target`` of the same shape.
  Pixels whose *target* is ``ignore_index`` are excluded.
* Binary masks (``binary_dice_iou``, ``connected_components``): any shape; foreground is ``value > 0`` (or ``True``).
* Instance maps (GlaS / MoNuSeg object metrics): 2-D integer arrays ``[H, W]`` of the same shape, ``0`` is background
  and every positive id is one object. Ids need not be contiguous. Negative ids are rejected. A binary prediction is
  turned into an instance map with :func:`connected_components` (8-connectivity).

Pooling
-------
* ``confusion_matrix`` / ``miou_from_confusion``: dataset level. Sum the confusion matrices of all test images, then
  compute one IoU per class from the summed matrix and average over classes (the FFHQ-34 convention).
* ``binary_dice_iou`` and the object metrics (``object_f1``, ``object_dice``, ``object_hausdorff``, ``aji``): one value
  per image; pool them with :func:`pool_per_image` (mean and std over images, NaN ignored).

Empty-case values are listed in each function's docstring and in ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from ..common.labels import IGNORE_INDEX, consecutive_ids

__all__ = [
    "confusion_matrix",
    "miou_from_confusion",
    "binary_dice_iou",
    "dice_to_iou",
    "connected_components",
    "object_f1",
    "object_dice",
    "object_hausdorff",
    "aji",
    "pool_per_image",
]


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of ``x``; torch tensors are detached and moved to the CPU first (duck-typed, no torch import)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------------------------------
# Semantic segmentation: confusion matrix and dataset-level mIoU
# ----------------------------------------------------------------------------------------------------------------------


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """Confusion matrix ``[C, C]`` (int64) of one image or batch; **rows = target class, columns = predicted class**.

    ``pred`` and ``target`` are integer class maps of the same (any) shape. Pixels whose target equals
    ``ignore_index`` are excluded (pass ``None`` to keep every pixel); their prediction is not checked. Every other
    value of ``pred`` and ``target`` must lie in ``[0, num_classes)``, otherwise ``ValueError`` is raised (a silent
    out-of-range id would corrupt the counts). Sum the matrices of all test images before calling
    :func:`miou_from_confusion` to get the dataset-level mIoU.
    """
    pred = _to_numpy(pred)
    target = _to_numpy(target)
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
            raise ValueError(f"{name} has values outside [0, {num_classes}): min {v.min()}, max {v.max()}")
    counts = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def miou_from_confusion(cm: Any, absent: str = "skip") -> tuple[float, np.ndarray]:
    """Dataset-level mean IoU from a (summed) confusion matrix ``[C, C]`` (rows = target, columns = prediction).

    ``IoU_c = cm[c, c] / (row_sum_c + col_sum_c - cm[c, c])`` — intersections and unions are summed over all test
    images (they are already summed inside ``cm``), then averaged over classes (the FFHQ-34 convention).

    A class whose union is 0, i.e. absent from both the ground truth and the prediction on the whole set, has IoU
    ``NaN`` in ``per_class_iou``; ``absent="skip"`` **excludes it from the mean**, ``absent="zero"`` counts it as 0
    (ddpm-segmentation's convention, which the published FFHQ-34 numbers use). A class present in only one of the
    two has IoU 0 and counts either way. If every class has union 0 (e.g. all pixels ignored), ``miou`` is ``NaN``
    with ``skip`` and 0 with ``zero``.

    Returns ``(miou, per_class_iou)`` with ``per_class_iou`` float64 ``[C]``.
    """
    cm = _to_numpy(cm).astype(np.float64)
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


# ----------------------------------------------------------------------------------------------------------------------
# Binary masks
# ----------------------------------------------------------------------------------------------------------------------


def binary_dice_iou(pred: Any, target: Any, ignore_mask: Any = None) -> tuple[float, float]:
    """Dice and IoU of one image's binary masks (foreground = ``value > 0`` / ``True``); any shape, same for all.

    ``ignore_mask`` (optional, same shape, truthy = ignore) removes pixels from both masks before counting.
    ``dice = 2|P∩T| / (|P| + |T|)``, ``iou = |P∩T| / |P∪T|``.

    Empty cases (after removing ignored pixels): both masks empty -> ``(1.0, 1.0)``; exactly one empty ->
    ``(0.0, 0.0)``.
    """
    p = _to_numpy(pred) > 0
    t = _to_numpy(target) > 0
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != target shape {t.shape}")
    if ignore_mask is not None:
        keep = ~(_to_numpy(ignore_mask).astype(bool))
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

    This is the reference paper's reported IoU: it is computed from the (mean) Dice, not measured. It equals the
    measured IoU exactly for a single image, but not for a mean over images (the map is non-linear). Works on a float
    (returns a float) or an array (elementwise); NaN maps to NaN.
    """
    if np.isscalar(d):
        return float(d) / (2.0 - float(d))
    d = _to_numpy(d).astype(np.float64)
    return d / (2.0 - d)


# ----------------------------------------------------------------------------------------------------------------------
# Instance maps: helpers
# ----------------------------------------------------------------------------------------------------------------------


def connected_components(binary: Any) -> np.ndarray:
    """Instance map of the connected components of a binary mask (foreground = ``value > 0``), full connectivity.

    For a 2-D mask this is 8-connectivity (diagonal neighbours join). Output: int64 array of the input's shape,
    0 = background, components numbered ``1..K`` (scipy's raster order).
    """
    b = _to_numpy(binary) > 0
    structure = ndimage.generate_binary_structure(b.ndim, b.ndim)
    labels, _ = ndimage.label(b, structure=structure)
    return labels.astype(np.int64)


class _Overlaps(NamedTuple):
    """Both maps relabelled 1..K, and their overlaps: ``inter [K_g, K_p]`` pixel counts, object areas ``[K]``."""

    p: np.ndarray
    kp: int
    g: np.ndarray
    kg: int
    inter: np.ndarray
    gt_area: np.ndarray
    pr_area: np.ndarray


def _prepare(pred_inst: Any, gt_inst: Any) -> _Overlaps:
    """Relabel both maps and count overlaps with one contingency table ``[K_g + 1, K_p + 1]`` (0 = background)."""
    p = _to_numpy(pred_inst)
    g = _to_numpy(gt_inst)
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} != gt shape {g.shape}")
    if not (np.issubdtype(p.dtype, np.integer) or p.dtype == bool) or not (
        np.issubdtype(g.dtype, np.integer) or g.dtype == bool
    ):
        raise ValueError("instance maps must be integer arrays (use connected_components on a binary mask)")
    p, kp = consecutive_ids(p)
    g, kg = consecutive_ids(g)
    table = np.bincount((g * (kp + 1) + p).ravel(), minlength=(kg + 1) * (kp + 1)).reshape(kg + 1, kp + 1)
    return _Overlaps(p, kp, g, kg, table[1:, 1:].astype(np.float64), table[1:, :].sum(axis=1).astype(np.float64),
                     table[:, 1:].sum(axis=0).astype(np.float64))


def _hausdorff_pair(a_map: np.ndarray, a_id: int, a_slice, b_map: np.ndarray, b_id: int, b_slice) -> float:
    """Symmetric Hausdorff distance (pixels) between object ``a_id`` of ``a_map`` and ``b_id`` of ``b_map``.

    Works on the union bounding box of the two objects: the Euclidean distance from any pixel to the nearest pixel of
    an object lying entirely inside the crop does not depend on the crop, so the result is exact. Distances come from
    ``distance_transform_edt`` of the complement of each object (distance to its nearest pixel), not pairwise loops.
    """
    box = tuple(slice(min(sa.start, sb.start), max(sa.stop, sb.stop)) for sa, sb in zip(a_slice, b_slice))
    a = a_map[box] == a_id
    b = b_map[box] == b_id
    d_to_b = ndimage.distance_transform_edt(~b)
    d_to_a = ndimage.distance_transform_edt(~a)
    return float(max(d_to_b[a].max(), d_to_a[b].max()))


# ----------------------------------------------------------------------------------------------------------------------
# GlaS object-level metrics and AJI
# ----------------------------------------------------------------------------------------------------------------------


def object_f1(pred_inst: Any, gt_inst: Any) -> dict[str, float]:
    """GlaS object-level detection F1 of one image (instance maps ``[H, W]``, 0 = background).

    GlaS rule: each predicted object ``S`` is paired with the ground-truth object ``G`` it overlaps most (ties: lowest
    id); ``S`` is a true positive if ``|S ∩ G| / |G| > 0.5`` (strictly more than half of that *ground-truth* object's
    area), otherwise a false positive (also when it overlaps no ground truth). Because predicted objects are
    disjoint, at most one of them can cover more than half of a given ``G``, so each ``G`` is matched at most once.
    ``fp = #pred - tp``, ``fn = #gt - tp``; ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
    ``f1 = 2 tp / (2 tp + fp + fn)``.

    Empty cases: no gt and no predicted objects -> f1 = precision = recall = 1.0 (nothing to find, nothing wrongly
    found); exactly one side empty -> f1 = precision = recall = 0.0.

    Returns ``dict(f1, precision, recall, tp, fp, fn)`` (counts as ints, the rest as floats).
    """
    _, kp, _, kg, inter, gt_area, _ = _prepare(pred_inst, gt_inst)
    if kp == 0 and kg == 0:
        return dict(f1=1.0, precision=1.0, recall=1.0, tp=0, fp=0, fn=0)
    if kp == 0 or kg == 0:
        return dict(f1=0.0, precision=0.0, recall=0.0, tp=0, fp=kp, fn=kg)
    best_g = inter.argmax(axis=0)  # [K_p] gt with max overlap for each predicted object
    best_overlap = inter[best_g, np.arange(kp)]
    tp = int(np.count_nonzero(best_overlap > 0.5 * gt_area[best_g]))
    fp, fn = kp - tp, kg - tp
    return dict(
        f1=2.0 * tp / (2 * tp + fp + fn),
        precision=tp / (tp + fp),
        recall=tp / (tp + fn),
        tp=tp,
        fp=fp,
        fn=fn,
    )


def object_dice(pred_inst: Any, gt_inst: Any) -> float:
    """GlaS object-level Dice of one image (instance maps ``[H, W]``, 0 = background).

    ``0.5 * [ sum_i w_i Dice(G_i, S*(G_i)) + sum_j w~_j Dice(G*(S_j), S_j) ]`` with ``w_i = |G_i| / sum_k |G_k|`` and
    ``w~_j = |S_j| / sum_k |S_k|``. ``S*(G_i)`` is the predicted object with the largest overlap with ``G_i`` (ties:
    lowest id); if ``G_i`` overlaps no predicted object its Dice is 0. ``G*(S_j)`` likewise.

    Empty cases: both maps without objects -> 1.0; exactly one side without objects -> 0.0.
    """
    _, kp, _, kg, inter, gt_area, pr_area = _prepare(pred_inst, gt_inst)
    if kp == 0 and kg == 0:
        return 1.0
    if kp == 0 or kg == 0:
        return 0.0

    # gt side: best predicted partner per gt object
    j = inter.argmax(axis=1)
    ov = inter[np.arange(kg), j]
    dice_g = 2.0 * ov / (gt_area + pr_area[j])  # 0 where no overlap
    # prediction side: best gt partner per predicted object
    i = inter.argmax(axis=0)
    ov = inter[i, np.arange(kp)]
    dice_s = 2.0 * ov / (pr_area + gt_area[i])

    term_g = float((gt_area * dice_g).sum() / gt_area.sum())
    term_s = float((pr_area * dice_s).sum() / pr_area.sum())
    return 0.5 * (term_g + term_s)


def object_hausdorff(pred_inst: Any, gt_inst: Any) -> float:
    """GlaS object-level Hausdorff distance of one image, in pixels (instance maps ``[H, W]``, 0 = background).

    ``0.5 * [ sum_i w_i H(G_i, S*(G_i)) + sum_j w~_j H(G*(S_j), S_j) ]`` with the area weights of
    :func:`object_dice` and ``H`` the symmetric Hausdorff distance between pixel sets (pixel centres, unit spacing).
    ``S*(G_i)`` is the predicted object with the largest overlap with ``G_i`` (ties: lowest id); if ``G_i`` overlaps
    no predicted object, ``S*(G_i)`` is the predicted object with the minimum Hausdorff distance to ``G_i`` (GlaS
    definition). ``G*(S_j)`` likewise. Distances use ``scipy.ndimage.distance_transform_edt`` on the pair's bounding
    box (no O(N^2) pixel loops).

    Empty cases: both maps without objects -> 0.0; exactly one side without objects -> the image diagonal
    ``sqrt(H^2 + W^2)`` (a finite stand-in for infinity, so that per-image means stay finite; it bounds every
    in-image distance).
    """
    p, kp, g, kg, inter, gt_area, pr_area = _prepare(pred_inst, gt_inst)
    if kp == 0 and kg == 0:
        return 0.0
    if kp == 0 or kg == 0:
        return float(math.sqrt(sum(float(s) ** 2 for s in p.shape)))
    g_sl = ndimage.find_objects(g, max_label=kg)
    p_sl = ndimage.find_objects(p, max_label=kp)

    cache: dict[tuple[int, int], float] = {}

    def h(gi: int, pj: int) -> float:  # 0-based object indices
        key = (gi, pj)
        if key not in cache:
            cache[key] = _hausdorff_pair(g, gi + 1, g_sl[gi], p, pj + 1, p_sl[pj])
        return cache[key]

    def partner_distance(overlaps: np.ndarray, pair) -> float:
        """H to the max-overlap partner, or to the Hausdorff-nearest object if nothing overlaps."""
        if overlaps.max() > 0:
            return pair(int(overlaps.argmax()))
        return min(pair(k) for k in range(overlaps.size))

    h_g = np.array([partner_distance(inter[i], lambda k, i=i: h(i, k)) for i in range(kg)])
    h_s = np.array([partner_distance(inter[:, j], lambda k, j=j: h(k, j)) for j in range(kp)])
    term_g = float((gt_area * h_g).sum() / gt_area.sum())
    term_s = float((pr_area * h_s).sum() / pr_area.sum())
    return 0.5 * (term_g + term_s)


def aji(pred_inst: Any, gt_inst: Any) -> float:
    """Aggregated Jaccard Index of one image (Kumar et al. 2017, the MoNuSeg metric); instance maps, 0 = background.

    For each ground-truth object ``G_i``: pick the predicted object ``S_j`` with the largest IoU among those that
    overlap it (ties: lowest id); add ``|G_i ∩ S_j|`` to ``C`` and ``|G_i ∪ S_j|`` to ``U`` and mark ``S_j`` used. If
    ``G_i`` overlaps no predicted object, only ``|G_i|`` is added to ``U``. Finally the areas of all unused predicted
    objects are added to ``U``; ``AJI = C / U``. As in the original definition, a predicted object may be picked by
    several ground-truth objects (its area then enters ``U`` once per pick).

    Empty cases: both maps without objects -> 1.0; exactly one side without objects -> 0.0.
    """
    _, kp, _, kg, inter, gt_area, pr_area = _prepare(pred_inst, gt_inst)
    if kp == 0 and kg == 0:
        return 1.0
    if kp == 0 or kg == 0:
        return 0.0
    union = gt_area[:, None] + pr_area[None, :] - inter
    iou = inter / union  # union >= |G_i| > 0
    j = iou.argmax(axis=1)
    rows = np.arange(kg)
    hit = inter[rows, j] > 0
    c = float(inter[rows, j][hit].sum())
    u = float(union[rows, j][hit].sum() + gt_area[~hit].sum())
    used = np.zeros(kp, dtype=bool)
    used[j[hit]] = True
    u += float(pr_area[~used].sum())
    return c / u


# ----------------------------------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------------------------------


def pool_per_image(values: Any) -> tuple[float, float]:
    """Mean and standard deviation (population, ``ddof=0``) of per-image values, ignoring NaN.

    Returns ``(nan, nan)`` when there is no non-NaN value (including an empty input).
    """
    v = _to_numpy(values).astype(np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())
