"""How the labeled images are split: which images are labeled, and which of their pixels only
validate.

- ``label_subset``: a seeded random subset of the training images, nested across fractions for one
  seed.
- ``validation_roles`` / ``split_labels``: what early stopping watches: whole held-out labeled
  images (or slides), or, with a single labeled image, held-out pixel blocks of it
  (``validation_mask``: 8x8 blocks drawn with a probability, seeded by the image name); the rest
  trains.
"""

from __future__ import annotations

import math
import zlib

import torch

from ..common import rng
from ..common.errors import DataError
from ..common.labels import IGNORE_INDEX
from ..common.rng import Stream, Tag
from ..common.tiling import pad_to_tile
from .datasets import LabeledImage


def label_subset(num_train: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices of ``max(1, floor(fraction * num_train))`` labeled images: the first ones of a
    seeded random permutation, so for one seed a smaller fraction's set lies inside a larger one's.
    ``fraction`` in (0, 1]."""
    if not isinstance(fraction, (int, float)) or math.isnan(fraction) or not 0 < fraction <= 1:
        raise DataError(f"label fraction must be in (0, 1], got {fraction!r}")
    if num_train < 1:
        raise DataError(f"cannot take a label subset of {num_train} training images")
    n = max(1, math.floor(fraction * num_train + 1e-9))  # the epsilon keeps 0.29 * 100 at 29
    perm = torch.randperm(num_train, generator=torch.Generator().manual_seed(int(seed)))
    return sorted(perm[:n].tolist())


def validation_mask(name: str, height: int, width: int, fraction: float,
                    seed: int, block: int = 8) -> torch.Tensor:
    """``[H, W]`` bool: held-out validation pixels of a labeled image, as whole ``block x block``
    squares drawn with probability ``fraction`` (seeded by image name), so that validation pixels
    are not all next to training ones."""
    if fraction <= 0:
        return torch.zeros(height, width, dtype=torch.bool)
    gh, gw = math.ceil(height / block), math.ceil(width / block)
    key = torch.tensor([rng.make_key(seed, zlib.crc32(name.encode()))], dtype=torch.int64)
    grid = rng.uniform(key, Stream.VALIDATION_BLOCKS, gh * gw).reshape(gh, gw) < fraction
    return grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[:height, :width]


def drop_small_classes(label: torch.Tensor, min_pixels: int) -> torch.Tensor:
    """Set the pixels of classes with fewer than ``min_pixels`` pixels in this image to the ignore
    label."""
    if min_pixels <= 0:
        return label
    ids, counts = label.unique(return_counts=True)
    label = label.clone()
    for i, c in zip(ids.tolist(), counts.tolist()):
        if i != IGNORE_INDEX and c < min_pixels:
            label[label == i] = IGNORE_INDEX
    return label


def validation_roles(images: list[LabeledImage], fraction: float, seed: int,
                     split: str = "images") -> dict[str, str]:
    """Each labeled image's part in early stopping: ``train``, ``validation`` or ``pixels``.

    ``split="images"`` with at least 2 labeled images: a seeded choice of whole images, about
    ``fraction`` of them (at least one, always leaving one to train on), validates and the rest
    trains, so early stopping sees the shift from one image to the next. An image is never held out
    when that would leave a class of the labeled images without a training pixel (the next in the
    seeded order is taken; when none can go, pixel blocks validate). Where the images carry slide
    ids and span at least 2 slides, whole slides are held out instead. Otherwise (one labeled image,
    ``split="pixels"``, ``fraction`` 0) every image is ``pixels``: pixel blocks of each validate
    (``validation_mask``). ``split="none"`` (the reference's rule): every image is ``train``,
    nothing is held out, and early stopping watches the training loss."""
    if split == "none":
        return {im.name: "train" for im in images}
    if split == "pixels" or len(images) < 2 or fraction <= 0:
        return {im.name: "pixels" for im in images}
    slides = {im.slide for im in images}
    by_slide = "" not in slides and len(slides) >= 2
    units = sorted(slides) if by_slide else [im.name for im in images]
    count = min(len(units) - 1, max(1, round(fraction * len(units))))
    g = torch.Generator().manual_seed(rng.make_key(seed, Tag.VALIDATION_IMAGES))

    def unit(im):
        return im.slide if by_slide else im.name

    classes = {im.name: set(im.label.unique().tolist()) - {IGNORE_INDEX} for im in images}
    every = set().union(*classes.values())
    held: set[str] = set()
    # in the seeded order, skipping a unit whose hold-out
    for i in torch.randperm(len(units), generator=g).tolist():
        # would leave a class with no training pixel
        if len(held) == count:
            break
        kept = set().union(*(classes[im.name] for im in images if unit(im) not in held | {units[i]}))
        if kept == every:
            held.add(units[i])
    if not held:  # every unit holds a class no other has: validate on pixel blocks of each instead
        return {im.name: "pixels" for im in images}
    return {im.name: "validation" if unit(im) in held else "train" for im in images}


def split_labels(im: LabeledImage, tile: int, val_fraction: float, seed: int,
                 min_class_pixels: int = 0,
                 role: str = "pixels") -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation labels ``[H', W']`` of a labeled image, padded like the image to at
    least ``tile`` (padding is ignored). ``role`` (see ``validation_roles``): ``train`` keeps every
    label for training, ``validation`` for validation; ``pixels`` holds the pixel blocks of
    ``validation_mask`` out for validation."""
    h, w = im.label.shape
    lab = drop_small_classes(im.label, min_class_pixels)
    if role == "pixels":
        val = validation_mask(im.name, h, w, val_fraction, seed)
    else:
        val = torch.full((h, w), role == "validation", dtype=torch.bool)
    out = []
    for labels in (torch.where(val, IGNORE_INDEX, lab), torch.where(val, lab, IGNORE_INDEX)):
        padded = pad_to_tile(labels.float(), tile).long()
        padded[h:, :] = IGNORE_INDEX
        padded[:, w:] = IGNORE_INDEX
        out.append(padded)
    return out[0], out[1]
