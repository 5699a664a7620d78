"""Per-sample augmentation driven by a sample key (see ``mdm.common.rng``), so it replays exactly on
resume."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import rng
from ..common.errors import DataError
from ..common.rng import Stream


def crop_or_resize(image: torch.Tensor, key: int, size: int, mode: str = "random",
                   hflip: bool = True, name: str = "image") -> torch.Tensor:
    """``image [C, H, W]`` -> ``[C, size, size]``: a random crop (``mode="random"``, no resize, as
    the reference) or a resize (``mode="resize"``), then a horizontal flip with probability 1/2 when
    ``hflip``."""
    keys = torch.tensor([key], dtype=torch.int64)
    _, h, w = image.shape
    if mode == "random":
        if h < size or w < size:
            raise DataError(
                f"{name}: {w}x{h} is smaller than the crop size {size}; use data.crop=resize or a "
                 f"smaller data.crop_size")
        top = int(rng.randint(keys, Stream.POOL_CROP_TOP, 0, h - size + 1)[0])
        left = int(rng.randint(keys, Stream.POOL_CROP_LEFT, 0, w - size + 1)[0])
        image = image[:, top:top + size, left:left + size]
    elif (h, w) != (size, size):
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)[0]
    if hflip and float(rng.uniform(keys, Stream.POOL_FLIP, 1)[0, 0]) < 0.5:
        image = image.flip(-1)
    return image.contiguous()
