"""Image classification: pooling and heads, the metrics against hand computations, the image-label layouts (GlaS
grades on a copy of the release's file names), the label subsets, a probe run and a miniature classification study."""

import csv
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

import mdm.classify.run as classify_run
from helpers import tiny_config
from mdm.classify.datasets import open_class_split, read_glas_grades
from mdm.classify.features import ImageFeatures
from mdm.classify.heads import fit_head, fit_module
from mdm.classify.metrics import binary_auc, classification_metrics
from mdm.classify.pooling import AttentionPool, pool, token_map
from mdm.classify.run import open_split, run_classification
from mdm.classify.select import select_part
from mdm.classify.splits import class_subset, validation_images
from mdm.cli import probe_main
from mdm.common.config import ProbeConfig
from mdm.common.config_io import load
from mdm.common.errors import ConfigError, DataError
from mdm.pretrain.export import open_export


def forget_selections(monkeypatch):
    """The process's remembered sweeps emptied for the rest of the test (and restored after it)."""
    monkeypatch.setattr(classify_run, "_SELECTIONS", OrderedDict())


@pytest.fixture(autouse=True)
def own_selections(monkeypatch):
    """Each test remembers its own sweeps: none leaks into the next test."""
    forget_selections(monkeypatch)


def test_pooling_shapes():
    x = torch.randn(3, 8, 5, 6)
    assert pool(x, "gap").shape == (3, 8)
    assert torch.allclose(pool(x, "gap"), x.mean((2, 3)))
    assert pool(x, "grid", 2).shape == (3, 32)
    assert pool(x, "grid", 9).shape == (3, 8 * 5 * 5)  # never finer than the map
    assert token_map(x, 4).shape == (3, 8, 4, 4) and token_map(x, 16).shape == (3, 8, 5, 6)
    logits, weights = AttentionPool(8, 3)(token_map(x, 4), return_weights=True)
    assert logits.shape == (3, 3) and weights.shape == (3, 16)
    assert torch.allclose(weights.sum(1), torch.ones(3))


def region_tokens(n: int, seed: int):
    """Token maps ``[n, 8, 4, 4]`` whose class lives in one token: a marked token (channel 1 high, anywhere) carries
    the class in channel 0's sign; every other token's channel 0 is louder noise, so its average hides the class."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, 4, 4, generator=g) * 0.5
    x[:, 0] = torch.randn(n, 4, 4, generator=g) * 1.5
    y = torch.randint(0, 2, (n,), generator=g)
    where = torch.randint(0, 16, (n,), generator=g)
    for i in range(n):
        r, c = divmod(int(where[i]), 4)
        x[i, 1, r, c] = 4.0
        x[i, 0, r, c] = 2.0 if y[i] else -2.0
    return x, y


def test_attention_pooling_learns_a_class_that_lives_in_one_region():
    x, y = region_tokens(384, 0)
    xt, yt = region_tokens(256, 1)
    fit, val = slice(0, 320), slice(320, 384)
    probe = ProbeConfig(max_epochs=120, patience=30, batch_size=64)
    attend, _ = fit_head("attention", x[fit], y[fit], x[val], y[val], 2, probe)
    average, _ = fit_head("linear", pool(x, "gap")[fit], y[fit], pool(x, "gap")[val], y[val], 2, probe)
    attention_accuracy = float((attend(xt).argmax(1) == yt).float().mean())
    average_accuracy = float((average(pool(xt, "gap")).argmax(1) == yt).float().mean())
    assert average_accuracy < 0.72 < 0.9 < attention_accuracy, (average_accuracy, attention_accuracy)


def test_knn_votes_of_the_nearest_training_images():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y = torch.tensor([0, 0, 1, 1])
    predict, _ = fit_head("knn", x, y, x[:0], y[:0], 2, ProbeConfig(knn_k=3))
    probs = predict(torch.tensor([[1.0, 0.05], [0.05, 1.0]]))
    assert torch.allclose(probs, torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]]))


def test_an_epoch_of_a_few_images_is_several_steps_and_never_a_batch_of_one():
    sizes = []

    class Counting(torch.nn.Linear):
        def forward(self, x):
            if self.training:
                sizes.append(len(x))
            return super().forward(x)

    x, y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    history = fit_module(Counting(4, 2), x, y, x[:0], y[:0], 0.1, 0.0, 1, 0, 2, 0, epoch_images=8)
    assert sizes == [2, 2, 2, 3]  # three images cycled to nine, the last one joined to the batch before
    assert len(history["train_loss"]) == 1 and history["val_loss"] == []  # nothing held out: no validation curve


def test_metrics_match_a_hand_computation():
    # positives 0.8, 0.4 (tie with a negative), 0.9; negatives 0.1, 0.4, 0.35: of 9 pairs, 8 won and 1 tied
    scores = np.array([0.8, 0.4, 0.9, 0.1, 0.4, 0.35])
    positive = np.array([1, 1, 1, 0, 0, 0], bool)
    assert binary_auc(scores, positive) == pytest.approx(8.5 / 9)
    assert np.isnan(binary_auc(scores, np.ones(6, bool)))
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    m = classification_metrics([0, 1, 1, 1, 0], probs)  # class 1: 2 of 3 right; class 0: 2 of 2
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["roc_auc"] == pytest.approx(1.0)  # every class-1 image scores above every class-0 image
    assert m["modal_share"] == pytest.approx(3 / 5)  # predictions 0, 1, 0, 1, 0
    three = classification_metrics([0, 1, 2], np.eye(3))
    assert three["roc_auc"] == 1.0 and three["balanced_accuracy"] == 1.0
    constant = classification_metrics([0, 1, 1], np.array([[0.4, 0.6]] * 3))
    assert constant["modal_share"] == 1.0 and constant["balanced_accuracy"] == 0.5


def _bmp(path, value=128, size=12):
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def glas_release(root):
    """The GlaS release's layout (file names as released, Grade.csv with its header and leading spaces)."""
    folder = root / "Warwick QU Dataset (Released 2016_07_08)"
    folder.mkdir(parents=True)
    grades = {"train_1": "malignant", "train_2": "benign", "train_10": "benign", "testA_1": "benign",
              "testA_2": "malignant", "testB_1": "malignant"}
    for k, name in enumerate(grades):
        _bmp(folder / f"{name}.bmp", 40 * k)
        _bmp(folder / f"{name}_anno.bmp", 0)
    lines = ["name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"]
    lines += [f"{n},{k + 1}, {g}, {'adenomatous' if g == 'benign' else 'moderately differentiated'}"
              for k, (n, g) in enumerate(grades.items())]
    (folder / "Grade.csv").write_text("\r\n".join(lines) + "\r\n")
    return folder


