"""End-to-end supervised segmentation (``seg.mode: finetune``): every weight trained on the labeled
images.

The networks, registered in ``NETWORKS`` (``seg.arch``), share one recipe (random ``tile`` crops
with ``seg.augment`` flips / rotations, Adam, cross-entropy with the ignore label, early stopping on
the held-out validation pixels, sliding-window inference with Gaussian blending):

- ``seg.arch: unet``: the pretraining U-Net (from an export: the pretrained weights, or
  ``exports/step_0`` for the same network at its random initialisation) with a 1x1 convolution head
  on its last decoder block; the timestep input is fixed to 0 and the image is not corrupted.
- ``seg.arch: smp``: a segmentation-models-pytorch U-Net (``seg.smp_encoder``,
  ``encoder_weights=None``: nothing is downloaded), trained from scratch.

The network trains on the device its weights are on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..common import rng
from ..common.config import SegConfig
from ..common.devices import autocast, autocast_dtype, memory_format
from ..common.errors import ConfigError
from ..common.labels import IGNORE_INDEX
from ..common.registry import Registry
from ..common.rng import Stream, Tag
from ..common.tiling import blend_tiles, pad_to_tile, tile_grid
from ..nn.unet import UNetModel
from ..pretrain.export import Export
from ..stage2.early_stopping import EarlyStopping
from ..stage2.networks import Network
from ..stage2.networks import build_network as build_seeded
from ..stage2.training import fit_epochs, optimizer_step, watched
from .datasets import LabeledImage
from .splits import split_labels


class UNetWithHead(nn.Module):
    """``[B, 3, H, W]`` -> ``[B, C, H, W]`` logits: the U-Net's last decoder features, its
    pretrained output norm, SiLU, and a new 1x1 convolution."""

    def __init__(self, unet: UNetModel, num_classes: int):
        super().__init__()
        self.unet = unet
        self.head = nn.Conv2d(unet.out[0].num_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(x.shape[0], device=x.device)
        return self.head(F.silu(self.unet.out[0](self.unet.decode(x, t))))


def _smp_unet(seg: SegConfig, num_classes: int, export: None) -> nn.Module:
    # deferred: a second of start-up that only this network needs
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=seg.smp_encoder, encoder_weights=None, in_channels=3,
                    classes=num_classes)


def _multiple_of_32(model: nn.Module, tile: int) -> None:
    if tile % 32:
        raise ConfigError(f"seg.tile_size: the smp U-Net needs a multiple of 32, got {tile}")


NETWORKS: Registry[Network] = Registry("fine-tuning networks", "seg.arch", "network")
NETWORKS.register("unet", Network(
    lambda seg, num_classes, export: UNetWithHead(export.load_model(), num_classes),
    needs_export=True,
    check_tile=lambda model, tile: model.unet.check_input_size(tile, tile),
    unet=lambda model: model.unet, help="the export's U-Net + a 1x1 head"))
NETWORKS.register("smp", Network(_smp_unet, needs_export=False, check_tile=_multiple_of_32,
                                 help="a segmentation-models-pytorch U-Net (`seg.smp_encoder`), from scratch"))


def build_network(seg: SegConfig, num_classes: int, export: Export | None) -> nn.Module:
    """The network ``seg.arch`` names (``NETWORKS``), seeded from ``seg.seed``
    (``stage2.networks``)."""
    return build_seeded(NETWORKS[seg.arch], f"seg.arch={seg.arch}", seg, num_classes,
                        export, seg.seed)


def crop_batch(images: list[torch.Tensor], labels: list[torch.Tensor], tile: int, batch: int,
               key: int, augment: str = "hflip") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [B, 3, tile, tile], y [B, tile, tile])``: random crops, each with a random horizontal
    flip (``hflip``) and also a random multiple of 90 degrees rotation (``dihedral``: all 8
    symmetries of the square), from ``key``."""
    keys = rng.sample_keys(key, 0, 0, batch)
    which = rng.randint(keys, Stream.TUNE_CROP_IMAGE, 0, len(images)).tolist()
    xs, ys = [], []
    for j, k in enumerate(which):
        img, lab = images[k], labels[k]
        h, w = lab.shape
        top = int(rng.randint(keys[j:j + 1], Stream.TUNE_CROP_TOP, 0, h - tile + 1)[0])
        left = int(rng.randint(keys[j:j + 1], Stream.TUNE_CROP_LEFT, 0, w - tile + 1)[0])
        x, y = img[:, top:top + tile, left:left + tile], lab[top:top + tile, left:left + tile]
        if augment != "none" and float(rng.uniform(keys[j:j + 1], Stream.TUNE_FLIP, 1)[0, 0]) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if augment == "dihedral":
            turns = int(rng.randint(keys[j:j + 1], Stream.TUNE_ROTATION, 0, 4)[0])
            x, y = x.rot90(turns, (-2, -1)), y.rot90(turns, (-2, -1))
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _logits(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``model(x)`` in the device's memory format (channels-last on the CPU) under ``dtype``
    autocast, as fp32."""
    device = _device(model)
    with autocast(dtype, device):
        return model(x.to(device).contiguous(memory_format=memory_format("auto", device))).float()


@torch.no_grad()
def predict_probs(model: nn.Module, image: torch.Tensor, tile: int, overlap: float,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """``image [3, H, W]`` -> ``[1, C, H, W]`` softmax probabilities (on the CPU), sliding window
    with Gaussian blending, computed on the model's device."""
    model.eval()
    _, h, w = image.shape
    padded = pad_to_tile(image, tile)
    tiles = tile_grid(h, w, tile, overlap)

    def per_tile(batch: int = 32):
        for i in range(0, len(tiles), batch):
            chunk = tiles[i:i + batch]
            x = torch.stack([padded[:, t.top:t.top + tile, t.left:t.left + tile] for t in chunk])
            for t, probs in zip(chunk, F.softmax(_logits(model, x, dtype), dim=1)):
                yield t, probs[None]

    return blend_tiles(h, w, tile, per_tile()).cpu()


def validation_tiles(images: list[torch.Tensor], val_labels: list[torch.Tensor], tile: int,
                     seed: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [T, 3, tile, tile], y [T, tile, tile])``: the tiles of a non-overlapping grid over the
    (padded) labeled images that hold validation pixels; at most ``limit`` of them, a seeded choice
    (0: all). Scored every epoch, one batched pass instead of a sliding window over every image."""
    xs, ys = [], []
    for img, labels in zip(images, val_labels):
        for t in tile_grid(*labels.shape, tile, 0.0):
            y = labels[t.top:t.top + tile, t.left:t.left + tile]
            if (y != IGNORE_INDEX).any():
                xs.append(img[:, t.top:t.top + tile, t.left:t.left + tile])
                ys.append(y)
    if not xs:
        return torch.empty(0, 3, tile, tile), torch.empty(0, tile, tile, dtype=torch.int64)
    chosen = range(len(xs))
    if limit and len(xs) > limit:
        g = torch.Generator().manual_seed(rng.make_key(seed, Tag.VALIDATION_TILES))
        chosen = sorted(torch.randperm(len(xs), generator=g)[:limit].tolist())
    return torch.stack([xs[i] for i in chosen]), torch.stack([ys[i] for i in chosen])


@torch.no_grad()
def validation_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None,
                    batch: int = 32) -> float:
    """Mean cross-entropy over the labeled pixels of the validation tiles (``inf`` when there are
    none)."""
    model.eval()
    total, count = 0.0, int((y != IGNORE_INDEX).sum())
    for i in range(0, x.shape[0], batch):
        logits = _logits(model, x[i:i + batch], dtype)
        total += float(F.cross_entropy(logits, y[i:i + batch].to(logits.device),
                                       ignore_index=IGNORE_INDEX, reduction="sum"))
    return total / count if count else math.inf


def train_supervised(model: nn.Module, images: list[LabeledImage], seg: SegConfig,
                     val_fraction: float, tile: int, roles: dict[str, str] | None = None,
                     progress: bool = True) -> dict:
    """Train ``model`` (on its device; channels-last on the CPU; autocast per
    ``seg.mixed_precision``) on random crops of the labeled images; early stopping on the validation
    pixels of ``splits.split_labels`` (``roles``: the images' parts, see
    ``splits.validation_roles``; default: pixel blocks of every image), scored on
    ``validation_tiles``, or on the epoch's mean training loss where no pixel is held out
    (``data.val_split: none``). Returns ``{"best_epoch", "best_val_loss", "epochs"}``."""
    padded = [pad_to_tile(im.image, tile) for im in images]
    splits = [split_labels(im, tile, val_fraction, seg.seed, seg.min_class_pixels,
                           roles[im.name] if roles else "pixels") for im in images]
    # crops come from the images with training labels (a held-out validation image has none)
    imgs = [img for img, (tl, _) in zip(padded, splits) if (tl != IGNORE_INDEX).any()]
    train_lab = [tl for tl, _ in splits if (tl != IGNORE_INDEX).any()]
    val_lab = [vl for _, vl in splits]
    device = _device(model)
    dtype = autocast_dtype(seg.mixed_precision, device)
    model.to(memory_format=memory_format("auto", device))
    val_x, val_y = validation_tiles(padded, val_lab, tile, seg.seed, seg.val_tiles)
    opt = torch.optim.Adam(model.parameters(), lr=seg.finetune_lr,
                           fused=device.type in ("cpu", "cuda"))
    steps = max(1, seg.crops_per_epoch // seg.batch_size)

    def run_epoch(epoch: int) -> float:
        model.train()
        train_losses = []
        for b in range(steps):
            x, y = crop_batch(imgs, train_lab, tile, seg.batch_size,
                              rng.make_key(seg.seed, epoch, b), seg.augment)
            if (y == IGNORE_INDEX).all():
                continue
            loss = F.cross_entropy(_logits(model, x, dtype), y.to(device),
                                   ignore_index=IGNORE_INDEX)
            optimizer_step(opt, loss)
            train_losses.append(loss.detach())
        return watched(validation_loss(model, val_x, val_y, dtype),
                       float(torch.stack(train_losses).mean()) if train_losses else None)

    bar = tqdm(total=seg.max_epochs, desc="fine-tune",
               disable=None if progress else True, leave=False)
    kept = fit_epochs(run_epoch, EarlyStopping.of_module(model, seg.patience, seg.min_epochs),
                      seg.max_epochs, lambda epoch, loss: bar.update(1))
    bar.close()
    return kept
