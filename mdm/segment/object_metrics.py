"""GlaS / MoNuSeg object-level metrics on instance maps (pure numpy / scipy; no model imports):
object F1, object Dice, object Hausdorff distance (the GlaS challenge's definitions) and the
aggregated Jaccard index (AJI, MoNuSeg's).

Instance maps are 2-D integer arrays ``[H, W]`` of the same shape (numpy arrays or torch tensors),
``0`` is background and every positive id is one object. Ids need not be contiguous. Negative ids
are rejected. A binary prediction is turned into an instance map with :func:`connected_components`
(8-connectivity). Each metric gives one value per image: pool them with
``metrics.pool_per_image``. Empty-case values are listed in each function's docstring and in
``docs/metrics.md``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from ..common.labels import consecutive_ids
from .metrics import to_numpy

__all__ = ["connected_components", "object_f1", "object_dice", "object_hausdorff", "aji"]


# --------------------------------------------------------------------------------------------------
# Instance maps: helpers
# --------------------------------------------------------------------------------------------------


def connected_components(binary: Any) -> np.ndarray:
    """Instance map of the connected components of a binary mask (foreground = ``value > 0``), full
    connectivity.

    For a 2-D mask this is 8-connectivity (diagonal neighbours join). Output: int64 array of the
    input's shape, 0 = background, components numbered ``1..K`` (scipy's raster order).
    """
    b = to_numpy(binary) > 0
    structure = ndimage.generate_binary_structure(b.ndim, b.ndim)
    labels, _ = ndimage.label(b, structure=structure)
    return labels.astype(np.int64)


class _Overlaps(NamedTuple):
    """Both maps relabelled 1..K, and their overlaps: ``inter [K_g, K_p]`` pixel counts, object
    areas ``[K]``."""

    p: np.ndarray
    kp: int
    g: np.ndarray
    kg: int
    inter: np.ndarray
    gt_area: np.ndarray
    pr_area: np.ndarray


def _prepare(pred_inst: Any, gt_inst: Any) -> _Overlaps:
    """Relabel both maps and count overlaps with one contingency table ``[K_g + 1, K_p + 1]`` (0 =
    background)."""
    p = to_numpy(pred_inst)
    g = to_numpy(gt_inst)
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} != gt shape {g.shape}")
    if not (np.issubdtype(p.dtype, np.integer) or p.dtype == bool) or not (
        np.issubdtype(g.dtype, np.integer) or g.dtype == bool
    ):
        raise ValueError(
            "instance maps must be integer arrays (use connected_components on a binary mask)")
    p, kp = consecutive_ids(p)
    g, kg = consecutive_ids(g)
    table = np.bincount((g * (kp + 1) + p).ravel(),
                        minlength=(kg + 1) * (kp + 1)).reshape(kg + 1, kp + 1)
    return _Overlaps(p, kp, g, kg, table[1:, 1:].astype(np.float64),
                     table[1:, :].sum(axis=1).astype(np.float64),
                     table[:, 1:].sum(axis=0).astype(np.float64))


def _hausdorff_pair(a_map: np.ndarray, a_id: int, a_slice, b_map: np.ndarray,
                    b_id: int, b_slice) -> float:
    """Symmetric Hausdorff distance (pixels) between object ``a_id`` of ``a_map`` and ``b_id`` of
    ``b_map``.

    Works on the union bounding box of the two objects: the Euclidean distance from any pixel to the
    nearest pixel of an object lying entirely inside the crop does not depend on the crop, so the
    result is exact. Distances come from ``distance_transform_edt`` of the complement of each object
    (distance to its nearest pixel), not pairwise loops.
    """
    box = tuple(slice(min(sa.start, sb.start),
                      max(sa.stop, sb.stop)) for sa, sb in zip(a_slice, b_slice))
    a = a_map[box] == a_id
    b = b_map[box] == b_id
    d_to_b = ndimage.distance_transform_edt(~b)
    d_to_a = ndimage.distance_transform_edt(~a)
    return float(max(d_to_b[a].max(), d_to_a[b].max()))


# --------------------------------------------------------------------------------------------------
# GlaS object-level metrics and AJI
# --------------------------------------------------------------------------------------------------


def object_f1(pred_inst: Any, gt_inst: Any) -> dict[str, float]:
    """GlaS object-level detection F1 of one image (instance maps ``[H, W]``, 0 = background).

    GlaS rule: each predicted object ``S`` is paired with the ground-truth object ``G`` it overlaps
    most (ties: lowest id); ``S`` is a true positive if ``|S ∩ G| / |G| > 0.5`` (strictly more than
    half of that *ground-truth* object's area), otherwise a false positive (also when it overlaps no
    ground truth). Because predicted objects are disjoint, at most one of them can cover more than
    half of a given ``G``, so each ``G`` is matched at most once. ``fp = #pred - tp``,
    ``fn = #gt - tp``; ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
    ``f1 = 2 tp / (2 tp + fp + fn)``.

    Empty cases: no gt and no predicted objects -> f1 = precision = recall = 1.0 (nothing to find,
    nothing wrongly found); exactly one side empty -> f1 = precision = recall = 0.0.

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

    ``0.5 * [ sum_i w_i Dice(G_i, S*(G_i)) + sum_j w~_j Dice(G*(S_j), S_j) ]`` with
    ``w_i = |G_i| / sum_k |G_k|`` and ``w~_j = |S_j| / sum_k |S_k|``. ``S*(G_i)`` is the predicted
    object with the largest overlap with ``G_i`` (ties: lowest id); if ``G_i`` overlaps no predicted
    object its Dice is 0. ``G*(S_j)`` likewise.

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
    """GlaS object-level Hausdorff distance of one image, in pixels (instance maps ``[H, W]``, 0 =
    background).

    ``0.5 * [ sum_i w_i H(G_i, S*(G_i)) + sum_j w~_j H(G*(S_j), S_j) ]`` with the area weights of
    :func:`object_dice` and ``H`` the symmetric Hausdorff distance between pixel sets (pixel
    centres, unit spacing). ``S*(G_i)`` is the predicted object with the largest overlap with
    ``G_i`` (ties: lowest id); if ``G_i`` overlaps no predicted object, ``S*(G_i)`` is the predicted
    object with the minimum Hausdorff distance to ``G_i`` (GlaS definition). ``G*(S_j)`` likewise.
    Distances use ``scipy.ndimage.distance_transform_edt`` on the pair's bounding box (no O(N^2)
    pixel loops).

    Empty cases: both maps without objects -> 0.0; exactly one side without objects -> the image
    diagonal ``sqrt(H^2 + W^2)`` (a finite stand-in for infinity, so that per-image means stay
    finite; it bounds every in-image distance).
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
    """Aggregated Jaccard Index of one image (Kumar et al. 2017, the MoNuSeg metric); instance maps,
    0 = background.

    For each ground-truth object ``G_i``: pick the predicted object ``S_j`` with the largest IoU
    among those that overlap it (ties: lowest id); add ``|G_i ∩ S_j|`` to ``C`` and ``|G_i ∪ S_j|``
    to ``U`` and mark ``S_j`` used. If ``G_i`` overlaps no predicted object, only ``|G_i|`` is added
    to ``U``. Finally the areas of all unused predicted objects are added to ``U``; ``AJI = C / U``.
    As in the original definition, a predicted object may be picked by several ground-truth objects
    (its area then enters ``U`` once per pick).

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
