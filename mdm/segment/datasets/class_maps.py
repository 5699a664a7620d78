"""Class-id maps: the DDPM-segmentation layout (FFHQ-34, CelebA-19) and the generic layout.

- ``ffhq34`` / ``celeba19``: ``ROOT/real/<split>/<stem>.<ext>`` + ``<stem>.npy`` (an integer label
  map). ``num_classes`` defaults to 34 / 19 and is never inferred from the data.
- ``generic``: ``ROOT/<split>/images/<stem>.<ext>`` + ``ROOT/<split>/masks/<stem>.png``
  (single-channel class ids, 255 = ignore). ``num_classes`` comes from the keyword or from
  ``ROOT/classes.txt`` (one class name per line).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ...common.errors import DataError
from ...common.io import load_image
from ...stage2.sources import require_dir
from .base import (
    LOSSLESS_MASK_EXTENSIONS,
    Entry,
    LabeledDataset,
    LabeledImage,
    Listing,
    check_classes,
    check_size,
    images_in,
    pair_masks,
    read_mask,
)

DDPM_SEG_CLASSES = {"ffhq34": 34, "celeba19": 19}


def _ddpm_seg_entries(root: Path, split: str) -> list[Entry]:
    folder = root / "real" / split
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such folder (expected the DDPM-segmentation layout ROOT/real/{split}/)")
    return pair_masks(images_in(folder), Listing(folder), lambda img: ([img.stem], [".npy"]),
                      "label map", folder)


def _generic_entries(root: Path, split: str) -> list[Entry]:
    images = require_dir(root / split / "images")
    masks = require_dir(root / split / "masks")
    return pair_masks(images_in(images), Listing(masks),
                      lambda img: ([img.stem], LOSSLESS_MASK_EXTENSIONS), "mask", images)


def _read_npy_label(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read label map ({e.__class__.__name__}: {e})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.ndim != 2:
        raise DataError(f"{path}: label map must be 2-D [H, W], got shape {tuple(arr.shape)}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise DataError(f"{path}: label map holds non-integer values")
    elif arr.dtype.kind not in "iub":
        raise DataError(f"{path}: label map has dtype {arr.dtype}, expected integers")
    return arr.astype(np.int64)


def _loader(num_classes: int, npy: bool) -> Callable[[Entry], LabeledImage]:
    def load(entry: Entry) -> LabeledImage:
        image = load_image(entry.image, "RGB")
        label = _read_npy_label(entry.mask) if npy else read_mask(entry.mask, allow_color=False)
        check_size(label, image, entry.mask, entry.image)
        check_classes(label, num_classes, entry.mask)
        return LabeledImage(entry.name, image, torch.from_numpy(np.ascontiguousarray(label)),
                            None, entry.group)

    return load


def _generic_classes(root: Path, num_classes: int | None, class_names: list[str] | None):
    listed = None
    classes_txt = root / "classes.txt"
    if class_names is None and classes_txt.is_file():
        try:
            text = classes_txt.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{classes_txt}: not UTF-8 text; save it as UTF-8 (one class name per line)") from None
        listed = [line.strip() for line in text.splitlines() if line.strip()]
        if not listed:
            raise DataError(f"{classes_txt}: no class names")
        if num_classes is not None and num_classes != len(listed):
            raise DataError(
                f"{classes_txt}: lists {len(listed)} classes but num_classes={num_classes}")
        class_names = listed
    if num_classes is None and class_names is None:
        raise DataError(f"{root}: the generic layout needs num_classes= or {classes_txt} (one class name per line)")
    return num_classes, class_names


def open_split(source: str, root: Path, split: str, num_classes: int | None,
               class_names: list[str] | None) -> LabeledDataset:
    """``source``: ``ffhq34``, ``celeba19`` or ``generic``."""
    if source in DDPM_SEG_CLASSES:
        entries = _ddpm_seg_entries(root, split)
        npy = True
        if num_classes is None:
            num_classes = len(class_names) if class_names is not None else DDPM_SEG_CLASSES[source]
    else:
        entries = _generic_entries(root, split)
        npy = False
        num_classes, class_names = _generic_classes(root, num_classes, class_names)
        if num_classes is None:
            num_classes = len(class_names)
    if class_names is None:
        class_names = [f"class_{k}" for k in range(num_classes)]
    return LabeledDataset(entries, _loader(num_classes, npy), num_classes,
                          class_names, source, split)
