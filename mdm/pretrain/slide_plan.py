"""One whole slide opened and planned: its reader (tiffslide or OpenSlide, errors turned into a
``DataError`` naming the file), its microns per pixel, its tissue mask and where tiles of a given
size and resolution may start (``SlidePlan``). ``slides.SlideDataset`` draws its tiles from these
plans; the module docstring of ``slides`` says how.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..common import rng
from ..common.errors import DataError
from ..common.rng import Stream

MASK_SIDE = 1024  # the longest side of the thumbnail a tissue mask is computed on
# a level counts as fine enough when its downsample is within 2% of the one asked for
LEVEL_SLACK = 0.02


def open_slide(path: str | Path, reader: str = "tiffslide"):
    """The slide at ``path`` opened by ``reader`` (``tiffslide`` or ``openslide``; both give
    OpenSlide's API), or a ``DataError`` naming the file."""
    try:
        if reader == "openslide":
            import openslide  # deferred: optional, needs the OpenSlide library (openslide-bin)

            with reading(path):
                return openslide.OpenSlide(str(path))
        import tiffslide  # deferred: pulls zarr and imagecodecs, needed by slide pools only

        with reading(path):
            return tiffslide.TiffSlide(path)
    except (ImportError, OSError) as e:  # OSError: openslide-python without the OpenSlide library
        advice = ("pip install openslide-python openslide-bin, or use data.slide_reader=tiffslide"
                  if reader == "openslide" else "pip install tiffslide")
        raise DataError(f"data.slide_reader={reader}: cannot load it ({e}); {advice}") from None


@contextmanager
def reading(path: str | Path, what: str = "read as a slide") -> Iterator[None]:
    """Turn any error the reader raises (tifffile, zarr, imagecodecs, OpenSlide each have their own)
    into a ``DataError`` naming ``path``."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot be {what} ({type(e).__name__}: {e})") from None


def slide_mpp(slide) -> float:
    """The slide's microns per pixel at level 0 (the mean of x and y), 0.0 when its metadata has
    none."""
    props = slide.properties
    values = []
    for axis in ("x", "y"):
        value = props.get(f"tiffslide.mpp-{axis}") or props.get(f"openslide.mpp-{axis}")
        if value:
            values.append(float(value))
    return sum(values) / len(values) if values else 0.0


def rgb_array(region: Image.Image | np.ndarray) -> np.ndarray:
    """A region as read (PIL RGB or RGBA, or an array ``[H, W, C]``) -> ``[H, W, 3]`` uint8;
    transparent pixels (outside a scanned area) read as white glass."""
    if isinstance(region, np.ndarray):
        region = Image.fromarray(region)
    if region.mode == "RGBA":
        white = Image.new("RGBA", region.size, (255, 255, 255, 255))
        region = Image.alpha_composite(white, region)
    return np.asarray(region.convert("RGB"))


def tissue_mask(thumb: np.ndarray, threshold: float = 0.0) -> tuple[np.ndarray, float]:
    """``thumb [h, w, 3]`` uint8 -> (tissue mask ``[h, w]`` bool, the saturation threshold used):
    saturation above ``threshold``, or above Otsu's threshold of the thumbnail's saturations when
    ``threshold`` is 0."""
    from skimage.filters import threshold_otsu  # deferred: scikit-image is slow to import

    rgb = thumb.astype(np.float32)
    top, low = rgb.max(-1), rgb.min(-1)
    saturation = (top - low) / np.maximum(top, 1.0)
    if not threshold:
        threshold = float(threshold_otsu(saturation)) if np.ptp(saturation) > 0 else 1.0
    return saturation > threshold, threshold


def tile_starts(mask: np.ndarray, window: tuple[int, int], least: float) -> np.ndarray:
    """``[h - wy + 1, w - wx + 1]`` bool: whether a ``window`` (``wy`` rows, ``wx`` columns)
    starting at that mask pixel holds at least ``least`` tissue (an integral image; empty when the
    window is larger than the mask)."""
    wy, wx = window
    h, w = mask.shape
    if wy > h or wx > w:
        return np.zeros((0, 0), dtype=bool)
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    held = (integral[wy:, wx:] - integral[:-wy, wx:] - integral[wy:, :-wx] + integral[:-wy, :-wx])
    return held >= least * wy * wx - 1e-9


@dataclass(eq=False)
class SlidePlan:
    """How tiles are cut from one slide: read at ``level`` (``downsample`` level-0 px a pixel) a
    square of ``read_side`` px covering ``footprint`` level-0 px, starting in a thumbnail cell of
    ``cell`` (x, y) level-0 px where ``starts`` (``tile_starts``, packed 8 cells a byte along rows:
    about 90 KB for a 1024 x 700 thumbnail) holds; ``row_ends[r]``: how many starts rows ``0..r``
    hold."""

    path: str
    size: tuple[int, int]  # level-0 width, height
    mpp: float
    level: int
    downsample: float
    read_side: int
    footprint: float
    cell: tuple[float, float]
    starts: np.ndarray  # [rows, ceil(columns / 8)] uint8
    columns: int
    row_ends: np.ndarray  # [rows] int64
    tissue_cells: int
    mask_cells: int
    threshold: float

    @property
    def count(self) -> int:
        """How many thumbnail cells a tile may start in."""
        return int(self.row_ends[-1]) if len(self.row_ends) else 0

    @property
    def tiles_available(self) -> int:
        """How many tiles the slide's tissue holds side by side."""
        return int(self.tissue_cells * self.cell[0] * self.cell[1] / self.footprint ** 2)

    def start(self, key: int) -> tuple[int, int]:
        """The level-0 (x, y) of the tile that ``key`` draws."""
        keys = torch.tensor([key], dtype=torch.int64)
        k = int(rng.randint(keys, Stream.SLIDE_POSITION, 0, self.count)[0])
        row = int(np.searchsorted(self.row_ends, k, side="right"))
        before = int(self.row_ends[row - 1]) if row else 0
        col = int(np.flatnonzero(np.unpackbits(self.starts[row], count=self.columns))[k - before])
        u, v = rng.uniform(keys, Stream.SLIDE_OFFSET, 2)[0].tolist()
        reach = self.read_side * self.downsample
        x = min((col + u) * self.cell[0], self.size[0] - reach)
        y = min((row + v) * self.cell[1], self.size[1] - reach)
        return int(max(x, 0)), int(max(y, 0))

    def describe(self) -> dict:
        area = self.tissue_cells * self.cell[0] * self.cell[1]
        return {"slide": self.path, "width": self.size[0], "height": self.size[1],
                "mpp": self.mpp or None, "level": self.level,
                "downsample": round(self.downsample, 4), "read_side": self.read_side,
                "tissue_threshold": round(self.threshold, 4),
                "tissue_share": round(self.tissue_cells / self.mask_cells, 4),
                "tissue_mm2": round(area * self.mpp ** 2 / 1e6, 4) if self.mpp else None,
                "tissue_level0_px": int(area), "tile_starts": self.count,
                "tiles_available": self.tiles_available}


def plan_slide(path: str, slide, crop_size: int, mpp: float, level: int,
               threshold: float, least: float) -> SlidePlan:
    """Where and how tiles of ``crop_size`` px are cut from ``slide`` (see the module's docstring);
    a ``DataError`` names the slide when it cannot give them."""
    base = slide_mpp(slide)
    downsamples = [float(d) for d in slide.level_downsamples]
    if mpp:
        if not base:
            raise DataError(f"{path}: no microns per pixel in its metadata; set data.mpp=0 and pick a pyramid level "
                            f"with data.slide_level")
        scale = mpp / base  # level-0 px per tile px
        if scale < 1 - 1e-6:
            raise DataError(
                f"{path}: data.mpp={mpp} is finer than the slide's {base:.4g} microns per pixel")
        level = max(i for i, d in enumerate(downsamples) if d <= scale * (1 + LEVEL_SLACK))
    else:
        if level >= len(downsamples):
            raise DataError(
                f"{path}: data.slide_level={level}, but the slide has {len(downsamples)} level(s)")
        scale = downsamples[level]
    footprint = crop_size * scale
    read_side = max(crop_size, math.ceil(footprint / downsamples[level] - 1e-6))
    width, height = slide.dimensions
    if footprint > min(width, height):
        raise DataError(f"{path}: {width}x{height} at level 0 is smaller than one tile ({footprint:.0f} level-0 px)")
    with reading(path):
        thumb = rgb_array(slide.get_thumbnail((MASK_SIDE, MASK_SIDE)))
    mask, used = tissue_mask(thumb, threshold)
    cell = (width / mask.shape[1], height / mask.shape[0])
    window = (max(1, round(footprint / cell[1])), max(1, round(footprint / cell[0])))
    starts = tile_starts(mask, window, least)
    return SlidePlan(path, (width, height), base, level, downsamples[level], read_side, footprint,
                     cell, np.packbits(starts, axis=1), starts.shape[1], np.cumsum(starts.sum(1)),
                     int(mask.sum()), mask.size, used)