def test_glas_grades_from_the_release_files(tmp_path):
    folder = glas_release(tmp_path)
    train = open_class_split("glas", str(tmp_path), "train")
    assert train.names == ["train_1", "train_2", "train_10"] and train.labels == [1, 0, 0]
    assert train.class_names == ["benign", "malignant"] and folder / "Grade.csv" in train.files
    test = open_class_split("glas", str(tmp_path), "test")
    assert test.names == ["testA_1", "testA_2", "testB_1"] and test.labels == [0, 1, 1]
    assert test.image(0).shape == (3, 12, 12)
    (folder / "Grade.csv").write_text((folder / "Grade.csv").read_text().replace(" malignant", " severe", 1))
    with pytest.raises(DataError, match=r"Grade.csv, line 2: grade 'severe' of 'train_1' is not benign"):
        read_glas_grades(folder / "Grade.csv")
    (folder / "Grade.csv").write_text("name,grade (GlaS)\ntrain_1,benign\n")
    with pytest.raises(DataError, match="no grade for train_2 and 1 more"):
        open_class_split("glas", str(tmp_path), "train")


def test_class_folders_and_their_errors(tmp_path):
    for split, classes in (("train", ("cat", "dog")), ("test", ("dog",))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            _bmp(tmp_path / split / c / "a.png")
    train = open_class_split("class_folders", str(tmp_path), "train")
    assert train.names == ["cat/a", "dog/a"] and train.labels == [0, 1]
    assert open_class_split("class_folders", str(tmp_path), "test").labels == [1]
    (tmp_path / "test" / "eel").mkdir()
    with pytest.raises(DataError, match="class 'eel' has no training folder"):
        open_class_split("class_folders", str(tmp_path), "test")


def test_synthetic_shapes_are_balanced_and_not_a_colour_statistic():
    train, test = (open_class_split("synthetic", None, split, synthetic_size=48) for split in ("train", "test"))
    assert sum(train.labels) * 2 == len(train) == 200 and not set(train.names) & set(test.names)

    def colour(ds):  # per-channel mean and std of each image
        images = torch.stack([ds.image(i) for i in range(0, len(ds), 3)])
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1), torch.tensor(ds.labels[::3])

    (x, y), (xt, yt) = colour(train), colour(test)
    predict, _ = fit_head("linear", x, y, x[:0], y[:0], 2, ProbeConfig(max_epochs=200))
    assert float((predict(xt).argmax(1) == yt).float().mean()) < 0.7


