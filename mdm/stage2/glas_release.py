"""The GlaS (Warwick-QU) release's file naming, read by both tasks: segmentation pairs each image
with its ``_anno`` mask (``segment.datasets.glas``), classification with its grade in ``Grade.csv``
(``classify.datasets``).

The release is one folder of ``train_<n>.bmp``, ``testA_<n>.bmp`` and ``testB_<n>.bmp`` (with their
``_anno`` files beside them), or a single ``Warwick QU Dataset*`` sub-folder holding them.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..common.errors import DataError
from ..common.io import IMAGE_EXTENSIONS

NAME = re.compile(r"^(train|testA|testB)_(\d+)$")
SPLIT_PREFIXES = {"train": ("train",), "test": ("testA", "testB")}


def _release_folder(root: Path) -> Path | None:
    """The folder holding the released ``train_1.bmp``-style files: ``root`` or a
    ``Warwick QU Dataset*`` child."""
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("warwick"))
    for folder in candidates:
        if any(NAME.match(p.stem) for p in folder.iterdir()
               if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
            return folder
    return None


def release_images(root: Path, split: str) -> tuple[Path, list[Path]]:
    """The release folder below ``root`` and the images of ``split`` in it (``train_<n>``;
    ``testA_<n>`` then ``testB_<n>``), numerically sorted; annotations excluded."""
    folder = _release_folder(root)
    if folder is None:
        raise DataError(f"{root}: no GlaS images found (expected the release layout train_1.bmp + "
                        f"train_1_anno.bmp, ... or {root / split / 'img'} + {root / split / 'labelcol'})")
    prefixes = SPLIT_PREFIXES[split]
    found = []
    for p in folder.iterdir():
        m = NAME.match(p.stem)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and m and m.group(1) in prefixes:
            found.append((prefixes.index(m.group(1)), int(m.group(2)), p))
    if not found:
        raise DataError(
            f"{folder}: no GlaS {split} images ({' / '.join(pfx + '_<n>' for pfx in prefixes)})")
    return folder, [p for _, _, p in sorted(found, key=lambda t: (t[0], t[1], t[2].name))]
