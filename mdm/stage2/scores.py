"""Per-image scores a bootstrap can resample, for every metric a task reports: each builder takes a
run's per-image values and gives ``score(w)``, the metric recomputed exactly as the run computed it
for a batch of resamples, ``w [B, N]`` the multiplicity of each of the N test images in each of the
B resamples (``study.verdicts`` draws them). Each task reads its run folder's per-image file into
one of these (``Task.scores``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# image multiplicities [B, N] -> the metric on each resample [B]
Score = Callable[[np.ndarray], np.ndarray]


def mean_score(values: np.ndarray) -> Score:
    valid = ~np.isnan(values)
    v = np.where(valid, values, 0.0)
    return lambda w: (w @ v) / np.maximum(w @ valid, 1e-12)


def miou_score(inter: np.ndarray, union: np.ndarray, absent: str) -> Score:
    """``inter`` / ``union`` ``[N, C]`` per image: mIoU of the summed counts, classes with no union
    skipped (or 0)."""
    def score(w):
        i, u = w @ inter, w @ union
        iou = np.where(u > 0, i / np.maximum(u, 1e-12), np.nan)
        if absent == "zero":
            return np.nan_to_num(iou, nan=0.0).mean(1)
        with np.errstate(all="ignore"):
            return np.nanmean(iou, axis=1)
    return score


def balanced_score(labels: np.ndarray, correct: np.ndarray, k: int) -> Score:
    onehot = np.eye(k)[labels]  # [N, K]
    hit = onehot * correct[:, None]

    def score(w):
        n, h = w @ onehot, w @ hit
        with np.errstate(all="ignore"):
            return np.nanmean(np.where(n > 0, h / np.maximum(n, 1e-12), np.nan), axis=1)
    return score


def auc_score(labels: np.ndarray, probs: np.ndarray) -> Score:
    """Weighted Mann-Whitney AUC: binary of the second class's probability, else the one-vs-rest
    mean over classes with both positives and negatives in the resample."""
    k = probs.shape[1]
    classes = [1] if k == 2 else list(range(k))

    def score(w):
        aucs = []
        for c in classes:
            pos, neg = labels == c, labels != c
            s = probs[:, c]
            h = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
            wp, wn = w[:, pos], w[:, neg]
            denom = wp.sum(1) * wn.sum(1)
            with np.errstate(all="ignore"):
                aucs.append(np.where(denom > 0,
                                     ((wp @ h) * wn).sum(1) / np.maximum(denom, 1e-12), np.nan))
        with np.errstate(all="ignore"):
            return np.nanmean(np.stack(aucs, 1), axis=1)
    return score
