"""The pixel classifier ensemble of DDPM-segmentation / MDM: small MLPs over per-pixel features, all
members at once.

Each member is ``d -> 128 -> 32 -> C`` with ReLU + BatchNorm1d for fewer than 30 classes,
``d -> 256 -> 128 -> C`` otherwise; weights N(0, 0.02) drawn from the member's own seed, biases 0.
The members' weights are stacked (``[M, d_in, d_out]``), so a forward pass is one batched matmul per
layer for the whole ensemble, on the CPU or the GPU. They train in lockstep on the same streamed
pixel batches, each on its own cross-entropy (with the ignore label), with Adam (lr 1e-3,
elementwise, so stacking changes nothing), and each keeps its best-validation weights and stops
counting after ``patience`` epochs without improvement (never before ``min_epochs``). Where no pixel
is held out (``data.val_split: none``, the reference's rule) each member watches its own mean
training loss of the epoch.

Combining (``combine``): ``vote`` (per-pixel majority of the members' labels, ties to the lowest
class id: the FFHQ-34 protocol), ``mean_prob`` (argmax of the mean softmax), or ``individual`` (each
member scored alone; the caller reports mean ± std: the paper's GlaS / MoNuSeg protocol).
``entropy`` of the mean softmax is the uncertainty map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..common import rng
from ..common.labels import IGNORE_INDEX
from ..stage2.early_stopping import EarlyStopping, StoppingGroup
from ..stage2.training import fit_epochs, optimizer_step


class StackedPixelHead(nn.Module):
    """``members`` pixel classifiers with stacked weights (``[M, ...]`` each), plus the feature
    normalisation (``mean``/``std`` ``[d]``): what every registered pixel head shares
    (``pixel_heads``). A subclass makes its parameters and ``forward(x [N, d])`` (already
    normalised) -> logits ``[M, N, C]``."""

    def __init__(self, dim: int, num_classes: int, members: int):
        super().__init__()
        self.dim, self.num_classes, self.num_members = dim, num_classes, members
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def seeded_weight(self, name: str, d_in: int, d_out: int, seed: int, layer: int) -> None:
        """Parameter ``name`` ``[M, d_in, d_out]`` drawn from N(0, 0.02), member ``m`` from
        ``(seed, m, layer)``."""
        w = torch.empty(self.num_members, d_in, d_out)
        for m in range(self.num_members):
            w[m].normal_(0.0, 0.02,
                         generator=torch.Generator().manual_seed(rng.make_key(seed, m, layer)))
        self.register_parameter(name, nn.Parameter(w))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s weights and statistics (copies)."""
        return {name: t[k].clone() for name, t in self.state_dict().items() if name not in ("mean", "std")}

    def load_member_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        with torch.no_grad():
            for name, value in state.items():
                own[name][k].copy_(value)

    @torch.no_grad()
    def member_probs(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, d]`` -> ``[M, N, C]`` softmax probabilities of every member (eval mode)."""
        self.eval()
        return F.softmax(self(self.normalize(features)), dim=-1)


class PixelEnsemble(StackedPixelHead):
    """``members`` pixel MLPs (DDPM-segmentation's: d -> 128 -> 32 -> C, 256 -> 128 for 30 classes
    or more).

    Parameters per layer ``i``: ``w{i} [M, d_in, d_out]``, ``b{i} [M, d_out]``; after layers 1 and 2
    a BatchNorm per member: ``bn{i}_weight``, ``bn{i}_bias`` and the buffers ``bn{i}_mean``,
    ``bn{i}_var`` ``[M, d_out]``. ``forward(x [N, d])`` (already normalised) -> logits
    ``[M, N, C]``.
    """

    def __init__(self, dim: int, num_classes: int, members: int, seed: int = 0):
        super().__init__(dim, num_classes, members)
        widths = [dim, *((128, 32) if num_classes < 30 else (256, 128)), num_classes]
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):  # layers 1, 2, 3
            self.seeded_weight(f"w{i}", d_in, d_out, seed, i)
            self.register_parameter(f"b{i}", nn.Parameter(torch.zeros(members, d_out)))
            if i < 3:
                self.register_parameter(f"bn{i}_weight", nn.Parameter(torch.ones(members, d_out)))
                self.register_parameter(f"bn{i}_bias", nn.Parameter(torch.zeros(members, d_out)))
                self.register_buffer(f"bn{i}_mean", torch.zeros(members, d_out))
                self.register_buffer(f"bn{i}_var", torch.ones(members, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, n = self.num_members, x.shape[0]
        # layer 1 for all members as one [N, d] x [d, M * h1] product; BatchNorm works on that [N, M
        # * h] layout
        h = torch.addmm(self.b1.reshape(-1), x, self.w1.permute(1, 0, 2).reshape(self.dim, -1))
        h = self._batch_norm(F.relu(h), 1).reshape(n, m, -1).transpose(0, 1)  # [M, N, h1]
        h = F.relu(torch.baddbmm(self.b2.unsqueeze(1), h, self.w2))  # [M, N, h2]
        h = self._batch_norm(h.transpose(0, 1).reshape(n, -1), 2).reshape(n, m, -1).transpose(0, 1)
        return torch.baddbmm(self.b3.unsqueeze(1), h, self.w3)  # [M, N, C]

    def _batch_norm(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """Per-member BatchNorm1d of ``[N, M * c]`` (member-major features): one ``batch_norm`` over
        the ``M * c`` features, whose running statistics update the ``[M, c]`` buffers in place
        through views."""
        return F.batch_norm(h, getattr(self, f"bn{i}_mean").view(-1),
                            getattr(self, f"bn{i}_var").view(-1),
                            getattr(self, f"bn{i}_weight").view(-1),
                            getattr(self, f"bn{i}_bias").view(-1), self.training, 0.1, 1e-5)


def combine(member_probs: torch.Tensor, how: str) -> torch.Tensor:
    """``[M, ..., C]`` member probabilities -> ``[..., C]`` combined scores (``vote``: vote
    fractions, ``mean_prob``: mean probabilities). Take ``argmax(-1)`` for labels."""
    if how == "mean_prob":
        return member_probs.mean(0)
    if how == "vote":
        labels = member_probs.argmax(-1)
        return F.one_hot(labels, member_probs.shape[-1]).float().mean(0)
    raise ValueError(f"seg.combine: {how!r} is not vote or mean_prob")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy (nats) of ``[..., C]`` probabilities -> ``[...]``; 0 = certain, log(C) =
    uniform."""
    return -(probs.clamp_min(1e-12).log() * probs).sum(-1)


