"""The built-in synthetic histology as a labeled source: ``train`` -> ``labeled_ids()``, ``test`` ->
``test_ids()`` of ``SyntheticHistology(seed, image_size)``; names ``s03_i002`` (slide 3, image 2);
no files."""

from __future__ import annotations

from ...common.synthetic import SyntheticHistology
from .base import Entry, LabeledDataset, LabeledImage

CLASS_NAMES = ["background", "gland"]


def open_split(split: str, seed: int, size: int) -> LabeledDataset:
    source = SyntheticHistology(seed=seed, image_size=size)
    ids = source.labeled_ids() if split == "train" else source.test_ids()
    entries = [Entry(f"s{s:02d}_i{i:03d}", (s, i), None) for s, i in ids]

    def load(entry: Entry) -> LabeledImage:
        image, instances = source.render(*entry.image)
        return LabeledImage(entry.name, image, (instances > 0).long(), instances, entry.group,
                            slide=entry.name.split("_")[0])

    return LabeledDataset(entries, load, 2, CLASS_NAMES, "synthetic", split)
