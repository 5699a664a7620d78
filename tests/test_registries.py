"""A new objective, fine-tuning network, loss, classification head or study method is one piece of code plus one
registration: a toy of each, registered from this file alone, goes through config validation, pretraining (or the
objective's loss, or the head's fit), segmentation and a study."""

import csv
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import read_log
from mdm.common import rng
from mdm.common.config_io import load
from mdm.common.errors import ConfigError
from mdm.common.rng import Stream
from mdm.pretrain.objectives import OBJECTIVES, ObjectiveOutput, ObjectiveSpec, Reconstruction
from mdm.segment.finetune import NETWORKS, Network
from mdm.study.methods import METHODS, Method


class Blur:
    """A toy objective: blur the image by t / T (a 3x3 box filter blended in), predict the clean image, MSE."""

    def __init__(self, timesteps: int):
        self.timesteps = timesteps

    def sample_t(self, keys):
        return rng.randint(keys, Stream.TIMESTEP, 1, self.timesteps + 1)

    def model_timesteps(self, t):
        return t

    def corrupt(self, x0, t, keys):
        w = (t.float() / self.timesteps).view(-1, 1, 1, 1).to(x0)
        return x0 * (1 - w) + F.avg_pool2d(x0, 3, 1, 1) * w, None

    def reconstruct(self, model, x0, t, keys):
        return Reconstruction(model(self.corrupt(x0, t, keys)[0], t), torch.ones_like(x0[:, :1]))

    def loss(self, model, x0, keys, t=None):
        t = self.sample_t(keys).to(x0.device) if t is None else t
        x_t = self.corrupt(x0, t, keys)[0]
        pred = model(x_t, t)
        return ObjectiveOutput(((pred.float() - x0) ** 2).mean((1, 2, 3)), t, x_t, pred)


class TinyCNN(nn.Module):
    """A toy fine-tuning network: two 3x3 convolutions."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1))

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def toys():
    registered = [(OBJECTIVES, "blur", ObjectiveSpec(lambda d: Blur(d.timesteps), masks=False)),
                  (NETWORKS, "tiny-cnn", Network(lambda seg, n, export: TinyCNN(n), needs_export=False))]
    for registry, name, record in registered:
        registry.register(name, record)
    yield
    for registry, name, _ in registered:
        registry.unregister(name)


def test_study_methods_come_from_the_registered_objectives_heads_and_networks(toys):
    """An objective and a network are one registration each; their study methods follow, named as every
    other's, in both tasks."""
    from mdm.study.methods import CLASS_METHODS

    assert METHODS["blur"] == Method("frozen", "", "blur", "export")  # read by the configured seg.head
    assert METHODS["blur-linear"] == Method("frozen", "pixel-linear", "blur", "export")
    assert METHODS["blur-ft"] == Method("finetune", "unet", "blur", "export")
    assert METHODS["tiny-cnn-scratch"] == Method("finetune", "tiny-cnn", None, "")
    assert CLASS_METHODS["blur-attn"] == Method("frozen", "attention", "blur", "export")
    assert CLASS_METHODS["blur-ft"] == Method("finetune", "unet-encoder", "blur", "export")
    # every name published before the names were generated means what it meant
    assert METHODS["random"] == Method("frozen", "", "mdm", "exports/step_0")
    assert [m for m in METHODS if "blur" not in m and "tiny" not in m] == [
        "mdm", "mdm-mlp", "mdm-linear", "ddpm", "ddpm-mlp", "ddpm-linear", "mae", "mae-mlp", "mae-linear",
        "random", "random-mlp", "random-linear", "mdm-ft", "ddpm-ft", "mae-ft", "unet-scratch", "smp-scratch",
        "filterbank"]
    assert {"mdm-linear", "mdm-attn", "mdm-knn", "ddpm-linear", "ddpm-attn", "mae-linear", "random-linear",
            "mdm-ft", "ddpm-ft", "unet-scratch", "resnet18-scratch", "filterbank"} <= set(CLASS_METHODS)
    METHODS.register("blur", Method("frozen", "pixel-mlp", "blur", "export"))  # by hand: replaces the made one
    try:
        assert METHODS["blur"].arch == "pixel-mlp" and list(METHODS).count("blur") == 1
    finally:
        METHODS.unregister("blur")
    assert METHODS["blur"].arch == ""
    with pytest.raises(ValueError, match="'blur-ft' is not registered in segmentation methods \\(it is derived"):
        METHODS.unregister("blur-ft")
    OBJECTIVES.register("blur-ft", OBJECTIVES["blur"])  # its frozen method would be called blur-ft too
    try:
        with pytest.raises(ValueError, match="two segmentation methods would be called 'blur-ft'"):
            list(METHODS)
    finally:
        OBJECTIVES.unregister("blur-ft")


