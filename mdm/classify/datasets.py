"""Image-level labels, read from their layouts: the registry ``CLASS_SOURCES`` (``data.source`` of
the classification task).

- ``class_folders``: ``ROOT/{train,test}/<class>/*.<image>``, one folder per class (the classes are
  the folders of ``train/``, sorted, hidden ones skipped, names compared in Unicode NFC; at least 2;
  a test image of a class that has no training folder is refused, as are images outside a class
  folder, a ``masks/``-like subfolder inside one, two images whose names differ only by extension
  and a class folder that links back to its split).
- ``glas``: the GlaS release (``train_<n>.bmp``, ``testA_<n>.bmp``, ``testB_<n>.bmp``, as the
  segmentation source finds them) graded by its official ``Grade.csv`` (column ``grade (GlaS)``:
  benign / malignant; names and headers are read with their spaces stripped, as the release writes
  them with leading spaces); the official split; the column ``patient ID`` groups the images
  (validation images are whole patients).
- ``synthetic``: built-in histology (``common.synthetic``) whose label is the glands' shape:
  ``regular`` (round, smooth) or ``irregular`` (elongated, ragged) at the same gland area, so no
  colour statistic gives it away; training images from 4 slides, test images from 4 others, 50 each,
  the classes alternating.

Images are ``[3, H, W]`` float32 in [-1, 1], loaded on demand (``ClassDataset.image``).
"""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..common.errors import DataError
from ..common.io import IMAGE_EXTENSIONS, load_image, text_named
from ..common.registry import Registry
from ..common.synthetic import render
from ..stage2.glas_release import release_images
from ..stage2.sources import check_split, require_dir, source_root

SYNTHETIC_SHAPES = ["regular", "irregular"]
SYNTHETIC_SLIDES, SYNTHETIC_PER_SLIDE = 4, 50


@dataclass
class ClassDataset:
    """One split: ``names[i]`` (unique), ``labels[i]`` (0 .. K-1), ``class_names`` (K),
    ``load(i) -> [3, H, W]``, ``image_files`` (``[i]``: image i's file; empty for built-in data) and
    ``label_files`` (the table of labels)."""

    source: str
    split: str
    names: list[str]
    labels: list[int]
    class_names: list[str]
    load: Callable[[int], torch.Tensor]
    image_files: list[Path] = field(default_factory=list)
    label_files: list[Path] = field(default_factory=list)
    # [i]: image i's patient or slide, where the source knows it
    groups: list[str] = field(default_factory=list)
    # every file in the source's own order, where it has one
    read_files: list[Path] = field(default_factory=list)
    # [i]: what the verdicts' bootstrap resamples image i with (windows: the image they were cut
    # from, so they are drawn together, as the pixel level draws that image); empty: each alone
    units: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Every file the split reads (a study records their content and excludes them from its
        pool): in the source's own order where it gives one (``read_files``; windows: the
        segmentation split's, so a study of windows and one of masks exclude the same list)."""
        return self.read_files or list(dict.fromkeys([*self.image_files, *self.label_files]))

    def __len__(self) -> int:
        return len(self.names)

    def image(self, i: int) -> torch.Tensor:
        return self.load(i)

    def subset(self, indices: list[int]) -> ClassDataset:
        """The images ``indices`` (in that order), loaded from this dataset."""
        return ClassDataset(self.source, self.split, [self.names[i] for i in indices],
                            [self.labels[i] for i in indices], self.class_names,
                            lambda k: self.load(indices[k]),
                            [self.image_files[i] for i in indices] if self.image_files else [],
                            self.label_files,
                            [self.groups[i] for i in indices] if self.groups else [],
                            self.read_files, [self.units[i] for i in indices] if self.units else [])


# subfolders a class must not read
NOT_IMAGES = {"masks", "mask", "labels", "annotations", "ground_truth", "gt"}


def _class_folders(folder: Path, what: str) -> dict[str, Path]:
    """``{class name (NFC): folder}`` of the visible subfolders of ``folder``; images lying directly
    in it, a class folder that leads back to the split (a link to ``train/``) and two names that
    differ only in their Unicode form are refused."""
    loose = sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if loose:
        raise DataError(f"{folder}: {len(loose)} image(s) lie directly in the {what} ({loose[0]}), in no class: move "
                        f"them into {folder}/<class>/")
    classes: dict[str, Path] = {}
    for sub in sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        if folder.resolve().is_relative_to(sub.resolve()):
            raise DataError(f"{sub}: leads back to {sub.resolve()} (a link?): a class folder must hold that class's "
                            f"images only")
        name = unicodedata.normalize("NFC", sub.name)
        if name in classes:
            raise DataError(f"{sub}: the same class name as {classes[name]} in another Unicode form: rename one")
        classes[name] = sub
    return classes


