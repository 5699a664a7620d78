"""Whole-slide images as a pretraining pool (``data.source: slides``): tiles cut on the fly inside
tissue.

Slides are read through tiffslide (SVS, NDPI, SCN, pyramidal TIFF; pure Python on tifffile) or, with
``data.slide_reader: openslide``, through OpenSlide (``openslide-python`` with ``openslide-bin``; it
does not see pyramid levels stored as TIFF SubIFDs, as tifffile and some converters write them, and
reads such files from level 0, resizing: the same tiles, read more slowly). Each slide once at the
start:

- **tissue mask**: the slide's thumbnail (longest side ``slide_plan.MASK_SIDE``) is tissue where its
  saturation ``(max - min) / max`` of R, G, B is above ``data.tissue_threshold`` (0: Otsu's
  threshold of that slide, which splits stained tissue from white glass; a slide that is tissue from
  edge to edge needs a fixed threshold);
- **resolution**: tiles of ``data.crop_size`` px at ``data.mpp`` microns per pixel, read from the
  finest level that is not finer than needed and resized (a slide without an mpp in its metadata is
  refused, naming it; ``data.mpp: 0`` reads ``data.slide_level`` as it is, for collections without
  mpp);
- **where tiles may start**: every thumbnail pixel whose tile (the footprint of one tile, in
  thumbnail pixels) holds at least ``data.tissue_min`` tissue (an integral image);
- **tiles available**: the slide's tissue area over one tile's area, the number of tiles that would
  tile its tissue.

An item is requested as ``(index, key)`` and returned as ``(image [3, S, S] in [-1, 1], key)``: the
index picks the slide (an epoch, ``len``, is every slide's tiles available, at most ``EPOCH_CAP``,
so a slide is seen in proportion to its tissue), the key picks the tile's start (a tissue cell,
``Stream.SLIDE_POSITION``, and a place in it, ``Stream.SLIDE_OFFSET``) and its flip, so a resumed
run reads the very same tiles, in any number of processes or workers.

What the pool knows of each file (size, modification time, content hash, level-0 size, a read error)
is kept in the pool's manifest (``folder_manifest``, colour mode ``slide``): slides are hashed once,
and a slide with the content of a file ``data.exclude`` names is left out, as test images are. An
unreadable slide stops the run before it starts (or is skipped with a warning with
``data.skip_unreadable``); a slide without a tile of enough tissue is left out with a warning (the
run stops when no slide is left). A tile that fails to read during training stops the run, or with
``data.skip_unreadable`` the same key's tile of the next slide stands in (counted for the run's
log). ``record`` (written to the run's ``pool.json``) holds per slide the level read, the tissue
share and area and the tiles available; ``save_preview`` draws the tissue masks with the tiles a run
samples (``tissue.png``).
"""

from __future__ import annotations

import bisect
import functools
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..common.config import DataConfig
from ..common.errors import DataError
from ..common.io import IMAGE_EXTENSIONS, OpenHandles, write_atomic
from .crops import crop_or_resize
from .folder_manifest import FileRecord, read_record
from .pools import POOLS, Pool, excluded_by_content, first_readable, pool_records
from .slide_plan import SlidePlan, open_slide, plan_slide, reading, rgb_array, tissue_mask

SLIDE_EXTENSIONS = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".mrxs",
                              ".vms", ".svslide"})
