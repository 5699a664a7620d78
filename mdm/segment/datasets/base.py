"""What every labeled source shares: the item and dataset types, file listing, mask reading and
checks.

A ``LabeledDataset`` is a lazy list of ``LabeledImage`` (image ``[3, H, W]`` in [-1, 1], label
``[H, W]`` int64 class ids with ``IGNORE_INDEX`` = ignore, and an instance map when the ground truth
has one). Listing (missing root, no images, an image without its mask) is checked when a split is
opened; file contents (size mismatch, class ids out of range, unreadable files) when an item is
loaded. Every problem raises ``DataError`` naming the file or folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from ...common.errors import DataError
from ...common.io import IMAGE_EXTENSIONS, text_named
from ...common.labels import IGNORE_INDEX

LOSSLESS_MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


@dataclass
class LabeledImage:
    name: str  # file stem, unique within the split
    image: torch.Tensor  # [3, H, W] float32 in [-1, 1]
    label: torch.Tensor  # [H, W] int64 class ids; IGNORE_INDEX = ignore
    # [H, W] int64 instance ids (0 = background), when the ground truth has them
    instances: torch.Tensor | None
    group: str = ""  # subset name, e.g. "testA" / "testB" for GlaS test images
    slide: str = ""  # the slide (or patient) the image comes from, where the source knows it


@dataclass(frozen=True)
class Entry:
    """One item before loading: where its files are and how to read them."""

    name: str
    image: Any  # a Path, or a (slide, index) id for the synthetic source
    mask: Path | None
    group: str = ""


class LabeledDataset:
    """A lazy list of ``LabeledImage``: the files are listed up front and read in
    ``__getitem__``."""

    def __init__(self, entries: list[Entry], loader: Callable[[Entry], LabeledImage],
                 num_classes: int, class_names: list[str], source: str = "", split: str = ""):
        self._entries = list(entries)
        self._loader = loader
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.source, self.split = source, split

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> LabeledImage:
        return self._loader(self._entries[i])

    def __iter__(self) -> Iterator[LabeledImage]:
        for entry in self._entries:
            yield self._loader(entry)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    @property
    def image_files(self) -> list[Path]:
        """The image files of the items (none for a source without files)."""
        return [e.image for e in self._entries if isinstance(e.image, Path)]

    @property
    def files(self) -> list[Path]:
        """Every file the items are read from: images and masks (none for a source without
        files)."""
        return [p for e in self._entries for p in (e.image, e.mask) if isinstance(p, Path)]

    @property
    def groups(self) -> list[str]:
        return [e.group for e in self._entries]

    def subset(self, indices: list[int]) -> LabeledDataset:
        n = len(self._entries)
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise IndexError(f"subset indices {bad[:5]} out of range for {n} items")
        return LabeledDataset([self._entries[i] for i in indices], self._loader, self.num_classes,
                              self.class_names, self.source, self.split)

    def __repr__(self) -> str:
        return (f"LabeledDataset(source={self.source!r}, split={self.split!r}, items={len(self)}, "
                f"num_classes={self.num_classes})")


def natural_key(text: str) -> list:
    """Sort key that orders digit runs numerically (``train_2`` before ``train_10``)."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", text) if tok]


def images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, naturally sorted by name."""
    files = [text_named(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


class Listing:
    """The files of one folder, listed once, looked up by name (extension case-insensitive)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.by_lower = {
            p.name.lower(): p for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}

    def find(self, stems: list[str], extensions) -> Path | None:
        """The first existing ``folder/<stem><ext>`` over stems, then extensions."""
        for stem in stems:
            for ext in extensions:
                hit = self.by_lower.get((stem + ext).lower())
                if hit is not None:
                    return hit
        return None


def check_unique(entries: list[Entry], folder: Path) -> None:
    seen: dict[str, Entry] = {}
    for e in entries:
        if e.name in seen:
            raise DataError(
                f"{folder}: two images share the name {e.name!r} ({seen[e.name].image}, {e.image})")
        seen[e.name] = e


def read_mask(path: Path, allow_color: bool) -> np.ndarray:
    """A mask image as an ``[H, W]`` int64 array, EXIF orientation applied. Palette images give
    their indices. A colour mask is rejected unless ``allow_color`` (instance / binary masks): then
    grey colour masks give one channel and true colour ones give one integer per colour (black stays
    0)."""
    try:
        with Image.open(path) as im:
            # oriented as load_image orients its image
            arr = np.asarray(ImageOps.exif_transpose(im))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read mask ({e.__class__.__name__}: {e})") from None
    if arr.ndim == 3:
        if not allow_color:
            raise DataError(f"{path}: masks must be single-channel class-id images (got {arr.shape[2]} channels); "
                            f"save class ids as an 8-bit grey or palette PNG")
        arr = arr[:, :, :3].astype(np.int64)
        if arr.shape[2] == 1 or (arr == arr[:, :, :1]).all():
            arr = arr[:, :, 0]
        else:
            arr = (arr[:, :, 0] << 16) | (arr[:, :, 1] << 8) | arr[:, :, 2]
    return arr.astype(np.int64)


def check_size(mask: np.ndarray, image: torch.Tensor, mask_path: Path, image_path) -> None:
    if tuple(mask.shape) != tuple(image.shape[-2:]):
        h, w = image.shape[-2:]
        raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} is "
                        f"{w}x{h}")


def pair_masks(images: Sequence[Path], listing: Listing,
               names: Callable[[Path], tuple[list[str], Sequence[str]]],
               what: str, folder: Path, group: Callable[[Path], str] = lambda _: "") -> list[Entry]:
    """One ``Entry`` per image, with the mask that ``listing`` holds under the first of
    ``names(image)`` (``(stems, extensions)``, tried stem by stem); an image without one is a
    ``DataError`` naming both files, and so are an empty ``images`` list (``folder`` is named) and
    two images with one stem."""
    entries = []
    for img in images:
        stems, extensions = names(img)
        mask = listing.find(stems, extensions)
        if mask is None:
            raise DataError(f"{img}: no {what} {listing.folder / (stems[0] + extensions[0])}")
        entries.append(Entry(img.stem, img, mask, group(img)))
    if not entries:
        raise DataError(
            f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    check_unique(entries, folder)
    return entries


def components(binary: np.ndarray) -> np.ndarray:
    """4-connected components of a binary mask as instance ids 1..K."""
    labels, _ = ndimage.label(binary)
    return labels.astype(np.int64)


def check_classes(label: np.ndarray, num_classes: int, path: Path) -> None:
    bad = (label < 0) | ((label >= num_classes) & (label != IGNORE_INDEX))
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(str(v) for v in values[:8].tolist())
        raise DataError(f"{path}: class id(s) {shown} out of range for {num_classes} classes "
                        f"(valid: 0..{num_classes - 1}, or {IGNORE_INDEX} = ignore)")


def from_instances(entry: Entry, image: torch.Tensor, instances: np.ndarray) -> LabeledImage:
    """The item of an instance-map ground truth: label = instances > 0."""
    inst = torch.from_numpy(np.ascontiguousarray(instances, dtype=np.int64))
    return LabeledImage(entry.name, image, (inst > 0).long(), inst, entry.group)
