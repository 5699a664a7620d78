"""A new objective, fine-tuning network or study method is one piece of code plus one registration: a toy of each,
registered from this file alone, goes through config validation, pretraining, segmentation and a study."""

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
                  (NETWORKS, "tiny-cnn", Network(lambda seg, n, export: TinyCNN(n), needs_export=False)),
                  (METHODS, "blur", Method("frozen", "unet", "blur", "export")),
                  (METHODS, "tiny-cnn", Method("finetune", "tiny-cnn", None, ""))]
    for registry, name, record in registered:
        registry.register(name, record)
    yield
    for registry, name, _ in registered:
        registry.unregister(name)


def test_a_config_names_only_registered_things(toys):
    cfg = load(None, ["diffusion.objective=blur", "seg.arch=tiny-cnn", "bench.methods=[blur,tiny-cnn]"])
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
            "bench.methods=[blur,tiny-cnn]", "bench.budget_methods=[]", "bench.pretrain_steps=2",
            "bench.budget_exports=1", "train.device=cpu", "seg.device=cpu", f"bench.out_dir={tmp_path}"]
    cfg = load(os.path.join(configs_dir, "bench_demo.yaml"), sets)
    result = run_benchmark(cfg, torch.device("cpu"), torch.device("cpu"), log=lambda *_: None)
    assert [r["step"] for r in read_log(tmp_path / "pretrain_blur")] == [1, 2]  # two steps of the toy objective
    assert "| pretrain_blur | blur | mse | 2 |" in (tmp_path / "pretraining.md").read_text()
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {r["method"] for r in rows} == {"blur", "tiny-cnn"} == {r["method"] for r in result["rows"]}
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)
    assert (tmp_path / "runs" / "tiny-cnn" / "f0.5_s0" / "segmenter" / "network.safetensors").is_file()
    assert not (tmp_path / "runs" / "tiny-cnn" / "f0.5_s0" / "segmenter" / "export").exists()  # no U-Net inside


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
