"""MoNuSeg, binary nucleus segmentation with instance maps.

The split folder is ``ROOT/train`` or ``ROOT/MoNuSeg 2018 Training Data`` (``ROOT/test`` or
``ROOT/MoNuSegTestData`` for ``test``); inside it, images are either in ``Tissue Images/`` with XML
in ``Annotations/``, or ``.tif`` and ``.xml`` side by side. Each XML ``Region`` is one nucleus
polygon, rasterised in file order with ids 1..K (a later polygon overwrites an earlier one where
they overlap; ids are made consecutive again if a polygon vanishes). In the flat layout
``ROOT/<split>/img/<stem>.<ext>`` + ``ROOT/<split>/labelcol/<stem>.png`` the mask is binary (> 0 =
nucleus) and the instances are its 4-connected components (``scipy.ndimage.label``), which merges
touching nuclei.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...common.errors import DataError
from ...common.io import load_image
from ...common.labels import consecutive_ids
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

CLASS_NAMES = ["background", "nucleus"]
_SPLIT_FOLDERS = {
    "train": ("train", "MoNuSeg 2018 Training Data", "MoNuSegTrainingData"),
    "test": ("test", "MoNuSegTestData", "MoNuSeg 2018 Test Data"),
}


def _entries(root: Path, split: str) -> tuple[list[Entry], bool]:
    """Entries and whether the masks are flat binary PNGs (else XML polygons)."""
    names = _SPLIT_FOLDERS[split]
    folder = next((root / n for n in names if (root / n).is_dir()), None)
    if folder is None:
        raise DataError(f"{root}: no MoNuSeg {split} folder (looked for {', '.join(names)})")
    if (folder / "img").is_dir():
        images, labels, flat = folder / "img", require_dir(folder / "labelcol"), True
    elif (folder / "Tissue Images").is_dir():
        images, labels, flat = folder / "Tissue Images", require_dir(folder / "Annotations"), False
    else:
        images, labels, flat = folder, folder, False
    extensions = LOSSLESS_MASK_EXTENSIONS if flat else [".xml"]
    return pair_masks(images_in(images), Listing(labels), lambda img: ([img.stem], extensions),
                      "annotation", images), flat


def read_monuseg_polygons(path: Path) -> list[list[tuple[float, float]]]:
    """The ``(x, y)`` vertex lists of every ``Region`` of a MoNuSeg XML annotation, in file
    order."""
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
                raise DataError(
                    f"{path}: Region {region.get('Id', '?')} has a Vertex without numeric X and Y "
                    f"({vertex.attrib})") from None
        polygons.append(points)
    return polygons


def rasterize_polygons(polygons: list[list[tuple[float, float]]],
                       height: int, width: int) -> np.ndarray:
    """Instance map ``[H, W]`` int64: polygon k (1-based, in order; < 3 vertices skipped) filled
    with id k, later ones on top; ids made consecutive afterwards."""
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    k = 0
    for points in polygons:
        if len(points) < 3:
            continue
        k += 1
        draw.polygon(points, fill=k, outline=k)
    return consecutive_ids(np.asarray(canvas, dtype=np.int64))[0]


def open_split(root: Path, split: str) -> LabeledDataset:
    entries, flat = _entries(root, split)

    def load(entry: Entry) -> LabeledImage:
        image = load_image(entry.image, "RGB")
        if flat:
            mask = read_mask(entry.mask, allow_color=True)
            check_size(mask, image, entry.mask, entry.image)
            instances = components(mask > 0)
        else:
            instances = rasterize_polygons(read_monuseg_polygons(entry.mask), *image.shape[-2:])
        return from_instances(entry, image, instances)

    return LabeledDataset(entries, load, 2, CLASS_NAMES, "monuseg", split)
