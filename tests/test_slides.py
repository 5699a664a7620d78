"""The whole-slide pretraining pool (``pretrain/slides.py``) on small pyramidal TIFFs written with tifffile: tiles
at the asked resolution from inside tissue, keyed so a resume reads the same tiles, bad slides named, and a
2-process run killed and resumed giving the same losses."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_OVERRIDES, read_log, write_slide
from mdm.common.config_io import load
from mdm.common.errors import DataError
from mdm.pretrain.checkpoints import FILES
from mdm.pretrain.slides import SlideDataset
from mdm.pretrain.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Two slides with 0.5 microns per pixel (3 levels) and one without mpp tags; ``{name: tissue mask}``."""
    root = tmp_path_factory.mktemp("slides")
    tissue = {}
    for name, seed, mpp in (("a.tif", 0, 0.5), ("b.tif", 1, 0.5), ("c.tif", 2, 0.0)):
        tissue[name] = write_slide(root / name, seed=seed, mpp=mpp)[1]
    return root, tissue


def test_tiles_come_from_tissue_at_the_asked_resolution_and_replay(slides, tmp_path):
    root, tissue = slides
    ds = SlideDataset([str(root / "a.tif"), str(root / "b.tif")], 32, mpp=1.5, manifest=str(tmp_path / "m.csv"))
    first = ds.record["per_slide"][0]
    # 1.5 microns per pixel on a 0.5-mpp slide: 3 level-0 px a tile px, read from level 1 (2x) and resized
    assert (first["level"], first["downsample"], first["read_side"]) == (1, 2.0, 48)
    assert 0.3 < first["tissue_share"] < 0.45  # the ellipse holds ~0.39 of the slide; Otsu finds it
    area = int(tissue["a.tif"].sum())  # the ellipse the fixture painted, in level-0 px
    assert abs(first["tissue_level0_px"] - area) < 0.15 * area and abs(first["tiles_available"] - area / 96 ** 2) <= 2
    assert len(ds) == sum(s["tiles_available"] for s in ds.record["per_slide"])
    for index, key in [(0, 11), (5, 12), (len(ds) - 1, 13), (40, 14)]:
        plan, (x, y) = ds.tile(index, key)
        inside = tissue[os.path.basename(plan.path)][y:y + 96, x:x + 96]
        assert inside.shape == (96, 96) and inside.mean() > 0.3  # data.tissue_min 0.5 of a thumbnail-cell window
        image, got = ds[(index, key)]
        assert image.shape == (3, 32, 32) and got == key
    again = SlideDataset([str(root / "a.tif"), str(root / "b.tif")], 32, mpp=1.5, manifest=str(tmp_path / "m.csv"))
    assert again.record["manifest_read"] == 0  # hashed once, then read from the manifest
    assert all(torch.equal(ds[(i, 100 + i)][0], again[(i, 100 + i)][0]) for i in range(0, len(ds), 7))
    level0 = SlideDataset([str(root / "a.tif")], 32, mpp=0.5, manifest=str(tmp_path / "m.csv"))
    assert (level0.record["per_slide"][0]["level"], level0.record["per_slide"][0]["read_side"]) == (0, 32)


def test_a_slide_without_mpp_or_unreadable_is_named_and_can_be_skipped(slides, tmp_path):
    root, _ = slides
    with pytest.raises(DataError, match=r"c\.tif: no microns per pixel in its metadata; set data.mpp=0"):
        SlideDataset([str(root)], 32, mpp=1.0, manifest=str(tmp_path / "m.csv"))
    by_level = SlideDataset([str(root)], 32, level=2, manifest=str(tmp_path / "m.csv"))  # without mpp: a level
    assert [s["level"] for s in by_level.record["per_slide"]] == [2, 2, 2]
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "d.svs").write_bytes((root / "a.tif").read_bytes()[:2000])  # cut short, as a failed copy
    with pytest.raises(DataError, match=r"d\.svs: cannot be read as a slide"):
        SlideDataset([str(broken)], 32, level=1, manifest=str(tmp_path / "m.csv"))
    with pytest.warns(UserWarning, match="skipping slide .*d.svs"):
        ds = SlideDataset([str(broken)], 32, level=1, skip_unreadable=True, manifest=str(tmp_path / "m.csv"))
    assert ds.record["unreadable_skipped"] == 1 and ds.record["slides"] == 3
    # a copy of a slide named by data.exclude is left out by content, whatever its name
    shutil.copy(root / "b.tif", tmp_path / "held_out.tif")
    kept = SlideDataset([str(root)], 32, level=1, exclude=[str(tmp_path / "held_out.tif")],
                        manifest=str(tmp_path / "m.csv"))
    assert kept.record["excluded_files"] == [str(root / "b.tif")] and kept.record["slides"] == 2
    glass = tmp_path / "glass"
    glass.mkdir()
    write_slide(glass / "empty.tif", seed=3)
    Image.fromarray(np.full((300, 300, 3), 240, np.uint8)).save(glass / "blank.tif")
    with pytest.warns(UserWarning, match="1 slide\\(s\\) without a tile"):
        only = SlideDataset([str(glass)], 32, level=0, manifest=str(tmp_path / "m.csv"))
    assert only.record["without_tissue_files"] == [str(glass / "blank.tif")]


