"""Unlabeled image folders for pretraining.

Folders are searched recursively for png, jpg, jpeg, bmp, tif and tiff files. Files listed in ``exclude`` (files,
or folders of files) are removed by resolved path **and** by content hash, so a copy of a test image elsewhere in the
pool never leaks into pretraining.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .transforms import crop_or_resize

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class DataError(ValueError):
    """Bad input data; the message names the file or folder."""


def list_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (a folder, searched recursively, or one file), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def gather_images(roots: list[str], exclude: list[str] = ()) -> list[Path]:
    """Images under every root, minus the excluded ones (by path and by content hash)."""
    files: list[Path] = []
    for root in roots:
        found = list_images(root)
        if not found:
            raise DataError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        files += found
    if exclude:
        excluded = [p for e in exclude for p in list_images(e)]
        paths = {p.resolve() for p in excluded}
        digests = {file_digest(p) for p in excluded}
        files = [f for f in files if f.resolve() not in paths and file_digest(f) not in digests]
        if not files:
            raise DataError(f"{', '.join(roots)}: every image is excluded by data.exclude")
    return files


def load_image(path: Path, color_mode: str = "RGB") -> torch.Tensor:
    """Read an image as ``[C, H, W]`` float32 in [-1, 1] (``RGB``: 3 channels, ``L``: 1); RGBA, palette and
    16-bit images are converted. Raises ``DataError`` naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32)
                im = Image.fromarray((arr / max(arr.max(), 1.0) * 255).astype(np.uint8))
            arr = np.asarray(im.convert(color_mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e.__class__.__name__}: {e})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the header, or None when the file is not a readable image."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any decoder failure means unreadable
        return None


class ImageFolderDataset(torch.utils.data.Dataset):
    """Unlabeled images; an item is requested as ``(index, key)`` and returned as ``(image [C, S, S], key)``."""

    def __init__(self, roots: list[str], crop_size: int, crop: str = "random", hflip: bool = True,
                 color_mode: str = "RGB", exclude: list[str] = (), skip_unreadable: bool = False):
        self.crop_size, self.crop, self.hflip, self.color_mode = crop_size, crop, hflip, color_mode
        files = gather_images(roots, exclude)
        kept = []
        for f in files:
            size = image_size(f)
            if size is None:
                if not skip_unreadable:
                    raise DataError(f"{f}: cannot read image (set data.skip_unreadable=true to skip such files)")
                warnings.warn(f"skipping unreadable image {f}", stacklevel=2)
                continue
            if crop == "random" and min(size) < crop_size:
                raise DataError(f"{f}: {size[0]}x{size[1]} is smaller than the crop size {crop_size}; use "
                                f"data.crop=resize or a smaller data.crop_size")
            kept.append(f)
        if not kept:
            raise DataError(f"{', '.join(roots)}: no readable images")
        self.files = kept

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]):
        index, key = item
        path = self.files[index]
        image = load_image(path, self.color_mode)
        return crop_or_resize(image, key, self.crop_size, self.crop, self.hflip, name=str(path)), key
