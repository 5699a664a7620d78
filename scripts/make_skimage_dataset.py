#!/usr/bin/env python
"""A small real-image dataset in the generic layout, built from the histology photograph that scikit-image ships
inside its wheel (``skimage.data.immunohistochemistry()``: 512x512, immunohistochemistry of human colon tissue), for
trying the study on real pixels without downloading anything:

    pip install scikit-image
    python scripts/make_skimage_dataset.py data/skimage_nuclei
    python -m mdm.benchmark --config configs/bench_generic_cpu.yaml --set data.root=[data/skimage_nuclei]

The image is cut into 64 px tiles; each gets a nucleus mask from colour deconvolution (the haematoxylin channel of
``skimage.color.rgb2hed`` above its Otsu threshold, opened, small blobs removed): a classical labelling, not an
expert's, so read the scores as agreement with it. Tiles are dealt in a fixed order: every 4th tile is a test tile,
every other 4th a labeled training tile, the rest are unlabeled (``ROOT/unlabeled/``, no masks): 16 + 16 + 32. One
test tile is also copied into ``unlabeled/`` under another name, to show that pretraining excludes it by content.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

MARK = ".made_by_make_skimage_dataset"


def nucleus_mask(rgb: np.ndarray, min_pixels: int = 12) -> np.ndarray:
    from scipy import ndimage
    from skimage import color, filters, morphology

    haematoxylin = color.rgb2hed(rgb)[..., 0]
    mask = morphology.opening(haematoxylin > filters.threshold_otsu(haematoxylin), morphology.disk(1))
    blobs, _ = ndimage.label(mask)
    sizes = np.bincount(blobs.ravel())
    return mask & (sizes[blobs] >= min_pixels)


def main() -> None:
    from skimage import data

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="the dataset folder to write (a folder this script made earlier is replaced; any "
                                "other non-empty folder is refused)")
    p.add_argument("--tile", type=int, default=64)
    args = p.parse_args()
    final = Path(args.root)
    if final.is_file() or (final.is_dir() and any(final.iterdir()) and not (final / MARK).is_file()):
        print(f"error: {final}: exists and is not a folder this script made (no {MARK}); give a new or empty "
              f"folder, nothing there is deleted", file=sys.stderr)
        raise SystemExit(2)
    root = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("train/images", "train/masks", "test/images", "test/masks", "unlabeled"):
        (root / sub).mkdir(parents=True)
    (root / MARK).write_text("written by scripts/make_skimage_dataset.py: running it again replaces this folder\n")
    (root / "classes.txt").write_text("background\nnucleus\n")
    counts = {"train": 0, "test": 0, "unlabeled": 0}
    for name, rgb in (("ihc", data.immunohistochemistry()),):
        mask = nucleus_mask(rgb)
        t = args.tile
        k = 0
        for top in range(0, rgb.shape[0] - t + 1, t):
            for left in range(0, rgb.shape[1] - t + 1, t):
                stem = f"{name}_{top:04d}_{left:04d}"
                tile = Image.fromarray(rgb[top:top + t, left:left + t])
                split = {0: "test", 1: "train"}.get(k % 4, "unlabeled")
                k += 1
                counts[split] += 1
                if split == "unlabeled":
                    tile.save(root / "unlabeled" / f"{stem}.png")
                    continue
                tile.save(root / split / "images" / f"{stem}.png")
                Image.fromarray(mask[top:top + t, left:left + t].astype(np.uint8)).save(
                    root / split / "masks" / f"{stem}.png")
    first_test = sorted((root / "test" / "images").iterdir())[0]
    shutil.copy(first_test, root / "unlabeled" / "copy_of_a_test_tile.png")
    if final.exists():
        shutil.rmtree(final)
    root.rename(final)
    print(f"{final}: {counts['train']} labeled training tiles, {counts['test']} test tiles, {counts['unlabeled']} "
          f"unlabeled tiles (+ a renamed copy of test tile {first_test.name}, which pretraining must exclude)")


if __name__ == "__main__":
    main()
