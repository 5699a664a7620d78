"""Image grids for a look at what the model does."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image


def save_reconstruction_grid(path: str | Path, original: torch.Tensor, corrupted: torch.Tensor,
                             reconstruction: torch.Tensor) -> None:
    """One row per sample: original | corrupted input | reconstruction; tensors ``[N, C, H, W]`` in [-1, 1]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = torch.stack([original, corrupted, reconstruction], dim=1).flatten(0, 1)
    save_image((rows.clamp(-1, 1) + 1) / 2, str(path), nrow=3, padding=1, pad_value=1.0)
