"""Faults and bad input: interrupted runs recover or stop with a clear error, never with a silently different result;
checkpoint folders run no code; bad files and configs are one-line errors before anything is written."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import half_mask, make_generic, read_log, tiny_config
from mdm.cli import convert_main, seg_main, train_main
from mdm.common import faults
from mdm.common.errors import CheckpointError, ConfigError, DataError, TrainingError
from mdm.common.io import load_image
from mdm.pretrain.export import load_export
from mdm.pretrain.pools import ImageFolderDataset
from mdm.pretrain.trainer import list_checkpoints, train


class Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing in the code under test catches it."""


def kill_at(monkeypatch, point: str, occurrence: int = 1):
    """Make the run die the ``occurrence``-th time it reaches ``point``."""
    seen = {"n": 0}

    def hook(name):
        if name == point:
            seen["n"] += 1
            if seen["n"] == occurrence:
                raise Killed(point)

    monkeypatch.setattr(faults, "hook", hook)


def weights(export):
    return load_export(export)[0].state_dict()


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, configs_dir):
    run = tmp_path_factory.mktemp("full") / "run"
    train(tiny_config(configs_dir, run, "train.max_steps=4", "train.checkpoint_every=2"))
    return run


# ---- pretraining ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("point,occurrence", [("export written", 2), ("checkpoint written", 2),
                                              ("checkpoint written", 1)])
def test_a_killed_training_run_resumes_to_the_same_result(tmp_path, configs_dir, monkeypatch, uninterrupted,
                                                          point, occurrence):
    """Killed at each write of the run (the step-0 export is the 1st 'export written'), then resumed: the same
    export, the same losses, each step logged once, no temporary folder left."""
    cfg = tiny_config(configs_dir, tmp_path / "run", "train.max_steps=4", "train.checkpoint_every=2")
    kill_at(monkeypatch, point, occurrence)
    with pytest.raises(Killed):
        train(cfg)
    monkeypatch.undo()
    train(cfg, resume="latest" if list_checkpoints(tmp_path / "run") else None)
    assert same_weights(tmp_path / "run" / "export", uninterrupted / "export")
    assert same_weights(tmp_path / "run" / "exports" / "step_4", uninterrupted / "export")
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2, 3, 4]
    assert [r["loss"] for r in read_log(tmp_path / "run")] == [r["loss"] for r in read_log(uninterrupted)]
    left = [p for d in ("checkpoints", "exports", ".") for p in os.listdir(tmp_path / "run" / d) if p.endswith(".tmp")]
    assert not left


def test_a_last_checkpoint_without_its_export_gets_the_export_on_resume(tmp_path, configs_dir, uninterrupted):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    shutil.rmtree(run / "exports" / "step_4")
    shutil.rmtree(run / "export")
    shutil.copytree(run / "exports" / "step_0", run / "export")  # a stale export/ as the kill left it
    train(tiny_config(configs_dir, run, "train.max_steps=4", "train.checkpoint_every=2"), resume="latest")
    assert same_weights(run / "export", uninterrupted / "export")
    assert same_weights(run / "exports" / "step_4", uninterrupted / "export")


def test_a_diverging_run_stops_before_saving_diverged_weights(tmp_path, configs_dir, monkeypatch):
    """The U-Net's output turns NaN from its 6th forward call on (step 6 of a run that checkpoints every 2 steps):
    the checkpoints of steps 2 and 4 are kept and finite, nothing of step 6 or later is saved."""
    from safetensors.torch import load_file

    from mdm.nn.unet import UNetModel

    calls, forward = [], UNetModel.forward

    def diverging(self, *args, **kwargs):
        calls.append(1)
        out = forward(self, *args, **kwargs)
        return out * float("nan") if len(calls) > 5 and self.training else out

    monkeypatch.setattr(UNetModel, "forward", diverging)
    cfg = tiny_config(configs_dir, tmp_path / "run", "train.max_steps=40", "train.checkpoint_every=2",
                      "train.log_every=1", "train.image_every=1000")
    with pytest.raises(TrainingError, match=r"non-finite .* at step \d+"):
        train(cfg)
    kept = list_checkpoints(tmp_path / "run")
    assert kept and max(step for step, _ in kept) < 6
    for _, ckpt in kept:
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values())


