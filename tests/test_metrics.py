"""Segmentation metrics against hand-computed cases (every expected number is derived from pixel counts below)."""

import math

import numpy as np
import pytest
import torch

from mdm.segment.metrics import (
    binary_dice_iou,
    confusion_matrix,
    dice_to_iou,
    miou_from_confusion,
    pool_per_image,
)
from mdm.segment.object_metrics import aji, connected_components, object_dice, object_f1, object_hausdorff

# ----------------------------------------------------------------------------------------------------------------------
# Confusion matrix / dataset-level mIoU
# ----------------------------------------------------------------------------------------------------------------------


def test_confusion_matrix_and_miou_by_hand():
    # 3 classes, class 2 absent everywhere; pixel 4 has target 255 (ignored, its prediction 0 is not counted).
    target = np.array([0, 0, 1, 1, 255, 1])
    pred = np.array([0, 1, 1, 1, 0, 0])
    # kept (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (1,0)
    # row 0 (target 0): pred 0 once, pred 1 once       -> [1, 1, 0]
    # row 1 (target 1): pred 0 once, pred 1 twice      -> [1, 2, 0]
    # row 2 (target 2): nothing                         -> [0, 0, 0]
    cm = confusion_matrix(pred, target, num_classes=3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0], [1, 2, 0], [0, 0, 0]])
    miou, per_class = miou_from_confusion(cm)
    # IoU_0 = 1 / (row 2 + col 2 - 1) = 1/3 ; IoU_1 = 2 / (row 3 + col 3 - 2) = 2/4 ; class 2 union 0 -> NaN
    assert per_class[0] == pytest.approx(1 / 3)
    assert per_class[1] == pytest.approx(1 / 2)
    assert math.isnan(per_class[2])
    # mean over the two present classes only: (1/3 + 1/2) / 2 = 5/12
    assert miou == pytest.approx(5 / 12)


def test_confusion_matrix_accepts_tensors_and_is_summed_over_images():
    # Dataset-level pooling: sum matrices, then IoU. Image A: target [0,0], pred [0,0]; image B: target [1,1],
    # pred [0,1]. Summed cm = [[2, 0], [1, 1]] -> IoU_0 = 2 / (2 + 3 - 2) = 2/3, IoU_1 = 1 / (2 + 1 - 1) = 1/2,
    # mIoU = 7/12 (a per-image average would instead give image A: class 0 only, IoU 1; image B: IoU_0 = 0,
    # IoU_1 = 1/2 -> different numbers).
    cm = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0]), 2)
    cm = cm + confusion_matrix(torch.tensor([0, 1]), torch.tensor([1, 1]), 2)
    np.testing.assert_array_equal(cm, [[2, 0], [1, 1]])
    miou, per_class = miou_from_confusion(cm)
    np.testing.assert_allclose(per_class, [2 / 3, 1 / 2])
    assert miou == pytest.approx(7 / 12)


def test_miou_class_in_one_side_only_is_zero_not_nan():
    # class 1 predicted once, never in gt: union 1, intersection 0 -> IoU 0 and it counts in the mean.
    # class 0: target [0,0], pred [0,1] -> inter 1, union 2 + 1 - 1 = 2 -> 1/2.  mIoU = (1/2 + 0) / 2 = 1/4.
    miou, per_class = miou_from_confusion(confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2))
    np.testing.assert_allclose(per_class, [0.5, 0.0])
    assert miou == pytest.approx(0.25)
    # class 1 in gt only, never predicted: same numbers by symmetry.
    miou, per_class = miou_from_confusion(confusion_matrix(np.array([0, 0]), np.array([0, 1]), 2))
    np.testing.assert_allclose(per_class, [0.5, 0.0])
    assert miou == pytest.approx(0.25)


def test_miou_all_pixels_ignored_is_nan():
    cm = confusion_matrix(np.array([0, 1]), np.array([255, 255]), 2)
    np.testing.assert_array_equal(cm, np.zeros((2, 2)))
    miou, per_class = miou_from_confusion(cm)
    assert math.isnan(miou) and np.isnan(per_class).all()


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), 2)


# ----------------------------------------------------------------------------------------------------------------------
# Binary Dice / IoU
# ----------------------------------------------------------------------------------------------------------------------

T3 = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]])  # |T| = 4
P3 = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]])  # |P| = 3, |P ∩ T| = 2 (left column), P-only pixel at (2, 2)


