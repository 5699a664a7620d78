"""Evaluation of a trained segmenter on a test split: the metrics of docs/metrics.md, per image and
pooled.

Writes the pictures of ``visualize`` under the run folder and ``per_image.csv`` (per test image: its
metrics and, per class ``k``, ``inter_k`` / ``union_k``, the pixel counts whose sums over images
give the dataset-level IoU, so a study can recompute mIoU on resampled images), and returns the
pooled metrics: ``miou`` and ``per_class_iou`` (dataset level) for every task; for binary tasks also
per-image ``dice`` / ``iou``, GlaS object metrics and AJI where the ground truth has instances, each
member's Dice (``member_dice_mean`` / ``_std``: the paper's protocol of individual classifiers),
``iou_from_dice``, and the same per group (GlaS testA / testB).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from ..common.labels import IGNORE_INDEX
from ..stage2.scores import Score, mean_score, miou_score
from . import metrics, object_metrics
from .visualize import save_prediction_images

POOLED = ["dice", "iou", "object_f1", "object_dice", "object_hausdorff", "aji"]


def evaluate(segmenter, test_ds, out: Path, class_names: list[str], progress: bool = True) -> dict:
    """Segment every test image; write PNGs and ``per_image.csv``; return the pooled metrics."""
    c, m = segmenter.num_classes, segmenter.num_members
    binary = c == 2
    cm = np.zeros((c, c), dtype=np.int64)
    member_dice: list[list[float]] = [[] for _ in range(m)]
    rows = []
    for i in tqdm(range(len(test_ds)), desc="test",
                  disable=None if progress else True, leave=False):
        item = test_ds[i]
        labels, unc, probs = segmenter.predict(item.name, item.image)
        image_cm = metrics.confusion_matrix(labels, item.label, c, IGNORE_INDEX)
        cm += image_cm
        row = {"name": item.name, "group": item.group}
        if binary:
            valid = item.label != IGNORE_INDEX
            gt = (item.label == 1) & valid
            row["dice"], row["iou"] = metrics.binary_dice_iou(labels.eq(1) & valid, gt)
            for k in range(m):
                member_dice[k].append(metrics.binary_dice_iou(probs[k].argmax(0).eq(1) & valid, gt)[0])
            if item.instances is not None:
                pred_inst = object_metrics.connected_components(labels.eq(1).numpy())
                gt_inst = item.instances.numpy()
                row["object_f1"] = object_metrics.object_f1(pred_inst, gt_inst)["f1"]
                row["object_dice"] = object_metrics.object_dice(pred_inst, gt_inst)
                row["object_hausdorff"] = object_metrics.object_hausdorff(pred_inst, gt_inst)
                row["aji"] = object_metrics.aji(pred_inst, gt_inst)
        inter = np.diag(image_cm)  # per class: the image's share of the dataset-level IoU's sums
        row.update({f"inter_{k}": int(v) for k, v in enumerate(inter)})
        row.update(
            {f"union_{k}": int(v) for k, v in enumerate(image_cm.sum(0) + image_cm.sum(1) - inter)})
        rows.append(row)
        save_prediction_images(out, item.name, item.image, labels, unc, c, item.label, class_names)
    miou, per_class = metrics.miou_from_confusion(cm, segmenter.cfg.seg.miou_absent)
    result: dict = {"num_test_images": len(rows), "miou": miou,
                    "per_class_iou": {n: (None if math.isnan(v) else float(v)) for n, v in zip(class_names, per_class)}}
    if binary:
        result.update(_pool(rows, POOLED))
        per_member = [float(np.mean(d)) for d in member_dice]
        result["member_dice_mean"], result["member_dice_std"] = float(np.mean(per_member)), float(np.std(per_member))
        result["member_dice"] = per_member
        result["iou_from_dice"] = metrics.dice_to_iou(result["dice"])
        groups = sorted({r["group"] for r in rows if r["group"]})
        if groups:
            result["groups"] = {g: _pool([r for r in rows if r["group"] == g], POOLED) for g in groups}
    with (out / "per_image.csv").open("w", newline="") as f:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return result


def _pool(rows: list[dict], keys: list[str]) -> dict:
    """The per-image mean of each metric the rows hold (``metrics.pool_per_image``)."""
    return {k: metrics.pool_per_image([r[k] for r in rows if k in r])[0] for k in keys if any(k in r for r in rows)}


def per_image_scores(run: Path, metric: str) -> tuple[tuple[str, ...], Score | None]:
    """The test images of a finished run folder and the per-image score of ``metric`` from its
    ``per_image.csv`` (``None`` for a metric without one, such as GlaS's per-group columns), for the
    verdicts' bootstrap."""
    with (run / "per_image.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    images = tuple(r["name"] for r in rows)
    if metric in POOLED and rows and metric in rows[0]:
        return images, mean_score(
            np.array([float(r[metric]) if r[metric] != "" else math.nan for r in rows]))
    if metric == "miou" and rows and "inter_0" in rows[0]:
        c = sum(k.startswith("inter_") for k in rows[0])
        inter = np.array([[float(r[f"inter_{j}"]) for j in range(c)] for r in rows])
        union = np.array([[float(r[f"union_{j}"]) for j in range(c)] for r in rows])
        absent = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("seg", {}).get("miou_absent", "skip")
        return images, miou_score(inter, union, absent)
    return images, None
