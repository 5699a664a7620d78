"""On a CUDA machine: training steps in bf16 and fp16 run and export, a resume replays the losses within a stated
tolerance, and stage 2 on the GPU agrees with the CPU. Skipped where there is no GPU (see conftest)."""

import pytest
import torch

from helpers import read_log, tiny_config
from mdm.common.config_io import load
from mdm.pretrain.export import load_export, open_export
from mdm.pretrain.trainer import train
from mdm.segment.run import run_segmentation

pytestmark = pytest.mark.gpu
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_run_and_export(tmp_path, configs_dir, precision):
    cfg = tiny_config(configs_dir, tmp_path / "run", "train.max_steps=3", f"train.mixed_precision={precision}")
    train(cfg, device=CUDA)
    model, _ = load_export(tmp_path / "run" / "export")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2, 3]


def test_resume_on_cuda_replays_the_losses_within_tolerance(tmp_path, configs_dir):
    """cuDNN picks non-deterministic backward kernels, so a resumed run matches to a tolerance, not bitwise (on the
    CPU the same test is exact: tests/test_trainer.py)."""
    extra = ["train.checkpoint_every=3"]
    train(tiny_config(configs_dir, tmp_path / "full", "train.max_steps=6", *extra), device=CUDA)
    train(tiny_config(configs_dir, tmp_path / "half", "train.max_steps=3", *extra), device=CUDA)
    train(tiny_config(configs_dir, tmp_path / "half", "train.max_steps=6", *extra), device=CUDA, resume="latest")
    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "half")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-3)


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_stage_two_on_cuda_agrees_with_the_cpu(tmp_path, configs_dir, pretrained_export, mode):
    """The same run in fp32 on both devices: at most 1% of the test pixels get another label with frozen features
    (the same features up to rounding), at most 5% after fine-tuning (cuDNN's kernels round differently, and the
    training trajectories drift apart)."""
    cfg = load(f"{configs_dir}/seg_synthetic.yaml", ["seg.ensemble_size=2", "seg.max_epochs=4", "seg.patience=4",
                                                       "seg.mixed_precision=no", f"seg.mode={mode}"])
    export = open_export(pretrained_export)
    runs = {}
    for device in (CPU, CUDA):
        out = tmp_path / device.type
        runs[device.type] = run_segmentation(cfg.seg, cfg.data, export, out, device=device, progress=False)
    import numpy as np
    from PIL import Image

    names = sorted(p.name for p in (tmp_path / "cpu" / "predictions").iterdir())
    differ = total = 0
    for name in names:
        a = np.asarray(Image.open(tmp_path / "cpu" / "predictions" / name))
        b = np.asarray(Image.open(tmp_path / "cuda" / "predictions" / name))
        differ, total = differ + int((a != b).sum()), total + a.size
    print(f"{mode}: {differ / total:.4%} of the test pixels differ; Dice cpu {runs['cpu']['dice']:.4f}, "
          f"cuda {runs['cuda']['dice']:.4f}")
    assert differ / total < (0.01 if mode == "frozen" else 0.05)


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_classification_on_cuda_agrees_with_the_cpu(tmp_path, pretrained_export, mode):
    """A probe run in fp32 on both devices: the frozen features agree up to rounding, so at most 2% of the test
    images change class; fine-tuning drifts more (at most 10%)."""
    import csv

    from mdm.classify.run import run_classification
    from mdm.common.config import ProbeConfig

    data = load(None, ["data.source=synthetic", "data.label_fraction=0.2", "data.val_fraction=0.25"]).data
    probe = ProbeConfig(mode=mode, network="unet-encoder", image_size=32, sweep_timesteps=[50], max_epochs=30,
                        finetune_epochs=4, mixed_precision="no")
    export = open_export(pretrained_export)
    predictions = {}
    for device in (CPU, CUDA):
        run_classification(probe, data, export, tmp_path / device.type, device=device, progress=False)
        with open(tmp_path / device.type / "predictions.csv") as f:
            predictions[device.type] = [row["prediction"] for row in csv.DictReader(f)]
    differ = sum(a != b for a, b in zip(predictions["cpu"], predictions["cuda"])) / len(predictions["cpu"])
    assert differ <= (0.02 if mode == "frozen" else 0.10), differ
