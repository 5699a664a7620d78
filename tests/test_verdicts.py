"""The study's statistics: the bootstrap's metric recomputation matches the runs' own metrics, paired differences
match hand computations, verdicts follow their intervals; and the filterbank baseline's forest as arrays predicts
what scikit-learn's does."""

import numpy as np
import pytest
import torch

from mdm.classify.metrics import classification_metrics
from mdm.segment import metrics
from mdm.segment.filterbank import Forest
from mdm.stage2.scores import auc_score, balanced_score, mean_score, miou_score
from mdm.study.methods import METHODS
from mdm.study.report import summarize
from mdm.study.verdicts import (
    RunScores,
    Verdict,
    compare,
    default_references,
    paired_bootstrap,
    verdict_sentences,
    verdict_table,
)


def test_scores_with_unit_weights_are_the_runs_metrics():
    rng = np.random.default_rng(0)
    # mIoU: per-image intersections / unions summed = the dataset-level mIoU of the summed confusion matrices
    preds, targets = rng.integers(0, 3, (5, 8, 8)), rng.integers(0, 3, (5, 8, 8))
    targets[:, 0] = 2
    cms = [metrics.confusion_matrix(p, t, 4, None) for p, t in zip(preds, targets)]  # class 3 absent everywhere
    inter = np.array([np.diag(c) for c in cms])
    union = np.array([c.sum(0) + c.sum(1) - np.diag(c) for c in cms])
    for absent in ("skip", "zero"):
        expected = metrics.miou_from_confusion(sum(cms), absent)[0]
        assert miou_score(inter, union, absent)(np.ones((1, 5)))[0] == pytest.approx(expected)
    # a resample that draws image 0 twice and drops image 4 = the metric of that list of images
    w = np.array([[2, 1, 1, 1, 0]])
    assert miou_score(inter, union, "skip")(w)[0] == pytest.approx(
        metrics.miou_from_confusion(2 * cms[0] + cms[1] + cms[2] + cms[3], "skip")[0])
    # classification: balanced accuracy and (multi-class, one-vs-rest) AUC as classification_metrics computes them
    labels = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), 40)
    probs[:5] = probs[5:10]  # ties
    labels[:3] = 0
    got = classification_metrics(labels.tolist(), probs)
    correct = (probs.argmax(1) == labels).astype(float)
    assert balanced_score(labels, correct, 3)(np.ones((1, 40)))[0] == pytest.approx(got["balanced_accuracy"])
    assert auc_score(labels, probs)(np.ones((1, 40)))[0] == pytest.approx(got["roc_auc"])
    binary = rng.dirichlet(np.ones(2), 40)
    assert auc_score(labels % 2, binary)(np.ones((1, 40)))[0] == pytest.approx(
        classification_metrics((labels % 2).tolist(), binary)["roc_auc"])
    # a per-image mean skips images without a value (NaN), as pool_per_image does
    values = np.array([0.5, np.nan, 1.0])
    assert mean_score(values)(np.ones((1, 3)))[0] == pytest.approx(0.75)


def _runs(per_seed: dict[int, tuple[list[float], list[float]]]):
    runs = {}
    for seed, (a, b) in per_seed.items():
        names = tuple(f"img{i}" for i in range(len(a)))
        for method, vals in (("a", a), ("b", b)):
            vals = np.array(vals)
            runs[method, 0.1, seed] = RunScores(names, float(vals.mean()), mean_score(vals))
    return runs


