"""End-to-end image classification (``probe.mode: finetune``): every weight of a network trained on
the labeled images.

The networks, registered in ``CLASS_NETWORKS`` (``probe.network``), share one recipe: images resized
to ``probe.image_size``, the same ``probe.augment`` flips / rotations of each batch, Adam
(``probe.finetune_lr``), cross-entropy, epochs of at least ``probe.finetune_epoch_images`` images (a
few labeled images are cycled), early stopping on the validation images (``heads.fit_module``):

- ``unet-encoder``: the export's U-Net encoder and middle block (the pretrained weights, or
  ``exports/step_0`` for the same network at its random initialisation), the timestep input fixed to
  0 and the image not corrupted, global average pooling and a linear layer.
- ``resnet18``: timm's ResNet-18 from scratch (``pretrained=False``: nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..common.config import ProbeConfig
from ..common.devices import autocast, autocast_dtype
from ..common.registry import Registry
from ..nn.unet import UNetModel
from ..pretrain.export import Export
from ..stage2.networks import Network, build_network
from .heads import fit_module, probabilities


class UNetEncoderClassifier(nn.Module):
    """``[B, 3, S, S]`` -> logits ``[B, K]``: the U-Net's middle-block output, global average
    pooled, a linear layer. The decoder is dropped (it would get no gradient)."""

    def __init__(self, unet: UNetModel, num_classes: int):
        super().__init__()
        unet.output_blocks, unet.out = nn.ModuleList(), nn.Identity()
        self.unet = unet
        self.head = nn.Linear(unet.model_channels * unet.channel_mult[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(x.shape[0], device=x.device)
        return self.head(self.unet.encode(x, t).float().mean((2, 3)))


def _resnet18(probe: ProbeConfig, num_classes: int, export: None) -> nn.Module:
    import timm  # deferred: only this network needs it

    return timm.create_model("resnet18", pretrained=False, num_classes=num_classes)


CLASS_NETWORKS: Registry[Network] = Registry("classification networks", "probe.network", "network")
CLASS_NETWORKS.register("unet-encoder", Network(
    lambda probe, num_classes, export: UNetEncoderClassifier(export.load_model(), num_classes),
    needs_export=True))
CLASS_NETWORKS.register("resnet18", Network(_resnet18, needs_export=False))


def augment_batch(kind: str) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    """``probe.augment`` as a function of a batch ``[B, 3, S, S]`` and a generator: each image
    flipped horizontally with probability 1/2 (``hflip``), and also turned by a random multiple of
    90 degrees (``dihedral``)."""
    if kind == "none":
        return None

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flips = torch.rand(len(x), generator=g) < 0.5
        turns = torch.randint(
            0, 4, (len(x),), generator=g) if kind == "dihedral" else torch.zeros(len(x), dtype=int)
        out = [xi.flip(-1) if f else xi for xi, f in zip(x, flips.tolist())]
        return torch.stack([xi.rot90(int(k), (-2, -1)) for xi, k in zip(out, turns.tolist())])

    return apply


class _Autocast(nn.Module):
    """``model`` under ``dtype`` autocast, fp32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        with autocast(self.dtype, device):
            return self.model(x.to(device)).float()


def train_classifier(images: torch.Tensor, y: torch.Tensor, val_images: torch.Tensor,
                     yv: torch.Tensor, num_classes: int, probe: ProbeConfig, export: Export | None,
                     device: torch.device) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """Fine-tune ``probe.network`` on ``images [N, 3, S, S]`` / ``y [N]`` (validation:
    ``val_images`` / ``yv``); returns ``predict_proba(images) -> [M, K]`` and the training
    history."""
    model = build_network(CLASS_NETWORKS[probe.network], f"probe.network={probe.network}", probe,
                          num_classes, export, probe.seed)
    wrapped = _Autocast(model.to(device), autocast_dtype(probe.mixed_precision, device))
    history = fit_module(wrapped, images, y, val_images, yv, probe.finetune_lr, probe.weight_decay,
                         probe.finetune_epochs, probe.patience, probe.batch_size, probe.seed,
                         augment_batch(probe.augment), probe.finetune_epoch_images)
    return probabilities(wrapped), history
