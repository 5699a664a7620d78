"""Sliding windows over images of any size: the tile grid, padding to a tile, and Gaussian blending
of per-tile predictions.

An image ``[C, H, W]`` is cut into ``tile x tile`` windows; neighbours share an ``overlap`` fraction
and the last window is flush with the border. Images smaller than a tile are reflect-padded at the
bottom/right first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Window start offsets along one axis: stride ``tile * (1 - overlap)``, the last window flush
    with the end."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class Tile:
    """A window ``[top:top+tile, left:left+tile]`` of an image padded to at least ``tile`` on each
    side."""

    top: int
    left: int


def tile_grid(height: int, width: int, tile: int, overlap: float) -> list[Tile]:
    """Every window of a ``height x width`` image, row by row."""
    return [Tile(t, s) for t in tile_starts(height, tile, overlap) for s in tile_starts(width, tile, overlap)]


def pad_to_tile(x: torch.Tensor, tile: int) -> torch.Tensor:
    """Reflect-pad (replicate where too small to reflect) ``[..., H, W]`` at the bottom/right to at
    least ``tile``."""
    h, w = x.shape[-2:]
    ph, pw = max(0, tile - h), max(0, tile - w)
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    squeeze = x.ndim == 3
    x = F.pad(x[None] if squeeze else x, (0, pw, 0, ph), mode=mode)
    return x[0] if squeeze else x


def gaussian_weight(tile: int, sigma_scale: float = 1 / 8) -> torch.Tensor:
    """``[tile, tile]`` blending weights peaking at the centre (sigma = tile / 8), never zero."""
    c = (tile - 1) / 2
    r = torch.arange(tile, dtype=torch.float32) - c
    g = torch.exp(-(r ** 2) / (2 * (tile * sigma_scale) ** 2))
    w = g[:, None] * g[None, :]
    return (w / w.max()).clamp_min(1e-3)


def blend_tiles(height: int, width: int, tile: int, tile_probs) -> torch.Tensor:
    """Blend per-tile predictions into a whole image with Gaussian weights.

    ``tile_probs`` yields ``(Tile, probs [M, C, tile, tile])`` for windows of the image padded to at
    least ``tile`` (see ``tile_grid``); returns ``[M, C, height, width]`` on the device of the tile
    predictions.
    """
    acc = norm = weight = None
    for t, probs in tile_probs:
        if acc is None:
            acc = torch.zeros(*probs.shape[:2], max(height, tile), max(width, tile),
                              device=probs.device)
            norm = torch.zeros(acc.shape[-2:], device=probs.device)
            weight = gaussian_weight(tile).to(probs.device)
        acc[:, :, t.top:t.top + tile, t.left:t.left + tile] += probs * weight
        norm[t.top:t.top + tile, t.left:t.left + tile] += weight
    return (acc / norm)[:, :, :height, :width]
