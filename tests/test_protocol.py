"""The reference protocol's choices as options (the loss, extraction masks, normalisation, the training rule), the
colour check, and the ablation that switches them one at a time."""

import csv
import json
import math
import os

import pytest
import torch

from helpers import read_log, tiny_config
from mdm.common.config_io import load
from mdm.pretrain.export import open_export
from mdm.pretrain.losses import gaussian_window, ssim_loss, ssim_ref_loss
from mdm.segment.features import FeatureExtractor, build_extractor
from mdm.segment.pixel_stream import PixelStream
from mdm.segment.run import open_splits, run_segmentation
from mdm.stage2.early_stopping import EarlyStopping

CPU = torch.device("cpu")


def test_ssim_ref_matches_the_formula_by_hand_on_a_4x4_case():
    """Zero padding, C1 = 0.01^2 and C2 = 0.03^2 on [-1, 1] values, mean(clamp(1 - map, 0, 1)) / 2, pixel by pixel."""
    x = torch.tensor([[0.9, -0.2, 0.4, -1.0], [0.1, 0.6, -0.7, 0.3], [-0.5, 0.8, 0.0, 0.2], [0.7, -0.3, 0.5, -0.9]])
    y = torch.tensor([[0.8, 0.1, -0.6, -0.4], [0.2, 0.5, -0.1, 0.9], [-0.8, 0.3, 0.6, -0.2], [0.4, 0.0, 0.7, -0.5]])
    g = gaussian_window(5, 1.5)
    w = [[float(g[i] * g[j]) for j in range(5)] for i in range(5)]

    def blur(img, r, c):  # the window over the zero-padded image, centred on (r, c)
        return sum(w[i][j] * float(img[r + i - 2, c + j - 2]) for i in range(5) for j in range(5)
                   if 0 <= r + i - 2 < 4 and 0 <= c + j - 2 < 4)

    c1, c2, total = 0.01 ** 2, 0.03 ** 2, 0.0
    for r in range(4):
        for c in range(4):
            mx, my = blur(x, r, c), blur(y, r, c)
            vx, vy, cov = blur(x * x, r, c) - mx ** 2, blur(y * y, r, c) - my ** 2, blur(x * y, r, c) - mx * my
            s = (2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
            total += min(max(1 - s, 0.0), 1.0)
    expected = total / 16 / 2
    assert ssim_ref_loss(y[None, None], x[None, None]).item() == pytest.approx(expected, rel=1e-5)


def test_a_colour_shift_costs_the_reference_ssim_far_more():
    """A flat tile whose mean is predicted 0.4 too low ([-1, 1] scale, straddling 0): the reference's luminance term
    turns negative and its clamped loss reaches its ceiling of 0.5 away from the zero-padded border; ours costs 0.07.
    A shift of 0.1 costs the reference 20 times what it costs ours."""
    target = torch.full((1, 3, 64, 64), 0.24)
    assert ssim_ref_loss(target - 0.4, target).item() > 0.45 and ssim_loss(target - 0.4, target).item() < 0.08
    assert ssim_ref_loss(target - 0.1, target).item() > 15 * ssim_loss(target - 0.1, target).item()
    assert ssim_ref_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)


def test_the_trainer_logs_the_colour_check(tmp_path, configs_dir):
    from mdm.pretrain.trainer import train

    train(tiny_config(configs_dir, tmp_path, "train.max_steps=2", "diffusion.loss=ssim_ref"))
    row = read_log(tmp_path)[-1]
    assert {"recon_error", "recon_bias_c0", "recon_bias_c1", "recon_bias_c2"} <= set(row)
    assert all(math.isfinite(row[k]) for k in ("recon_error", "recon_bias_c0", "recon_bias_c1", "recon_bias_c2"))


def test_the_colour_check_matches_a_hand_computation():
    """A reconstruction that shifts the three channels by +0.3, -0.1 and 0 where the model saw the pixel (and by 5
    where it did not: those pixels must not count): error (0.3 + 0.1 + 0) / 3, biases the shifts themselves."""
    from mdm.pretrain.objectives import Reconstruction
    from mdm.pretrain.previews import colour_check

    images = torch.rand(2, 3, 8, 8) * 2 - 1
    visible = torch.zeros(2, 1, 8, 8)
    visible[:, :, :4] = 1  # the top half seen
    shift = torch.tensor([0.3, -0.1, 0.0]).view(1, 3, 1, 1)

    class Shifting:
        timesteps = 1000

        def reconstruct(self, model, x0, t, keys):
            return Reconstruction(x0_pred=x0 + shift * visible + 5.0 * (1 - visible), visible=visible)

    out = colour_check(Shifting(), None, images, torch.zeros(2, dtype=torch.int64))
    assert out["recon_error"] == pytest.approx(0.4 / 3, abs=1e-6)
    assert [out[f"recon_bias_c{c}"] for c in range(3)] == pytest.approx([0.3, -0.1, 0.0], abs=1e-6)