def test_checkpoints_hold_no_pickles_and_a_poisoned_accelerate_folder_runs_nothing(tmp_path, configs_dir,
                                                                                      uninterrupted, capsys):
    (_, ckpt), = list_checkpoints(uninterrupted)[-1:]
    assert not [p for p in os.listdir(ckpt) if p.endswith((".pkl", ".bin", ".pt"))]
    poisoned = tmp_path / "run" / "checkpoints" / "step_2"
    poisoned.mkdir(parents=True)
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (poisoned / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload()))
    (poisoned / "trainer_state.json").write_text(json.dumps({"step": 2}))
    args = ["--config", os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml"),
            "--out", str(tmp_path / "run"), "--resume", "latest", "--set", "train.max_steps=4"]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pickle" in err and not marker.exists()


def test_a_truncated_newest_checkpoint_names_the_previous_intact_one(tmp_path, configs_dir, uninterrupted):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    newest = run / "checkpoints" / "step_4" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    cfg = tiny_config(configs_dir, run, "train.max_steps=6", "train.checkpoint_every=2")
    with pytest.raises(CheckpointError, match=r"step_4/model.safetensors: .*truncated.*--resume .*step_2"):
        train(cfg, resume="latest")
    train(cfg, resume=str(run / "checkpoints" / "step_2"))  # what the message says works


def test_resuming_with_another_architecture_is_one_line(tmp_path, configs_dir, uninterrupted, capsys):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    from helpers import TINY_OVERRIDES

    args = ["--config", os.path.join(configs_dir, "tiny.yaml"), "--out", str(run), "--resume", "latest",
            *[a for o in TINY_OVERRIDES + ["model.model_channels=64", "train.max_steps=6"] for a in ("--set", o)]]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "was trained with model.model_channels = 32, this run has 64" in err


@pytest.mark.parametrize("override,message", [("train.checkpoint_every=0", "train.checkpoint_every: must be positive"),
                                              ("train.log_every=-1", "train.log_every: must be positive"),
                                              ("bench.fractions=[0]", r"bench.fractions: 0.0 is not in \(0, 1\]")])
def test_intervals_must_be_positive(configs_dir, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(configs_dir, "unused", override)


def test_an_unwritable_run_folder_is_one_line(tmp_path, configs_dir, monkeypatch, capsys):
    """A write refused by the OS (read-only folder, full disk) ends the run with one line, exit code 2."""
    import mdm.pretrain.trainer as trainer

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "run" / "exports"))

    monkeypatch.setattr(trainer, "save_export", refuse)
    from helpers import TINY_OVERRIDES

    args = ["--config", os.path.join(configs_dir, "tiny.yaml"), "--out", str(tmp_path / "run"),
            *[a for o in TINY_OVERRIDES + ["train.max_steps=2"] for a in ("--set", o)]]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: [Errno 13] Permission denied") and "\n" not in err


# ---- pretraining images --------------------------------------------------------------------------------------------


def test_float_tiffs_load_scaled_and_nan_is_refused(tmp_path):
    ramp = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    Image.fromarray(ramp, mode="F").save(tmp_path / "unit.tif")
    image = load_image(tmp_path / "unit.tif")
    assert image.min() == -1 and image.max() == 1  # [0, 1] -> the full range, not a black image
    ramp[3, 3] = np.nan
    Image.fromarray(ramp, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="nan.tif: float image holds NaN"):
        load_image(tmp_path / "nan.tif")


def test_a_truncated_jpeg_is_found_before_the_run_and_can_be_skipped(tmp_path):
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "good.png")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cut.jpg", quality=95)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.jpg: cannot read image.*skip_unreadable"):
        ImageFolderDataset([str(tmp_path)], crop_size=32)
    with pytest.warns(UserWarning, match="skipping unreadable image .*cut.jpg"):
        ds = ImageFolderDataset([str(tmp_path)], crop_size=32, skip_unreadable=True)
    assert [f.name for f in ds.files] == ["good.png"]


# ---- the segmentation stage ----------------------------------------------------------------------------------------


def half(k, fg=1):
    return half_mask(32, fg)


