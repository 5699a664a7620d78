"""Pooling a block's output ``[B, C, h, w]`` into what an image-level head reads: global average
``[B, C]``, a k x k adaptive average flattened ``[B, C * k * k]`` (channel-major), a small token map
``[B, C, s, s]`` for attention pooling, and ``AttentionPool``: a learned query attending over the
tokens (the attention head of "Diffusion Models Beat GANs on Image Classification")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pool(x: torch.Tensor, kind: str, grid: int = 2) -> torch.Tensor:
    """``x [B, C, h, w]`` -> ``gap``: ``[B, C]``; ``grid``: ``[B, C * g * g]`` with
    ``g = min(grid, h, w)``."""
    if kind == "gap":
        return x.float().mean((2, 3))
    if kind == "grid":
        g = min(grid, x.shape[-2], x.shape[-1])
        return F.adaptive_avg_pool2d(x.float(), g).flatten(1)
    raise ValueError(f"unknown pooling {kind!r}")


def token_map(x: torch.Tensor, side: int) -> torch.Tensor:
    """``x [B, C, h, w]`` average-pooled to at most ``side x side`` tokens:
    ``[B, C, min(h, side), min(w, side)]``."""
    return F.adaptive_avg_pool2d(x.float(), (min(x.shape[-2], side), min(x.shape[-1], side)))


class AttentionPool(nn.Module):
    """``tokens [B, C, s, s]`` -> class logits ``[B, K]``: tokens standardised per channel (``mean``
    / ``std`` buffers, from the training tokens), one learned query attends over them (multi-head),
    then a linear layer."""

    def __init__(self, channels: int, num_classes: int, heads: int = 4):
        super().__init__()
        heads = next(h for h in (heads, 4, 2, 1) if channels % h == 0)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.query = nn.Parameter(torch.randn(1, 1, channels) * channels ** -0.5)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)
        self.classify = nn.Linear(channels, num_classes)

    def forward(self, tokens: torch.Tensor, return_weights: bool = False):
        t = tokens.float().flatten(2).transpose(1, 2)  # [B, L, C]
        t = (t - self.mean) / self.std
        pooled, weights = self.attention(self.query.expand(t.shape[0], -1, -1), t, t,
                                         need_weights=return_weights)
        logits = self.classify(self.norm(pooled[:, 0]))
        return (logits, weights[:, 0]) if return_weights else logits
