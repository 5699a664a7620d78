"""The pixel classifiers of the frozen path, registered in ``PIXEL_HEADS`` (``seg.head``): what
reads a pixel's features and gives its class probabilities, the same head for the block selection's
one-member probes and for the run's ensemble, so every frozen method is chosen and trained by one
rule.

A head is ``build(dim, num_classes, members, seed)``, a module of ``members`` stacked classifiers
with the interface of ``pixel_mlp.StackedPixelHead`` (``forward(x [N, d]) -> [M, N, C]`` logits,
``normalize`` with ``mean`` / ``std`` buffers, ``member_probs``, ``member_state`` /
``load_member_state``, ``num_members``, ``dim``, ``num_classes``), and ``fit(module, train_batches,
val_batches, max_epochs, patience, lr, progress=..., min_epochs=...)`` -> one history per member
(default: ``pixel_mlp.fit_ensemble``, every member early-stopped on its own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..common.registry import Registry
from .pixel_mlp import PixelEnsemble, StackedPixelHead, fit_ensemble


@dataclass(frozen=True)
class PixelHead:
    """A registered pixel head; ``help``: its line in the README's config table; ``method``: what
    the study's frozen methods that read with it are called after (``<export>-<method>``; empty: its
    registered name)."""

    build: Callable[[int, int, int, int], nn.Module]
    fit: Callable[..., list[dict]] = fit_ensemble
    help: str = ""
    method: str = ""


class PixelLinear(StackedPixelHead):
    """``members`` linear pixel probes: ``w1 [M, d, C]``, ``b1 [M, C]`` on the normalised features
    (the image probe's readout at pixel level: what a block carries linearly, no hidden layer to
    find more)."""

    def __init__(self, dim: int, num_classes: int, members: int, seed: int = 0):
        super().__init__(dim, num_classes, members)
        self.seeded_weight("w1", dim, num_classes, seed, 1)
        self.b1 = nn.Parameter(torch.zeros(members, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [M, N, C]
        return torch.baddbmm(self.b1.unsqueeze(1), x.expand(self.num_members, -1, -1), self.w1)


PIXEL_HEADS: Registry[PixelHead] = Registry("pixel heads", "seg.head", "pixel head")
PIXEL_HEADS.register("pixel-mlp", PixelHead(PixelEnsemble, method="mlp",
                                            help="DDPM-segmentation's MLPs (d -> 128 -> 32 -> C)"))
PIXEL_HEADS.register("pixel-linear",
                     PixelHead(PixelLinear, method="linear",
                               help="linear probes (d -> C), the image probe's readout"))
