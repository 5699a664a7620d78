"""Image labels from a segmentation source, so one export is judged at image and at pixel level on
the same images: the image-label source ``<source>-windows`` of every labeled source ``<source>``
(``synthetic-windows``, ``generic-windows``, ``glas-windows``, ...; registered in
``classify.datasets.CLASS_SOURCES``).

Each image of a split is cut into non-overlapping windows of ``data.crop_size`` px (from the top
left; a remainder at the right and bottom edges is left out); a window's label is its most frequent
class when that class covers more than ``MAJORITY`` of the window's labeled pixels, and a window
without such a class is left out. The windows of one image share its group (``ClassDataset.groups``:
the image's slide where the source knows it, else its name), so validation holds out whole images
and no image is cut between training and validation; test windows come from the test images only.
The classes are the segmentation source's.

It lives in ``study`` because it joins the two tasks' sources, which sit on the same floor
(``segment``, ``classify``) and import neither.
"""

from __future__ import annotations

import functools

import torch

from ..classify.datasets import CLASS_SOURCES, ClassDataset, ClassSource
from ..common.errors import DataError
from ..common.labels import IGNORE_INDEX
from ..segment.datasets import SOURCES, load_split

MAJORITY = 0.5  # a window's class must cover more than this share of its labeled pixels


def window_split(source: str, root, split: str, synthetic_seed: int = 0, synthetic_size: int = 64,
                 *, window: int, num_classes: int = 0) -> ClassDataset:
    """The windows of ``split`` of the labeled source ``source`` as an image-label split (see the
    module)."""
    ds = load_split(source, None if root is None else str(root), split,
                    synthetic_seed=synthetic_seed, synthetic_size=synthetic_size,
                    **({"num_classes": num_classes} if num_classes else {}))
    names, labels, places, groups, units = [], [], [], [], []
    for i in range(len(ds)):
        image = ds[i]
        height, width = image.label.shape
        for top in range(0, height - window + 1, window):
            for left in range(0, width - window + 1, window):
                cut = image.label[top:top + window, left:left + window]
                cut = cut[cut != IGNORE_INDEX]
                if not cut.numel():
                    continue
                counts = torch.bincount(cut, minlength=ds.num_classes)
                if counts.max() <= MAJORITY * cut.numel():
                    continue
                names.append(f"{image.name}_{top}_{left}")
                labels.append(int(counts.argmax()))
                places.append((i, top, left))
                groups.append(image.slide or image.name)
                units.append(image.name)
    if not names:
        raise DataError(
            f"{source}-windows: no window of {window} px in the {split} split has a majority class "
            f"(data.crop_size, or a study's bench.image_window, larger than the images?)")

    @functools.lru_cache(maxsize=8)
    def image_of(i: int) -> torch.Tensor:
        return ds[i].image

    def load(k: int) -> torch.Tensor:
        i, top, left = places[k]
        return image_of(i)[:, top:top + window, left:left + window]

    files = ds.image_files  # [i]: image i's file, for a source of files
    image_files = [files[i] for i, _, _ in places] if len(files) == len(ds) else []
    return ClassDataset(f"{source}-windows", split, names, labels, list(ds.class_names), load,
                        image_files, [], groups, list(ds.files), units)


for _name, _spec in SOURCES.items():
    CLASS_SOURCES.register(f"{_name}-windows", ClassSource(functools.partial(window_split, _name),
                                                           needs_root=_spec.needs_root, windowed=True))
