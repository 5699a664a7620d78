"""GlaS (Warwick-QU), binary gland segmentation with instance maps.

The release is one folder of ``train_1.bmp`` + ``train_1_anno.bmp``, ..., ``testA_1.bmp`` /
``testB_1.bmp`` + their ``_anno`` files (other files such as ``Grade.csv`` are ignored); a single
sub-folder named ``Warwick QU Dataset*`` below ``root`` is also found. The anno is an instance map
(each gland its own grey value, 0 background): label = anno > 0, instances = anno relabelled to 1..K
in increasing grey value. ``train`` -> ``train_*``; ``test`` -> ``testA_*`` then ``testB_*`` (group
``"testA"`` / ``"testB"``), numerically sorted.

The alternative flat layout ``ROOT/{train,test}/img/<stem>.<ext>`` +
``ROOT/{train,test}/labelcol/<stem>_anno.<ext>`` is used when ``ROOT/<split>/img`` exists; there a
mask with a single non-zero value is taken as binary (instances = its 4-connected components),
otherwise as an instance map; the group comes from a ``testA`` / ``testB`` stem prefix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...common.errors import DataError
from ...common.io import load_image
from ...common.labels import consecutive_ids
from ...stage2.glas_release import release_images
from ...stage2.sources import require_dir
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
)

CLASS_NAMES = ["background", "gland"]
def _test_group(img: Path) -> str:
    return next((g for g in ("testA", "testB") if img.stem.startswith(g)), "")


def _entries(root: Path, split: str) -> tuple[list[Entry], bool]:
    """Entries and whether they come from the flat layout (binary-or-instance masks)."""
    flat = root / split / "img"
    if flat.is_dir():
        labels = require_dir(root / split / "labelcol")
        return pair_masks(images_in(flat), Listing(labels),
                          lambda img: ([img.stem + "_anno", img.stem],
                                        LOSSLESS_MASK_EXTENSIONS),
                          "mask", flat, _test_group), True

    folder, images = release_images(root, split)
    return pair_masks(images, Listing(folder), lambda img: ([img.stem + "_anno"],
                                                             [img.suffix,
                                                              *LOSSLESS_MASK_EXTENSIONS]),
                      "annotation", folder,
                      lambda img: "" if split == "train" else img.stem.split("_")[0]), False


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
