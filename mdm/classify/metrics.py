"""Image-level metrics: accuracy, balanced accuracy (the mean recall over the classes present in the
ground truth) and ROC AUC (binary: of the positive class's probability; more classes: the mean of
one-vs-rest AUCs over the classes that have both positive and negative images). AUC is the
Mann-Whitney statistic, ties counted half, as scikit-learn's ``roc_auc_score`` computes it."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..stage2.scores import Score, auc_score, balanced_score, mean_score


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a positive scores above a negative (ties: one half); NaN without
    both."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # 1-based, tied scores share their mean rank
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def classification_metrics(labels: list[int], probs: np.ndarray) -> dict:
    """``labels [N]`` in 0 .. K-1, ``probs [N, K]`` -> ``{"accuracy", "balanced_accuracy",
    "roc_auc", "per_class_recall": {class: recall}, "modal_share"}`` (the prediction is the most
    probable class, the lower on a tie; ``modal_share``: the share of test images given the most
    common prediction, 1.0 for a classifier that predicts a constant)."""
    y, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    pred = probs.argmax(1)
    recalls = {int(c): float((pred[y == c] == c).mean()) for c in np.unique(y)}
    if probs.shape[1] == 2:
        auc = binary_auc(probs[:, 1], y == 1)
    else:
        aucs = [binary_auc(probs[:, c], y == c) for c in range(probs.shape[1])]
        aucs = [a for a in aucs if not math.isnan(a)]
        auc = float(np.mean(aucs)) if aucs else math.nan
    return {"accuracy": float((pred == y).mean()),
            "balanced_accuracy": float(np.mean(list(recalls.values()))), "roc_auc": auc,
            "per_class_recall": recalls,
            "modal_share": float(np.bincount(pred, minlength=probs.shape[1]).max() / len(pred))}


def prediction_scores(run: Path, metric: str) -> tuple[tuple[str, ...], Score | None]:
    """The resampling units of a finished run folder (its test images; where ``predictions.csv``
    has a ``unit`` column, such as windows cut from one image, the units, each drawn with all its
    rows) and the score of ``metric`` on them, for the verdicts' bootstrap."""
    with (run / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "unit" in rows[0]:
        units = tuple(dict.fromkeys(r["unit"] for r in rows))
        where = {u: k for k, u in enumerate(units)}
        members = np.zeros((len(units), len(rows)))  # [units, rows]
        members[[where[r["unit"]] for r in rows], np.arange(len(rows))] = 1.0
        _, score = _row_scores(rows, metric)
        return units, None if score is None else (lambda w: score(w @ members))
    return _row_scores(rows, metric)


def _row_scores(rows: list[dict], metric: str) -> tuple[tuple[str, ...], Score | None]:
    """The test images of ``predictions.csv``'s ``rows`` and the per-image score of ``metric``."""
    images = tuple(r["image"] for r in rows)
    names = [k[2:] for k in rows[0] if k.startswith("p_")] if rows else []
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index[r["label"]] for r in rows])
    correct = np.array([float(r["label"] == r["prediction"]) for r in rows])
    if metric == "accuracy":
        return images, mean_score(correct)
    if metric == "balanced_accuracy":
        return images, balanced_score(labels, correct, len(names))
    if metric == "roc_auc":
        return images, auc_score(labels,
                                 np.array([[float(r[f"p_{n}"]) for n in names] for r in rows]))
    return images, None
