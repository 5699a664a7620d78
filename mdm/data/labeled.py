"""Labeled segmentation datasets, read from their official layouts.

``load_split(source, root, split)`` gives a ``LabeledDataset``: a lazy list of ``LabeledImage`` (image ``[3, H, W]``
in [-1, 1], label ``[H, W]`` int64 class ids with ``IGNORE_INDEX`` = ignore, and an instance map when the ground
truth has one). Listing (missing root, no images, an image without its mask) is checked when the split is opened;
file contents (size mismatch, class ids out of range, unreadable files) are checked when an item is loaded. Every
problem raises ``DataError`` naming the file or folder.

Sources (``split`` is ``"train"`` or ``"test"``):

- ``glas`` (Warwick-QU GlaS). The release is one folder of ``train_1.bmp`` + ``train_1_anno.bmp``, ...,
  ``testA_1.bmp`` / ``testB_1.bmp`` + their ``_anno`` files (other files such as ``Grade.csv`` are ignored); a
  single sub-folder named ``Warwick QU Dataset*`` below ``root`` is also found. The anno is an instance map (each
  gland its own grey value, 0 background): label = anno > 0, instances = anno relabelled to 1..K in increasing
  grey value. ``train`` -> ``train_*``; ``test`` -> ``testA_*`` then ``testB_*`` (group ``"testA"`` / ``"testB"``),
  numerically sorted. The alternative flat layout ``ROOT/{train,test}/img/<stem>.<ext>`` +
  ``ROOT/{train,test}/labelcol/<stem>_anno.<ext>`` is used when ``ROOT/<split>/img`` exists; there a mask with a
  single non-zero value is taken as binary (instances = its 4-connected components), otherwise as an instance map;
  the group comes from a ``testA`` / ``testB`` stem prefix.
- ``monuseg``. The split folder is ``ROOT/train`` or ``ROOT/MoNuSeg 2018 Training Data`` (``ROOT/test`` or
  ``ROOT/MoNuSegTestData`` for ``test``); inside it, images are either in ``Tissue Images/`` with XML in
  ``Annotations/``, or ``.tif`` and ``.xml`` side by side. Each XML ``Region`` is one nucleus polygon, rasterised in
  file order with ids 1..K (a later polygon overwrites an earlier one where they overlap; ids are made consecutive
  again if a polygon vanishes). In the flat layout ``ROOT/<split>/img/<stem>.<ext>`` +
  ``ROOT/<split>/labelcol/<stem>.png`` the mask is binary (> 0 = nucleus) and the instances are its 4-connected
  components (``scipy.ndimage.label``), which merges touching nuclei.
- ``ffhq34`` / ``celeba19`` (DDPM-segmentation layout): ``ROOT/real/<split>/<stem>.<ext>`` + ``<stem>.npy`` (an
  integer label map). ``num_classes`` defaults to 34 / 19 and is never inferred from the data.
- ``generic``: ``ROOT/<split>/images/<stem>.<ext>`` + ``ROOT/<split>/masks/<stem>.png`` (single-channel class ids,
  255 = ignore). ``num_classes`` comes from the keyword or from ``ROOT/classes.txt`` (one class name per line).
- ``synthetic``: ``SyntheticHistology(seed=synthetic_seed, image_size=synthetic_size)``; ``train`` ->
  ``labeled_ids()``, ``test`` -> ``test_ids()``; names ``s03_i002``; ``root`` is ignored.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from scipy import ndimage

from .folder import IMAGE_EXTENSIONS, DataError, load_image
from .synthetic import SyntheticHistology

IGNORE_INDEX = 255

SOURCES = ("glas", "monuseg", "ffhq34", "celeba19", "generic", "synthetic")
SPLITS = ("train", "test")
DDPM_SEG_CLASSES = {"ffhq34": 34, "celeba19": 19}
LOSSLESS_MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


@dataclass
class LabeledImage:
    name: str  # file stem, unique within the split
    image: torch.Tensor  # [3, H, W] float32 in [-1, 1]
    label: torch.Tensor  # [H, W] int64 class ids; IGNORE_INDEX = ignore
    instances: torch.Tensor | None  # [H, W] int64 instance ids (0 = background), when the ground truth has them
    group: str = ""  # subset name, e.g. "testA" / "testB" for GlaS test images


@dataclass(frozen=True)
class _Entry:
    """One item before loading: where its files are and how to read them."""

    name: str
    image: Any  # a Path, or a (slide, index) id for the synthetic source
    mask: Path | None
    group: str = ""


class LabeledDataset:
    """A lazy list of ``LabeledImage``: the files are listed up front and read in ``__getitem__``."""

    def __init__(self, entries: list[_Entry], loader: Callable[[_Entry], LabeledImage], num_classes: int,
                 class_names: list[str], source: str = "", split: str = ""):
        self._entries = list(entries)
        self._loader = loader
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.source, self.split = source, split

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> LabeledImage:
        return self._loader(self._entries[i])

    def __iter__(self) -> Iterator[LabeledImage]:
        for entry in self._entries:
            yield self._loader(entry)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    @property
    def groups(self) -> list[str]:
        return [e.group for e in self._entries]

    def subset(self, indices: list[int]) -> LabeledDataset:
        n = len(self._entries)
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise IndexError(f"subset indices {bad[:5]} out of range for {n} items")
        return LabeledDataset([self._entries[i] for i in indices], self._loader, self.num_classes,
                              self.class_names, self.source, self.split)

    def __repr__(self) -> str:
        return (f"LabeledDataset(source={self.source!r}, split={self.split!r}, items={len(self)}, "
                f"num_classes={self.num_classes})")


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _natural_key(text: str) -> list:
    """Sort key that orders digit runs numerically (``train_2`` before ``train_10``)."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", text) if tok]


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, naturally sorted by name."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _require_dir(folder: Path, what: str = "folder") -> Path:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such {what}")
    return folder


