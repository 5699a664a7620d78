import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import read_log, tiny_config
from mdm.common.errors import CheckpointError, DataError, TrainingError
from mdm.pretrain.export import load_export, save_export
from mdm.pretrain.pools import CountingSkips, ImageFolderDataset
from mdm.pretrain.sampler import StepBatchSampler
from mdm.pretrain.trainer import list_checkpoints, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resume_replays_the_same_losses(tmp_path, configs_dir):
    full = tiny_config(configs_dir, tmp_path / "full", "train.max_steps=6", "train.checkpoint_every=3")
    train(full)
    half = tiny_config(configs_dir, tmp_path / "half", "train.max_steps=3", "train.checkpoint_every=3")
    train(half)
    resumed = tiny_config(configs_dir, tmp_path / "half", "train.max_steps=6", "train.checkpoint_every=3")
    train(resumed, resume="latest")
    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "half")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    wa = load_export(tmp_path / "full" / "export")[0].state_dict()
    wb = load_export(tmp_path / "half" / "export")[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # EMA weights too
    assert sorted(os.listdir(tmp_path / "full" / "exports")) == ["step_0", "step_6"]


def test_a_non_finite_loss_stops_the_run_cleanly(tmp_path, configs_dir, monkeypatch):
    from mdm.pretrain.objectives import MaskedDiffusion

    cfg = tiny_config(configs_dir, tmp_path / "run", "train.max_steps=6", "train.checkpoint_every=2")
    real_loss = MaskedDiffusion.loss
    calls = {"n": 0}

    def poisoned(self, model, x0, keys, t=None):
        out = real_loss(self, model, x0, keys, t)
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th optimizer step (index 3)
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MaskedDiffusion, "loss", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss at step 3"):
        train(cfg)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["step"] == 2


def test_export_round_trip_is_strict(tmp_path, configs_dir):
    cfg = tiny_config(configs_dir, tmp_path)
    from mdm.nn.unet import build_unet

    model = build_unet(cfg.model)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    save_export(tmp_path / "e", cfg, model, model)
    loaded, loaded_cfg = load_export(tmp_path / "e")
    assert loaded_cfg == cfg
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    other = tiny_config(configs_dir, tmp_path, "model.model_channels=64")
    save_export(tmp_path / "bad", cfg, build_unet(other.model), model)  # weights of another architecture
    with pytest.raises(CheckpointError, match=r"unet.safetensors: weights do not match.*shape mismatches"):
        load_export(tmp_path / "bad")
    with pytest.raises(CheckpointError, match="config.yaml: not found"):
        load_export(tmp_path / "nothing")


def test_folder_errors_name_the_file(tmp_path):
    good = tmp_path / "imgs"
    good.mkdir()
    Image.new("RGB", (40, 40), (10, 20, 30)).save(good / "a.png")
    (good / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"broken.jpg: cannot read image"):
        ImageFolderDataset([str(good)], crop_size=32)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        ds = ImageFolderDataset([str(good)], crop_size=32, skip_unreadable=True)
    assert len(ds) == 1 and ds[(0, 1)][0].shape == (3, 32, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no images found"):
        ImageFolderDataset([str(tmp_path / "empty")], crop_size=32)
    with pytest.raises(DataError, match=r"a.png: 40x40 is smaller than the crop size 64"):
        ImageFolderDataset([str(good)], crop_size=64, skip_unreadable=True)


def test_exclude_drops_copies_of_test_images_by_content(tmp_path):
    pool, test = tmp_path / "pool", tmp_path / "test"
    (pool / "sub").mkdir(parents=True)
    test.mkdir()
    for i, name in enumerate(["x.png", "sub/y.tif", "z.bmp"]):
        Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(pool / name)
    shutil.copy(pool / "z.bmp", test / "renamed_copy.bmp")
    ds = ImageFolderDataset([str(pool)], crop_size=32, exclude=[str(test), str(pool / "x.png")])
    assert [p.name for p in ds.files] == ["y.tif"]


def test_ranks_and_accumulation_steps_split_each_step_without_overlap():
    kw = dict(num_items=10, global_batch=8, seed=0, start_step=0, max_steps=3)
    single = list(StepBatchSampler(accum_steps=1, world_size=1, rank=0, **kw))
    parts = [list(StepBatchSampler(accum_steps=2, world_size=2, rank=r, **kw)) for r in range(2)]
    for step in range(3):
        pieces = [parts[r][step * 2 + a] for a in range(2) for r in range(2)]
        merged = [item for piece in sorted(pieces, key=lambda p: single[step].index(p[0])) for item in piece]
        assert merged == single[step]
    resumed = list(StepBatchSampler(accum_steps=1, world_size=1, rank=0, **{**kw, "start_step": 2}))
    assert resumed == single[2:]


def test_a_folder_pool_decodes_each_file_once_across_runs(tmp_path, monkeypatch):
    """The first pool over a folder decodes every file (and writes the manifest); the next decodes none, then only
    the file that changed; a removed file leaves the manifest, and a same-picture copy of an excluded image is still
    excluded from what the manifest holds (re-saved as JPEG, so neither path nor hash matches)."""
    from mdm.pretrain import folder_manifest

    pool, test = tmp_path / "pool", tmp_path / "test"
    pool.mkdir()
    test.mkdir()
    rng = np.random.default_rng(0)

    def smooth(side):  # a picture with smooth shapes, as photographs have (JPEG keeps its thumbnail)
        return Image.fromarray(rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)

    for k in range(5):
        smooth(40).save(pool / f"{k}.png")
    shutil.copy(pool / "4.png", test / "t.png")
    Image.open(pool / "4.png").save(pool / "copy.jpg", quality=90)
    decoded = []
    real = folder_manifest.load_image
    monkeypatch.setattr(folder_manifest, "load_image", lambda path, mode: decoded.append(path.name) or real(path, mode))
    where = tmp_path / "m.csv"

    def build():
        decoded.clear()
        return ImageFolderDataset([str(pool)], crop_size=32, exclude=[str(test)], manifest=str(where))

    first = build()
    assert sorted(decoded) == ["0.png", "1.png", "2.png", "3.png", "4.png", "copy.jpg"]
    assert [p.name for p in first.files] == ["0.png", "1.png", "2.png", "3.png"]  # 4.png by hash, copy.jpg by picture
    assert first.record["excluded_same_picture"] == 1 and first.record["manifest_decoded"] == 6
    assert build().record["manifest_decoded"] == 0 and decoded == []
    smooth(48).save(pool / "2.png")
    (pool / "3.png").unlink()
    again = build()
    assert decoded == ["2.png"] and [p.name for p in again.files] == ["0.png", "1.png", "2.png"]
    rows = folder_manifest.read_manifest(where)
    assert len(rows) == 5 and rows[str(pool / "2.png")].width == 48
    other = tmp_path / "other"  # another pool with the same manifest keeps this one's rows, and the other way round
    other.mkdir()
    smooth(40).save(other / "o.png")
    ImageFolderDataset([str(other)], crop_size=32, manifest=str(where))
    assert len(folder_manifest.read_manifest(where)) == 6 and build().record["manifest_decoded"] == 0
    decoded.clear()
    ImageFolderDataset([str(pool)], crop_size=32, exclude=[str(test)], manifest=str(where), color_mode="L")
    assert len(decoded) == 5  # the same files in another colour mode: decoded again, not read as RGB rows
    (pool / "1.png").write_bytes(b"broken after the manifest was written")  # read in training, not at the start
    with pytest.raises(DataError, match=r"1.png: cannot read image.*changed after the pool's manifest"):
        again[(1, 7)]
    again.skip_unreadable = True
    with pytest.warns(UserWarning, match=r"skipping unreadable image \(read during training\): .*1.png"):
        stand_in = again[(1, 7)][0]
    assert torch.equal(stand_in, again[(2, 7)][0])  # the next file of the pool, with the same crop
    assert CountingSkips(again)[(1, 7)][2] == 1 and CountingSkips(again)[(0, 7)][2] == 0  # what the log counts
    where.write_text("path,size\nx,not a number\n")
    with pytest.raises(DataError, match=r"m.csv: not a pool manifest .*delete it"):
        build()