def test_binary_dice_iou_by_hand():
    dice, iou = binary_dice_iou(P3, T3)
    # dice = 2*2 / (3 + 4) = 4/7 ; iou = 2 / (3 + 4 - 2) = 2/5
    assert dice == pytest.approx(4 / 7)
    assert iou == pytest.approx(2 / 5)
    # single image: the derived IoU equals the measured one: (4/7) / (2 - 4/7) = (4/7) / (10/7) = 2/5
    assert dice_to_iou(dice) == pytest.approx(2 / 5)
    # tensors (bool) work too
    assert binary_dice_iou(torch.tensor(P3 > 0), torch.tensor(T3 > 0)) == pytest.approx((4 / 7, 2 / 5))


def test_binary_dice_iou_ignore_mask():
    ignore = np.zeros((3, 3), bool)
    ignore[2, 2] = True  # drop the prediction-only pixel: |P| = 2, |T| = 4, inter 2
    dice, iou = binary_dice_iou(P3, T3, ignore_mask=ignore)
    # dice = 4 / 6 = 2/3 ; iou = 2 / (2 + 4 - 2) = 1/2
    assert dice == pytest.approx(2 / 3)
    assert iou == pytest.approx(1 / 2)


def test_dice_to_iou_array_and_nan():
    # 0 -> 0/2 = 0 ; 1 -> 1/1 = 1 ; 2/3 -> (2/3)/(4/3) = 1/2 ; NaN -> NaN
    out = dice_to_iou(np.array([0.0, 1.0, 2 / 3, np.nan]))
    np.testing.assert_allclose(out[:3], [0.0, 1.0, 0.5])
    assert np.isnan(out[3])


# ----------------------------------------------------------------------------------------------------------------------
# Empty cases (the table in docs/metrics.md)
# ----------------------------------------------------------------------------------------------------------------------

E = np.zeros((3, 4), dtype=np.int64)  # empty map, 3 x 4 -> diagonal sqrt(9 + 16) = 5
NE = E.copy()
NE[1, 1:3] = 1  # one object of 2 pixels


@pytest.mark.parametrize(
    "pred,gt,dice,iou",
    [(NE, E, 0.0, 0.0), (E, NE, 0.0, 0.0), (E, E, 1.0, 1.0)],
    ids=["gt_empty", "pred_empty", "both_empty"],
)
def test_binary_empty_cases(pred, gt, dice, iou):
    assert binary_dice_iou(pred, gt) == (dice, iou)


def test_binary_all_ignored_counts_as_both_empty():
    assert binary_dice_iou(NE, NE, ignore_mask=np.ones_like(NE)) == (1.0, 1.0)


@pytest.mark.parametrize(
    "pred,gt,f1,dice,haus,aji_value",
    [
        (NE, E, 0.0, 0.0, 5.0, 0.0),  # gt empty, prediction has an object
        (E, NE, 0.0, 0.0, 5.0, 0.0),  # prediction empty, gt has an object
        (E, E, 1.0, 1.0, 0.0, 1.0),  # both empty
    ],
    ids=["gt_empty", "pred_empty", "both_empty"],
)
def test_object_metric_empty_cases(pred, gt, f1, dice, haus, aji_value):
    r = object_f1(pred, gt)
    assert (r["f1"], r["precision"], r["recall"]) == (f1, f1, f1)
    assert object_dice(pred, gt) == dice
    assert object_hausdorff(pred, gt) == haus  # 3 x 4 image: sqrt(3^2 + 4^2) = 5
    assert aji(pred, gt) == aji_value


def test_object_f1_empty_counts():
    assert object_f1(NE, E) == dict(f1=0.0, precision=0.0, recall=0.0, tp=0, fp=1, fn=0)
    assert object_f1(E, NE) == dict(f1=0.0, precision=0.0, recall=0.0, tp=0, fp=0, fn=1)
    assert object_f1(E, E) == dict(f1=1.0, precision=1.0, recall=1.0, tp=0, fp=0, fn=0)


def test_pool_per_image_ignores_nan_and_empty():
    # values 1, 3 (NaN dropped): mean 2, population std sqrt(((1-2)^2 + (3-2)^2) / 2) = 1
    assert pool_per_image([1.0, np.nan, 3.0]) == (2.0, 1.0)
    m, s = pool_per_image([np.nan])
    assert math.isnan(m) and math.isnan(s)
    m, s = pool_per_image([])
    assert math.isnan(m) and math.isnan(s)