class _Listing:
    """The files of one folder, listed once, looked up by name (extension case-insensitive)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.by_lower = {p.name.lower(): p for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}

    def find(self, stems: list[str], extensions) -> Path | None:
        """The first existing ``folder/<stem><ext>`` over stems, then extensions."""
        for stem in stems:
            for ext in extensions:
                hit = self.by_lower.get((stem + ext).lower())
                if hit is not None:
                    return hit
        return None


def _check_unique(entries: list[_Entry], folder: Path) -> None:
    seen: dict[str, _Entry] = {}
    for e in entries:
        if e.name in seen:
            raise DataError(f"{folder}: two images share the name {e.name!r} ({seen[e.name].image}, {e.image})")
        seen[e.name] = e


def _read_mask(path: Path, allow_color: bool) -> np.ndarray:
    """A mask image as an ``[H, W]`` int64 array. Palette images give their indices. A colour mask is rejected
    unless ``allow_color`` (instance / binary masks): then grey colour masks give one channel and true colour ones
    give one integer per colour (black stays 0)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read mask ({e.__class__.__name__}: {e})") from None
    if arr.ndim == 3:
        if not allow_color:
            raise DataError(f"{path}: masks must be single-channel class-id images (got {arr.shape[2]} channels); "
                            f"save class ids as an 8-bit grey or palette PNG")
        arr = arr[:, :, :3].astype(np.int64)
        if arr.shape[2] == 1 or (arr == arr[:, :, :1]).all():
            arr = arr[:, :, 0]
        else:
            arr = (arr[:, :, 0] << 16) | (arr[:, :, 1] << 8) | arr[:, :, 2]
    return arr.astype(np.int64)


def _check_size(mask: np.ndarray, image: torch.Tensor, mask_path: Path, image_path) -> None:
    if tuple(mask.shape) != tuple(image.shape[-2:]):
        h, w = image.shape[-2:]
        raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} is "
                        f"{w}x{h}")


def _relabel(instances: np.ndarray) -> np.ndarray:
    """Instance ids made consecutive (0 stays background, others 1..K in increasing value)."""
    values, inverse = np.unique(instances, return_inverse=True)
    inverse = inverse.reshape(instances.shape).astype(np.int64)
    return inverse if values[0] == 0 else inverse + 1


def _components(binary: np.ndarray) -> np.ndarray:
    """4-connected components of a binary mask as instance ids 1..K."""
    labels, _ = ndimage.label(binary)
    return labels.astype(np.int64)