def _folders(root: Path, split: str, seed: int, size: int) -> ClassDataset:
    classes = sorted(_class_folders(require_dir(root / "train", "training folder"),
                                    "training folder"))
    if len(classes) < 2:
        raise DataError(
            f"{root / 'train'}: {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            f"classification needs at least 2 (expected train/<class>/<image>)")
    folder = require_dir(root / split, f"{split} folder")
    names, labels, files = [], [], []
    for name, sub in _class_folders(folder, f"{split} folder").items():
        if name not in classes:
            raise DataError(f"{sub}: class {name!r} has no training folder (the training classes: "
                            f"{', '.join(classes)})")
        found = sorted(text_named(p) for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(sub).parts))
        masks = [p for p in found if NOT_IMAGES & {part.lower() for part in p.relative_to(sub).parts[:-1]}]
        if masks:
            raise DataError(f"{masks[0]}: a label file inside class folder {sub.name!r} (its subfolder is named like "
                            f"masks): a class folder holds that class's images only; move it out")
        if not found and split == "train":
            raise DataError(f"{sub}: no images in this class folder")
        stems: dict[str, Path] = {}
        for p in found:
            key = p.relative_to(folder).with_suffix("").as_posix()
            if key in stems:
                raise DataError(f"{p} and {stems[key].name}: two images named {key!r}, which the run's tables could "
                                f"not tell apart: rename one")
            stems[key] = p
            names.append(key)
            labels.append(classes.index(name))
            files.append(p)
    if not names:
        raise DataError(f"{folder}: no images in its class folders")
    return ClassDataset("class_folders", split, names, labels, classes,
                        lambda i: load_image(files[i]), files)


GLAS_GRADES = ["benign", "malignant"]


def read_glas_grades(path: Path) -> dict[str, int]:
    """``Grade.csv`` of the GlaS release: ``{image name: 0 benign / 1 malignant}``."""
    return {name: grade for name, (grade, _) in read_glas_table(path).items()}


def read_glas_table(path: Path) -> dict[str, tuple[int, str]]:
    """``Grade.csv`` of the GlaS release: ``{image name: (0 benign / 1 malignant, patient ID)}``
    (the patient ``""`` where the table has no such column)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the grades ({e.__class__.__name__}: {e})") from None
    if not rows or "name" not in rows[0] or "grade (GlaS)" not in rows[0]:
        raise DataError(
            f"{path}: expected the columns 'name' and 'grade (GlaS)' of the official Grade.csv")
    table = {}
    for line, row in enumerate(rows, start=2):
        grade = row["grade (GlaS)"].lower()
        if grade not in GLAS_GRADES:
            raise DataError(f"{path}, line {line}: grade {row['grade (GlaS)']!r} of {row['name']!r} is not benign or "
                            f"malignant")
        table[row["name"]] = GLAS_GRADES.index(grade), row.get("patient ID", "")
    return table


def _glas(root: Path, split: str, seed: int, size: int) -> ClassDataset:
    folder, images = release_images(root, split)
    table = next((p for p in (folder / "Grade.csv", root / "Grade.csv") if p.is_file()), None)
    if table is None:
        raise DataError(f"{folder}: no Grade.csv (the release's image grades) here or in {root}")
    rows = read_glas_table(table)
    missing = [p.stem for p in images if p.stem not in rows]
    if missing:
        raise DataError(f"{table}: no grade for {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1
                                                                  else ""))
    patients = [rows[p.stem][1] for p in images]
    return ClassDataset("glas", split, [p.stem for p in images], [rows[p.stem][0] for p in images],
                        GLAS_GRADES,
                        lambda i: load_image(images[i]), images, [table],
                        patients if all(patients) else [])


def _synthetic(root: Path | None, split: str, seed: int, size: int) -> ClassDataset:
    # training images: slides 0 .. 3 (the segmentation source's labeled slides, other glands: each
    # image is rendered with a shape); test images: slides 100 .. 103, far from every slide of the
    # segmentation source (0 .. 7) and of the unlabeled pool (0 .. 15, image numbers from
    # POOL_INDEX_OFFSET on), so no pretraining image is a test image
    first = 0 if split == "train" else 100
    ids = [(first + s, i) for s in range(SYNTHETIC_SLIDES) for i in range(SYNTHETIC_PER_SLIDE)]
    labels = [i % 2 for _, i in ids]

    def load(k: int) -> torch.Tensor:
        slide, index = ids[k]
        return render(seed, slide, index, size, size, shape=SYNTHETIC_SHAPES[labels[k]])[0]

    return ClassDataset("synthetic", split, [f"slide{s}_{i}" for s, i in ids], labels,
                        list(SYNTHETIC_SHAPES), load)


@dataclass(frozen=True)
class ClassSource:
    """A registered source of image labels: ``open(root, split, synthetic_seed, synthetic_size)``; a
    ``windowed`` one (windows of a segmentation source, ``study.windows``) also takes ``window=``
    (px) and ``num_classes=``."""

    open: Callable[..., ClassDataset]
    needs_root: bool = True
    windowed: bool = False


CLASS_SOURCES: Registry[ClassSource] = Registry("image-label sources", "data.source",
                                                "image-label source")
CLASS_SOURCES.register("class_folders", ClassSource(_folders))
CLASS_SOURCES.register("glas", ClassSource(_glas))
CLASS_SOURCES.register("synthetic", ClassSource(_synthetic, needs_root=False))


def open_class_split(source: str, root: str | None, split: str, *, synthetic_seed: int = 0,
                     synthetic_size: int = 64, window: int = 32,
                     num_classes: int = 0) -> ClassDataset:
    """One split (``train`` / ``test``) of the image-label source ``source`` (see the module
    docstring); ``window`` and ``num_classes`` reach a windowed source only."""
    spec = CLASS_SOURCES[source]
    check_split(split)
    where = source_root(source, root, spec.needs_root)
    if spec.windowed:
        return spec.open(where, split, synthetic_seed, synthetic_size, window=window,
                         num_classes=num_classes)
    return spec.open(where, split, synthetic_seed, synthetic_size)
