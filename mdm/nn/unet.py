"""A guided-diffusion style U-Net, as a pure ``nn.Module``.

Module layout and parameter names follow guided-diffusion (``time_embed``, ``input_blocks``,
``middle_block``, ``output_blocks``, ``out``), so guided-diffusion / MDM state dicts load without
renaming and decoder block numbers mean what they mean in the papers: ``output_blocks[i]`` for ``i``
in ``0 .. len(channel_mult) * (num_res_blocks + 1)
- 1``, coarsest level first; each level holds ``num_res_blocks + 1`` blocks and its last one carries
  the upsample.

Conventions: images are ``[B, in_channels, H, W]`` in [-1, 1]; timesteps are ``[B]`` (int or float,
0..T); the output is ``[B, out_channels, H, W]``. ``H`` and ``W`` must be divisible by
``2 ** (len(channel_mult) - 1)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..common.errors import ConfigError, ShapeError
from .group_norm_act import group_norm_act
from .unet_blocks import (
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    timestep_embedding,
    zero_module,
)


def num_decoder_blocks(channel_mult, num_res_blocks: int) -> int:
    """How many ``output_blocks`` a U-Net of these levels has (each level holds
    ``num_res_blocks + 1``)."""
    return len(channel_mult) * (num_res_blocks + 1)


def compile_unet(model: nn.Module, mode: str) -> None:
    """Compile ``model`` in place with ``torch.compile``: ``regional`` compiles each ResBlock and
    AttentionBlock (a short compile that fuses the norms, activations and scale-shifts around the
    convolutions), ``full`` the whole forward pass, ``none`` nothing. Parameter names stay as they
    are."""
    if mode == "full":
        model.compile()
    elif mode == "regional":
        # every ResBlock shares one forward, and torch compiles one function for at most 8 input
        # shapes (torch._dynamo.config.recompile_limit, warned about once); the blocks of the other
        # shapes run eagerly. Measured on an H200 at the paper preset, that is what gained speed
        # (README); raising the limit made the warm-up outlast 150 s
        for block in model.modules():
            if isinstance(block, (ResBlock, AttentionBlock)):
                block.compile()
    elif mode != "none":
        raise ConfigError(f"train.compile: {mode!r} is not none, regional or full")


@dataclass(frozen=True)
class BlockInfo:
    """Output of one decoder block for a given input size: ``channels`` and spatial ``resolution``
    (H, W)."""

    index: int
    channels: int
    resolution: tuple[int, int]


class UNetModel(nn.Module):
    """The guided-diffusion U-Net.

    Args:
        image_size: the nominal training size; ``attention_resolutions`` are pixel sizes relative to it.
        attention_resolutions: feature-map sizes (in px at ``image_size``) that get self-attention, e.g. (32, 16, 8).
        channel_mult: channel multiplier per level; ``len(channel_mult) - 1`` downsamplings.
        num_head_channels: channels per attention head (overrides ``num_heads`` when not -1).
        resblock_updown: resample inside ResBlocks (``up``/``down``) instead of separate (conv) layers.
        use_checkpoint: gradient checkpointing in every ResBlock and AttentionBlock (less memory, ~30% slower).
    """

    def __init__(self, image_size=64, in_channels=3, model_channels=64, out_channels=3,
                 num_res_blocks=2, attention_resolutions=(16, 8), dropout=0.0,
                 channel_mult=(1, 2, 2, 4), conv_resample=True, num_heads=1, num_head_channels=-1,
                 use_scale_shift_norm=True, resblock_updown=True, use_checkpoint=False,
                 norm_groups=32, use_new_attention_order=False):
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.channel_mult = tuple(channel_mult)
        for c in {model_channels * m for m in channel_mult}:
            if c % norm_groups:
                raise ConfigError(
                    f"model.norm_groups: level width {c} is not divisible by {norm_groups}")
        attention_ds = {image_size // int(r) for r in attention_resolutions}
        block_kw = dict(use_checkpoint=use_checkpoint, norm_groups=norm_groups)
        res_kw = dict(use_scale_shift_norm=use_scale_shift_norm, **block_kw)
        attn_kw = dict(num_heads=num_heads, num_head_channels=num_head_channels,
                       use_new_attention_order=use_new_attention_order, **block_kw)

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))

        ch = model_channels * channel_mult[0]
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels,
                                                                             ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        # (channels, downsampling of the output) of every tap, in the order the forward pass runs them
        self._tap_layout: dict[str, tuple[int, int]] = {"e0": (ch, 1)}
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, time_embed_dim, dropout,
                                   out_channels=model_channels * mult, **res_kw)]
                ch = model_channels * mult
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, **attn_kw))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
                self._tap_layout[f"e{len(self.input_blocks) - 1}"] = (ch, ds)
            if level != len(channel_mult) - 1:
                down = (ResBlock(ch, time_embed_dim, dropout, out_channels=ch, down=True, **res_kw)
                        if resblock_updown else Downsample(ch, conv_resample))
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2
                self._tap_layout[f"e{len(self.input_blocks) - 1}"] = (ch, ds)

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, time_embed_dim, dropout, **res_kw),
            AttentionBlock(ch, **attn_kw),
            ResBlock(ch, time_embed_dim, dropout, **res_kw),
        )
        self._tap_layout["mid"] = (ch, ds)

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip = skip_chans.pop()
                layers = [ResBlock(ch + skip, time_embed_dim, dropout,
                                   out_channels=model_channels * mult, **res_kw)]
                ch = model_channels * mult
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, **attn_kw))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, time_embed_dim, dropout, out_channels=ch,
                                           up=True, **res_kw)
                                  if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self._tap_layout[f"d{len(self.output_blocks) - 1}"] = (ch, ds)

        self.out = nn.Sequential(GroupNorm32(norm_groups, ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)))

    @property
    def downsample_factor(self) -> int:
        """The total downsampling: input sizes must be multiples of it."""
        return 2 ** (len(self.channel_mult) - 1)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ShapeError`` naming the sizes that work when ``height``/``width`` are not
        multiples of the total downsampling."""
        f = self.downsample_factor
        for name, size in (("height", height), ("width", width)):
            if size % f or size <= 0:
                lo, hi = max(f, size // f * f), (size // f + 1) * f
                raise ShapeError(
                    f"image {name} {size} is not divisible by {f} (the U-Net downsamples "
                    f"{len(self.channel_mult) - 1} times); use a multiple of {f}, e.g. {lo} or {hi}")

    def tap_blocks(self, height: int | None = None,
                   width: int | None = None) -> dict[str, BlockInfo]:
        """Every tap's (``taps``) output channels and resolution for a ``height x width`` input
        (default: the nominal ``image_size``), by name in the order the forward pass runs them;
        ``index`` numbers a tap within its kind (``mid``: 0). Stage 2 derives feature widths from
        this."""
        height = height or self.image_size
        width = width or height
        self.check_input_size(height, width)
        return {name: BlockInfo(int(name[1:]) if name[1:].isdigit() else 0, c,
                                (height // ds, width // ds))
                for name, (c, ds) in self._tap_layout.items()}

    def decoder_blocks(self, height: int | None = None,
                       width: int | None = None) -> list[BlockInfo]:
        """Each decoder block's (``d<i>``) ``tap_blocks`` entry, in order."""
        return [info for name, info in self.tap_blocks(height, width).items() if name[0] == "d"]

    def taps(self) -> dict[str, nn.Module]:
        """Every block stage 2 can take features from, by name: ``e0 .. e<n-1>`` (``input_blocks``),
        ``mid`` (the middle block), ``d0 .. d<m-1>`` (``output_blocks``, guided-diffusion's
        numbering of decoder blocks)."""
        blocks = {f"e{i}": b for i, b in enumerate(self.input_blocks)}
        blocks["mid"] = self.middle_block
        blocks.update({f"d{i}": b for i, b in enumerate(self.output_blocks)})
        return blocks

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x [B, C_in, H, W]``, ``timesteps [B]`` -> ``[B, C_out, H, W]``."""
        # out = (norm, SiLU, conv)
        return self.out[2](group_norm_act(self.out[0], self.decode(x, timesteps)))

    def decode(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The last decoder block's output ``[B, model_channels * channel_mult[0], H, W]`` (before
        ``out``)."""
        h, hs, emb = self._encode(x, timesteps)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return h

    def encode(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The middle block's output ``[B, model_channels * channel_mult[-1], H / f, W / f]``
        (``f``: ``downsample_factor``): the encoder alone, for image-level heads."""
        return self._encode(x, timesteps)[0]

    def _encode(self, x: torch.Tensor, timesteps: torch.Tensor):
        """``(middle block output, every encoder block's output (the skips), timestep
        embedding)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"expected input [B, {self.in_channels}, H, W], got {list(x.shape)}")
        self.check_input_size(x.shape[-2], x.shape[-1])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        return self.middle_block(h, emb), hs, emb


def build_unet(model_cfg) -> UNetModel:
    """The U-Net described by a ``ModelConfig`` (a dataclass whose fields are the constructor's
    arguments)."""
    return UNetModel(**dataclasses.asdict(model_cfg))
