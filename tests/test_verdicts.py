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
    """The interval's reach towards 0 splits into the test set's part, which more seeds keep, and the seeds' part,
    which shrinks as 1 / sqrt(seeds) (its bootstrap estimate scaled by n / (n - 1)): +0.05 [-0.05, +0.15] from 3 seeds,
    0.03 of it the test set's: 3 * (0.1^2 - 0.03^2) * 3/2 / (0.05^2 - 0.03^2) = 25.6 -> 26 seeds; with no test-set
    part, 3 * 0.01 * 3/2 / 0.0025 = 18; a test-set part as large as the difference: no number of seeds."""
    def tie(d, low, high, reach, seeds=3):
        return Verdict("a", "b", 0.1, seeds, d, low, high, "tie", True, reach)

    assert tie(0.05, -0.05, 0.15, 0.03).seeds_to_decide == 26 and tie(0.05, -0.05, 0.15, 0.03).seeds_text == "~26"
    assert tie(0.05, -0.05, 0.15, 0.0).seeds_to_decide == 18
    assert tie(-0.05, -0.15, 0.05, 0.0).seeds_to_decide == 18  # the side towards 0 is the upper one
    assert tie(0.05, -0.05, 0.15, 0.06).seeds_text == "test set" and tie(0.0, -0.1, 0.1, 0.0).seeds_text == "test set"
    assert tie(0.002, -0.2, 0.2, 0.0).seeds_text == "> 100"
    assert tie(0.05, -0.05, 0.15, 0.03, seeds=1).seeds_to_decide is None  # no spread between draws measured
    assert Verdict("a", "b", 0.1, 3, 0.2, 0.1, 0.3, "better", True, 0.05).seeds_to_decide is None
    verdicts = [tie(0.05, -0.05, 0.15, 0.0), Verdict("c", "b", 0.1, 3, 0.2, 0.1, 0.3, "better", True, 0.05)]
    assert "| **tie** | ~18 |" in verdict_table(verdicts) and "| **better** |  |" in verdict_table(verdicts)
    assert "a (+0.050 [-0.050, +0.150]; ~18 seeds to decide)" in verdict_sentences(verdicts, "dice")
    assert "c (+0.200 [+0.100, +0.300])" in verdict_sentences(verdicts, "dice")


def test_seeds_share_their_test_images_in_the_bootstrap():
    """Every seed is scored on the same test images (a crossed design): two seeds that agree image by image carry no
    more information about those images than one, so their interval is one seed's (the binomial's), not narrower;
    and all of it is the test set's part."""
    one = compare(_runs({0: ([1.0] * 10 + [0.0] * 10, [0.0] * 20)}), "a", "b", 0.1, [0], "dice", 4000, 0)
    two = compare(_runs({s: ([1.0] * 10 + [0.0] * 10, [0.0] * 20) for s in (0, 1)}), "a", "b", 0.1, [0, 1], "dice",
                  4000, 0)
    assert 0.25 < two.low < 0.35 and 0.65 < two.high < 0.75
    assert two.low == pytest.approx(one.low, abs=0.03) and two.test_set_reach == pytest.approx(0.5 - two.low, abs=0.03)


def test_windows_are_resampled_with_the_image_they_were_cut_from(tmp_path):
    """A ``unit`` column in predictions.csv (windows: their image) makes the unit the bootstrap draws: two images of
    three windows each are two units, and drawing image 0 twice scores its windows twice."""
    from mdm.classify.metrics import prediction_scores

    rows = [("a_0_0", "a", "x", "x"), ("a_0_8", "a", "x", "y"), ("a_8_0", "a", "y", "y"),
            ("b_0_0", "b", "y", "y"), ("b_0_8", "b", "y", "x"), ("b_8_0", "b", "x", "x")]
    (tmp_path / "predictions.csv").write_text("image,unit,label,prediction,p_x,p_y\n" + "".join(
        f"{n},{u},{t},{p},{float(p == 'x')},{float(p == 'y')}\n" for n, u, t, p in rows))
    units, score = prediction_scores(tmp_path, "accuracy")
    assert units == ("a", "b")
    assert score(np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0]])) == pytest.approx([4 / 6, 2 / 3, 2 / 3])
    assert prediction_scores(tmp_path, "balanced_accuracy")[1](np.array([[1.0, 0.0]]))[0] == pytest.approx(
        (1 / 2 + 1) / 2)  # image a: x recalled 1 of 2, y 1 of 1


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