EPOCH_CAP = 2 ** 20  # an epoch holds at most this many samples (slides keep their shares)
# the manifest's colour mode of slide rows (rows of a folder pool over the same files differ)
SLIDE_MODE = "slide"


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` float32 in [-1, 1]."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1


def read_slide_record(path: Path, mode: str = SLIDE_MODE, reader: str = "tiffslide") -> FileRecord:
    """A manifest row for a slide (``folder_manifest.read_record``): its size, modification time,
    content hash, level-0 size and the 4 x 4 thumbnail of its thumbnail (``error``: why it cannot be
    read)."""

    def picture(p: Path) -> tuple[torch.Tensor, int, int]:
        slide = open_slide(p, reader)
        with reading(p):
            thumb, (width, height) = to_tensor(rgb_array(slide.get_thumbnail((64, 64)))), slide.dimensions
            slide.close()
        return thumb, width, height

    return read_record(path, mode, picture, "slide")


def slide_records(roots: list[str], manifest: str, reader: str):
    """``pools.pool_records`` of the slides under ``roots`` (each slide read once into the
    manifest)."""
    return pool_records(roots, SLIDE_MODE, manifest, SLIDE_EXTENSIONS,
                        lambda p, m: read_slide_record(p, m, reader))


def slide_digests(pool: DataConfig) -> dict[str, str]:
    """``{slide: content hash}`` of the slide pool ``pool`` that ``pool.exclude`` leaves in (from
    its manifest)."""
    _, files, records, _ = slide_records(pool.root, pool.manifest, pool.slide_reader)
    banned = excluded_by_content(records, pool.exclude, SLIDE_EXTENSIONS | IMAGE_EXTENSIONS)
    return {str(f): r.sha1 for i, (f, r) in enumerate(zip(files, records)) if i not in banned}


class SlideDataset(torch.utils.data.Dataset):
    """Tiles of whole-slide images; an item is ``(index, key)`` -> ``(image [3, S, S], key)`` (see
    the module)."""

    def __init__(self, roots: list[str], crop_size: int, hflip: bool = True,
                 exclude: list[str] = (), skip_unreadable: bool = False, manifest: str = "",
                 mpp: float = 0.0, level: int = 0, tissue_threshold: float = 0.0,
                 tissue_min: float = 0.5, reader: str = "tiffslide"):
        self.crop_size, self.hflip, self.reader = crop_size, hflip, reader
        self.skip_unreadable, self.skipped_in_training, self.unreadable_in_training = skip_unreadable, 0, set()
        where, files, records, read = slide_records(roots, manifest, reader)
        banned = excluded_by_content(records, list(exclude), SLIDE_EXTENSIONS | IMAGE_EXTENSIONS)
        self.plans, skipped, bare = [], [], []
        for i, (f, r) in enumerate(zip(files, records)):
            if i in banned:
                continue
            try:
                if not r.readable:
                    raise DataError(r.error)
                slide = open_slide(f, reader)
                try:
                    plan = plan_slide(str(f), slide, crop_size, mpp, level,
                                      tissue_threshold, tissue_min)
                finally:
                    slide.close()
            except DataError as e:
                if not skip_unreadable:
                    raise DataError(
                        f"{e} (set data.skip_unreadable=true to skip such slides)") from None
                warnings.warn(f"skipping slide {f}: {e}", stacklevel=2)
                skipped.append(str(f))
                continue
            if not plan.count:
                bare.append(str(f))
                continue
            self.plans.append(plan)
        if bare:
            warnings.warn(f"{len(bare)} slide(s) without a tile of at least {tissue_min:g} tissue, e.g. {bare[0]}: "
                          f"left out (lower data.tissue_min or set data.tissue_threshold)", stacklevel=2)
        if not self.plans:
            raise DataError(f"{', '.join(map(str, roots[:3]))}: no slide gives tiles"
                            + (" (every slide is excluded by data.exclude)" if len(banned) == len(files) else
                               f" ({len(bare)} without tissue, {len(skipped)} unreadable, {len(banned)} excluded)"))
        tiles = np.array([max(1, p.tiles_available) for p in self.plans], dtype=np.float64)
        if tiles.sum() > EPOCH_CAP:  # the sampler permutes an epoch's indices: keep that list small
            tiles = np.maximum(1, np.round(tiles * EPOCH_CAP / tiles.sum()))
        self.ends = np.cumsum(tiles).astype(np.int64).tolist()
        self._slide = OpenHandles(functools.partial(open_slide, reader=reader))
        self.record = {"slides": len(self.plans), "images": self.ends[-1], "excluded": len(banned),
                       "unreadable_skipped": len(skipped), "without_tissue": len(bare),
                       "tile": {"crop_size": crop_size, "mpp": mpp or None,
                                "level": None if mpp else level, "tissue_min": tissue_min,
                                "reader": reader},
                       "manifest": str(where), "manifest_read": read,
                       "per_slide": [p.describe() for p in self.plans],
                       "excluded_files": [str(files[i]) for i in sorted(banned)],
                       "skipped_files": skipped, "without_tissue_files": bare}

    def __len__(self) -> int:
        return self.ends[-1]

    def slide_of(self, index: int) -> int:
        """The number of the slide (in ``plans``) that sample ``index`` falls in."""
        return bisect.bisect_right(self.ends, index % self.ends[-1])

    def tile(self, index: int, key: int) -> tuple[SlidePlan, tuple[int, int]]:
        """The slide ``index`` falls in and the level-0 (x, y) of the tile ``key`` draws there."""
        plan = self.plans[self.slide_of(index)]
        return plan, plan.start(key)

    def __getitem__(self, item: tuple[int, int]):
        index, key = item
        n, first = len(self.plans), self.slide_of(index)

        def read(plan: SlidePlan):
            x, y = plan.start(key)
            with reading(plan.path, f"read at ({x}, {y}), level {plan.level}"):
                return plan, self._slide(plan.path).read_region((x, y), plan.level, (plan.read_side,) * 2)

        (plan, region), skipped = first_readable(
            (self.plans[(first + shift) % n] for shift in range(n)), read, self.skip_unreadable, "tile",
            self.unreadable_in_training,
            f"{', '.join(p.path for p in self.plans[:3])}: no slide of the pool reads any more")
        self.skipped_in_training += skipped
        return crop_or_resize(to_tensor(rgb_array(region)), key, self.crop_size, "resize", self.hflip,
                              name=plan.path), key

    def save_preview(self, path: Path, items: list[tuple[int, int]], per_row: int = 4,
                     side: int = 256) -> None:
        """A PNG of up to 16 slides' thumbnails (longest side ``side``), tissue (by each slide's
        threshold) shown as it is and the rest dimmed, with the tiles of ``items``
        (``(index, key)``, e.g. the run's first steps) outlined in red."""
        tiles = [self.tile(index, key) for index, key in items]
        panels = []
        for plan in self.plans[:16]:
            thumb = rgb_array(self._slide(plan.path).get_thumbnail((side, side)))
            mask = tissue_mask(thumb, plan.threshold)[0]
            dimmed = np.where(mask[..., None], thumb, (thumb * 0.35 + 255 * 0.2).astype(np.uint8))
            panel = Image.fromarray(dimmed.astype(np.uint8))
            draw = ImageDraw.Draw(panel)
            sx, sy = thumb.shape[1] / plan.size[0], thumb.shape[0] / plan.size[1]
            for where, (x, y) in tiles:
                if where is plan:
                    reach = plan.footprint
                    draw.rectangle([x * sx, y * sy, (x + reach) * sx, (y + reach) * sy],
                                   outline=(220, 0, 0))
            panels.append(panel)
        rows, tall = math.ceil(len(panels) / per_row), max(panel.height for panel in panels)
        sheet = Image.new("RGB", (min(len(panels), per_row) * side, rows * tall), (255, 255, 255))
        for i, panel in enumerate(panels):
            sheet.paste(panel, ((i % per_row) * side, (i // per_row) * tall))
        write_atomic(path, lambda tmp: sheet.save(tmp, format="PNG"))


POOLS.register("slides", Pool(lambda d: SlideDataset(d.root, d.crop_size, d.hflip, d.exclude,
                                                     d.skip_unreadable, d.manifest, d.mpp,
                                                     d.slide_level, d.tissue_threshold,
                                                     d.tissue_min, d.slide_reader),
                               slide_digests, containers=True))