def test_a_config_names_only_registered_things(toys):
    cfg = load(None, ["diffusion.objective=blur", "seg.arch=tiny-cnn", "bench.methods=[blur,tiny-cnn-scratch]"])
    assert (cfg.diffusion.objective, cfg.seg.arch) == ("blur", "tiny-cnn")
    with pytest.raises(ConfigError, match=r"diffusion.objective: unknown objective 'fog' \(known: mdm, ddpm, mae, "
                                          r"blur\)"):
        load(None, ["diffusion.objective=fog"])
    with pytest.raises(ConfigError, match="bench.methods: 'fog' is not a segmentation method"):
        load(None, ["bench.methods=[blur,fog]"])


def test_toys_pretrain_segment_and_run_a_study(toys, tmp_path, configs_dir):
    from mdm.study.sweep import run_benchmark

    sets = ["model.image_size=32", "model.channel_mult=[1,1]", "model.attention_resolutions=[8]",
            "data.synthetic_images=16", "data.crop_size=32", "train.batch_size=4", "train.log_every=1",
            "train.image_every=0", "seg.ensemble_size=1", "seg.max_epochs=1", "seg.patience=1",
            "seg.crops_per_epoch=8", "seg.batch_size=4", "bench.fractions=[0.5]", "bench.seeds=[0]",
            "bench.methods=[blur,tiny-cnn-scratch]", "bench.budget_methods=[]", "bench.pretrain_steps=2",
            "bench.budget_exports=1", "train.device=cpu", "seg.device=cpu", f"bench.out_dir={tmp_path}"]
    cfg = load(os.path.join(configs_dir, "bench_demo.yaml"), sets)
    result = run_benchmark(cfg, torch.device("cpu"), torch.device("cpu"), log=lambda *_: None)
    assert [r["step"] for r in read_log(tmp_path / "pretrain_blur")] == [1, 2]  # two steps of the toy objective
    assert "| pretrain_blur | blur | mse | 2 |" in (tmp_path / "pretraining.md").read_text()
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {r["method"] for r in rows} == {"blur", "tiny-cnn-scratch"} == {r["method"] for r in result["rows"]}
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)
    assert (tmp_path / "runs" / "tiny-cnn-scratch" / "f0.5_s0" / "segmenter" / "network.safetensors").is_file()
    assert not (tmp_path / "runs" / "tiny-cnn-scratch" / "f0.5_s0" / "segmenter" / "export").exists()  # no U-Net


def test_a_diffusion_key_two_objectives_read_decides_both_their_weights(toys):
    from mdm.pretrain.identity import weight_keys

    OBJECTIVES.register("sharp", ObjectiveSpec(lambda d: Blur(d.timesteps), masks=False, keys=("loss",)))
    try:
        cfg = load(None, [])
        assert "diffusion.loss" in weight_keys(cfg, "mdm") and "diffusion.loss" in weight_keys(cfg, "sharp")
        blur = weight_keys(cfg, "blur")
        assert "diffusion.loss" not in blur and "diffusion.patch_size" not in blur  # not its key; it masks nothing
    finally:
        OBJECTIVES.unregister("sharp")


