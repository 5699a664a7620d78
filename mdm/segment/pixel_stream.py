"""Training pixels streamed tile by tile: ``(features [N, d], labels [N])`` batches for the pixel
MLPs, on the feature extractor's device.

Each labeled image is cut into tiles; an epoch visits the tiles in a seeded order and takes up to
``pixels_per_tile`` random labeled pixels of each (features are formed only for those), packing them
into batches of about ``batch_pixels``. With ``balanced`` a tile's share is split evenly between the
classes present in it (``ceil(share / classes)`` pixels of each, a rarer class's every pixel when it
has fewer), so a thin class is not outnumbered by the tile's background. Validation batches hold
every validation pixel, in tile order.

Extraction masks (``mask_draws``): ``None`` (``seg.extract_masks: fixed``) extracts every tile
through its one fixed draw; a number (``per_epoch``) gives the training tiles of epoch ``e`` draw
``e % mask_draws`` (``e`` itself when ``mask_draws`` is 0: a new draw every epoch, computed afresh
and never stored). Validation pixels and the feature statistics always use draw 0, so early stopping
compares epochs on the same features; the validation batches are therefore the same every epoch, and
are kept after the first pass when they fit in ``VALIDATION_CACHE_BYTES``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..common import rng
from ..common.labels import IGNORE_INDEX
from ..common.rng import Tag
from ..common.tiling import Tile, tile_grid
from .datasets import LabeledImage
from .features import FeatureExtractor
from .splits import split_labels

# validation features kept between epochs up to this size (fp32)
VALIDATION_CACHE_BYTES = 256 * 2 ** 20


def balanced_quota(labels: torch.Tensor, share: int) -> int:
    """How many pixels of each class present in ``labels`` a class-balanced draw of ``share`` takes
    at most: ``ceil(share / k)`` for ``k`` classes present."""
    return math.ceil(share / int(labels.unique().numel()))


def balanced_draw(keep: torch.Tensor, labels: torch.Tensor, share: int,
                  g: torch.Generator) -> torch.Tensor:
    """Of the pixels ``keep`` (flat indices ``[N]``, classes ``labels [N]``), up to
    ``balanced_quota`` of each class present, drawn with ``g``; ascending."""
    classes, quota = labels.unique(), balanced_quota(labels, share)
    picked = [keep[labels == c] for c in classes]
    return torch.cat(
        [p[torch.randperm(p.numel(), generator=g)[:quota]] for p in picked]).sort().values


@dataclass
class TrainTile:
    image_index: int
    tile: Tile


class PixelStream:
    """Streams ``(features [N, d], labels [N])`` pixel batches from the training tiles, tile by
    tile."""

    def __init__(self, extractor: FeatureExtractor, images: list[LabeledImage], tile_size: int,
                 overlap: float, val_fraction: float, seed: int, min_class_pixels: int,
                 batch_pixels: int, pixels_per_tile: int, roles: dict[str, str] | None = None,
                 mask_draws: int | None = None, balanced: bool = False):
        self.extractor, self.images, self.tile_size, self.balanced = extractor, images, tile_size, balanced
        self.batch_pixels, self.pixels_per_tile, self.seed = batch_pixels, pixels_per_tile, seed
        self.mask_draws = mask_draws
        self.tiles: list[TrainTile] = []
        # (tile, draw) -> block outputs
        self._kept: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        # kept validation batches
        self._validation: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        # the (timestep, block) parts formed; None: all
        self.parts: list[tuple[int, int]] | None = None
        self.train_labels, self.val_labels = [], []
        for k, im in enumerate(images):
            role = roles[im.name] if roles else "pixels"
            train, val = split_labels(im, tile_size, val_fraction, seed, min_class_pixels, role)
            self.train_labels.append(train)
            self.val_labels.append(val)
            for tile in tile_grid(*im.label.shape, tile_size, overlap):
                self.tiles.append(TrainTile(k, tile))

    def draw(self, epoch: int) -> int:
        """The extraction-mask draw of the training tiles in ``epoch``."""
        if self.mask_draws is None:
            return 0
        return epoch % self.mask_draws if self.mask_draws else epoch

    def _tile_blocks(self, i: int, draw: int = 0) -> dict[str, torch.Tensor]:
        if (i, draw) in self._kept:
            return self._kept[i, draw]
        t = self.tiles[i]
        im = self.images[t.image_index]
        fresh = draw > 0 and self.mask_draws == 0  # a draw no later epoch asks for again
        blocks = self.extractor.tile_blocks(im.name, im.image, self.tile_size, [t.tile], draw=draw,
                                            cache=not fresh)[0]
        if self.extractor.cache_dir is None and not fresh:
            # in memory anyway: keep them by tile instead of looking them up again
            self._kept[i, draw] = blocks
        return blocks

    def tile_features(self, i: int, index: torch.Tensor, draw: int = 0) -> torch.Tensor:
        """``[N, D]`` features (on the extractor's device) of tile ``i``'s flat pixel indices
        ``index``, extracted through mask draw ``draw``."""
        return self.extractor.pixel_features(self._tile_blocks(i, draw), self.tile_size,
                                             index, self.parts)

    @property
    def feature_dim(self) -> int:
        return self.extractor.parts_dim(self.parts)

    def restricted(self, parts: list[tuple[int, int]]) -> PixelStream:
        """The same stream (tiles, labels, kept block outputs) forming only ``parts``."""
        view = copy.copy(self)
        view.parts = list(parts)
        view._validation = None  # other parts: other features
        return view

    def _labels(self, t: TrainTile, which: list[torch.Tensor]) -> torch.Tensor:
        s = self.tile_size
        return which[t.image_index][t.tile.top:t.tile.top + s,
                                    t.tile.left:t.tile.left + s].reshape(-1)

    def prefetch(self, progress: bool = True) -> None:
        """Extract (and cache) every training tile once, through draw 0: an image's tiles go through
        the U-Net together, several per forward pass."""
        for k in tqdm(range(len(self.images)), desc="features",
                      disable=None if progress else True, leave=False):
            todo = [i for i, t in enumerate(self.tiles) if t.image_index == k and (i, 0) not in self._kept]
            im = self.images[k]
            found = self.extractor.tile_blocks(im.name, im.image, self.tile_size,
                                               [self.tiles[i].tile for i in todo])
            if self.extractor.cache_dir is None:
                self._kept.update({(i, 0): blocks for i, blocks in zip(todo, found)})

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std over the labeled training pixels (accumulated tile by tile)."""
        d = self.feature_dim
        s1, s2, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0
        for i, t in enumerate(self.tiles):
            keep = (self._labels(t, self.train_labels) != IGNORE_INDEX).nonzero().squeeze(1)
            if keep.numel() == 0:
                continue  # a tile of a validation image
            if keep.numel() > self.pixels_per_tile > 0:
                keep = keep[torch.randperm(keep.numel(),
                                           generator=torch.Generator().manual_seed(0))][
                    :self.pixels_per_tile]
            x = self.tile_features(i, keep).double().cpu()
            s1 += x.sum(0)
            s2 += (x * x).sum(0)
            n += x.shape[0]
        mean = s1 / max(n, 1)
        std = (s2 / max(n, 1) - mean ** 2).clamp_min(0).sqrt()
        return mean.float(), std.float().clamp_min(1e-4)

    def _batches(self, which, order, cap, epoch, draw=0, balanced=False):
        buf_x, buf_y, size = [], [], 0
        for i in order:
            t = self.tiles[i]
            y = self._labels(t, which)
            keep = (y != IGNORE_INDEX).nonzero().squeeze(1)
            if keep.numel() == 0:
                continue
            if balanced or (cap and keep.numel() > cap):
                g = torch.Generator().manual_seed(rng.make_key(self.seed, epoch, i))
                keep = (balanced_draw(keep, y[keep], cap or keep.numel(), g) if balanced
                        else keep[torch.randperm(keep.numel(), generator=g)[:cap]])
            buf_x.append(self.tile_features(i, keep, draw))
            buf_y.append(y[keep])
            size += keep.numel()
            if size >= self.batch_pixels:
                yield torch.cat(buf_x), torch.cat(buf_y).to(self.extractor.device)
                buf_x, buf_y, size = [], [], 0
        if buf_x:
            yield torch.cat(buf_x), torch.cat(buf_y).to(self.extractor.device)

    def train_batches(self, epoch: int):
        g = torch.Generator().manual_seed(rng.make_key(self.seed, epoch, Tag.TILE_ORDER))
        order = torch.randperm(len(self.tiles), generator=g).tolist()
        return self._batches(self.train_labels, order, self.pixels_per_tile, epoch,
                             self.draw(epoch), self.balanced)

    def train_batches_per_epoch(self) -> int:
        """About how many batches ``train_batches`` yields per epoch (at least 1): the capped (or
        class-balanced) training pixels of every tile over ``batch_pixels`` (batches are packed tile
        by tile, so the last one of an epoch may be short)."""
        total = 0
        for t in self.tiles:
            y = self._labels(t, self.train_labels)
            y = y[y != IGNORE_INDEX]
            if self.balanced and y.numel():  # as balanced_draw takes them
                counts = torch.bincount(y)
                total += int(counts[counts > 0].clamp(max=balanced_quota(y, self.pixels_per_tile or y.numel())).sum())
            else:
                total += min(y.numel(), self.pixels_per_tile) if self.pixels_per_tile else y.numel()
        return max(1, math.ceil(total / self.batch_pixels))

    def val_batches(self):
        """Every validation pixel's ``(features, labels)``, in tile order: the same each call, so
        kept after the first when they fit in ``VALIDATION_CACHE_BYTES``."""
        if self._validation is not None:
            return iter(self._validation)
        pixels = sum(
            int((self._labels(t, self.val_labels) != IGNORE_INDEX).sum()) for t in self.tiles)
        batches = self._batches(self.val_labels, range(len(self.tiles)), 0, 0)
        if pixels * self.feature_dim * 4 > VALIDATION_CACHE_BYTES:
            return batches
        self._validation = list(batches)
        return iter(self._validation)
