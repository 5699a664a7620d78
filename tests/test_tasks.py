"""A stage-2 task is one registration: a toy third task (image-level regression of the gland-area fraction), with its
own source, heads, metric and methods, registered from this file alone, goes through config validation, one run
and a study of two methods, and neither the config checks nor the study name it anywhere."""

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from mdm.common.config_io import load
from mdm.common.errors import ConfigError
from mdm.common.io import atomic_dir
from mdm.common.registry import Registry
from mdm.common.synthetic import render
from mdm.pretrain.export import open_export
from mdm.pretrain.objectives import build_objective
from mdm.stage2.run_folder import check_replaceable, finish, save_label_subset
from mdm.stage2.scores import mean_score
from mdm.stage2.taps import corrupted, resolve_block_names
from mdm.stage2.tasks import TASKS, Task
from mdm.study.methods import Method

SIZE = 32


@dataclass
class AreaSplit:
    """The toy source: built-in synthetic images (slides far from every other source's) and the share of their
    pixels inside a gland."""

    images: torch.Tensor  # [N, 3, S, S] in [-1, 1]
    areas: np.ndarray  # [N]
    names: list[str]
    image_files: tuple = ()  # nothing on disk: nothing for a study to keep out of its pool
    files: tuple = ()


def open_area_split(data, split: str) -> AreaSplit:
    slide = 300 if split == "train" else 302
    count = 12 if split == "train" else 8
    pairs = [render(data.synthetic_seed, slide + i % 2, i, SIZE) for i in range(count)]
    return AreaSplit(torch.stack([im for im, _ in pairs]), np.array([float((inst > 0).float().mean())
                                                                      for _, inst in pairs]),
                     [f"{split}_{i}" for i in range(count)])


def pooled_features(export, images: torch.Tensor) -> np.ndarray:
    """The last decoder block's output at t = 0, averaged over the image: ``[N, C]``."""
    model = export.load_model().eval()
    block = resolve_block_names(["d-1"], model)[0]
    kept = {}
    model.taps()[block].register_forward_hook(lambda _m, _i, out: kept.update(out=out))
    with torch.no_grad():
        x_t, t = corrupted(build_objective(export.config.diffusion), images, 0, torch.arange(len(images)))
        model(x_t, t)
    return kept["out"].mean((2, 3)).numpy()


def run_area(probe, data, export, out, *, device, progress=True) -> dict:
    """Fit ``probe.head`` (``mean``: the labeled images' mean area; ``ridge``: ridge regression on frozen features),
    write ``predictions.csv``; the metric ``closeness`` is 1 - the mean absolute error."""
    out = Path(out)
    check_replaceable(out, {"label_subset.json", "predictions.csv", "metrics.json"}, "an area run")
    started = __import__("time").perf_counter()
    train, test = open_area_split(data, "train"), open_area_split(data, "test")
    labeled = sorted(np.random.default_rng(data.seed).choice(len(train.names), max(2, round(data.label_fraction
                                                                                            * len(train.names))),
                                                              replace=False).tolist())
    if probe.head == "ridge":
        model = Ridge(alpha=1.0).fit(pooled_features(export, train.images[labeled]), train.areas[labeled])
        predicted = model.predict(pooled_features(export, test.images))
    else:
        predicted = np.full(len(test.names), train.areas[labeled].mean())
    with atomic_dir(out) as tmp:
        save_label_subset(tmp, {"label_fraction": data.label_fraction, "seed": data.seed, "indices": labeled})
        with (tmp / "predictions.csv").open("w", newline="") as f:
            csv.writer(f).writerows([["image", "area", "prediction"],
                                     *zip(test.names, test.areas.tolist(), predicted.tolist())])
        result = {"closeness": float(1 - np.abs(predicted - test.areas).mean()), "labeled_images": len(labeled)}
        return finish(tmp, result, started)