def test_a_toy_loss_and_a_toy_head_are_one_registration_each():
    """A loss is a function and a ``register`` call: the MDM objective computes it; a classification head likewise."""
    from mdm.classify.heads import HEADS, HeadSpec, fit_head
    from mdm.nn.unet import build_unet
    from mdm.pretrain.losses import LOSSES, ReconstructionLoss, l1_loss
    from mdm.pretrain.objectives import build_objective

    def nearest_mean(x, y, xv, yv, num_classes, probe, seed):
        means = torch.stack([x[y == c].mean(0) for c in range(num_classes)])
        return (lambda q: torch.softmax(-torch.cdist(q, means), dim=1)), {"best_epoch": 0, "best_val_loss": 0.0}

    LOSSES.register("half_l1", ReconstructionLoss(lambda p, t, m, w, s: 0.5 * l1_loss(p, t)))
    HEADS.register("nearest-mean", HeadSpec(nearest_mean))
    try:
        with pytest.raises(ConfigError, match="diffusion.loss: unknown loss 'fog'"):
            load(None, ["diffusion.loss=fog"])
        cfg = load(None, ["diffusion.loss=half_l1", "probe.head=nearest-mean", "model.channel_mult=[1,1]"])
        torch.manual_seed(0)
        model, x0, keys = build_unet(cfg.model).eval(), torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([3, 4])
        with torch.no_grad():
            toy = build_objective(cfg.diffusion).loss(model, x0, keys)
            l1 = build_objective(load(None, ["diffusion.loss=l1"]).diffusion).loss(model, x0, keys)
        assert torch.allclose(toy.loss, 0.5 * l1.loss)
        x, y = torch.cat([torch.randn(10, 4) - 2, torch.randn(10, 4) + 2]), torch.arange(2).repeat_interleave(10)
        predict, history = fit_head("nearest-mean", x, y, x[:0], y[:0], 2, cfg.probe)
        assert (predict(x).argmax(1) == y).float().mean() > 0.9 and len(history) == cfg.probe.ensemble
    finally:
        LOSSES.unregister("half_l1")
        HEADS.unregister("nearest-mean")


def test_another_pixel_head_and_tile_context_choose_blocks_train_save_and_reload(pretrained_export, tmp_path,
                                                                                 configs_dir):
    """``seg.head`` names a registered pixel head (here ``pixel-linear``): the block selection's probes and the
    ensemble are that head, and a saved segmenter rebuilds it; ``seg.context: tile`` doubles the features (each
    part's tile mean beside the pixel's own), in selection, training and the reloaded segmenter alike."""
    from mdm.pretrain.export import open_export
    from mdm.segment.pixel_heads import PixelLinear
    from mdm.segment.run import run_segmentation
    from mdm.segment.segmenter import load_segmenter

    cfg = load(os.path.join(configs_dir, "seg_synthetic.yaml"),
               ["seg.head=pixel-linear", "seg.context=tile", "seg.ensemble_size=2", "seg.max_epochs=3",
                "seg.patience=1", "seg.blocks=auto", "seg.timesteps=auto", "seg.auto_timesteps=[0]",
                "seg.probe_steps=4"])
    result = run_segmentation(cfg.seg, cfg.data, open_export(pretrained_export), tmp_path / "run",
                              device=torch.device("cpu"), progress=False)
    assert len(result["selection"]["scores"][0]) > 1 and 0 <= result["dice"] <= 1
    segmenter = load_segmenter(tmp_path / "run" / "segmenter", torch.device("cpu"))
    ex = segmenter.extractor
    assert isinstance(segmenter.ensemble, PixelLinear) and segmenter.ensemble.w1.shape[0] == 2
    assert segmenter.ensemble.dim == ex.feature_dim == 2 * sum(ex.model.decoder_blocks()[i].channels
                                                               for i in ex.blocks)
    image = torch.rand(3, 32, 32) * 2 - 1
    labels, _, probs = segmenter.predict("new", image)
    assert probs.shape[0] == 2 and labels.shape == (32, 32)
