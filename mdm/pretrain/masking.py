"""Random patch masks, as MAE draws them: a per-sample argsort of uniform noise.

Convention: ``mask [B, L]`` bool over the ``L = (H / p) * (W / p)`` patches in row-major order,
``True`` is masked (hidden), ``False`` is kept. A sample with mask ratio ``r`` keeps exactly
``int(L * (1 - r))`` patches.
"""

from __future__ import annotations

import torch
from einops import repeat

from ..common.errors import ShapeError


def num_kept(num_patches: int, ratio: torch.Tensor) -> torch.Tensor:
    """``int(L * (1 - ratio))`` per sample, computed in float64 so that it matches Python's
    ``int()``."""
    return (num_patches * (1.0 - ratio.double())).floor().long()


def patch_mask(ratio: torch.Tensor, num_patches: int, *, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``mask [B, L]`` (True = masked) for per-sample ratios ``ratio [B]`` in [0, 1].

    ``noise [B, L]`` (uniform) decides which patches go first; without it, it is drawn with
    ``generator``.
    """
    ratio = torch.as_tensor(ratio)
    b = ratio.shape[0]
    if noise is None:
        noise = torch.rand(b, num_patches, generator=generator, device=ratio.device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each patch in its sample's random order
    return ranks >= num_kept(num_patches, ratio).to(ranks.device)[:, None]


def mask_to_pixels(mask: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """``mask [B, L]`` -> ``[B, 1, H, W]`` float (1 = masked pixel)."""
    return repeat(mask.float(), "b (h w) -> b 1 (h p1) (w p2)", h=height // patch_size,
                  w=width // patch_size, p1=patch_size, p2=patch_size)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, patch_size: int,
               fill: float = 0.0) -> torch.Tensor:
    """Set the masked patches of ``x [B, C, H, W]`` to ``fill``; ``mask [B, L]``."""
    pix = mask_to_pixels(mask, x.shape[-2], x.shape[-1], patch_size).to(x.dtype)
    return x * (1 - pix) + fill * pix


def check_patchable(height: int, width: int, patch_size: int) -> int:
    """Return the patch count ``L``; raise ``ShapeError`` if the size is not a multiple of
    ``patch_size``."""
    if height % patch_size or width % patch_size:
        raise ShapeError(f"image size {height}x{width} is not divisible by patch_size={patch_size}")
    return (height // patch_size) * (width // patch_size)

