"""GlaS (Warwick-QU), binary gland segmentation with instance maps.

The release is one folder of ``train_1.bmp`` + ``train_1_anno.bmp``, ..., ``testA_1.bmp`` / ``testB_1.bmp`` + their
``_anno`` files (other files such as ``Grade.csv`` are ignored); a single sub-folder named ``Warwick QU Dataset*``
below ``root`` is also found. The anno is an instance map (each gland its own grey value, 0 background): label =
anno > 0, instances = anno relabelled to 1..K in increasing grey value. ``train`` -> ``train_*``; ``test`` ->
``testA_*`` then ``testB_*`` (group ``"testA"`` / ``"testB"``), numerically sorted.

The alternative flat layout ``ROOT/{train,test}/img/<stem>.<ext>`` + ``ROOT/{train,test}/labelcol/<stem>_anno.<ext>``
is used when ``ROOT/<split>/img`` exists; there a mask with a single non-zero value is taken as binary (instances =
its 4-connected components), otherwise as an instance map; the group comes from a ``testA`` / ``testB`` stem prefix.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...common.errors import DataError
from ...common.io import IMAGE_EXTENSIONS, load_image
from ...common.labels import consecutive_ids
from .base import (
    LOSSLESS_MASK_EXTENSIONS,
    Entry,
    LabeledDataset,
    LabeledImage,
    Listing,
    check_size,
    components,
    from_instances,
    images_in,
    pair_masks,
    read_mask,
    require_dir,
)

CLASS_NAMES = ["background", "gland"]
_NAME = re.compile(r"^(train|testA|testB)_(\d+)$")
_SPLIT_PREFIXES = {"train": ("train",), "test": ("testA", "testB")}


def _release_folder(root: Path) -> Path | None:
    """The folder holding the released ``train_1.bmp``-style files: ``root`` or a ``Warwick QU Dataset*`` child."""
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("warwick"))
    for folder in candidates:
        if any(_NAME.match(p.stem) for p in folder.iterdir()
               if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
            return folder
    return None


def _test_group(img: Path) -> str:
    return next((g for g in ("testA", "testB") if img.stem.startswith(g)), "")


def release_images(root: Path, split: str) -> tuple[Path, list[Path]]:
    """The release folder below ``root`` and the images of ``split`` in it (``train_<n>``; ``testA_<n>`` then
    ``testB_<n>``), numerically sorted; annotations excluded."""
    folder = _release_folder(root)
    if folder is None:
        raise DataError(f"{root}: no GlaS images found (expected the release layout train_1.bmp + "
                        f"train_1_anno.bmp, ... or {root / split / 'img'} + {root / split / 'labelcol'})")
    prefixes = _SPLIT_PREFIXES[split]
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.stem)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and m and m.group(1) in prefixes:
            found.append((prefixes.index(m.group(1)), int(m.group(2)), p))
    if not found:
        raise DataError(f"{folder}: no GlaS {split} images ({' / '.join(pfx + '_<n>' for pfx in prefixes)})")
    return folder, [p for _, _, p in sorted(found, key=lambda t: (t[0], t[1], t[2].name))]


def _entries(root: Path, split: str) -> tuple[list[Entry], bool]:
    """Entries and whether they come from the flat layout (binary-or-instance masks)."""
    flat = root / split / "img"
    if flat.is_dir():
        labels = require_dir(root / split / "labelcol")
        return pair_masks(images_in(flat), Listing(labels), lambda img: ([img.stem + "_anno", img.stem],
                                                                          LOSSLESS_MASK_EXTENSIONS),
                          "mask", flat, _test_group), True

    folder, images = release_images(root, split)
    return pair_masks(images, Listing(folder), lambda img: ([img.stem + "_anno"],
                                                             [img.suffix, *LOSSLESS_MASK_EXTENSIONS]),
                      "annotation", folder, lambda img: "" if split == "train" else img.stem.split("_")[0]), False


def open_split(root: Path, split: str) -> LabeledDataset:
    entries, flat = _entries(root, split)

    def load(entry: Entry) -> LabeledImage:
        image = load_image(entry.image, "RGB")
        anno = read_mask(entry.mask, allow_color=True)
        check_size(anno, image, entry.mask, entry.image)
        if anno.min() < 0:
            raise DataError(f"{entry.mask}: negative values in an instance map")
        if flat and len(np.unique(anno[anno > 0])) <= 1:
            instances = components(anno > 0)  # a binary mask: glands are its connected components
        else:
            instances = consecutive_ids(anno)[0]
        return from_instances(entry, image, instances)

    return LabeledDataset(entries, load, 2, CLASS_NAMES, "glas", split)
