"""The pixel classifier ensemble of DDPM-segmentation / MDM: small MLPs over per-pixel features.

``PixelMLP``: ``d -> 128 -> 32 -> C`` with ReLU + BatchNorm1d for fewer than 30 classes, ``d -> 256 -> 128 -> C``
otherwise; weights initialised N(0, 0.02). Members differ by their seed (initialisation and pixel order). They are
trained in lockstep on the same streamed pixel batches (so features are formed once per batch for all members), each
with Adam (lr 1e-3), cross-entropy with the ignore label, and early stopping on validation pixels: a member keeps its
best-validation weights and stops after ``patience`` epochs without improvement.

Combining (``combine``): ``vote`` (per-pixel majority of the members' labels, ties to the lowest class id: the FFHQ-34
protocol), ``mean_prob`` (argmax of the mean softmax), or ``individual`` (each member scored alone; the caller
reports mean ± std: the paper's GlaS / MoNuSeg protocol). ``entropy`` of the mean softmax is the uncertainty map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..common.labels import IGNORE_INDEX
from ..common.rng import seeded_init
from .early_stopping import EarlyStopping


class PixelMLP(nn.Module):
    """``[N, d]`` features -> ``[N, num_classes]`` logits."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        h1, h2 = (128, 32) if num_classes < 30 else (256, 128)
        self.layers = nn.Sequential(nn.Linear(dim, h1), nn.ReLU(), nn.BatchNorm1d(h1),
                                    nn.Linear(h1, h2), nn.ReLU(), nn.BatchNorm1d(h2),
                                    nn.Linear(h2, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PixelEnsemble(nn.Module):
    """``members`` PixelMLPs plus the feature normalisation (``mean``/``std`` ``[d]``) they were trained with."""

    def __init__(self, dim: int, num_classes: int, members: int, seed: int = 0):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        mlps = []
        for m in range(members):
            with seeded_init(seed * 1000 + m):
                mlps.append(PixelMLP(dim, num_classes))
        self.members = nn.ModuleList(mlps)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def member_probs(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, d]`` -> ``[M, N, C]`` softmax probabilities of every member."""
        x = self.normalize(features)
        return torch.stack([F.softmax(m.eval()(x), dim=1) for m in self.members])


def combine(member_probs: torch.Tensor, how: str) -> torch.Tensor:
    """``[M, ..., C]`` member probabilities -> ``[..., C]`` combined scores (``vote``: vote fractions,
    ``mean_prob``: mean probabilities). Take ``argmax(-1)`` for labels."""
    if how == "mean_prob":
        return member_probs.mean(0)
    if how == "vote":
        labels = member_probs.argmax(-1)
        return F.one_hot(labels, member_probs.shape[-1]).float().mean(0)
    raise ValueError(f"seg.combine: {how!r} is not vote or mean_prob")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy (nats) of ``[..., C]`` probabilities -> ``[...]``; 0 = certain, log(C) = uniform."""
    return -(probs.clamp_min(1e-12).log() * probs).sum(-1)


def fit_ensemble(ensemble: PixelEnsemble, train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                 val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], max_epochs: int = 50,
                 patience: int = 5, lr: float = 1e-3, progress=None) -> list[dict]:
    """Train every member; returns a per-member history ``[{"best_epoch", "best_val_loss", "epochs"}]``.

    ``train_batches(epoch)`` yields ``(features [N, d], labels [N])`` (already normalised features are NOT
    expected: normalisation happens here); ``val_batches()`` likewise for the validation pixels. Labels use
    ``IGNORE_INDEX`` for pixels to skip.
    """
    members = list(ensemble.members)
    opts = [torch.optim.Adam(m.parameters(), lr=lr) for m in members]
    stoppers = [EarlyStopping(m, patience) for m in members]
    active = [True] * len(members)
    for epoch in range(max_epochs):
        if not any(active):
            break
        for m, on in zip(members, active):
            m.train(on)
        for feats, labels in train_batches(epoch):
            if feats.shape[0] < 2:
                continue
            x = ensemble.normalize(feats)
            for k, (m, opt) in enumerate(zip(members, opts)):
                if not active[k]:
                    continue
                perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(epoch * 7919 + k))
                loss = F.cross_entropy(m(x[perm]), labels[perm], ignore_index=IGNORE_INDEX)
                if not torch.isfinite(loss):
                    continue  # a batch of ignored pixels only
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        val = _val_losses(ensemble, val_batches)
        for k in range(len(members)):
            if active[k] and stoppers[k].update(epoch, val[k]):
                active[k] = False
        if progress is not None:
            progress(epoch, val, active)
    history = [s.restore() for s in stoppers]
    for m in members:
        m.eval()
    return history


@torch.no_grad()
def _val_losses(ensemble: PixelEnsemble, val_batches) -> list[float]:
    totals = torch.zeros(len(ensemble.members), dtype=torch.float64)
    count = 0
    for feats, labels in val_batches():
        keep = labels != IGNORE_INDEX
        if not keep.any():
            continue
        x, y = ensemble.normalize(feats[keep]), labels[keep]
        for k, m in enumerate(ensemble.members):
            m.eval()
            totals[k] += F.cross_entropy(m(x), y, reduction="sum").double()
        count += int(keep.sum())
    if count == 0:
        return [math.inf] * len(ensemble.members)
    return (totals / count).tolist()
