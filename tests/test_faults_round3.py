"""Faults and bad input, round 3: no test image reaches pretraining by any route, no user folder overwritten, every
write atomic."""

import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from helpers import tiny_config
from mdm.common.config_io import dump, load
from mdm.common.errors import ConfigError, DataError
from mdm.common.io import replace_dir, write_atomic
from mdm.pretrain.export import export_is_current, file_fingerprint
from mdm.pretrain.pools import ImageFolderDataset
from mdm.pretrain.trainer import train

REPO = os.path.join(os.path.dirname(__file__), "..")


def tissue_tiles(count: int) -> list[np.ndarray]:
    """``count`` 64 px RGB tiles of the histology photograph scikit-image ships (real texture, as JPEG sees it)."""
    from skimage import data

    rgb = data.immunohistochemistry()
    return [rgb[64 * (k // 8):64 * (k // 8) + 64, 64 * (k % 8):64 * (k % 8) + 64] for k in range(count)]


def test_a_test_image_saved_again_and_the_test_masks_never_reach_the_pool(tmp_path):
    """A JPEG re-save (quality 75) and a PNG re-save with other compression and metadata of a test image are
    excluded by what they show, as is a copy of a test mask saved again; another mask-like
    image is kept but counted and warned about; the other tiles stay."""
    tiles = tissue_tiles(6)
    test, pool = tmp_path / "test", tmp_path / "pool"
    (test / "images").mkdir(parents=True)
    (test / "masks").mkdir()
    pool.mkdir()
    Image.fromarray(tiles[0]).save(test / "images" / "t0.png")
    mask = (tiles[0][..., 0] < 128).astype(np.uint8)
    Image.fromarray(mask).save(test / "masks" / "t0.png")
    Image.fromarray(tiles[0]).save(pool / "resaved.jpg", quality=75)
    info = PngInfo()
    info.add_text("Comment", "exported again")
    Image.fromarray(tiles[0]).save(pool / "recompressed.png", compress_level=0, pnginfo=info)
    Image.fromarray(mask).save(pool / "copied_mask.png", compress_level=1)  # other bytes, the same picture
    Image.fromarray((tiles[1][..., 1] > 100).astype(np.uint8) * 255).save(pool / "other_mask.png")
    for k in range(2, 6):
        Image.fromarray(tiles[k]).save(pool / f"tile{k}.png")
    with pytest.warns(UserWarning, match=r"1 image\(s\) of the pool look like label masks .*other_mask.png"):
        ds = ImageFolderDataset([str(pool)], crop_size=32, exclude=[str(test / "images"), str(test / "masks")])
    assert sorted(p.name for p in ds.files) == ["other_mask.png", "tile2.png", "tile3.png", "tile4.png", "tile5.png"]
    # none of the three has a test file's bytes: all three are excluded by picture
    assert ds.record["excluded"] == 3 and ds.record["excluded_same_picture"] == 3 and ds.record["mask_like"] == 1


def test_a_study_refuses_a_copied_in_pretraining_run_of_another_recipe(tmp_path, configs_dir):
    from mdm.study.pool import pretraining_data
    from mdm.study.sweep import pretrain_if_needed

    cfg = tiny_config(configs_dir, tmp_path / "unused", "bench.pretrain_steps=2", "bench.budget_exports=1")
    pool = pretraining_data(cfg)
    run = tmp_path / "study" / "pretrain_mdm"
    (run / "exports" / "step_2").mkdir(parents=True)
    other = replace(cfg, data=pool, train=replace(cfg.train, lr=cfg.train.lr * 10))
    dump(other, run / "config.yaml")

    def no_training(message):
        assert not message.startswith("pretraining"), message

    with pytest.raises(ConfigError, match=r"pretrain_mdm: was pretrained with train.lr = 0.01, this run has 0.001"):
        pretrain_if_needed(cfg, "mdm", pool, run, torch.device("cpu"), log=no_training)
    dump(replace(cfg, data=pool, train=replace(cfg.train, max_steps=99, log_every=7)), run / "config.yaml")
    assert pretrain_if_needed(cfg, "mdm", pool, run, torch.device("cpu"), log=no_training) == run  # same weights


def test_a_study_resumed_after_a_kill_between_the_two_exports_scores_the_last_one(tmp_path, configs_dir,
                                                                                   pretrained_export):
    """Killed after ``exports/step_N`` was written and before ``export/`` was replaced by it: ``export/`` still holds
    an older export (here: other weights); the resumed study puts step N's in place instead of scoring the old."""
    from mdm.study.sweep import pretrain_if_needed

    cfg = tiny_config(configs_dir, tmp_path / "unused", "bench.pretrain_steps=150", "bench.budget_exports=1")
    run = tmp_path / "pretrain_mdm"
    shutil.copytree(pretrained_export, run / "exports" / "step_150")
    shutil.copytree(pretrained_export, run / "export")
    stale = run / "export" / "unet.safetensors"
    stale.write_bytes(stale.read_bytes()[:-4] + b"\0\0\0\0")
    assert not export_is_current(run, 150)
    said = []
    pretrain_if_needed(cfg, "mdm", cfg.data, run, torch.device("cpu"), log=said.append)
    assert export_is_current(run, 150) and "replaced by exports/step_150" in said[0]


def test_train_refuses_an_out_folder_of_other_files_and_leaves_them(tmp_path, configs_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my notes\n")
    (out / "thesis.tex").write_text("\\section{}\n")
    with pytest.raises(DataError, match=r"mine: holds files a pretraining run does not write \(thesis.tex\)"):
        train(tiny_config(configs_dir, out, "train.max_steps=1"))
    assert (out / "config.yaml").read_text() == "my notes\n" and sorted(os.listdir(out)) == ["config.yaml",
                                                                                           "thesis.tex"]


def test_an_empty_config_file_is_named_as_empty(tmp_path):
    (tmp_path / "config.yaml").write_text("\n")
    with pytest.raises(ConfigError, match=r"config.yaml: empty \(a YAML config was expected"):
        load(tmp_path / "config.yaml")


def test_a_folder_replacement_killed_between_its_renames_is_restored(tmp_path):
    final = tmp_path / "export"
    old = tmp_path / ".export.old"
    old.mkdir()
    (old / "unet.safetensors").write_text("previous")  # what a kill after the first rename leaves
    new = tmp_path / "new"
    new.mkdir()
    (new / "unet.safetensors").write_text("next")
    replace_dir(new, final)
    assert (final / "unet.safetensors").read_text() == "next" and not old.exists()


def test_an_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["figure.png"]


def test_the_weights_fingerprint_sees_a_change_in_the_middle_of_a_large_file(tmp_path):
    path = tmp_path / "unet.safetensors"
    blob = bytearray(np.random.default_rng(0).integers(0, 255, 5 << 20, dtype=np.uint8).tobytes())
    path.write_bytes(blob)
    before = file_fingerprint(path)
    blob[len(blob) // 2] ^= 1
    path.write_bytes(blob)
    os.utime(path, ns=(1, 1))  # another modification time: not a cached digest
    assert file_fingerprint(path) != before


def test_the_skimage_dataset_script_refuses_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_skimage_dataset.py"), str(mine)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "is not a folder this script made" in done.stderr
    assert (mine / "notes.txt").read_text() == "keep me"


def test_each_jpeg_resave_is_the_same_picture_as_its_own_tile_only(tmp_path):
    """16 tiles of one slide re-saved as JPEG (quality 75): each matches its own PNG and no earlier tile."""
    from mdm.common.io import load_image
    from mdm.common.pictures import PictureIndex

    def decoded(k, array, **save):
        path = tmp_path / f"{k}.{save['format'].lower()}"
        Image.fromarray(array).save(path, **save)
        return load_image(path)

    tiles = tissue_tiles(16)
    index = PictureIndex((str(k), decoded(k, t, format="PNG")) for k, t in enumerate(tiles))
    assert [index.match(decoded(k, t, format="JPEG", quality=75)) for k, t in enumerate(tiles)] == \
        [str(k) for k in range(16)]


def _tree(root, layout):
    """``{"train/cat/a.png": value}`` -> small grey PNGs of that value."""
    for rel, value in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 12), (value, value, value)).save(root / rel)


def test_class_folders_refuse_what_would_mislabel_and_skip_hidden_folders(tmp_path):
    from mdm.classify.datasets import open_class_split

    base = {"train/cat/a.png": 10, "train/dog/b.png": 200, "test/dog/c.png": 90}

    def opened(extra, split="train", name="case"):
        root = tmp_path / name
        _tree(root, {**base, **extra})
        return open_class_split("class_folders", str(root), split)

    train = opened({"train/.ipynb_checkpoints/x.png": 5, "train/cat/.hidden/y.png": 6}, name="hidden")
    assert train.class_names == ["cat", "dog"] and train.names == ["cat/a", "dog/b"]
    cases = [({"train/loose.png": 3}, "train", r"1 image\(s\) lie directly in the training folder \(loose.png\)"),
             ({"test/loose.png": 3}, "test", r"lie directly in the test folder"),
             ({"train/cat/masks/a.png": 1}, "train", r"a label file inside class folder 'cat'"),
             ({"train/cat/a.bmp": 11}, "train", r"two images named 'cat/a'"),
             ({"test/cat/x.png": 3, "test/cafe\u0301/y.png": 4, "test/caf\u00e9/z.png": 5}, "test",
              r"the same class name as .* in another Unicode form")]
    for k, (extra, split, message) in enumerate(cases):
        with pytest.raises(DataError, match=message):
            opened(extra, split, name=f"case{k}")
    root = tmp_path / "one"
    _tree(root, {"train/cat/a.png": 1, "test/cat/b.png": 2})
    with pytest.raises(DataError, match=r"1 class folder\(s\) \(cat\); classification needs at least 2"):
        open_class_split("class_folders", str(root), "train")
    root = tmp_path / "link"
    _tree(root, base)
    (root / "train" / "all").symlink_to(root / "train", target_is_directory=True)
    with pytest.raises(DataError, match=r"all: leads back to"):
        open_class_split("class_folders", str(root), "train")


def test_a_test_class_named_in_another_unicode_form_is_the_training_class(tmp_path):
    from mdm.classify.datasets import open_class_split

    _tree(tmp_path, {"train/caf\u00e9/a.png": 1, "train/tea/b.png": 2, "test/cafe\u0301/c.png": 3})
    assert open_class_split("class_folders", str(tmp_path), "test").labels == [0]


def test_labels_that_cannot_cover_the_classes_and_a_knn_k_beyond_them_are_said():
    from mdm.classify.heads import fit_head
    from mdm.classify.splits import class_subset
    from mdm.common.config import ProbeConfig

    with pytest.warns(UserWarning, match=r"labels 1 image\(s\) for 4 classes: 3 class\(es\) have no labeled image"):
        assert len(class_subset([0, 1, 2, 3] * 5, 0.05, 0)) == 1
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.warns(UserWarning, match=r"probe.knn_k = 50 but only 6 labeled training image\(s\): k = 6"):
        fit_head("knn", x, y, x[:0], y[:0], 2, ProbeConfig(knn_k=50))


def test_validation_images_are_whole_patients_where_the_source_knows_them():
    from mdm.classify.splits import validation_images

    labels = [0, 1, 0, 1, 0, 1, 0, 1]
    groups = ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4"]
    for seed in range(5):
        val = validation_images(labels, 0.25, seed, groups)
        assert len(val) == 2 and groups[val[0]] == groups[val[1]]  # one whole patient, both classes kept in training
    assert validation_images(labels, 0.25, 0) == validation_images(labels, 0.25, 0, [])  # unknown: image by image


def test_a_classification_test_image_saved_again_from_training_is_warned_about(tmp_path):
    from mdm.classify.datasets import open_class_split
    from mdm.classify.run import warn_same_pictures

    tiles = tissue_tiles(3)
    for rel, k in (("train/a/0.png", 0), ("train/b/1.png", 1), ("test/b/2.png", 2)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(tiles[k]).save(tmp_path / rel)
    (tmp_path / "test" / "a").mkdir()
    Image.fromarray(tiles[1]).save(tmp_path / "test" / "a" / "again.jpg", quality=90)
    train, test = (open_class_split("class_folders", str(tmp_path), s) for s in ("train", "test"))
    with pytest.warns(UserWarning, match=r"test image 'a/again' is the same picture as the labeled training image "
                                         r"'b/1'") as caught:
        warn_same_pictures(train, test)
    assert len(caught) == 1
