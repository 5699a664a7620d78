"""A miniature label-efficiency sweep end to end: files, table, plots, and resuming skips finished runs."""

import csv
import os
import re

import pytest
import torch

from helpers import make_generic, swap_record
from mdm.common.config_io import load
from mdm.stage2.tasks import TASKS

MINI = ["model.image_size=32", "model.channel_mult=[1,1]", "model.attention_resolutions=[8]",
        "data.synthetic_images=16", "data.crop_size=32", "data.val_fraction=0.2", "train.batch_size=4",
        "train.log_every=2", "train.image_every=0", "seg.ensemble_size=1", "seg.max_epochs=1", "seg.patience=1",
        "seg.crops_per_epoch=8", "seg.batch_size=4", "bench.fractions=[0.1,0.5]", "bench.seeds=[0]",
        "bench.methods=[mdm,ddpm,random,mdm-ft,smp-scratch,filterbank]", "bench.pretrain_steps=4",
        "bench.budget_exports=2",
        "train.device=cpu", "seg.device=cpu"]


class Killed(BaseException):
    pass


def test_miniature_sweep_writes_results_and_resumes(tmp_path, configs_dir, monkeypatch, capsys,
                                                    tmp_path_factory):
    """Killed while its 3rd run (random, 10%) saves, then run again: it finishes, and the killed run's result is
    what the same run gives uninterrupted; a third start trains nothing."""
    from mdm import benchmark
    from mdm.common import faults
    from mdm.study import sweep as study
    from mdm.study.runs import run_one

    cfg = load(os.path.join(configs_dir, "bench_demo.yaml"), MINI + [f"bench.out_dir={tmp_path}"])
    args = ["--config", os.path.join(configs_dir, "bench_demo.yaml"), "--out", str(tmp_path),
            *[a for o in MINI for a in ("--set", o)]]
    saves = []

    def kill_third(name):
        if name == "segmenter saved":
            saves.append(name)
            if len(saves) == 3:
                raise Killed

    monkeypatch.setattr(faults, "hook", kill_third)
    with pytest.raises(Killed):
        benchmark.main(args)
    monkeypatch.undo()
    assert not (tmp_path / "runs" / "random" / "f0.1_s0").exists()
    assert benchmark.main(args) == 0
    printed = capsys.readouterr().out
    assert "| mdm-ft |" in printed and "label_efficiency.png" in printed
    for name in ("results.csv", "results.md", "verdicts.csv", "label_efficiency.png", "budget.csv",
                 "pretrain_budget.png"):
        assert (tmp_path / name).is_file(), name
    # verdicts: every method against the better of the two scratch methods and the random features, per fraction
    verdicts = list(csv.DictReader((tmp_path / "verdicts.csv").open()))
    assert {v["reference"] for v in verdicts} <= {"smp-scratch", "filterbank", "random"}
    assert len(verdicts) == 2 * (5 + 5) and all(v["verdict"] in ("better", "worse", "tie") for v in verdicts)
    assert all(v["images_resampled"] == "True" for v in verdicts)  # per_image.csv read for every run
    assert (tmp_path / "results.md").read_text().startswith("# Label efficiency (dice)\n\n## Verdicts")
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 2 * 6
    assert {r["method"] for r in rows} == {"mdm", "ddpm", "random", "mdm-ft", "smp-scratch", "filterbank"}
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)
    assert all(float(r["seconds"]) > 0 for r in rows)  # runs finished before the kill keep their time
    assert {r["labeled_images"] for r in rows if r["label_fraction"] == "0.1"} == {"2"}
    budget = list(csv.DictReader((tmp_path / "budget.csv").open()))
    assert sorted({int(b["pretrain_steps"]) for b in budget}) == [0, 2, 4]
    # the last point is the sweep's own run (exports/step_4 is what export/ holds), not trained twice
    assert [b["dice"] for b in budget if b["method"] == "mdm" and b["pretrain_steps"] == "4"] == \
        [r["dice"] for r in rows if r["method"] == "mdm" and r["label_fraction"] == "0.1"]
    assert not (tmp_path / "budget" / "mdm" / "step_4_s0").exists()
    # random and unet-scratch start from the MDM run's step-0 export: the same initial weights as mdm
    assert (tmp_path / "pretrain_mdm" / "exports" / "step_0" / "unet.safetensors").is_file()

    reference = run_one(cfg, "random", 0.1, 0, tmp_path / "pretrain_mdm" / "exports" / "step_0",
                              tmp_path_factory.mktemp("reference"), torch.device("cpu"))
    assert [float(r["dice"]) for r in rows if r["method"] == "random" and r["label_fraction"] == "0.1"] == \
        [reference["dice"]]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    swap_record(monkeypatch, TASKS, "segmentation", run=refuse)
    again = study.run_benchmark(cfg, torch.device("cpu"), torch.device("cpu"), log=lambda *_: None)
    assert [r["dice"] for r in again["rows"]] == [float(r["dice"]) for r in rows]


