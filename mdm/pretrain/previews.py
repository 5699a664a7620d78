"""A look at what the model does: reconstruction grids, and the colour check of its
reconstructions."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

# the colour check corrupts at t = 0.05 T: the paper's extraction timestep (t = 50 of 1000)
CHECK_LEVEL = 0.05


def save_reconstruction_grid(path: str | Path, original: torch.Tensor, corrupted: torch.Tensor,
                             reconstruction: torch.Tensor) -> None:
    """One row per sample: original | corrupted input | reconstruction; tensors ``[N, C, H, W]`` in
    [-1, 1]. Small images are enlarged (nearest neighbour) to at least 96 px so that the grid can be
    read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = torch.stack([original, corrupted, reconstruction], dim=1).flatten(0, 1)
    scale = max(1, 96 // rows.shape[-1])
    if scale > 1:
        rows = torch.nn.functional.interpolate(rows, scale_factor=scale, mode="nearest")
    save_image((rows.clamp(-1, 1) + 1) / 2, str(path), nrow=3, padding=1, pad_value=1.0)


@torch.no_grad()
def colour_check(objective, model, images: torch.Tensor, keys: torch.Tensor) -> dict[str, float]:
    """How faithfully ``model`` gives back what it saw: ``images [N, C, H, W]`` (in [-1, 1])
    corrupted at ``CHECK_LEVEL`` (``objective.reconstruct``), compared with the originals on the
    pixels the model saw.

    Returns ``recon_error`` (mean ``|x0_pred - x0|`` over those pixels and the channels) and
    ``recon_bias_c{k}`` (mean ``x0_pred - x0`` of channel ``k``: a colour shift, 0 when faithful; on
    the [-1, 1] scale)."""
    t = torch.full((images.shape[0],), round(CHECK_LEVEL * objective.timesteps), dtype=torch.int64,
                   device=images.device)
    rec = objective.reconstruct(model, images, t, keys)
    diff, seen = rec.x0_pred.float() - images.float(), rec.visible.float()
    count = seen.sum().clamp_min(1.0)
    out = {"recon_error": float((diff.abs() * seen).sum() / (count * diff.shape[1]))}
    for c in range(diff.shape[1]):
        out[f"recon_bias_c{c}"] = float((diff[:, c:c + 1] * seen).sum() / count)
    return out
