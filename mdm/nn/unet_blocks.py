"""The U-Net's building blocks, guided-diffusion's modules under guided-diffusion's names (so its
state dicts load without renaming): the timestep embedding, GroupNorm, the residual block with its
optional up/down resampling, the attention block and the resampling layers. ``unet.UNetModel``
assembles them.

Conventions: feature maps are ``[B, C, H, W]``; timestep embeddings ``[B, time_embed_dim]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..common.errors import ConfigError
from .group_norm_act import group_norm_act


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding: ``t [B]`` -> ``[B, dim]`` (cosines first, then sines, as in
    guided-diffusion)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the input dtype (stable under fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


class TimestepBlock(nn.Module):
    """A module whose ``forward`` takes ``(x, emb)``."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """``nn.Sequential`` that passes the timestep embedding to the children that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest x2 upsampling, optionally followed by a 3x3 conv (``self.conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """x2 downsampling: a strided 3x3 conv or an average pool (``self.op``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            assert out_channels == channels, "an average-pool downsample cannot change the channel count"
            self.op = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling
    (``up``/``down``).

    With ``use_scale_shift_norm`` the embedding gives a scale and shift applied after the second
    GroupNorm (``h = norm(h) * (1 + scale) + shift``); otherwise it is added before it.
    """

    def __init__(self, channels, emb_channels, dropout, out_channels=None,
                 use_scale_shift_norm=False,
                 use_checkpoint=False, up=False, down=False, norm_groups=32):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(norm_groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels,
                                 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(norm_groups, out_channels), nn.SiLU(),
                                        nn.Dropout(p=dropout),
                                        zero_module(nn.Conv2d(out_channels,
                                                              out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x, emb):
        # in_layers = (norm, SiLU, conv) and out_layers = (norm, SiLU, dropout, conv): each norm +
        # SiLU pair runs as one group_norm_act call (fused on CPU), the modules keep
        # guided-diffusion's parameter names
        h = self.in_layers[2](self.h_upd(group_norm_act(self.in_layers[0], x)))
        x = self.x_upd(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        norm, rest = self.out_layers[0], self.out_layers[2:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(group_norm_act(norm, h, scale, shift))
        else:
            h = rest(group_norm_act(norm, h + emb_out))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention over all ``H*W`` positions, with either of guided-diffusion's qkv
    layouts.

    ``qkv`` is a 1x1 Conv1d (its weights ``[3 * C, C, 1]``, applied as a linear layer). Its output
    channels are ordered head-major, q, k, v inside each head (guided-diffusion's legacy
    ``QKVAttentionLegacy``, what most published checkpoints hold), or with
    ``use_new_attention_order`` q, k, v first and the heads inside each (``QKVAttention``). The
    weights have the same shape either way: only the training flags tell.
    """

    def __init__(self, channels, num_heads=1, num_head_channels=-1, use_checkpoint=False,
                 norm_groups=32, use_new_attention_order=False):
        super().__init__()
        self.new_order = use_new_attention_order
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ConfigError(
                    f"model.num_head_channels: {channels} channels are not divisible by "
                    f"{num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        # tokens [B, T, C]: a view when x is channels-last. The 1x1 convolutions run as linear
        # layers on them, so q, k, v come out with unit stride along channels, as fused attention
        # kernels need
        tokens = group_norm_act(self.norm, x, act=False).transpose(1, 2)
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)  # [B, T, heads*3*ch]
        heads, ch = self.num_heads, c // self.num_heads
        if self.new_order:  # [B, T, 3, heads, ch]
            q, k, v = (t.transpose(1, 2) for t in qkv.unflatten(-1, (3, heads, ch)).unbind(2))
        else:  # [B, T, heads, 3 * ch]
            # each [B, heads, T, ch]
            q, k, v = qkv.unflatten(-1, (heads, 3 * ch)).transpose(1, 2).split(ch, dim=-1)
        h = _attention(q, k, v).transpose(1, 2).flatten(2)  # [B, T, C]
        # [B, C, T]
        out = F.linear(h, self.proj_out.weight.squeeze(-1), self.proj_out.bias).transpose(1, 2)
        return (x + out).reshape(b, c, *spatial)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of ``[B, heads, T, ch]`` tensors.

    bf16 on CPU: two bf16 matmuls around a softmax that computes in fp32 and stores bf16, the
    precision of guided-diffusion's legacy attention under fp16. On this CPU that is 2.7x faster
    than torch's fused CPU kernel in bf16 (forward + backward, 256 tokens, 4 heads of 32: 5.6 vs
    15.1 ms) and 8x faster at 64 tokens, with a larger rounding error (max 0.009 vs 0.002 against
    fp32); see ``perf/attention_cpu.py``. Elsewhere (fp32, CUDA): ``scaled_dot_product_attention``.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        weights = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # [B, heads, T, T]
        return torch.matmul(weights.softmax(dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v)