@pytest.fixture(scope="module")
def stream_parts(pretrained_export, configs_dir):
    cfg = load(os.path.join(configs_dir, "seg_synthetic.yaml"), ["data.label_fraction=0.1", "seg.cache_dir="])
    return cfg, open_export(pretrained_export), open_splits(cfg.data)


def _stream(stream_parts, mask_draws, normalize="zscore"):
    cfg, export, splits = stream_parts
    seg = cfg.seg.__class__(**{**cfg.seg.__dict__, "normalize": normalize})
    return PixelStream(build_extractor(seg, export, CPU), splits.train_images, 32, 0.2, 0.1, 0, 0, 4096, 512,
                       splits.roles, mask_draws)


def test_per_epoch_masks_differ_between_epochs_and_repeat_for_a_rerun(stream_parts):
    index = torch.arange(32 * 32)
    per_epoch, again, fixed = _stream(stream_parts, 0), _stream(stream_parts, 0), _stream(stream_parts, None)
    first, second = (per_epoch.tile_features(0, index, per_epoch.draw(e)) for e in (0, 1))
    assert not torch.equal(first, second)
    assert torch.equal(second, again.tile_features(0, index, again.draw(1)))
    assert [fixed.draw(e) for e in range(3)] == [0, 0, 0]
    assert torch.equal(first, fixed.tile_features(0, index, fixed.draw(5)))  # draw 0 is the fixed mask
    cycled = _stream(stream_parts, 2)
    assert [cycled.draw(e) for e in range(5)] == [0, 1, 0, 1, 0]


def test_l2_image_on_a_two_pixel_case():
    """One block of 1 channel at the tile's own 2x2 size holding 3 and 4 on its diagonal: the tile's feature tensor
    has norm 5, so its two non-zero pixels get 0.6 and 0.8."""
    ex = FeatureExtractor.__new__(FeatureExtractor)
    ex.timesteps, ex.blocks, ex.device, ex.tile_norm, ex.context = [50], [0], CPU, "l2_image", "none"
    blocks = {"t50_b0": torch.tensor([[[3.0, 0.0], [0.0, 4.0]]]).half(), "sq_t50_b0": torch.tensor(25.0)}
    assert ex.pixel_features(blocks, 2).flatten().tolist() == pytest.approx([0.6, 0.0, 0.0, 0.8])
    ex.tile_norm = "rms_image"  # the same times sqrt(4 pixels x 1 channel)
    assert ex.pixel_features(blocks, 2).flatten().tolist() == pytest.approx([1.2, 0.0, 0.0, 1.6])


def test_l2_image_gives_every_tile_unit_norm(stream_parts):
    """The squared norms kept at extraction are those of the upsampled blocks: all of a tile's pixel features
    together have norm 1."""
    stream = _stream(stream_parts, None, "l2_image")
    for i in (0, 5):
        assert stream.tile_features(i, torch.arange(32 * 32)).norm().item() == pytest.approx(1.0, rel=1e-3)


def test_stopping_waits_for_min_epochs():
    states = iter(range(100))
    stop = EarlyStopping(lambda: next(states), lambda s: None, patience=2, min_epochs=6)
    losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99]  # best at epoch 1, nothing better after
    stopped = [stop.update(e, v) for e, v in enumerate(losses)]
    assert stopped == [False, False, False, False, False, True, True]  # patience met at epoch 3, allowed from 6
    assert stop.restore()["best_epoch"] == 1