@pytest.mark.slow
def test_two_processes_killed_and_resumed_give_the_same_losses(slides, tmp_path, configs_dir):
    """torchrun with 2 CPU ranks (gloo) over the slides, killed (SIGKILL) while writing its second checkpoint and
    resumed: the same losses as the run that was not killed. One set of logs, exports and checkpoints (rank 0), and
    the ranks see different halves of each global batch, so step 1 has the loss of a 1-process run. The run folder
    has pool.json and tissue.png."""
    root, _ = slides
    overrides = [*TINY_OVERRIDES, "data.source=slides", f"data.root=[{root / 'a.tif'},{root / 'b.tif'}]",
                 "data.mpp=1.0", f"data.manifest={tmp_path / 'pool.csv'}", "train.max_steps=6",
                 "train.checkpoint_every=3"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}

    def launch(out, *extra, kill=""):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               os.path.join(ROOT, "train.py"), "--config", os.path.join(configs_dir, "tiny.yaml"), "--out", str(out),
               *[a for o in overrides for a in ("--set", o)], *extra]
        return subprocess.run(cmd, env={**env, "MDM_KILL_AT": kill}, capture_output=True, text=True, timeout=300)

    full = launch(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    assert "processes: 2" in full.stdout
    assert sorted(os.listdir(tmp_path / "full" / "exports")) == ["step_0", "step_6"]
    assert sorted(os.listdir(tmp_path / "full" / "checkpoints" / "step_6")) == sorted(FILES)
    train(load(os.path.join(configs_dir, "tiny.yaml"), [*overrides, "train.max_steps=1",
                                                        f"train.out_dir={tmp_path / 'single'}"]))
    assert read_log(tmp_path / "full")[0]["loss"] == pytest.approx(read_log(tmp_path / "single")[0]["loss"], rel=1e-5)
    killed = launch(tmp_path / "run", kill="checkpoint written:2")
    assert killed.returncode != 0 and not (tmp_path / "run" / "checkpoints" / "step_6").exists()
    resumed = launch(tmp_path / "run", "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "run")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    pool = json.loads((tmp_path / "run" / "pool.json").read_text())
    assert pool["slides"] == 2 and [s["level"] for s in pool["per_slide"]] == [1, 1]
    assert Image.open(tmp_path / "run" / "tissue.png").size[0] > 0


def test_openslide_reads_the_same_tiles_as_tiffslide(slides, tmp_path):
    """``data.slide_reader: openslide`` (OpenSlide through openslide-bin): the same tissue, the same tile places and,
    at level 0, the same pixels (OpenSlide does not read tifffile's SubIFD pyramids: it sees level 0 only)."""
    pytest.importorskip("openslide")
    root, _ = slides
    kw = dict(roots=[str(root / "a.tif")], crop_size=32, mpp=0.5, manifest=str(tmp_path / "m.csv"))
    by_tiffslide, by_openslide = SlideDataset(**kw), SlideDataset(**kw, reader="openslide")
    a, b = by_tiffslide.record["per_slide"][0], by_openslide.record["per_slide"][0]
    assert a == b
    for item in [(0, 1), (3, 2), (20, 3)]:
        assert by_tiffslide.tile(*item)[1] == by_openslide.tile(*item)[1]
        assert torch.equal(by_tiffslide[item][0], by_openslide[item][0])


def test_an_unreadable_tile_in_training_is_named_or_stood_in_for_and_an_epoch_is_capped(slides, tmp_path, monkeypatch):
    from mdm.pretrain import slides as slide_pool

    root, _ = slides
    ds = SlideDataset([str(root / "a.tif"), str(root / "b.tif")], 32, level=1, manifest=str(tmp_path / "m.csv"))
    first = ds[(0, 9)][0]
    broken = ds._slide(str(root / "a.tif"))
    monkeypatch.setattr(broken, "read_region", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad JPEG tile")))
    with pytest.raises(DataError, match=r"a\.tif: cannot be read at .* bad JPEG tile"):
        ds[(0, 9)]
    ds.skip_unreadable = True
    with pytest.warns(UserWarning, match="skipping unreadable tile"):
        stand_in = ds[(0, 9)][0]
    assert ds.skipped_in_training == 1 and not torch.equal(stand_in, first)
    b_index = len(ds) - 1  # the same key's tile of the next slide
    assert torch.equal(stand_in, ds[(b_index, 9)][0])
    monkeypatch.setattr(slide_pool, "EPOCH_CAP", 10)
    capped = SlideDataset([str(root / "a.tif"), str(root / "b.tif")], 32, level=1, manifest=str(tmp_path / "m.csv"))
    assert len(capped) == 10 and capped.ends[0] == 5  # two slides of about the same tissue: half each
