"""The segmentation stage end to end on the synthetic source, on one shared tiny pretrained export."""

import json
import os

import pytest
import torch
from PIL import Image

from helpers import swap_record
from mdm.cli import seg_main
from mdm.common.config_io import load
from mdm.common.errors import CheckpointError
from mdm.common.tiling import Tile
from mdm.pretrain.export import load_export, open_export, save_export
from mdm.segment.features import FeatureExtractor
from mdm.segment.run import run_segmentation
from mdm.segment.segmenter import load_segmenter

CPU = torch.device("cpu")


def seg_config(configs_dir, *extra):
    return load(os.path.join(configs_dir, "seg_synthetic.yaml"),
                ["seg.ensemble_size=2", "seg.max_epochs=8", "seg.patience=3", *extra])


def segment(configs_dir, export, out, *extra):
    cfg = seg_config(configs_dir, *extra)
    return run_segmentation(cfg.seg, cfg.data, open_export(export), out, device=CPU, progress=False)


@pytest.fixture(scope="module")
def baseline(pretrained_export, tmp_path_factory, configs_dir):
    out = tmp_path_factory.mktemp("seg_baseline")
    return out, segment(configs_dir, pretrained_export, out)


def constant_dice(configs_dir):
    """Dice of predicting 'gland' everywhere, per test image, averaged."""
    from mdm.segment.datasets import load_split

    ds = load_split("synthetic", None, "test")
    scores = []
    for i in range(len(ds)):
        gt = ds[i].label == 1
        scores.append(2 * gt.sum().item() / (gt.numel() + gt.sum().item()))
    return sum(scores) / len(scores)


