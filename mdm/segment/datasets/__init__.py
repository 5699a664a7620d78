"""Labeled segmentation datasets, read from their official layouts: the registry.

``load_split(source, root, split)`` gives a ``LabeledDataset`` (see ``base``); one module per source holds its layout:
``glas``, ``monuseg``, ``class_maps`` (``ffhq34``, ``celeba19``, ``generic``) and ``synthetic`` (built in).
"""

from __future__ import annotations

from pathlib import Path

from ...common.errors import DataError
from . import class_maps, glas, monuseg, synthetic
from .base import LabeledDataset, LabeledImage, require_dir

SOURCES = ("glas", "monuseg", "ffhq34", "celeba19", "generic", "synthetic")
SPLITS = ("train", "test")


def _rename(dataset: LabeledDataset, class_names: list[str] | None) -> LabeledDataset:
    if class_names is not None:
        if len(class_names) != dataset.num_classes:
            raise DataError(f"{len(class_names)} class names given; source {dataset.source!r} has "
                            f"{dataset.num_classes} classes")
        dataset.class_names = list(class_names)
    return dataset


def load_split(source: str, root: str | None, split: str, *, synthetic_seed: int = 0, synthetic_size: int = 64,
               num_classes: int | None = None, class_names: list[str] | None = None) -> LabeledDataset:
    """One split (``"train"`` / ``"test"``) of a labeled source (see the module docstring for the layouts).

    ``num_classes`` / ``class_names`` set the classes of ``ffhq34``, ``celeba19`` and ``generic`` (class-id maps);
    the instance sources (``glas``, ``monuseg``, ``synthetic``) always have 2 classes (``num_classes`` may only be
    2; ``class_names``, if given, renames them).
    """
    if source not in SOURCES:
        raise DataError(f"unknown labeled source {source!r} (use one of {', '.join(SOURCES)})")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (use train or test)")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if num_classes is not None and num_classes != len(class_names):
            raise DataError(f"{len(class_names)} class names given for num_classes={num_classes}")
    if num_classes is not None and num_classes < 1:
        raise DataError(f"num_classes must be >= 1, got {num_classes}")
    if source in ("glas", "monuseg", "synthetic") and num_classes not in (None, 2):
        raise DataError(f"source {source!r} has 2 classes (background + foreground), not num_classes={num_classes}")
    if source == "synthetic":
        return _rename(synthetic.open_split(split, synthetic_seed, synthetic_size), class_names)

    if root is None or str(root) == "":
        raise DataError(f"source {source!r} needs a root folder")
    root_path = require_dir(Path(root).expanduser(), "dataset root folder")
    if source == "glas":
        return _rename(glas.open_split(root_path, split), class_names)
    if source == "monuseg":
        return _rename(monuseg.open_split(root_path, split), class_names)
    return class_maps.open_split(source, root_path, split, num_classes, class_names)


__all__ = ["SOURCES", "SPLITS", "LabeledDataset", "LabeledImage", "load_split"]
