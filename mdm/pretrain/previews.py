"""Image grids for a look at what the model does."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image


def save_reconstruction_grid(path: str | Path, original: torch.Tensor, corrupted: torch.Tensor,
                             reconstruction: torch.Tensor) -> None:
    """One row per sample: original | corrupted input | reconstruction; tensors ``[N, C, H, W]`` in [-1, 1].
    Small images are enlarged (nearest neighbour) to at least 96 px so that the grid can be read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = torch.stack([original, corrupted, reconstruction], dim=1).flatten(0, 1)
    scale = max(1, 96 // rows.shape[-1])
    if scale > 1:
        rows = torch.nn.functional.interpolate(rows, scale_factor=scale, mode="nearest")
    save_image((rows.clamp(-1, 1) + 1) / 2, str(path), nrow=3, padding=1, pad_value=1.0)