def test_ten_percent_labels_beat_a_constant_predictor_and_write_everything(baseline, configs_dir):
    out, result = baseline
    assert result["labeled_images"] == 2  # 10% of 20 labeled synthetic images
    assert result["dice"] > constant_dice(configs_dir) + 0.15, result["dice"]
    for name in ("metrics.json", "per_image.csv", "label_subset.json", "config.yaml",
                 "segmenter/ensemble.safetensors", "segmenter/export/unet.safetensors"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert {"dice", "iou", "miou", "object_f1", "object_dice", "object_hausdorff", "per_class_iou"} <= set(saved)
    assert len(list((out / "predictions").iterdir())) == 20 == len(list((out / "uncertainty").iterdir()))


@pytest.mark.parametrize("damage", ["zeroed", "shifted"])
def test_damaged_features_lower_the_score(baseline, pretrained_export, tmp_path, configs_dir, monkeypatch, damage):
    """Zeroed features, or features read a quarter tile away from their pixel, must cost Dice."""
    _, good = baseline
    real = FeatureExtractor.pixel_features

    def damaged(self, blocks, size, index=None, parts=None):
        if index is None:
            index = torch.arange(size * size)
        if damage == "zeroed":
            return torch.zeros_like(real(self, blocks, size, index, parts))
        ys, xs = torch.div(index, size, rounding_mode="floor"), index % size  # read a quarter tile away
        return real(self, blocks, size, ((ys + size // 4) % size) * size + (xs + size // 4) % size, parts)

    monkeypatch.setattr(FeatureExtractor, "pixel_features", damaged)
    result = segment(configs_dir, pretrained_export, tmp_path)
    assert result["dice"] < good["dice"] - 0.05, (damage, result["dice"], good["dice"])


def test_export_weights_really_load(pretrained_export, tmp_path):
    model, cfg = load_export(pretrained_export)
    image = torch.rand(3, 32, 32) * 2 - 1
    from mdm.pretrain.objectives import build_objective

    def features(m):
        ex = FeatureExtractor(m, build_objective(cfg.diffusion), [-1], [50], seed=0)
        return ex.pixel_features(ex.tile_blocks("x", image, 32, [Tile(0, 0)])[0], 32)

    same = features(load_export(pretrained_export)[0])
    assert torch.equal(features(model), same)  # seeded masks: the same image always gives the same features
    with torch.no_grad():
        model.output_blocks[-1][0].in_layers[2].weight.add_(0.1)
    save_export(tmp_path / "changed", cfg, model, model)
    assert not torch.allclose(features(load_export(tmp_path / "changed")[0]), same)


def test_predict_segments_new_images_of_odd_sizes(baseline, tmp_path):
    out, _ = baseline
    from mdm.common.synthetic import save_examples

    paths = save_examples(str(tmp_path / "new"), 2)
    assert seg_main(["predict", "--model", str(out), "--images", str(tmp_path / "new"), "--out",
                     str(tmp_path / "p"), "--device", "cpu"]) == 0
    assert all(side % 32 for side in Image.open(paths[1]).size)  # 89 x 65: no multiple of the 32 px tile
    for path in paths:
        size = Image.open(path).size
        name = os.path.basename(path)
        assert Image.open(tmp_path / "p" / "predictions" / name).size == size
        panel = Image.open(tmp_path / "p" / "overlays" / name)  # image | prediction | uncertainty, enlarged
        assert panel.width >= 3 * 256 and panel.height > 256
        assert Image.open(tmp_path / "p" / "uncertainty" / name).size == size
    assert load_segmenter(out, CPU).num_classes == 2
    # segmenter.yaml carries its format: one from another version is refused by name, one without the key is format 1
    import shutil

    import yaml

    copy = shutil.copytree(out / "segmenter", tmp_path / "copy")
    meta = yaml.safe_load((copy / "segmenter.yaml").read_text())
    assert meta["format"] == 1
    (copy / "segmenter.yaml").write_text(yaml.safe_dump({**meta, "format": 2}))
    with pytest.raises(CheckpointError, match="segmenter format 2, written by another version of mdm"):
        load_segmenter(copy, CPU)
    (copy / "segmenter.yaml").write_text(yaml.safe_dump({k: v for k, v in meta.items() if k != "format"}))
    assert load_segmenter(copy, CPU).num_classes == 2


def test_bad_checkpoint_and_config_give_one_line_errors(pretrained_export, tmp_path, configs_dir, capsys):
    cfg = os.path.join(configs_dir, "seg_synthetic.yaml")
    assert seg_main(["--config", cfg, "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "config.yaml: not found" in capsys.readouterr().err
    assert seg_main(["--config", cfg, "--checkpoint", str(pretrained_export), "--set", "seg.blocks=[40]"]) == 2
    assert "seg.blocks: no block 40 (the U-Net has e0..e" in capsys.readouterr().err
    assert seg_main(["--config", cfg, "--checkpoint", str(pretrained_export), "--set", "seg.blocks=[x1]"]) == 2
    assert "seg.blocks: 'x1' is not a decoder block number or a block name" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    assert seg_main(["predict", "--model", str(tmp_path / "images"), "--images", str(tmp_path / "images"),
                     "--out", str(tmp_path / "pred")]) == 2
    assert "segmenter.yaml: not found" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        load_segmenter(tmp_path, CPU)


def test_pixel_features_equal_upsampling_the_blocks():
    """Sampling selected pixels gives exactly what upsampling each block to the tile size would give there."""
    ex = FeatureExtractor.__new__(FeatureExtractor)
    ex.timesteps, ex.blocks, ex.device, ex.tile_norm, ex.context = [50], [0, 1], torch.device("cpu"), "none", "none"
    blocks = {"t50_b0": torch.randn(4, 8, 8).half(), "t50_b1": torch.randn(2, 16, 16).half()}
    full = torch.cat([torch.nn.functional.interpolate(blocks[k][None].float(), size=(32, 32), mode="bilinear",
                                                      align_corners=False)[0] for k in ("t50_b0", "t50_b1")])
    index = torch.tensor([0, 31, 32 * 5 + 7, 32 * 32 - 1])
    expected = full.flatten(1).T[index]
    assert torch.allclose(ex.pixel_features(blocks, 32, index), expected, atol=1e-5)
    assert ex.pixel_features(blocks, 32).shape == (32 * 32, 6)
    ex.context = "tile"  # each row then ends with every block's mean over the tile
    pooled = torch.cat([blocks[k].float().mean((1, 2)) for k in ("t50_b0", "t50_b1")])
    assert torch.allclose(ex.pixel_features(blocks, 32, index), torch.cat([expected, pooled.expand(4, 6)], 1),
                          atol=1e-5)


def test_balanced_pixels_split_a_tile_share_between_its_classes():
    from mdm.segment.pixel_stream import balanced_draw

    keep, labels = torch.arange(100), (torch.arange(100) >= 90).long()  # 90 of class 0, 10 of class 1
    g = torch.Generator().manual_seed(0)
    assert torch.bincount(labels[balanced_draw(keep, labels, 20, g)]).tolist() == [10, 10]
    assert torch.bincount(labels[balanced_draw(keep, labels, 40, g)]).tolist() == [20, 10]  # class 1 whole
    drawn = balanced_draw(keep, labels, 40, g)
    assert drawn.unique().numel() == drawn.numel() and bool((drawn[1:] > drawn[:-1]).all())


def test_dihedral_crops_keep_image_and_label_aligned():
    """Every crop's label must move with its image; dihedral crops use all 4 rotations, hflip crops none."""
    from mdm.segment.finetune import crop_batch

    g = torch.Generator().manual_seed(0)
    label = (torch.rand(40, 48, generator=g) < 0.5).long()
    image = torch.stack([label.float() * 2 - 1, torch.rand(40, 48, generator=g), torch.zeros(40, 48)])
    patches = {tuple(image[1, t:t + 16, s:s + 16].flatten().tolist()) for t in range(25) for s in range(33)}
    for augment, turns_expected in (("dihedral", {0, 1, 2, 3}), ("hflip", {0})):
        turns_seen = set()
        for key in range(4):
            x, y = crop_batch([image], [label], 16, 32, key, augment)
            assert torch.equal(y, (x[:, 0] > 0).long())  # the label is channel 0: alignment survives
            for crop in x[:, 1]:
                found = [k for k in range(4) for flip in (False, True)  # undo the rotation k, then the flip
                         if tuple((crop.rot90(-k, (0, 1)).flip(-1) if flip else crop.rot90(-k, (0, 1))).flatten()
                                  .tolist()) in patches]
                assert len(found) == 1  # each crop is exactly one transformed patch of the image
                turns_seen.add(found[0])
        assert turns_seen == turns_expected, augment


def test_validation_holds_out_whole_images_or_slides():
    from mdm.segment.datasets import load_split
    from mdm.segment.splits import split_labels, validation_roles

    ds = load_split("synthetic", None, "train")
    images = [ds[i] for i in range(len(ds))]  # 4 slides x 5 images
    roles = validation_roles(images, 0.15, seed=0)
    held = {im.slide for im in images if roles[im.name] == "validation"}
    assert len(held) == 1 and sum(r == "validation" for r in roles.values()) == 5  # one whole slide
    assert validation_roles(images, 0.15, seed=0) == roles and validation_roles(images, 0.15, seed=1) != roles
    one_slide = [im for im in images if im.slide == "s00"][:3]
    roles = validation_roles(one_slide, 0.15, seed=0)
    assert sorted(roles.values()) == ["train", "train", "validation"]  # by image within one slide
    assert set(validation_roles(images[:1], 0.15, seed=0).values()) == {"pixels"}
    assert set(validation_roles(images, 0.15, seed=0, split="pixels").values()) == {"pixels"}
    im = images[0]
    train, val = split_labels(im, 32, 0.15, 0, role="validation")
    assert (train == 255).all() and torch.equal(val[:64, :64], im.label)
    train, val = split_labels(im, 32, 0.15, 0, role="train")
    assert (val == 255).all() and torch.equal(train[:64, :64], im.label)


def test_the_run_records_its_validation_images(baseline):
    out, _ = baseline
    subset = json.loads((out / "label_subset.json").read_text())
    assert len(subset["names"]) == 2 and subset["validation_split"] == "images"
    assert len(subset["validation"]) == 1 and subset["validation"][0] in subset["names"]


def test_blocks_chosen_on_validation_never_see_a_test_image(pretrained_export, tmp_path, configs_dir, monkeypatch):
    """seg.blocks / seg.timesteps auto: the probes read the labeled training images only (every image the feature
    extractor has seen when the choice is made, and every image of the stream it chooses on, is one of them), the
    choice and its scores are saved, and the saved segmenter uses the chosen blocks."""
    from mdm.segment import run
    from mdm.segment.features import FeatureExtractor as Extractor

    seen, streamed = [], []
    real_tile_blocks, real_select = Extractor.tile_blocks, run.select_parts

    def spy_tile_blocks(self, name, *args, **kwargs):
        seen.append(name)
        return real_tile_blocks(self, name, *args, **kwargs)

    def spy_select(stream, *args, **kwargs):
        streamed.extend(im.name for im in stream.images)
        try:
            return real_select(stream, *args, **kwargs)
        finally:
            seen.append("<chosen>")  # every image read up to here, probing included, must be a labeled one

    from mdm.segment.pixel_heads import PIXEL_HEADS

    steps, real_fit = [], PIXEL_HEADS["pixel-mlp"].fit

    def counting_fit(mlp, train_batches, *args, **kwargs):
        def counted(epoch):
            for batch in train_batches(epoch):
                steps[-1] += 1
                yield batch
        steps.append(0)
        return real_fit(mlp, counted, *args, **kwargs)

    monkeypatch.setattr(Extractor, "tile_blocks", spy_tile_blocks)
    monkeypatch.setattr(run, "select_parts", spy_select)
    swap_record(monkeypatch, PIXEL_HEADS, "pixel-mlp", fit=counting_fit)  # the probes' head, then the ensemble's
    result = segment(configs_dir, pretrained_export, tmp_path / "auto", "seg.blocks=auto", "seg.timesteps=auto",
                     "seg.auto_timesteps=[10,50]", "seg.probe_steps=5", "seg.auto_blocks=2")
    # every probe takes about seg.probe_steps optimizer steps in whole epochs, not seg.probe_steps epochs (an
    # epoch here is 2 batches: 3 epochs = 6 steps; read as epochs, 5 would be 10 steps)
    assert len(steps) == 8 + 1 and all(5 <= n < 10 for n in steps[:8]), steps  # 8 probes, then the ensemble
    labeled = json.loads((tmp_path / "auto" / "label_subset.json").read_text())["names"]
    before_choice = seen[:seen.index("<chosen>")]
    assert before_choice and set(before_choice) <= set(labeled) and set(streamed) == set(labeled)
    selection = json.loads((tmp_path / "auto" / "block_selection.json").read_text())
    assert (tmp_path / "auto" / "block_selection.png").is_file()
    assert len(selection["blocks"]) == 2 and str(selection["timestep"]) in {"10", "50"}
    assert len(selection["scores"]["10"]) == len(selection["scores"]["50"]) == 4  # every decoder block, each t
    assert result["selection"]["blocks"] == selection["blocks"]
    saved = load(tmp_path / "auto" / "config.yaml")
    assert saved.seg.blocks == selection["blocks"] and saved.seg.timesteps == [selection["timestep"]]
    assert load_segmenter(tmp_path / "auto", CPU).extractor.blocks == selection["blocks"]


def test_pixel_heads_read_any_tap_and_choose_among_the_image_probes_candidates(pretrained_export, tmp_path,
                                                                               configs_dir):
    """`seg.sweep_blocks` offers the middle and encoder blocks by name beside decoder numbers: every one is
    probed, the chosen ones come back in the U-Net's order and the saved segmenter reads them again."""
    result = segment(configs_dir, pretrained_export, tmp_path / "taps", "seg.blocks=auto",
                     "seg.sweep_blocks=[d-1,mid,e1]", "seg.timesteps=auto", "seg.auto_timesteps=[0]",
                     "seg.probe_steps=1", "seg.auto_blocks=3", "seg.max_epochs=1")
    selection = json.loads((tmp_path / "taps" / "block_selection.json").read_text())
    assert list(selection["scores"]["0"]) == ["3", "mid", "e1"]  # probed in the order offered
    assert selection["blocks"] == ["e1", "mid", 3] == result["selection"]["blocks"]  # the forward pass's order
    segmenter = load_segmenter(tmp_path / "taps", CPU)
    model = segmenter.extractor.model
    assert segmenter.extractor.feature_dim == sum(model.tap_blocks()[t].channels for t in ("e1", "mid", "d3"))
    labels, _, _ = segmenter.predict("blank", torch.zeros(3, 32, 32))
    assert labels.shape == (32, 32)
    from mdm.common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"seg.sweep_blocks: no block 'e20' \(the U-Net has e0..e"):
        segment(configs_dir, pretrained_export, tmp_path / "bad", "seg.blocks=auto", "seg.sweep_blocks=[mid,e20]")


def test_the_feature_cache_tells_objectives_apart(pretrained_export, tmp_path):
    """Every objective's step-0 export holds the same weights; their features differ (masking vs noise), so the
    fingerprint that keys the feature cache must differ too."""
    import shutil

    from mdm.common.config_io import dump

    other = tmp_path / "ddpm_export"
    shutil.copytree(pretrained_export, other)
    cfg = load(other / "config.yaml")
    cfg.diffusion.objective = "ddpm"
    dump(cfg, other / "config.yaml")
    assert open_export(other).fingerprint() != open_export(pretrained_export).fingerprint()
    assert open_export(other).fingerprint() == open_export(other).fingerprint()


def test_an_export_reads_only_the_sections_that_describe_its_network(pretrained_export, tmp_path):
    """An export written by a version with other stage-2 or study keys still opens (and keys the same cache)."""
    import shutil

    import yaml

    old = tmp_path / "old_export"
    shutil.copytree(pretrained_export, old)
    data = yaml.safe_load((old / "config.yaml").read_text())
    data["seg"]["probe_epochs"] = 3  # a key this version no longer has
    data["bench"]["retired_key"] = 1
    (old / "config.yaml").write_text(yaml.safe_dump(data))
    assert open_export(old).config.model == open_export(pretrained_export).config.model
    assert open_export(old).fingerprint() == open_export(pretrained_export).fingerprint()