def test_label_subsets_are_nested_and_hold_every_class():
    labels = [0] * 18 + [1] * 2
    small, large = class_subset(labels, 0.1, 3), class_subset(labels, 0.5, 3)
    assert len(small) == 2 and {labels[i] for i in small} == {0, 1} and set(small) <= set(large)
    chosen = [0, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    val = validation_images(chosen, 0.3, 0)
    assert len(val) == 3 and val == sorted(set(val))
    for seed in range(20):  # never the last training image of a class
        kept = [c for i, c in enumerate(chosen) if i not in validation_images(chosen, 0.5, seed)]
        assert set(kept) == {0, 1}
    assert validation_images([0], 0.5, 0) == []


def test_a_probe_run_writes_its_folder_and_reads_its_cache(pretrained_export, tmp_path, monkeypatch):
    data = load(None, ["data.source=synthetic", "data.label_fraction=0.1", "data.val_fraction=0.25"]).data
    probe = ProbeConfig(image_size=32, sweep_timesteps=[0, 200], sweep_blocks=["mid", "d-1", "e2"], max_epochs=30,
                        cache_dir=str(tmp_path / "cache"))
    export = open_export(pretrained_export)
    result = run_classification(probe, data, export, tmp_path / "run", device=torch.device("cpu"), progress=False)
    assert result["labeled_images"] == 20 and result["validation_images"] == 5 and result["test_images"] == 200
    assert 0 <= result["balanced_accuracy"] <= 1 and 0 <= result["roc_auc"] <= 1
    chosen = result["selection"]
    assert chosen["blocks"][0] in ("mid", "d3", "e2") and chosen["timestep"] in (0, 200)
    assert set(chosen["scores"][chosen["timestep"]]) == {"mid", "d3", "e2"}
    with open(tmp_path / "run" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 200 and set(rows[0]) == {"image", "label", "prediction", "p_regular", "p_irregular"}
    assert (tmp_path / "run" / "block_selection.png").is_file() and (tmp_path / "run" / "loss_curves.png").is_file()
    member = result["members"][0]  # one loss per epoch run; the validation curve's minimum is the kept epoch
    assert len(member["train_loss"]) == len(member["val_loss"]) == member["epochs"]
    assert min(member["val_loss"]) == pytest.approx(member["val_loss"][member["best_epoch"]])
    cached = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert cached  # a second run of the same head (the sweep forgotten) reads them back and gives the same answer
    forget_selections(monkeypatch)

    def no_extraction(*args):
        raise AssertionError("features extracted again")

    monkeypatch.setattr(ImageFeatures, "_run", no_extraction)
    again = run_classification(probe, data, export, tmp_path / "run", device=torch.device("cpu"), progress=False)
    assert again["roc_auc"] == result["roc_auc"] and again["selection"] == chosen


def test_probe_cli_errors_are_one_line(tmp_path, configs_dir, capsys):
    assert probe_main(["--config", f"{configs_dir}/probe_synthetic.yaml", "--out", str(tmp_path / "p")]) == 2
    assert "--checkpoint is required (a pretraining export folder) for probe.mode=frozen" in capsys.readouterr().err
    assert probe_main(["--config", f"{configs_dir}/probe_synthetic.yaml", "--set", "bench.task=classification",
                       "--set", "bench.metric=dice", "--out", str(tmp_path / "p")]) == 2
    assert "bench.metric: a classification study reports accuracy" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown head 'svm'"):
        load(None, ["probe.head=svm"])
    with pytest.raises(ConfigError, match="both are auto or neither"):
        load(None, ["probe.blocks=[d1]"])
    with pytest.raises(ConfigError, match=r"probe.sweep_blocks: no block 'd9' \(the U-Net has e0..e5, mid, d0..d5"):
        from mdm.classify.select import candidates

        candidates(ProbeConfig(sweep_blocks=["mid", "d9"]), load(None).model)


def test_a_miniature_classification_study(tmp_path, configs_dir, monkeypatch):
    from mdm.study.sweep import run_benchmark

    sweeps = []
    monkeypatch.setattr(classify_run, "select_part", lambda *a, **k: sweeps.append(1) or select_part(*a, **k))
    forget_selections(monkeypatch)

    cfg = tiny_config(configs_dir, tmp_path / "unused", "bench.task=classification", "bench.metric=roc_auc",
                      "bench.fractions=[0.05]", "bench.seeds=[0]", "bench.pretrain_steps=2", "bench.budget_exports=1",
                      "bench.methods=[mdm-linear,mdm-attn,random-linear,mdm-ft,resnet18-scratch]",
                      "bench.budget_methods=[mdm-linear]", f"bench.out_dir={tmp_path / 'study'}",
                      "probe.image_size=32", "probe.max_epochs=5", "probe.finetune_epochs=2",
                      "probe.sweep_timesteps=[0]", "data.val_fraction=0.25")
    result = run_benchmark(cfg, torch.device("cpu"), torch.device("cpu"), log=lambda *_: None)
    out = tmp_path / "study"
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["mdm-linear", "mdm-attn", "random-linear", "mdm-ft", "resnet18-scratch"]
    assert list(rows[0])[:7] == ["method", "label_fraction", "seed", "labeled_images", "accuracy",
                                 "balanced_accuracy", "roc_auc"]
    assert {r["labeled_images"] for r in rows} == {"10"}
    for name in ("label_efficiency.png", "block_selection.png", "pretrain_budget.png", "results.md"):
        assert (out / name).is_file(), name
    mdm = json.loads((out / "runs" / "mdm-linear" / "f0.05_s0" / "metrics.json").read_text())
    attn = json.loads((out / "runs" / "mdm-attn" / "f0.05_s0" / "metrics.json").read_text())
    assert mdm["selection"] == attn["selection"] and attn["feature_shape"][1:] == [8, 8]  # tokens of its block
    # one sweep per export: the MDM run's (linear and attention heads) and its step 0's (random-linear, and the budget
    # curve's step-0 point, the same export, labeled subset and seed)
    assert len(sweeps) == 2
    assert {b["pretrain_steps"] for b in result["budget"]} == {0, 2}
    with pytest.raises(ConfigError, match="bench.methods: 'smp-scratch' is not a classification method"):
        load(None, ["bench.task=classification", "bench.methods=[smp-scratch]", "bench.metric=accuracy"])


def test_a_segmentation_source_gives_windows_labeled_by_their_majority_class(pretrained_export, tmp_path):
    """``<source>-windows`` (``study.windows``): windows of ``data.crop_size`` px, each labeled by the class covering
    more than half of it, grouped by image (validation holds out whole images); one export then probes both levels."""
    from mdm.common.labels import IGNORE_INDEX
    from mdm.segment.datasets import load_split

    data = load(None, ["data.source=synthetic-windows", "data.crop_size=16", "data.label_fraction=0.25"]).data
    train = open_split(data, "train")
    images = load_split("synthetic", None, "train")
    assert train.class_names == images.class_names
    assert set(train.groups) == {im.slide or im.name for im in images}  # the synthetic source knows each slide
    for k in (0, len(train) // 2, len(train) - 1):
        name, top, left = train.names[k].rsplit("_", 2)
        i = images.names.index(name)
        cut = images[i].label[int(top):int(top) + 16, int(left):int(left) + 16]
        cut = cut[cut != IGNORE_INDEX]
        assert (cut == train.labels[k]).float().mean() > 0.5
        assert torch.equal(train.image(k), images[i].image[:, int(top):int(top) + 16, int(left):int(left) + 16])
    probe = ProbeConfig(image_size=32, sweep_timesteps=[0], sweep_blocks=["mid"], max_epochs=5)
    result = run_classification(probe, data, open_export(pretrained_export), tmp_path / "run",
                                device=torch.device("cpu"), progress=False)
    assert 0 <= result["balanced_accuracy"] <= 1


def test_a_windows_study_pretrains_on_the_pool_of_its_segmentation_study(tmp_path, configs_dir):
    """The same root and exclusions, in the same order, so a `-windows` study accepts the segmentation study's
    pretraining runs copied in (configs/levels_synthetic.yaml; a study's image level reads them in place)."""
    import os

    from helpers import make_generic
    from mdm.study.pool import pretraining_data

    root = make_generic(tmp_path / "data", size=32)
    both = [f"data.root=[{root}]", "data.num_classes=2", "bench.budget_methods=[]"]
    seg = load(os.path.join(configs_dir, "bench_generic_cpu.yaml"), ["data.source=generic", *both])
    windows = load(os.path.join(configs_dir, "levels_skimage.yaml"),
                   ["data.source=generic-windows", "bench.task=classification", "bench.methods=[mdm-linear]",
                    "bench.metric=balanced_accuracy", "data.crop_size=16",
                    "bench.image_methods=[]", *both])
    a, b = pretraining_data(seg), pretraining_data(windows)
    assert (a.root, a.exclude) == (b.root, b.exclude) and len(a.exclude) == 4  # 2 test images and their masks
