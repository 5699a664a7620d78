"""Image-level heads on frozen features, registered in ``HEADS`` (``probe.head``).

- ``linear``: features standardised with the training images' per-dimension mean and std, then one
  linear layer.
- ``knn``: cosine similarity of standardised features to the training images; a class's probability
  is its share of the ``probe.knn_k`` nearest. No training: the cheapest check of a representation.
- ``attention``: ``pooling.AttentionPool`` over a block's token map.

Trained heads use Adam (``probe.lr``, ``probe.weight_decay``) on batches of ``probe.batch_size``
images in a seeded order, for at most ``probe.max_epochs`` epochs, keeping the state of the best
validation cross-entropy (``stage2.early_stopping``; the training loss where no image validates).
Inputs: ``x [N, D]`` (``linear``, ``knn``) or ``[N, C, s, s]`` (``attention``), labels ``y [N]``
int64 in 0 .. K-1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..common.config import ProbeConfig
from ..common.registry import Registry
from ..common.rng import seeded_init
from ..stage2.early_stopping import EarlyStopping
from ..stage2.training import fit_epochs, optimizer_step, watched
from .pooling import AttentionPool


class LinearHead(nn.Module):
    """``x [N, D]`` -> logits ``[N, K]`` after standardising with the ``mean`` / ``std`` buffers."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x.float() - self.mean) / self.std)


def _standardisation(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over ``dims``; a dimension without spread in the training features keeps scale 1
    (dividing by a tiny std would blow up whatever the test images put there)."""
    std = x.float().std(dims, unbiased=False)
    return x.float().mean(dims), torch.where(std < 1e-6, torch.ones_like(std), std)


def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Mean cross-entropy of ``model`` on ``(x, y)`` (``inf`` when empty)."""
    if len(y) == 0:
        return math.inf
    with torch.no_grad():
        total = 0.0
        for i in range(0, len(y), batch):
            logits = model(x[i:i + batch])
            total += F.cross_entropy(logits, y[i:i + batch].to(logits.device),
                                     reduction="sum").item()
        return total / len(y)


def fit_module(model: nn.Module, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor,
               yv: torch.Tensor, lr: float, weight_decay: float, epochs: int, patience: int,
               batch: int, seed: int,
               augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
               epoch_images: int = 0) -> dict:
    """Train ``model`` (logits from ``model(x[batch])``) with Adam and early stopping on the
    validation loss (the training loss when ``yv`` is empty); the best state is loaded back. Returns
    ``{"best_epoch", "best_val_loss", "epochs", "train_loss", "val_loss"}`` (the last two: one mean
    cross-entropy per epoch; ``val_loss`` empty without validation images).
    ``augment(x_batch, generator)``: an augmentation of each training batch. An epoch is a seeded
    permutation of the training images, repeated (each time reshuffled) until it holds
    ``epoch_images``, so that a handful of labeled images still gives an epoch of several optimizer
    steps."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                           weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    curves = {"train_loss": [], "val_loss": []}

    def run_epoch(epoch: int) -> float:
        model.train()
        order = torch.cat([torch.randperm(len(y), generator=g) for _ in range(max(1, -(-epoch_images // len(y))))])
        chunks = list(order.split(batch))
        # a batch of one image would break BatchNorm's statistics
        if len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks[-2:] = [torch.cat(chunks[-2:])]
        total = 0.0
        for idx in chunks:
            xb = x[idx] if augment is None else augment(x[idx], g)
            logits = model(xb)
            loss = F.cross_entropy(logits, y[idx].to(logits.device))
            optimizer_step(opt, loss)
            total += loss.item() * len(idx)
        model.eval()
        curves["train_loss"].append(round(total / len(order), 5))
        if len(yv):
            curves["val_loss"].append(round(mean_loss(model, xv, yv), 5))
        return watched(curves["val_loss"][-1] if len(yv) else math.inf,
                       None if len(yv) else total / len(y))

    kept = fit_epochs(run_epoch, EarlyStopping.of_module(model, patience), epochs)
    model.eval()
    return {**kept, **curves}


@dataclass(frozen=True)
class HeadSpec:
    """``fit(x, y, xv, yv, num_classes, probe, seed) -> (predict_proba, history)``; ``tokens``: it
    reads token maps ``[N, C, s, s]`` instead of pooled vectors; ``seeded``: its fit depends on the
    seed, so ``probe.ensemble`` members differ (a head that draws nothing, such as ``knn``, is
    fitted once); ``method``: what the study's frozen methods that read with it are called after
    (``<export>-<method>``; empty: its registered name)."""

    fit: Callable[..., tuple[Callable[[torch.Tensor], torch.Tensor], dict]]
    tokens: bool = False
    seeded: bool = True
    method: str = ""


def _fit_linear(x, y, xv, yv, num_classes: int, probe: ProbeConfig, seed: int):
    with seeded_init(seed):
        head = LinearHead(x.shape[1], num_classes)
    head.mean, head.std = _standardisation(x, (0,))
    history = fit_module(head, x.float(), y, xv.float(), yv, probe.lr, probe.weight_decay,
                         probe.max_epochs, probe.patience, probe.batch_size, seed)
    return probabilities(head), history


def _fit_attention(x, y, xv, yv, num_classes: int, probe: ProbeConfig, seed: int):
    with seeded_init(seed):
        head = AttentionPool(x.shape[1], num_classes)
    head.mean, head.std = _standardisation(x, (0, 2, 3))
    history = fit_module(head, x.float(), y, xv.float(), yv, probe.lr / 10, probe.weight_decay,
                         probe.max_epochs, probe.patience, probe.batch_size, seed)
    return probabilities(head), history


def probabilities(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predict_proba(x) -> [N, K]`` (on the CPU) of a module of logits, in batches of 256."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [model(x[i:i + 256].float()).softmax(1).cpu() for i in range(0, len(x), 256)])
    return predict


def _fit_knn(x, y, xv, yv, num_classes: int, probe: ProbeConfig, seed: int):
    mean, std = _standardisation(x, (0,))
    bank = F.normalize((x.float() - mean) / std, dim=1)
    k = min(probe.knn_k, len(y))
    if k < probe.knn_k:
        warnings.warn(f"probe.knn_k = {probe.knn_k} but only {len(y)} labeled training image(s): k = {k}, every "
                      f"prediction is then the share of each class among them all; lower probe.knn_k", stacklevel=2)

    def predict(q: torch.Tensor) -> torch.Tensor:
        sim = F.normalize((q.float() - mean) / std, dim=1) @ bank.T
        nearest = sim.topk(k, dim=1).indices
        return F.one_hot(y[nearest], num_classes).float().mean(1)

    return predict, {"k": k}


HEADS: Registry[HeadSpec] = Registry("probe heads", "probe.head", "head")
HEADS.register("linear", HeadSpec(_fit_linear))
HEADS.register("knn", HeadSpec(_fit_knn, seeded=False))
HEADS.register("attention", HeadSpec(_fit_attention, tokens=True, method="attn"))


def fit_head(name: str, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor,
             num_classes: int,
             probe: ProbeConfig) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[dict]]:
    """``probe.ensemble`` heads ``name`` (seeds ``probe.seed`` ...; one for a head that is not
    ``seeded``); returns the averaged ``predict_proba(x) -> [N, K]`` and each member's history."""
    spec = HEADS[name]
    members = [spec.fit(x, y, xv, yv, num_classes, probe, probe.seed + i)
               for i in range(probe.ensemble if spec.seeded else 1)]
    return (lambda q: torch.stack([m(q) for m, _ in members]).mean(0)), [h for _, h in members]