def seg_args(configs_dir, root, out, *extra):
    sets = ["data.num_classes=2", f"data.root=[{root}]", "seg.ensemble_size=1", "seg.max_epochs=2",
            "seg.crops_per_epoch=8", "seg.batch_size=4", "seg.blocks=[-2,-1]", 'seg.cache_dir=""', "seg.device=cpu",
            *extra]
    return ["--config", os.path.join(configs_dir, "seg_generic.yaml"), "--out", str(out),
            *[a for s in sets for a in ("--set", s)]]


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
@pytest.mark.parametrize("mask,message", [
    (lambda k: np.full((32, 32), 255), "have no usable pixel: every pixel is 255"),
    (lambda k: half(k, 255), "only class 'class_0' occurs .* masks saved as 0/255"),
])
def test_labels_with_nothing_to_learn_stop_before_any_output(tmp_path, configs_dir, pretrained_export, capsys, mode,
                                                             mask, message):
    root = make_generic(tmp_path / "data", mask_of=mask)
    out = tmp_path / "out"
    args = seg_args(configs_dir, root, out, f"seg.mode={mode}") + ["--checkpoint", str(pretrained_export)]
    assert seg_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_a_killed_segmentation_run_leaves_the_previous_one_intact(tmp_path, configs_dir, pretrained_export,
                                                                  monkeypatch):
    root = make_generic(tmp_path / "data", mask_of=half)
    out = tmp_path / "out"
    base = seg_args(configs_dir, root, out) + ["--checkpoint", str(pretrained_export)]
    assert seg_main(base) == 0
    first = json.loads((out / "metrics.json").read_text())
    kill_at(monkeypatch, "segmenter saved")
    with pytest.raises(Killed):
        seg_main(base + ["--set", "seg.blocks=[-1]"])
    monkeypatch.undo()
    assert json.loads((out / "metrics.json").read_text()) == first  # the finished run, as it was
    assert "blocks:\n  - -2" in (out / "config.yaml").read_text()  # with its own config, not the killed one's
    assert (out / "segmenter" / "ensemble.safetensors").is_file()
    assert seg_main(base + ["--set", "seg.blocks=[-1]"]) == 0  # a rerun completes and replaces it
    assert "blocks:\n  - -1" in (out / "config.yaml").read_text()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_folder_with_other_files_is_not_replaced(tmp_path, configs_dir, pretrained_export, capsys):
    root = make_generic(tmp_path / "data", mask_of=half)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert seg_main(seg_args(configs_dir, root, tmp_path / "mine") + ["--checkpoint", str(pretrained_export)]) == 2
    assert "holds files a segmentation run does not write (thesis.tex)" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_damaged_weights_are_one_line_errors(tmp_path, configs_dir, pretrained_export, capsys):
    root = make_generic(tmp_path / "data", mask_of=half)
    export = tmp_path / "export"
    shutil.copytree(pretrained_export, export)
    weights_file = export / "unet.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:500])
    assert seg_main(seg_args(configs_dir, root, tmp_path / "o") + ["--checkpoint", str(export)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unet.safetensors: not a readable safetensors file" in err

    assert seg_main(seg_args(configs_dir, root, tmp_path / "run") + ["--checkpoint", str(pretrained_export)]) == 0
    ensemble = tmp_path / "run" / "segmenter" / "ensemble.safetensors"
    ensemble.write_bytes(ensemble.read_bytes()[:300])
    capsys.readouterr()
    assert seg_main(["predict", "--model", str(tmp_path / "run"), "--images", str(root / "test" / "images"),
                     "--out", str(tmp_path / "p"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ensemble.safetensors: not a readable safetensors file" in err


def test_predict_keeps_folders_apart_and_odd_names_work(tmp_path, configs_dir, pretrained_export):
    root = make_generic(tmp_path / "data", mask_of=half)
    assert seg_main(seg_args(configs_dir, root, tmp_path / "run") + ["--checkpoint", str(pretrained_export)]) == 0
    images = tmp_path / "images"
    for sub, colour in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
        (images / sub).mkdir(parents=True)
        Image.new("RGB", (40, 36), colour).save(images / sub / "x.png")
    Image.new("RGB", (40, 36), (9, 9, 9)).save(images / "..png", format="PNG")
    assert seg_main(["predict", "--model", str(tmp_path / "run"), "--images", str(images),
                     "--out", str(tmp_path / "p"), "--device", "cpu"]) == 0
    for name in ("a/x.png", "b/x.png", "..png"):
        assert Image.open(tmp_path / "p" / "predictions" / name).size == (40, 36), name
        assert (tmp_path / "p" / "overlays" / name).is_file()


def test_convert_names_a_refused_code_running_global(tmp_path, configs_dir, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"weights": Payload()}, tmp_path / "poison.pt")
    args = ["--checkpoint", str(tmp_path / "poison.pt"), "--config", os.path.join(configs_dir, "tiny.yaml"),
            "--out", str(tmp_path / "out")]
    assert convert_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds code" in err and "system" in err and "not a PyTorch checkpoint" not in err