# ----------------------------------------------------------------------------------------------------------------------
# Connected components
# ----------------------------------------------------------------------------------------------------------------------


def test_connected_components_splits_blobs_and_joins_diagonals():
    b = np.zeros((5, 6), bool)
    b[0:2, 0:2] = True  # blob A (4 px)
    b[2, 2] = True  # touches A only diagonally -> same component under 8-connectivity
    b[3:5, 4:6] = True  # blob B (4 px), separated from (2,2) by a gap of one column
    inst = connected_components(b)
    assert inst.dtype == np.int64
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2]
    assert inst[0, 0] == inst[2, 2] != inst[4, 5]
    assert (inst == inst[0, 0]).sum() == 5 and (inst == inst[4, 5]).sum() == 4
    assert (inst[~b] == 0).all()


# ----------------------------------------------------------------------------------------------------------------------
# GlaS object metrics: two square glands on a 10 x 10 grid
# ----------------------------------------------------------------------------------------------------------------------


def _glas_example():
    gt = np.zeros((10, 10), np.int64)
    gt[0:4, 0:4] = 1  # G1: 16 px
    gt[0:4, 6:10] = 2  # G2: 16 px
    binary = np.zeros((10, 10), bool)
    binary[0:4, 0:4] = True  # S1 = G1 exactly (16 px)
    binary[0:2, 6:10] = True  # S2 = top half of G2 (8 px)
    binary[8:10, 0:2] = True  # S3 = false-positive blob (4 px), overlaps nothing
    return connected_components(binary), gt


def test_glas_example_components():
    pred, _ = _glas_example()
    assert pred.max() == 3
    assert sorted(np.bincount(pred.ravel())[1:].tolist()) == [4, 8, 16]


def test_glas_object_f1_by_hand():
    pred, gt = _glas_example()
    # S1 covers 16/16 of G1 > 0.5 -> TP. S2 covers 8/16 = 0.5 of G2, not strictly more than half -> FP.
    # S3 overlaps nothing -> FP.  tp = 1, fp = 2, fn = 2 gt - 1 tp = 1.
    # precision = 1/3, recall = 1/2, f1 = 2*1 / (2*1 + 2 + 1) = 2/5
    r = object_f1(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 2)
    assert r["f1"] == pytest.approx(2 / 5)


def test_glas_object_dice_by_hand():
    pred, gt = _glas_example()
    # gt side: sum|G| = 32, w1 = w2 = 1/2. Dice(G1, S1) = 1; Dice(G2, S2) = 2*8 / (16 + 8) = 2/3.
    #   term_G = 1/2 * 1 + 1/2 * 2/3 = 5/6
    # pred side: sum|S| = 16 + 8 + 4 = 28. S1: 16/28 * 1; S2: 8/28 * 2/3 = 16/84; S3: no overlap -> 0.
    #   term_S = 48/84 + 16/84 = 64/84 = 16/21
    # object Dice = 1/2 * (5/6 + 16/21) = 1/2 * (35/42 + 32/42) = 67/84
    assert object_dice(pred, gt) == pytest.approx(67 / 84)


def test_glas_object_hausdorff_by_hand():
    pred, gt = _glas_example()
    # H(G1, S1) = 0 (identical).
    # H(G2, S2): S2 (rows 0-1) is inside G2, so S2 -> G2 is 0; the G2 pixel farthest from S2 is on row 3, 2 rows
    #   below row 1 in the same column -> H = 2.
    # S3 (rows 8-9, cols 0-1) overlaps no gt object -> partner = gt object with minimum Hausdorff distance:
    #   H(S3, G1): S3 -> G1 max is (9, c) -> (3, c) = 6; G1 -> S3 max is (0, 3) -> (8, 1) = sqrt(8^2 + 2^2) = sqrt(68)
    #              -> H = sqrt(68) ~ 8.246
    #   H(S3, G2): G2 pixel (0, 9) -> nearest S3 pixel (8, 1) = sqrt(8^2 + 8^2) = sqrt(128) > sqrt(68)
    #   -> partner G1, H = sqrt(68)
    # term_G = 16/32 * 0 + 16/32 * 2 = 1
    # term_S = 16/28 * 0 + 8/28 * 2 + 4/28 * sqrt(68) = (16 + 4 sqrt(68)) / 28 = (4 + sqrt(68)) / 7
    # object Hausdorff = 1/2 * (1 + (4 + sqrt(68)) / 7) = (11 + sqrt(68)) / 14 ~ 1.3747
    assert object_hausdorff(pred, gt) == pytest.approx((11 + math.sqrt(68)) / 14)