def test_a_generic_study_pretrains_beside_the_labels_and_never_on_a_test_image(tmp_path, configs_dir, monkeypatch):
    """ROOT/{train,test}/{images,masks} + ROOT/unlabeled/ holding a renamed copy of a test image: the pool is the
    training images + unlabeled/ minus that copy; 2 methods x 1 fraction x 1 seed, blocks chosen on validation; a
    rerun trains nothing."""
    import json
    import shutil

    import numpy as np
    from PIL import Image

    from mdm.study import sweep as study

    root = make_generic(tmp_path / "data", size=40)
    rng = np.random.default_rng(1)
    (root / "unlabeled").mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "unlabeled" / f"u{k}.jpg")
    shutil.copy(root / "test" / "images" / "1.png", root / "unlabeled" / "renamed.png")
    sets = ["model.image_size=32", "model.channel_mult=[1,1]", "model.attention_resolutions=[8]", "train.batch_size=4",
            "train.log_every=2", "train.image_every=0", "seg.ensemble_size=1", "seg.max_epochs=1", "seg.patience=1",
            "seg.crops_per_epoch=8", "seg.batch_size=4", "data.num_classes=2", f"data.root=[{root}]",
            "bench.fractions=[1.0]", "bench.seeds=[0]", "bench.methods=[mdm,unet-scratch]", "bench.pretrain_steps=2",
            "bench.budget_exports=1", "bench.budget_methods=[]", f"bench.out_dir={tmp_path / 'study'}",
            "seg.blocks=auto", "seg.timesteps=auto", "seg.auto_timesteps=[50]", "seg.probe_steps=1",
            "seg.auto_blocks=1", f"seg.cache_dir={tmp_path / 'study' / 'features'}"]  # a cache in the study folder
    cfg = load(os.path.join(configs_dir, "bench_generic_cpu.yaml"), sets)
    cpu = torch.device("cpu")
    first = study.run_benchmark(cfg, cpu, cpu, log=lambda *_: None)
    pool = json.loads((tmp_path / "study" / "pretrain_mdm" / "pool.json").read_text())
    assert pool["images"] == 4 + 3 and pool["excluded"] == 1
    assert [os.path.basename(f) for f in pool["excluded_files"]] == ["renamed.png"]
    assert [(r["method"], r["labeled_images"]) for r in first["rows"]] == [("mdm", 4), ("unet-scratch", 4)]
    assert (tmp_path / "study" / "block_selection.png").is_file()  # the frozen method chose its block on validation

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    swap_record(monkeypatch, TASKS, "segmentation", run=refuse)
    again = study.run_benchmark(cfg, cpu, cpu, log=lambda *_: None)
    assert [r["dice"] for r in again["rows"]] == [r["dice"] for r in first["rows"]]


def test_a_pool_crop_without_whole_patches_stops_before_anything_is_written(tmp_path, configs_dir):
    from mdm.common.errors import ConfigError
    from mdm.study.sweep import run_benchmark

    cfg = load(os.path.join(configs_dir, "bench_demo.yaml"), MINI + [f"bench.out_dir={tmp_path / 'study'}",
               "bench.pretrain_data.source=synthetic", "bench.pretrain_data.crop_size=30"])
    with pytest.raises(ConfigError, match="bench.pretrain_data.crop_size: 30 is not divisible"):
        run_benchmark(cfg, torch.device("cpu"), torch.device("cpu"))
    assert not (tmp_path / "study").exists()


