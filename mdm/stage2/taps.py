"""Taps on a frozen U-Net, shared by every stage-2 task: which blocks features come from and how an
input is corrupted before the forward pass.

Block names belong to ``nn.unet.UNetModel.taps``: ``e<i>`` (encoder), ``mid``, ``d<i>`` (decoder);
segmentation numbers decoder blocks by integers (``seg.blocks``), which are aliases of ``d<i>``, and
names the others.
``corrupted`` applies the export's objective with a keyed mask or noise, so features are a function
of the image, never of the order it came in.
"""

from __future__ import annotations

import torch

from ..common import rng
from ..common.config_checks import as_block
from ..common.errors import ConfigError


def corrupted(objective, x0: torch.Tensor, t: int,
              keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x0 [B, 3, S, S]`` corrupted by ``objective`` at timestep ``t`` with the seeded mask or
    noise of ``keys [B]`` (one int64 per image or tile, mixed with ``t``): ``(x_t, the timesteps the
    model takes [B])``. The same keys always give the same corruption, so features are a function of
    the image, not of the order it came in."""
    tt = torch.full((x0.shape[0],), t, dtype=torch.int64, device=x0.device)
    keyed = torch.tensor([rng.make_key(int(k), t) for k in keys.tolist()], dtype=torch.int64,
                         device=x0.device)
    return objective.corrupt(x0, tt, keyed)[0], objective.model_timesteps(tt)


def resolve_seg_blocks(blocks: list[int | str], model, key: str = "seg.blocks") -> list[int | str]:
    """``seg.blocks`` canonical: decoder blocks as absolute numbers (``-1``, ``"d-1"`` -> the last
    decoder block's number), the middle and encoder blocks by name (``mid``, ``e<i>``), checked as
    ``resolve_block_names`` checks them."""
    return [int(name[1:]) if name[0] == "d" else name
            for name in resolve_block_names(list(blocks), model, key)]


def tap_name(block: int | str) -> str:
    """The tap (``UNetModel.taps``) of a ``seg.blocks`` entry: a decoder number ``i`` is ``d<i>``."""
    return f"d{block}" if isinstance(block, int) else str(block)


def resolve_block_names(names: list[str], model, key: str = "probe.blocks") -> list[str]:
    """Canonical names of ``names`` (``d-1`` -> ``d<m-1>``; an integer ``i`` is the decoder block
    ``d<i>``, as ``seg.blocks`` numbers them), checked: an unknown or repeated block is a
    ``ConfigError`` naming ``key``."""
    counts = {"e": len(model.input_blocks), "d": len(model.output_blocks)}
    out = []
    for name in names:
        text = as_block(name)
        if isinstance(text, int):
            text = f"d{text}"
        if text == "mid":
            out.append(text)
            continue
        kind, number = text[:1], as_block(text[1:])
        if kind not in counts or not isinstance(number, int) or not (
                -counts[kind] <= number < counts[kind]):
            raise ConfigError(
                f"{key}: no block {name!r} (the U-Net has e0..e{counts['e'] - 1}, mid, "
                f"d0..d{counts['d'] - 1}; negatives count from the end)")
        out.append(f"{kind}{number % counts[kind]}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{key}: {names} names a block twice")
    return out
