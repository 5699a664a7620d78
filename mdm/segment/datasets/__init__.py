"""Labeled segmentation datasets, read from their official layouts: the registry ``SOURCES``.

``load_split(source, root, split)`` gives a ``LabeledDataset`` (see ``base``); one module per source
holds its layout: ``glas``, ``monuseg``, ``class_maps`` (``ffhq34``, ``celeba19``, ``generic``) and
``synthetic`` (built in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...common.errors import DataError
from ...common.registry import Registry
from ...stage2.sources import SPLITS, check_split, source_root
from . import class_maps, glas, monuseg, synthetic
from .base import LabeledDataset, LabeledImage


@dataclass(frozen=True)
class LabeledSource:
    """A registered labeled source: ``open(root, split, num_classes, class_names, synthetic_seed,
    synthetic_size)`` gives a ``LabeledDataset`` (``root``: a ``Path``, or ``None`` when
    ``needs_root`` is false); ``classes``: its fixed number of classes (instance sources: 2) or
    ``None`` (class-id maps: ``num_classes`` sets it)."""

    open: Callable[..., LabeledDataset]
    classes: int | None = None
    needs_root: bool = True


def _rename(dataset: LabeledDataset, class_names: list[str] | None) -> LabeledDataset:
    if class_names is not None:
        if len(class_names) != dataset.num_classes:
            raise DataError(f"{len(class_names)} class names given; source {dataset.source!r} has "
                            f"{dataset.num_classes} classes")
        dataset.class_names = list(class_names)
    return dataset


def _instances(open_split) -> Callable[..., LabeledDataset]:
    """A source of instance masks (2 classes; ``class_names`` renames them) from its
    ``open_split(root, split)``."""
    return lambda root, split, num_classes, class_names, seed, size: _rename(
        open_split(root, split), class_names)


def _class_maps(source: str) -> Callable[..., LabeledDataset]:
    return lambda root, split, num_classes, class_names, seed, size: class_maps.open_split(
        source, root, split, num_classes, class_names)


SOURCES: Registry[LabeledSource] = Registry("labeled sources", "data.source", "labeled source")
SOURCES.register("glas", LabeledSource(_instances(glas.open_split), classes=2))
SOURCES.register("monuseg", LabeledSource(_instances(monuseg.open_split), classes=2))
for _name in ("ffhq34", "celeba19", "generic"):
    SOURCES.register(_name, LabeledSource(_class_maps(_name)))
SOURCES.register("synthetic", LabeledSource(
    lambda root, split, num_classes, class_names, seed, size: _rename(
        synthetic.open_split(split, seed, size),
        class_names),
    classes=2, needs_root=False))


def load_split(source: str, root: str | None, split: str, *, synthetic_seed: int = 0,
               synthetic_size: int = 64, num_classes: int | None = None,
               class_names: list[str] | None = None) -> LabeledDataset:
    """One split (``"train"`` / ``"test"``) of the labeled source ``source`` (``SOURCES``; see the
    module docstring for the layouts).

    ``num_classes`` / ``class_names`` set the classes of the class-id map sources (``ffhq34``,
    ``celeba19``, ``generic``); a source of fixed classes (``glas``, ``monuseg``, ``synthetic``: 2)
    takes only its own number (``class_names``, if given, renames them).
    """
    spec = SOURCES[source]
    check_split(split)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if num_classes is not None and num_classes != len(class_names):
            raise DataError(f"{len(class_names)} class names given for num_classes={num_classes}")
    if num_classes is not None and num_classes < 1:
        raise DataError(f"num_classes must be >= 1, got {num_classes}")
    if spec.classes is not None and num_classes not in (None, spec.classes):
        raise DataError(
            f"source {source!r} has {spec.classes} classes, not num_classes={num_classes}")
    return spec.open(source_root(source, root, spec.needs_root), split, num_classes, class_names,
                     synthetic_seed, synthetic_size)


__all__ = ["SOURCES", "SPLITS", "LabeledDataset", "LabeledImage", "LabeledSource", "check_split",
           "load_split", "source_root"]