def test_the_reference_protocol_runs_and_trains_on_every_labeled_image(pretrained_export, tmp_path, configs_dir):
    """``data.val_split: none`` (every labeled image trains, the training loss stops), per-epoch masks, l2_image and
    min_epochs together, as configs/seg_glas_paper.yaml sets them."""
    cfg = load(os.path.join(configs_dir, "seg_synthetic.yaml"),
               ["data.label_fraction=0.1", "data.val_split=none", "seg.extract_masks=per_epoch",
                "seg.normalize=l2_image", "seg.min_epochs=4", "seg.patience=1", "seg.max_epochs=6",
                "seg.ensemble_size=2", "seg.combine=individual", "seg.blocks=[0,1,2]", "seg.cache_dir="])
    result = run_segmentation(cfg.seg, cfg.data, open_export(pretrained_export), tmp_path / "run", device=CPU,
                              progress=False)
    subset = json.loads((tmp_path / "run" / "label_subset.json").read_text())
    assert subset["validation"] == [] and subset["validation_pixels_of"] == []
    assert all(m["epochs"] >= 4 and math.isfinite(m["best_val_loss"]) for m in result["members"])
    assert 0 <= result["dice"] <= 1 and "member_dice_mean" in result


def test_blocks_auto_needs_held_out_pixels(configs_dir):
    from mdm.common.errors import ConfigError

    with pytest.raises(ConfigError, match="data.val_split: none"):
        load(os.path.join(configs_dir, "bench_synthetic.yaml"), ["data.val_split=none"])


def test_a_normalize_flag_of_an_older_save_reads_as_its_name():
    assert load(None, ["seg.normalize=true"]).seg.normalize == "zscore"
    assert load(None, ["seg.normalize=false"]).seg.normalize == "none"


def test_budget_steps_are_spaced_as_asked():
    from mdm.study.budget import budget_steps

    assert budget_steps(1000, 4, "linear") == [250, 500, 750, 1000]
    assert budget_steps(1000, 3, "linear") == [333, 666, 999, 1000]
    assert budget_steps(1600, 5, "log") == [100, 200, 400, 800, 1600]


MINI = ["model.image_size=32", "model.channel_mult=[1,1]", "model.attention_resolutions=[8]",
        "data.synthetic_images=16", "data.crop_size=32", "data.val_fraction=0.2", "train.batch_size=4",
        "train.log_every=2", "train.image_every=0", "seg.ensemble_size=1", "seg.max_epochs=1", "seg.patience=1",
        "bench.fractions=[0.1]", "bench.seeds=[0]", "bench.methods=[mdm,ddpm,random]", "bench.pretrain_steps=4",
        "bench.budget_exports=2", "bench.budget_methods=[]", "train.device=cpu", "seg.device=cpu"]


def test_an_ablation_shares_pretraining_where_a_variant_leaves_it_alone(tmp_path, configs_dir):
    from mdm.study.sweep import run_benchmark

    variants = ("bench.variants=[{name: ours}, {name: l2, set: [seg.normalize=l2_image, data.val_split=pixels]}, "
                "{name: loss, set: [diffusion.loss=ssim_ref]}, {name: both, set: [diffusion.loss=ssim_ref, "
                "seg.normalize=l2_image]}]")
    cfg = load(os.path.join(configs_dir, "bench_demo.yaml"), MINI + [variants, f"bench.out_dir={tmp_path}"])
    result = run_benchmark(cfg, CPU, CPU, log=lambda *_: None)
    pretrained = sorted(p.name for p in tmp_path.glob("pretrain_*") if p.is_dir())
    assert pretrained == ["pretrain_ddpm", "pretrain_mdm", "pretrain_mdm_loss"]  # ddpm never pretrains twice
    assert load(tmp_path / "pretrain_mdm_loss" / "config.yaml").diffusion.loss == "ssim_ref"
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 4 * 3 and {r["variant"] for r in rows} == {"ours", "l2", "loss", "both"}
    ours = {r["method"]: r["dice"] for r in rows if r["variant"] == "ours"}
    loss = {r["method"]: r["dice"] for r in rows if r["variant"] == "loss"}
    assert ours["ddpm"] == loss["ddpm"]  # the same export and stage 2: the same run
    assert (tmp_path / "ablation.png").is_file() and "| both |" in result["table"]
    table = (tmp_path / "pretraining.md").read_text()
    assert "pretrain_mdm_loss | mdm | ssim_ref" in table and "recon error" in table
    renamed = load(os.path.join(configs_dir, "bench_demo.yaml"),
                   MINI + [variants.replace("{name: l2, set: [seg.normalize=l2_image, data.val_split=pixels]}",
                                            "{name: l2, set: [seg.normalize=none]}"), f"bench.out_dir={tmp_path}"])
    from mdm.common.errors import ConfigError

    with pytest.raises(ConfigError, match="variant 'l2'"):
        run_benchmark(renamed, CPU, CPU, log=lambda *_: None)
