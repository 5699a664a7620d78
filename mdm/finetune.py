"""End-to-end supervised segmentation (``seg.mode: finetune``): every weight trained on the labeled images.

Two networks share one recipe (random ``tile`` crops with ``seg.augment`` flips / rotations, Adam, cross-entropy
with the ignore label, early stopping on the held-out validation pixels, sliding-window inference with Gaussian
blending):

- ``seg.arch: unet``: the pretraining U-Net (from an export: the pretrained weights, or ``exports/step_0`` for the
  same network at its random initialisation) with a 1x1 convolution head on its last decoder block; the timestep
  input is fixed to 0 and the image is not corrupted.
- ``seg.arch: smp``: a segmentation-models-pytorch U-Net (``seg.smp_encoder``, ``encoder_weights=None``: nothing is
  downloaded), trained from scratch.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from . import rng
from .checkpoint import CheckpointError, load_export, replace_dir, save_export
from .config import Config, from_dict, to_dict
from .data.labeled import IGNORE_INDEX, LabeledImage
from .features import blend_tiles, pad_to_tile, tile_grid
from .pixel_classifier import entropy

STREAM_CROP = 31


class UNetWithHead(nn.Module):
    """``[B, 3, H, W]`` -> ``[B, C, H, W]`` logits: the U-Net's last decoder features, its pretrained output norm,
    SiLU, and a new 1x1 convolution."""

    def __init__(self, unet, num_classes: int):
        super().__init__()
        self.unet = unet
        self.head = nn.Conv2d(unet.out[0].num_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(x.shape[0], device=x.device)
        return self.head(F.silu(self.unet.out[0](self.unet.decode(x, t))))


def build_network(cfg: Config, num_classes: int, export_dir: Path | None) -> nn.Module:
    """The network to train; new layers are initialised from ``seg.seed`` (the same run gives the same result)."""
    torch.manual_seed(cfg.seg.seed)
    if cfg.seg.arch == "unet":
        if export_dir is None:
            raise ValueError("seg.arch=unet needs --checkpoint (an export; exports/step_0 is the random init)")
        unet, pre_cfg = load_export(export_dir, weights=cfg.seg.weights)
        cfg.model, cfg.diffusion = pre_cfg.model, pre_cfg.diffusion
        return UNetWithHead(unet, num_classes)
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=cfg.seg.smp_encoder, encoder_weights=None, in_channels=3, classes=num_classes)


def _crop_batch(images, labels, tile: int, batch: int, key: int, augment: str = "hflip"):
    """``(x [B, 3, tile, tile], y [B, tile, tile])``: random crops, each with a random horizontal flip (``hflip``)
    and also a random multiple of 90 degrees rotation (``dihedral``: all 8 symmetries of the square), from ``key``."""
    keys = rng.sample_keys(key, 0, 0, batch)
    which = rng.randint(keys, STREAM_CROP, 0, len(images)).tolist()
    xs, ys = [], []
    for j, k in enumerate(which):
        img, lab = images[k], labels[k]
        h, w = lab.shape
        top = int(rng.randint(keys[j:j + 1], STREAM_CROP + 1, 0, h - tile + 1)[0])
        left = int(rng.randint(keys[j:j + 1], STREAM_CROP + 2, 0, w - tile + 1)[0])
        x, y = img[:, top:top + tile, left:left + tile], lab[top:top + tile, left:left + tile]
        if augment != "none" and float(rng.uniform(keys[j:j + 1], STREAM_CROP + 3, 1)[0, 0]) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if augment == "dihedral":
            turns = int(rng.randint(keys[j:j + 1], STREAM_CROP + 4, 0, 4)[0])
            x, y = x.rot90(turns, (-2, -1)), y.rot90(turns, (-2, -1))
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def predict_probs(model: nn.Module, image: torch.Tensor, tile: int, overlap: float) -> torch.Tensor:
    """``image [3, H, W]`` -> ``[1, C, H, W]`` softmax probabilities, sliding window with Gaussian blending."""
    model.eval()
    _, h, w = image.shape
    padded = pad_to_tile(image, tile)
    tiles = tile_grid(h, w, tile, overlap)

    def per_tile(batch: int = 32):
        for i in range(0, len(tiles), batch):
            chunk = tiles[i:i + batch]
            x = torch.stack([padded[:, t.top:t.top + tile, t.left:t.left + tile] for t in chunk])
            for t, probs in zip(chunk, F.softmax(model(x), dim=1)):
                yield t, probs[None]

    return blend_tiles(h, w, tile, per_tile())


def train_supervised(model: nn.Module, images: list[LabeledImage], cfg: Config, tile: int,
                     progress: bool = True) -> dict:
    """Train ``model`` on random crops of the labeled images; early stopping on validation pixels."""
    from .segmentation import split_labels

    sc, dc = cfg.seg, cfg.data
    imgs, train_lab, val_lab = [], [], []
    for im in images:
        imgs.append(pad_to_tile(im.image, tile))
        tl, vl = split_labels(im, tile, dc.val_fraction, sc.seed, sc.min_class_pixels)
        train_lab.append(tl)
        val_lab.append(vl)
    opt = torch.optim.Adam(model.parameters(), lr=sc.finetune_lr)
    best = (math.inf, copy.deepcopy(model.state_dict()), -1)
    steps = max(1, sc.crops_per_epoch // sc.batch_size)
    for epoch in tqdm(range(sc.max_epochs), desc="fine-tune", disable=None if progress else True, leave=False):
        model.train()
        for b in range(steps):
            x, y = _crop_batch(imgs, train_lab, tile, sc.batch_size, rng.make_key(sc.seed, epoch, b), sc.augment)
            if (y == IGNORE_INDEX).all():
                continue
            loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val_loss, count = 0.0, 0
        for img, vl in zip(imgs, val_lab):
            keep = vl != IGNORE_INDEX
            if keep.any():
                p = predict_probs(model, img, tile, sc.overlap)[0]
                nll = -p.clamp_min(1e-8).log().gather(0, vl.clamp(max=p.shape[0] - 1)[None])[0]
                val_loss += float(nll[keep].sum())
                count += int(keep.sum())
        val_loss = val_loss / count if count else math.inf
        if val_loss < best[0] - 1e-6 or math.isinf(val_loss):
            best = (val_loss, copy.deepcopy(model.state_dict()), epoch)
        elif epoch - best[2] >= sc.patience:
            break
    model.load_state_dict(best[1])
    return {"best_epoch": best[2], "best_val_loss": best[0], "epochs": epoch + 1}


class SupervisedSegmenter:
    """A trained end-to-end network: segments images of any size (same interface as ``Segmenter``)."""

    num_members = 1

    def __init__(self, cfg: Config, model: nn.Module, num_classes: int, tile_size: int):
        self.cfg, self.model, self.num_classes, self.tile_size = cfg, model.eval(), num_classes, tile_size

    def predict(self, name: str, image: torch.Tensor):
        """``(labels [H, W], uncertainty [H, W] entropy, probs [1, C, H, W])``."""
        probs = predict_probs(self.model, image, self.tile_size, self.cfg.seg.overlap)
        return probs[0].argmax(0), entropy(probs[0].permute(1, 2, 0)), probs

    def save(self, folder: Path, export_dir: Path | None) -> None:
        tmp = folder.with_name(f".{folder.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "network.safetensors"))
        meta = {"kind": "supervised", "config": to_dict(self.cfg), "num_classes": self.num_classes,
                "tile_size": self.tile_size}
        (tmp / "segmenter.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        if self.cfg.seg.arch == "unet":  # the architecture for reloading; the weights are in network.safetensors
            save_export(tmp / "export", self.cfg, self.model.unet, self.model.unet)
        replace_dir(tmp, folder)

    @classmethod
    def load(cls, folder: Path, meta: dict) -> SupervisedSegmenter:
        cfg = from_dict(meta["config"])
        model = build_network(cfg, meta["num_classes"], folder / "export" if cfg.seg.arch == "unet" else None)
        try:
            model.load_state_dict(load_file(str(folder / "network.safetensors")), strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{folder / 'network.safetensors'}: {str(e).splitlines()[0]}") from None
        return cls(cfg, model, meta["num_classes"], meta["tile_size"])


def run_finetune(cfg: Config, export_dir: str | Path | None, progress: bool = True) -> dict:
    """Train end to end on the labeled subset, evaluate on the test split, save; returns the metrics dict."""
    from .segmentation import evaluate, prepare_run

    export_dir = Path(export_dir) if export_dir else None
    out = Path(cfg.seg.out_dir)
    if export_dir is not None:
        cfg.data.crop_size = load_export(export_dir)[1].data.crop_size
    tile = cfg.seg.tile_size or cfg.data.crop_size
    if cfg.seg.arch == "smp" and tile % 32:
        raise ValueError(f"seg.tile_size: the smp U-Net needs a multiple of 32, got {tile}")
    data = prepare_run(cfg)
    model = build_network(cfg, data.num_classes, export_dir)
    history = train_supervised(model, data.train_images, cfg, tile, progress)
    segmenter = SupervisedSegmenter(cfg, model, data.num_classes, tile)
    result = evaluate(segmenter, data.test, out, data.class_names, progress)
    result["members"] = [history]
    result["labeled_images"] = len(data.train_images)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    segmenter.save(out / "segmenter", export_dir)
    return result