def test_a_study_folder_is_resumed_only_by_the_same_study(tmp_path, configs_dir):
    """Finished runs are skipped on resume, so a rerun with a config that changes what a run gives is refused before
    anything is written; more seeds, other methods or another device may resume the folder."""
    from mdm.common.config_io import dump
    from mdm.common.errors import ConfigError
    from mdm.study.sweep import check_same_study, run_benchmark

    def config(*extra):
        return load(os.path.join(configs_dir, "bench_demo.yaml"), MINI + [f"bench.out_dir={tmp_path}", *extra])

    dump(config(), tmp_path / "config.yaml")
    check_same_study(config("bench.seeds=[0,1,2]", "bench.methods=[mdm]", "train.log_every=7"), tmp_path)
    with pytest.raises(ConfigError, match=r"seg.max_epochs = 1, this one has 2; its finished runs would be mixed"):
        run_benchmark(config("seg.max_epochs=2"), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"and 1 more key"):
        check_same_study(config("seg.max_epochs=2", "bench.pretrain_steps=6"), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_the_demo_segments_new_images_and_prints_the_time_of_each_phase(tmp_path, configs_dir, capsys):
    from mdm.cli import demo_main

    sets = [a for o in MINI + ["bench.methods=[mdm]", "bench.fractions=[0.1]", "bench.budget_methods=[]"]
            for a in ("--set", o)]
    assert demo_main(["--config", os.path.join(configs_dir, "bench_demo.yaml"), "--out", str(tmp_path), *sets]) == 0
    printed = capsys.readouterr().out
    assert "pretraining (pretrain_mdm)" in printed and "segmentation: mdm" in printed and "total" in printed
    assert len(list((tmp_path / "predict" / "overlays").iterdir())) == 3


def test_a_study_judges_its_exports_at_both_levels(tmp_path, configs_dir, tmp_path_factory):
    """``bench.image_methods``: the image level is a classification study in image_level/ that reads the study's own
    pretraining runs (and trains none), and results.md sets the levels side by side, each export against its level's
    random weights; a classification study cannot hold an image level."""
    from mdm.common.errors import ConfigError
    from mdm.study.levels import image_level_config
    from mdm.study.runs import run_one
    from mdm.study.sweep import run_benchmark

    cpu = torch.device("cpu")
    both = MINI + [f"bench.out_dir={tmp_path}", "bench.methods=[mdm,random]", "bench.fractions=[0.5]",
                   "bench.budget_methods=[]", "bench.image_methods=[mdm-linear,random-linear]",
                   "bench.image_window=16", "probe.blocks=[d-1]", "probe.timesteps=[50]", "probe.image_size=32",
                   "probe.max_epochs=5", "probe.device=cpu"]
    # the pixel level chooses among blocks the image probe could: the middle block by name, a decoder block
    offered = ["seg.blocks=auto", "seg.sweep_blocks=[mid,-1]", "seg.timesteps=auto", "seg.auto_timesteps=[0]",
               "seg.auto_blocks=1", "seg.probe_steps=1"]
    cfg = load(os.path.join(configs_dir, "bench_demo.yaml"), both + offered)
    with pytest.raises(ConfigError, match="image_methods belong to segmentation studies"):
        image_level_config(load(os.path.join(configs_dir, "bench_cls_synthetic.yaml"),
                                [f"bench.out_dir={tmp_path}", "bench.image_methods=[mdm-linear]"]))
    with pytest.raises(ConfigError, match="judged against the random initial weights: add random-linear"):
        image_level_config(load(os.path.join(configs_dir, "bench_demo.yaml"),
                                both + ["bench.image_methods=[mdm-linear]"]))
    result = run_benchmark(cfg, cpu, cpu, log=lambda *_: None)
    image_dir = tmp_path / "image_level"
    assert not list(image_dir.glob("pretrain_*")) and sorted(p.name for p in tmp_path.glob("pretrain_*")) == \
        ["pretrain_mdm"]
    image_rows = list(csv.DictReader((image_dir / "results.csv").open()))
    assert [r["method"] for r in image_rows] == ["mdm-linear", "random-linear"]
    alone = run_one(image_level_config(cfg), "mdm-linear", 0.5, 0, tmp_path / "pretrain_mdm" / "export",
                    tmp_path_factory.mktemp("alone"), cpu)
    assert float(image_rows[0]["balanced_accuracy"]) == alone["balanced_accuracy"]  # the study's own export
    levels = list(csv.DictReader((tmp_path / "levels.csv").open()))
    assert [(r["export"], r["pixel_method"], r["image_method"]) for r in levels] == \
        [("mdm", "mdm", "mdm-linear"), ("random weights", "random", "random-linear")]
    mdm = levels[0]
    assert mdm["pixel_verdict"] in ("better", "worse", "tie") and mdm["image_verdict"] in ("better", "worse", "tie")
    assert mdm["levels"] == ("agree" if mdm["pixel_verdict"] == mdm["image_verdict"] else "differ")
    assert float(mdm["image_balanced_accuracy"]) == float(image_rows[0]["balanced_accuracy"])
    text = (tmp_path / "results.md").read_text()
    assert "## Both levels" in text and "| 0.5 | mdm | mdm |" in text and "| random weights | random |" in text
    assert (tmp_path / "levels.png").is_file() and result["image_level"]["verdicts"]
    chose = [r["pixel_features"] for r in levels]
    assert all(re.fullmatch(r"t=0 (mid|d\d) \(1 of 1\)", c) for c in chose), chose
    assert [r["image_features"] for r in levels] == ["", ""]  # probe.blocks given, not chosen
    assert f"| 0.5 | mdm | mdm | {chose[0]} | mdm-linear | as configured |" in text


def test_the_features_a_level_chose_are_its_most_frequent_choice():
    from mdm.study.levels import features_chosen

    runs = [{"timestep": 50, "blocks": [3, 4]}, {"timestep": 0, "blocks": ["mid"]},
            {"timestep": 50, "blocks": [3, 4]}]
    assert features_chosen(runs) == "t=50 d3 d4 (2 of 3)"
    assert features_chosen([{"timestep": "0", "blocks": ["e2", "mid"]}]) == "t=0 e2 mid (1 of 1)"
    assert features_chosen([]) == ""


def test_each_frozen_method_is_judged_against_the_random_weights_read_by_its_own_head():
    from mdm.study.levels import Level
    from mdm.study.methods import METHODS

    names = ["mdm", "mdm-mlp", "mdm-linear", "random-mlp", "random-linear"]
    level = Level({m: METHODS[m] for m in names}, [], "dice", {})
    assert [level.random(m) for m in names] == ["random-mlp", "random-mlp", "random-linear", "random-mlp",
                                                "random-linear"]  # the configured head: the first