def area_scores(run: Path, metric: str):
    with (run / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return (tuple(r["image"] for r in rows),
            mean_score(np.array([1 - abs(float(r["area"]) - float(r["prediction"])) for r in rows])))


AREA_METHODS: Registry[Method] = Registry("area methods", "bench.methods", "area method")


@pytest.fixture
def area_task():
    methods = {"area-mean": Method("classical", "mean", None, ""), "area-mdm": Method("frozen", "ridge", "mdm",
                                                                                       "export")}
    for name, record in methods.items():
        AREA_METHODS.register(name, record)
    TASKS.register("area", Task(
        section="probe", noun="area regression", methods="area methods", metrics=("closeness",),
        columns=("closeness", "seconds"), run=run_area,
        configure=lambda probe, method, seed: replace(probe, mode=method.mode, head=method.arch, seed=seed),
        known=lambda method: method.arch in ("mean", "ridge"), open_split=open_area_split, scores=area_scores))
    yield
    TASKS.unregister("area")
    for name in methods:
        AREA_METHODS.unregister(name)


def test_a_toy_task_is_checked_like_the_others(area_task):
    cfg = load(None, ["bench.task=area", "bench.methods=[area-mean,area-mdm]", "bench.metric=closeness"])
    assert cfg.bench.task == "area"
    with pytest.raises(ConfigError, match="bench.methods: 'mdm' is not a area method"):
        load(None, ["bench.task=area", "bench.methods=[mdm]", "bench.metric=closeness"])
    with pytest.raises(ConfigError, match="bench.metric: a area study reports closeness, not 'dice'"):
        load(None, ["bench.task=area", "bench.methods=[area-mean]"])
    with pytest.raises(ConfigError, match="bench.task: unknown task 'volume'"):
        load(None, ["bench.task=volume"])


def test_a_toy_task_runs_once_and_in_a_study(area_task, pretrained_export, tmp_path):
    from mdm.study.sweep import run_benchmark

    task = TASKS["area"]
    cfg = load(None, ["bench.task=area", "bench.methods=[area-mean,area-mdm]", "bench.metric=closeness",
                      "data.source=synthetic"])
    probe = task.configure(cfg.probe, AREA_METHODS["area-mdm"], 0)
    one = task.run(probe, cfg.data, open_export(pretrained_export), tmp_path / "one", device=torch.device("cpu"))
    images, score = task.scores(tmp_path / "one", "closeness")
    assert len(images) == 8 and score(np.ones((1, 8)))[0] == pytest.approx(one["closeness"])
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["closeness"] == one["closeness"]

    sets = ["bench.task=area", "bench.methods=[area-mean,area-mdm]", "bench.metric=closeness", "data.source=synthetic",
            "data.synthetic_images=16", "data.crop_size=32", "model.image_size=32", "model.channel_mult=[1,1]",
            "train.batch_size=4", "train.log_every=1", "train.image_every=0", "bench.fractions=[0.5]",
            "bench.seeds=[0,1]", "bench.budget_methods=[]", "bench.pretrain_steps=2", "bench.budget_exports=1",
            f"bench.out_dir={tmp_path / 'study'}"]
    result = run_benchmark(load(None, sets), torch.device("cpu"), torch.device("cpu"), log=lambda *_: None)
    rows = list(csv.DictReader((tmp_path / "study" / "results.csv").open()))
    assert [(r["method"], r["seed"]) for r in rows] == [("area-mean", "0"), ("area-mdm", "0"), ("area-mean", "1"),
                                                        ("area-mdm", "1")]
    assert all(0 < float(r["closeness"]) <= 1 for r in rows)
    assert {"area regression: area-mean", "area regression: area-mdm"} <= set(result["phases"])
    verdicts = list(csv.DictReader((tmp_path / "study" / "verdicts.csv").open()))
    assert verdicts and {v["method"] for v in verdicts} <= {"area-mean", "area-mdm"}