def test_paired_differences_and_verdicts_by_hand():
    # b = a - 0.1 on every image of every seed: every resample differs by exactly 0.1
    runs = _runs({s: ([0.5, 0.7, 0.9, 0.6], [0.4, 0.6, 0.8, 0.5]) for s in range(3)})
    v = compare(runs, "a", "b", 0.1, [0, 1, 2], "dice", 500, 0)
    assert (v.difference, v.low, v.high, v.verdict, v.seeds) == (pytest.approx(0.1), pytest.approx(0.1),
                                                                 pytest.approx(0.1), "better", 3)
    assert compare(runs, "b", "a", 0.1, [0, 1, 2], "dice", 500, 0).verdict == "worse"
    assert compare(runs, "b", "a", 0.1, [0, 1, 2], "object_hausdorff", 500, 0).verdict == "better"  # lower wins
    # one seed says +0.3, another -0.3 (per image constant): the mean is 0 and the seed bootstrap spans both signs
    runs = _runs({0: ([0.8] * 4, [0.5] * 4), 1: ([0.2] * 4, [0.5] * 4)})
    v = compare(runs, "a", "b", 0.1, [0, 1], "dice", 2000, 0)
    assert v.difference == pytest.approx(0.0) and v.verdict == "tie"
    assert v.low == pytest.approx(-0.3) and v.high == pytest.approx(0.3)
    # the seeds only: with two seeds the replicate means are -0.3, 0, 0 or +0.3 with chances 1/4, 1/2, 1/4
    _, draws = paired_bootstrap([(runs["a", 0.1, s], runs["b", 0.1, s]) for s in (0, 1)], 4000, 1)
    assert np.mean(np.isclose(draws, 0.0)) == pytest.approx(0.5, abs=0.03)
    # images within a seed: a difference on half the images only, one seed -> the interval is the image bootstrap's
    runs = _runs({0: ([1.0] * 10 + [0.0] * 10, [0.0] * 20)})
    v = compare(runs, "a", "b", 0.1, [0], "dice", 4000, 0)
    assert v.difference == pytest.approx(0.5)
    assert 0.25 < v.low < 0.35 and 0.65 < v.high < 0.75  # binomial(20, 1/2) / 20: ± 1.96 * 0.112
    assert v == compare(runs, "a", "b", 0.1, [0], "dice", 4000, 0)  # seeded
    # runs written before per-image scores existed: the seeds only, and said so
    old = {k: RunScores(r.images, r.value, None) for k, r in _runs({0: ([0.6], [0.5]), 1: ([0.7], [0.5])}).items()}
    v = compare(old, "a", "b", 0.1, [0, 1], "dice", 500, 0)
    assert not v.images_resampled and v.low == pytest.approx(0.1) and v.high == pytest.approx(0.2)


def test_a_tie_says_how_many_seeds_would_decide_it():
    """The side of the interval towards 0 shrinks as 1 / sqrt(seeds): +0.05 [-0.05, +0.15] from 3 seeds would exclude
    0 from about 3 * (0.10 / 0.05)^2 = 12 seeds; -0.02 [-0.10, +0.03]: 3 * (0.05 / 0.02)^2 = 18.75 -> 19; a difference
    of 0 never; a verdict already reached needs none."""
    def tie(d, low, high):
        return Verdict("a", "b", 0.1, 3, d, low, high, "tie", True)

    assert tie(0.05, -0.05, 0.15).seeds_to_decide == 12 and tie(0.05, -0.05, 0.15).seeds_text == "~12"
    assert tie(-0.02, -0.10, 0.03).seeds_to_decide == 19
    assert tie(0.0, -0.1, 0.1).seeds_text == "> 100" and tie(0.001, -0.2, 0.2).seeds_text == "> 100"
    assert Verdict("a", "b", 0.1, 3, 0.2, 0.1, 0.3, "better", True).seeds_to_decide is None
    verdicts = [tie(0.05, -0.05, 0.15), Verdict("c", "b", 0.1, 3, 0.2, 0.1, 0.3, "better", True)]
    assert "| **tie** | ~12 |" in verdict_table(verdicts) and "| **better** |  |" in verdict_table(verdicts)
    assert "a (+0.050 [-0.050, +0.150]; ~12 seeds to decide)" in verdict_sentences(verdicts, "dice")
    assert "c (+0.200 [+0.100, +0.300])" in verdict_sentences(verdicts, "dice")


def test_references_and_sample_sd():
    methods = {m: METHODS[m] for m in ("mdm", "random", "mdm-ft", "unet-scratch", "filterbank")}
    means = {"mdm": 0.9, "random": 0.5, "mdm-ft": 0.95, "unet-scratch": 0.6, "filterbank": 0.7}
    assert default_references(methods, means) == ["filterbank", "random"]  # mdm-ft is pretrained: not scratch
    rows = [{"method": "m", "label_fraction": 0.1, "seed": s, "dice": v} for s, v in enumerate([0.5, 0.7])]
    assert "0.600 ± 0.141 (n=2)" in summarize(rows, "dice", ["m"], [0.1])  # sample sd: 0.1 * sqrt(2)


def test_forest_arrays_predict_as_scikit_learn():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] ** 2 > 0.5).astype(int) + 2 * (x[:, 2] > 1)  # classes 0, 1, 2, 3 (not all in training)
    forest = RandomForestClassifier(n_estimators=7, random_state=0).fit(x[y != 3], y[y != 3])
    arrays = Forest.of(forest, 5)
    test = rng.normal(size=(200, 5)).astype(np.float32)
    expected = np.zeros((200, 5))
    expected[:, forest.classes_] = forest.predict_proba(test)
    np.testing.assert_allclose(arrays.predict_proba(test), expected, atol=1e-6)
    back = Forest.from_tensors({k: torch.from_numpy(v.numpy()) for k, v in arrays.tensors().items()})
    np.testing.assert_array_equal(back.predict_proba(test), arrays.predict_proba(test))
