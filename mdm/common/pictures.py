"""Telling pictures apart by what they show rather than by their files: the same pixels saved again
(another PNG compression, metadata added, a JPEG re-save at the usual qualities) are the same
picture, and an image of a handful of values is a label mask, not a picture.

Two images are the same picture when they have the same shape and their 16 x 16 thumbnails (the mean
of each cell) differ by less than ``SAME_PICTURE`` on average (the [-1, 1] scale of ``load_image``).
Measured on the 64 px tiles of scikit-image's immunohistochemistry photograph: a JPEG re-save moves
a thumbnail by at most 0.006 (quality 95), 0.015 (75) and 0.023 (50); two different tiles of the
same slide differ by at least 0.0996. A blank tile matches every other blank tile of its size:
excluding one from pretraining costs nothing.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from .io import file_key, load_image

THUMBNAIL = 16
SAME_PICTURE = 0.03
# at most this many distinct values: a label mask (class ids, 0/255), not a photograph
MASK_VALUES = 8


def thumbnail(image: torch.Tensor) -> torch.Tensor:
    """``image [C, H, W]`` -> ``[C, 16, 16]``, each cell the mean of its region (float32)."""
    return F.adaptive_avg_pool2d(image[None].float(), THUMBNAIL)[0]


def looks_like_mask(image: torch.Tensor) -> bool:
    """Whether ``image [C, H, W]`` holds at most ``MASK_VALUES`` distinct values (read on every 4th
    row and column: a mask's subsample has no more values than the mask, a photograph's has
    hundreds)."""
    return torch.unique(image[:, ::4, ::4]).numel() <= MASK_VALUES


Picture = tuple[tuple[int, ...], torch.Tensor]  # an image's shape and thumbnail


def picture(image: torch.Tensor) -> Picture:
    return tuple(image.shape), thumbnail(image)


def file_picture(path: Path) -> Picture:
    """The picture of the RGB image file ``path``, remembered for the process by path, size and
    modification time (a study's runs compare the same files again and again)."""
    key = file_key(path)
    if key not in _FILE_PICTURES:
        _FILE_PICTURES[key] = picture(load_image(path))
    return _FILE_PICTURES[key]


_FILE_PICTURES: dict[tuple[str, int, int], Picture] = {}


class PictureIndex:
    """The pictures of some named images (``add`` or the constructor's ``(name, image [C, H, W])``
    pairs); ``match(image)`` names the first that ``image`` is the same picture as."""

    def __init__(self, named: Iterable[tuple[str, torch.Tensor]] = ()):
        self._by_shape: dict[tuple[int, ...], list[tuple[str, torch.Tensor]]] = defaultdict(list)
        for name, image in named:
            self.add(name, image)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_shape.values())

    def add(self, name: str, image: torch.Tensor) -> None:
        self.add_picture(name, picture(image))

    def add_picture(self, name: str, pic: Picture) -> None:
        shape, small = pic
        self._by_shape[shape].append((name, small))

    def match(self, image: torch.Tensor) -> str | None:
        return self.match_picture(
            picture(image)) if self._by_shape.get(tuple(image.shape)) else None

    def match_picture(self, pic: Picture) -> str | None:
        shape, small = pic
        for name, other in self._by_shape.get(shape, ()):
            if (small - other).abs().mean() < SAME_PICTURE:
                return name
        return None


def warn_if_trained_on(index: PictureIndex, name: str, pic: Picture, task: str) -> None:
    """Warn when the test image ``name`` is the same picture as a labeled training image of
    ``index``: its score measures memory, not ``task``."""
    same = index.match_picture(pic)
    if same is not None:
        warnings.warn(f"test image {name!r} is the same picture as the labeled training image {same!r} (the same "
                      f"pixels, or saved again): its score measures memory, not {task}", stacklevel=3)