def test_object_f1_glas_rule_one_prediction_over_two_glands():
    # G1 = row 0 cols 0-1 (2 px), G2 = row 0 cols 3-4 (2 px); one prediction S = row 0 cols 0-4 (5 px) covering both.
    # S's max-overlap gt is a tie (2 px each) -> lowest id G1; 2/2 > 0.5 -> TP. One prediction gives one TP at most:
    # tp = 1, fp = 1 - 1 = 0, fn = 2 - 1 = 1 -> f1 = 2 / (2 + 0 + 1) = 2/3
    gt = np.array([[1, 1, 0, 2, 2]])
    pred = np.array([[7, 7, 7, 7, 7]])  # non-contiguous id on purpose
    r = object_f1(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)
    assert r["f1"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------------------------------------------
# AJI
# ----------------------------------------------------------------------------------------------------------------------


def test_aji_by_hand():
    gt = np.zeros((4, 8), np.int64)
    gt[0:2, 0:2] = 1  # G1: 4 px
    gt[0:2, 4:6] = 2  # G2: 4 px
    gt[3, 0:2] = 3  # G3: 2 px, no prediction overlaps it
    pred = np.zeros((4, 8), np.int64)
    pred[0:2, 0:3] = 1  # S1: 6 px, contains G1 -> inter 4, union 6
    pred[0:2, 5] = 2  # S2: 2 px inside G2 -> inter 2, union 4
    pred[3, 6:8] = 3  # S3: 2 px, overlaps nothing -> unused
    # C = 4 + 2 + 0 = 6 ; U = 6 + 4 + |G3| 2 + unused |S3| 2 = 14 ; AJI = 6/14 = 3/7
    assert aji(pred, gt) == pytest.approx(3 / 7)
    assert aji(torch.from_numpy(pred), torch.from_numpy(gt)) == pytest.approx(3 / 7)


def test_aji_prediction_picked_twice_counts_twice():
    # G1 = row 0 cols 0-1 (2 px), G2 = row 0 cols 3-4 (2 px), S = row 0 cols 0-4 (5 px).
    # Each G picks S: inter 2, union 5. C = 2 + 2 = 4, U = 5 + 5 = 10 (original Kumar AJI), no unused -> 4/10.
    gt = np.array([[1, 1, 0, 2, 2]])
    pred = np.array([[1, 1, 1, 1, 1]])
    assert aji(pred, gt) == pytest.approx(0.4)


def test_aji_picks_max_iou_not_max_intersection():
    # G = row 0 cols 0-5 (6 px). S1 = cols 0-3 of row 0 plus all 10 px of row 1 (14 px): inter 4, union 16, IoU 1/4.
    # S2 = row 0 cols 4-5 (2 px): inter 2, union 6, IoU 1/3 -> picked (despite the smaller intersection).
    # C = 2 ; U = 6 + unused |S1| 14 = 20 ; AJI = 2/20 = 1/10
    gt = np.zeros((2, 10), np.int64)
    gt[0, 0:6] = 1
    pred = np.zeros((2, 10), np.int64)
    pred[0, 0:4] = 1
    pred[1, :] = 1
    pred[0, 4:6] = 2
    assert aji(pred, gt) == pytest.approx(0.1)


def test_instance_maps_must_be_integer_and_nonnegative():
    with pytest.raises(ValueError):
        aji(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError):
        object_dice(np.array([[-1, 0]]), np.array([[1, 0]]))


def test_miou_absent_class_skipped_or_counted_as_zero():
    """3 classes, the third absent from gt and prediction on the whole set: IoUs 2/3 and 3/4 -> skip 0.708, zero
    0.472 (ddpm-segmentation's convention)."""
    pred = np.array([0, 0, 1, 1, 1, 0])
    gt = np.array([0, 1, 1, 1, 1, 0])
    cm = confusion_matrix(pred, gt, 3)
    # class 0: inter 2, union 3 -> 2/3; class 1: inter 3, union 4 -> 3/4
    skip, per_class = miou_from_confusion(cm)
    zero, _ = miou_from_confusion(cm, absent="zero")
    assert math.isnan(per_class[2])
    assert skip == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert zero == pytest.approx((2 / 3 + 3 / 4 + 0) / 3)