def _member_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy per member ``[M]`` over the labeled pixels, and their count."""
    m, n, c = logits.shape
    per_pixel = F.cross_entropy(logits.reshape(m * n, c).float(), labels.repeat(m),
                                ignore_index=IGNORE_INDEX, reduction="none").reshape(m, n)
    return per_pixel.sum(1), int((labels != IGNORE_INDEX).sum())


def fit_ensemble(ensemble: StackedPixelHead,
                 train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                 val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                 max_epochs: int = 50, patience: int = 5, lr: float = 1e-3, progress=None,
                 min_epochs: int = 0) -> list[dict]:
    """Train every member; returns a per-member history ``[{"best_epoch", "best_val_loss",
    "epochs"}]``.

    ``train_batches(epoch)`` yields ``(features [N, d], labels [N])`` on the ensemble's device (raw
    features: normalisation happens here); ``val_batches()`` likewise for the validation pixels
    (none: the training loss is watched). Labels use ``IGNORE_INDEX`` for pixels to skip. A member
    that has stopped keeps training with the others (one batched pass costs the same); at the end
    every member gets its best weights back.
    """
    opt = torch.optim.Adam(ensemble.parameters(), lr=lr)
    group = StoppingGroup([EarlyStopping(lambda k=k: ensemble.member_state(k),
                                         lambda s, k=k: ensemble.load_member_state(k, s),
                                         patience, min_epochs)
                           for k in range(ensemble.num_members)])

    def run_epoch(epoch: int) -> list[float]:
        ensemble.train()
        train_total = torch.zeros(ensemble.num_members, dtype=torch.float64,
                                  device=ensemble.mean.device)
        train_count = 0
        for feats, labels in train_batches(epoch):
            if feats.shape[0] < 2:
                continue
            losses, count = _member_losses(ensemble(ensemble.normalize(feats)), labels)
            if count == 0:
                continue  # a batch of ignored pixels only
            # the sum of the members' mean losses: each its own gradient
            optimizer_step(opt, losses.sum() / count)
            train_total += losses.detach().double()
            train_count += count
        val = _val_losses(ensemble, val_batches)
        # nothing held out: watch the training loss
        if all(math.isinf(v) for v in val) and train_count:
            val = (train_total / train_count).tolist()
        return val

    history = fit_epochs(run_epoch, group, max_epochs,
                         None if progress is None else lambda epoch, val: progress(
                             epoch, val, group.active))
    ensemble.eval()
    return history


@torch.no_grad()
def _val_losses(ensemble: StackedPixelHead, val_batches) -> list[float]:
    ensemble.eval()
    totals = torch.zeros(ensemble.num_members, dtype=torch.float64, device=ensemble.mean.device)
    count = 0
    for feats, labels in val_batches():
        losses, n = _member_losses(ensemble(ensemble.normalize(feats)), labels)
        totals += losses.double()
        count += n
    if count == 0:
        return [math.inf] * ensemble.num_members
    return (totals / count).tolist()