def _check_classes(label: np.ndarray, num_classes: int, path: Path) -> None:
    bad = (label < 0) | ((label >= num_classes) & (label != IGNORE_INDEX))
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(str(v) for v in values[:8].tolist())
        raise DataError(f"{path}: class id(s) {shown} out of range for {num_classes} classes "
                        f"(valid: 0..{num_classes - 1}, or {IGNORE_INDEX} = ignore)")


def _from_instances(entry: _Entry, image: torch.Tensor, instances: np.ndarray) -> LabeledImage:
    inst = torch.from_numpy(np.ascontiguousarray(instances, dtype=np.int64))
    return LabeledImage(entry.name, image, (inst > 0).long(), inst, entry.group)


# ---------------------------------------------------------------------------------------------------------------
# GlaS

_GLAS_NAME = re.compile(r"^(train|testA|testB)_(\d+)$")
_GLAS_SPLIT_PREFIXES = {"train": ("train",), "test": ("testA", "testB")}


def _glas_release_folder(root: Path) -> Path | None:
    """The folder holding the released ``train_1.bmp``-style files: ``root`` or a ``Warwick QU Dataset*`` child."""
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("warwick"))
    for folder in candidates:
        if any(_GLAS_NAME.match(p.stem) for p in folder.iterdir()
               if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
            return folder
    return None


def _glas_entries(root: Path, split: str) -> tuple[list[_Entry], bool]:
    """Entries and whether they come from the flat layout (binary-or-instance masks)."""
    flat = root / split / "img"
    if flat.is_dir():
        labels = _require_dir(root / split / "labelcol")
        listing = _Listing(labels)
        entries = []
        for img in _images_in(flat):
            mask = listing.find([img.stem + "_anno", img.stem], LOSSLESS_MASK_EXTENSIONS)
            if mask is None:
                raise DataError(f"{img}: no mask {labels / (img.stem + '_anno.png')}")
            group = next((g for g in ("testA", "testB") if img.stem.startswith(g)), "")
            entries.append(_Entry(img.stem, img, mask, group))
        if not entries:
            raise DataError(f"{flat}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        _check_unique(entries, flat)
        return entries, True

    folder = _glas_release_folder(root)
    if folder is None:
        raise DataError(f"{root}: no GlaS images found (expected the release layout train_1.bmp + "
                        f"train_1_anno.bmp, ... or {root / split / 'img'} + {root / split / 'labelcol'})")
    prefixes = _GLAS_SPLIT_PREFIXES[split]
    found = []
    for p in folder.iterdir():
        m = _GLAS_NAME.match(p.stem)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and m and m.group(1) in prefixes:
            found.append((prefixes.index(m.group(1)), int(m.group(2)), p))
    if not found:
        raise DataError(f"{folder}: no GlaS {split} images ({' / '.join(pfx + '_<n>' for pfx in prefixes)})")
    listing = _Listing(folder)
    entries = []
    for _, _, img in sorted(found, key=lambda t: (t[0], t[1], t[2].name)):
        mask = listing.find([img.stem + "_anno"], [img.suffix] + list(LOSSLESS_MASK_EXTENSIONS))
        if mask is None:
            raise DataError(f"{img}: no annotation {folder / (img.stem + '_anno' + img.suffix)}")
        group = "" if split == "train" else img.stem.split("_")[0]
        entries.append(_Entry(img.stem, img, mask, group))
    _check_unique(entries, folder)
    return entries, False


def _glas_loader(flat: bool) -> Callable[[_Entry], LabeledImage]:
    def load(entry: _Entry) -> LabeledImage:
        image = load_image(entry.image, "RGB")
        anno = _read_mask(entry.mask, allow_color=True)
        _check_size(anno, image, entry.mask, entry.image)
        if anno.min() < 0:
            raise DataError(f"{entry.mask}: negative values in an instance map")
        if flat and len(np.unique(anno[anno > 0])) <= 1:
            instances = _components(anno > 0)  # a binary mask: glands are its connected components
        else:
            instances = _relabel(anno)
        return _from_instances(entry, image, instances)

    return load


# ---------------------------------------------------------------------------------------------------------------
# MoNuSeg

_MONUSEG_SPLIT_FOLDERS = {
    "train": ("train", "MoNuSeg 2018 Training Data", "MoNuSegTrainingData"),
    "test": ("test", "MoNuSegTestData", "MoNuSeg 2018 Test Data"),
}


def _monuseg_entries(root: Path, split: str) -> tuple[list[_Entry], bool]:
    """Entries and whether the masks are flat binary PNGs (else XML polygons)."""
    names = _MONUSEG_SPLIT_FOLDERS[split]
    folder = next((root / n for n in names if (root / n).is_dir()), None)
    if folder is None:
        raise DataError(f"{root}: no MoNuSeg {split} folder (looked for {', '.join(names)})")
    if (folder / "img").is_dir():
        images, labels, flat = folder / "img", _require_dir(folder / "labelcol"), True
    elif (folder / "Tissue Images").is_dir():
        images, labels, flat = folder / "Tissue Images", _require_dir(folder / "Annotations"), False
    else:
        images, labels, flat = folder, folder, False
    listing = _Listing(labels)
    entries = []
    for img in _images_in(images):
        if flat:
            mask = listing.find([img.stem], LOSSLESS_MASK_EXTENSIONS)
            expected = labels / (img.stem + ".png")
        else:
            mask = listing.find([img.stem], [".xml"])
            expected = labels / (img.stem + ".xml")
        if mask is None:
            raise DataError(f"{img}: no annotation {expected}")
        entries.append(_Entry(img.stem, img, mask))
    if not entries:
        raise DataError(f"{images}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    _check_unique(entries, images)
    return entries, flat


def read_monuseg_polygons(path: Path) -> list[list[tuple[float, float]]]:
    """The ``(x, y)`` vertex lists of every ``Region`` of a MoNuSeg XML annotation, in file order."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{path}: cannot parse annotation XML ({e})") from None
    polygons = []
    for region in tree.getroot().iter("Region"):
        points = []
        for vertex in region.iter("Vertex"):
            try:
                points.append((float(vertex.attrib["X"]), float(vertex.attrib["Y"])))
            except (KeyError, ValueError):
                raise DataError(f"{path}: Region {region.get('Id', '?')} has a Vertex without numeric X and Y "
                                f"({vertex.attrib})") from None
        polygons.append(points)
    return polygons


def rasterize_polygons(polygons: list[list[tuple[float, float]]], height: int, width: int) -> np.ndarray:
    """Instance map ``[H, W]`` int64: polygon k (1-based, in order; < 3 vertices skipped) filled with id k, later
    ones on top; ids made consecutive afterwards."""
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    k = 0
    for points in polygons:
        if len(points) < 3:
            continue
        k += 1
        draw.polygon(points, fill=k, outline=k)
    return _relabel(np.asarray(canvas, dtype=np.int64))


def _monuseg_loader(flat: bool) -> Callable[[_Entry], LabeledImage]:
    def load(entry: _Entry) -> LabeledImage:
        image = load_image(entry.image, "RGB")
        if flat:
            mask = _read_mask(entry.mask, allow_color=True)
            _check_size(mask, image, entry.mask, entry.image)
            instances = _components(mask > 0)
        else:
            instances = rasterize_polygons(read_monuseg_polygons(entry.mask), *image.shape[-2:])
        return _from_instances(entry, image, instances)

    return load


# ---------------------------------------------------------------------------------------------------------------
# DDPM-segmentation (FFHQ-34, CelebA-19) and generic


def _ddpm_seg_entries(root: Path, split: str) -> list[_Entry]:
    folder = root / "real" / split
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected the DDPM-segmentation layout ROOT/real/{split}/)")
    listing = _Listing(folder)
    entries = []
    for img in _images_in(folder):
        mask = listing.find([img.stem], [".npy"])
        if mask is None:
            raise DataError(f"{img}: no label map {folder / (img.stem + '.npy')}")
        entries.append(_Entry(img.stem, img, mask))
    if not entries:
        raise DataError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    _check_unique(entries, folder)
    return entries


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


def _class_map_loader(num_classes: int, npy: bool) -> Callable[[_Entry], LabeledImage]:
    def load(entry: _Entry) -> LabeledImage:
        image = load_image(entry.image, "RGB")
        label = _read_npy_label(entry.mask) if npy else _read_mask(entry.mask, allow_color=False)
        _check_size(label, image, entry.mask, entry.image)
        _check_classes(label, num_classes, entry.mask)
        return LabeledImage(entry.name, image, torch.from_numpy(np.ascontiguousarray(label)), None, entry.group)

    return load


def _generic_entries(root: Path, split: str) -> list[_Entry]:
    images = _require_dir(root / split / "images")
    masks = _require_dir(root / split / "masks")
    listing = _Listing(masks)
    entries = []
    for img in _images_in(images):
        mask = listing.find([img.stem], LOSSLESS_MASK_EXTENSIONS)
        if mask is None:
            raise DataError(f"{img}: no mask {masks / (img.stem + '.png')}")
        entries.append(_Entry(img.stem, img, mask))
    if not entries:
        raise DataError(f"{images}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    _check_unique(entries, images)
    return entries


def _generic_classes(root: Path, num_classes: int | None, class_names: list[str] | None):
    listed = None
    classes_txt = root / "classes.txt"
    if class_names is None and classes_txt.is_file():
        listed = [line.strip() for line in classes_txt.read_text().splitlines() if line.strip()]
        if not listed:
            raise DataError(f"{classes_txt}: no class names")
        if num_classes is not None and num_classes != len(listed):
            raise DataError(f"{classes_txt}: lists {len(listed)} classes but num_classes={num_classes}")
        class_names = listed
    if num_classes is None and class_names is None:
        raise DataError(f"{root}: the generic layout needs num_classes= or {classes_txt} (one class name per line)")
    return num_classes, class_names


# ---------------------------------------------------------------------------------------------------------------
# synthetic


def _synthetic_dataset(split: str, seed: int, size: int) -> LabeledDataset:
    source = SyntheticHistology(seed=seed, image_size=size)
    ids = source.labeled_ids() if split == "train" else source.test_ids()
    entries = [_Entry(f"s{s:02d}_i{i:03d}", (s, i), None) for s, i in ids]

    def load(entry: _Entry) -> LabeledImage:
        image, instances = source.render(*entry.image)
        return LabeledImage(entry.name, image, (instances > 0).long(), instances, entry.group)

    return LabeledDataset(entries, load, 2, ["background", "gland"], "synthetic", split)


# ---------------------------------------------------------------------------------------------------------------
# public entry points


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
        return _rename(_synthetic_dataset(split, synthetic_seed, synthetic_size), class_names)

    if root is None or str(root) == "":
        raise DataError(f"source {source!r} needs a root folder")
    root_path = _require_dir(Path(root).expanduser(), "dataset root folder")

    if source == "glas":
        entries, flat = _glas_entries(root_path, split)
        return _rename(LabeledDataset(entries, _glas_loader(flat), 2, ["background", "gland"], source, split),
                       class_names)
    if source == "monuseg":
        entries, flat = _monuseg_entries(root_path, split)
        return _rename(LabeledDataset(entries, _monuseg_loader(flat), 2, ["background", "nucleus"], source, split),
                       class_names)
    if source in DDPM_SEG_CLASSES:
        entries = _ddpm_seg_entries(root_path, split)
        npy = True
        if num_classes is None:
            num_classes = len(class_names) if class_names is not None else DDPM_SEG_CLASSES[source]
    else:  # generic
        entries = _generic_entries(root_path, split)
        npy = False
        num_classes, class_names = _generic_classes(root_path, num_classes, class_names)
        if num_classes is None:
            num_classes = len(class_names)
    if class_names is None:
        class_names = [f"class_{k}" for k in range(num_classes)]
    return LabeledDataset(entries, _class_map_loader(num_classes, npy), num_classes, class_names, source, split)


def label_subset(num_train: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices of ``max(1, floor(fraction * num_train))`` labeled images: the first ones of a seeded random
    permutation, so for one seed a smaller fraction's set lies inside a larger one's. ``fraction`` in (0, 1]."""
    if not isinstance(fraction, (int, float)) or math.isnan(fraction) or not 0 < fraction <= 1:
        raise DataError(f"label fraction must be in (0, 1], got {fraction!r}")
    if num_train < 1:
        raise DataError(f"cannot take a label subset of {num_train} training images")
    n = max(1, math.floor(fraction * num_train + 1e-9))  # the epsilon keeps 0.29 * 100 at 29
    perm = torch.randperm(num_train, generator=torch.Generator().manual_seed(int(seed)))
    return sorted(perm[:n].tolist())
