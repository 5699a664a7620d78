"""Unlabeled pretraining pools: image folders and the synthetic source's pool, registered in
``POOLS`` (a ``Pool`` per ``data.source``: its builder ``DataConfig -> Dataset`` and what a study
and the config checks need to know of it; whole-slide images and tar shards register theirs in
``slides`` and ``shards``).
``build_pretrain_dataset(cfg.data)`` gives the one a config asks for.

Items are requested as ``(index, key)`` (see ``sampler.StepBatchSampler``) and returned as
``(image [C, S, S], key)``: the key drives the crop and flip, so a resumed run sees the very same
pixels.

Folders are searched recursively for png, jpg, jpeg, bmp, tif and tiff files. Files listed in
``exclude`` (files, or folders of files: a study's test images and masks) are removed by resolved
path, by content hash **and** by what they show (``common.pictures``), so a copy of a test image
elsewhere in the pool never leaks into pretraining, however it was saved again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from ..common.config import DataConfig
from ..common.errors import DataError
from ..common.io import IMAGE_EXTENSIONS, file_digest, list_images, load_image
from ..common.pictures import MASK_VALUES, PictureIndex
from ..common.registry import Registry
from ..common.synthetic import SyntheticHistology
from .crops import crop_or_resize
from .folder_manifest import FileRecord, candidates, manifest_path, read_file, update_manifest

T, R = TypeVar("T"), TypeVar("R")


def first_readable(candidates: Iterable[T], read: Callable[[T], R], skip_unreadable: bool, noun: str,
                   warned: set, exhausted: str, hint: str = "") -> tuple[R, int]:
    """``(read(c), how many candidates were skipped before it)`` for the first of ``candidates``
    that reads: one that raises ``DataError`` stops the run naming it (``hint``: why it may not
    read), or with ``skip_unreadable`` is skipped with a warning (once per candidate: ``warned``
    holds those said) and the next stands in; ``exhausted``: the error when none reads. The
    training-time stand-in rule of every pool (``noun``: what a candidate is)."""
    for skipped, candidate in enumerate(candidates):
        try:
            return read(candidate), skipped
        except DataError as e:
            if not skip_unreadable:
                raise DataError(f"{e} ({hint}set data.skip_unreadable=true to skip such {noun}s)") from None
            if candidate not in warned:
                warnings.warn(f"skipping unreadable {noun} (read during training): {e}", stacklevel=3)
                warned.add(candidate)
    raise DataError(exhausted)


def list_pool(roots: list[str],
              extensions: frozenset[str] | set[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """The files with one of ``extensions`` (image files by default) under every root, each once, in
    order; a root without any is named."""
    files: list[Path] = []
    for root in roots:
        found = list_images(root, extensions)
        if not found:
            raise DataError(
                f"{root}: no {'images' if extensions == IMAGE_EXTENSIONS else 'files'} found "
                f"(looked for {', '.join(sorted(extensions))})")
        files += found
    return list(dict.fromkeys(files))


def pool_records(roots: list[str], color_mode: str, manifest: str,
                 extensions: frozenset[str] | set[str] = IMAGE_EXTENSIONS,
                 read: Callable[[Path, str], FileRecord] = read_file) -> tuple[Path, list[Path],
                                                                               list[FileRecord], int]:
    """The manifest's file, the files under ``roots`` (image files by default) and their manifest
    records (new or changed files read into it by ``read`` first), and how many files were read for
    it."""
    files = list_pool(roots, extensions)
    where = manifest_path(manifest, roots, color_mode)
    records, decoded = update_manifest(where, files, color_mode, roots, read)
    return where, files, records, decoded


def excluded_by_content(records: list[FileRecord], exclude: list[str],
                        extensions: frozenset[str] | set[str] = IMAGE_EXTENSIONS) -> set[int]:
    """The indices of ``records`` with the content of a file ``exclude`` names: by path and by
    content at once, since a file at an excluded path has that file's hash (no path of the pool is
    resolved: a million resolves cost a minute)."""
    digests = {file_digest(p) for e in exclude for p in list_images(e, extensions)}
    return {i for i, r in enumerate(records) if r.sha1 in digests}


def pool_digests(pool: DataConfig) -> dict[str, str]:
    """``{file: content hash}`` of the images of the folder pool ``pool`` that no excluded file
    matches by content, read from the pool's manifest: a study records them without hashing a
    million files at every start."""
    _, files, records, _ = pool_records(pool.root, pool.color_mode, pool.manifest)
    banned = excluded_by_content(records, pool.exclude)
    return {str(f): r.sha1 for i, (f, r) in enumerate(zip(files, records)) if i not in banned}


def _readable(exclude: list[str], color_mode: str):
    """``(name, image)`` of every readable image ``exclude`` names (files or folders); an unreadable
    one is left to the stage that reads it to report."""
    for entry in exclude:
        for f in list_images(entry):
            try:
                yield str(f), load_image(f, color_mode)
            except DataError:
                continue


class ImageFolderDataset(torch.utils.data.Dataset):
    """Unlabeled images; an item is requested as ``(index, key)`` and returned as
    ``(image [C, S, S], key)``.

    What the pool knows of each file comes from its manifest (``folder_manifest``: built once by
    decoding every file, then read and brought up to date by decoding only new or changed files), so
    a truncated, unreadable or NaN-holding file stops the run before it starts (or is skipped with a
    warning when ``skip_unreadable``), never halfway through, without decoding a million files at
    every start. An image that is the same picture as an excluded one (``exclude``: the test split's
    images and masks) is excluded whatever its file (``common.pictures``: re-compressed, re-saved as
    JPEG, metadata added); images that look like label masks are counted and warned about.
    ``manifest``: the manifest's file (empty: the user's cache folder, ``manifest_path``).
    """

    def __init__(self, roots: list[str], crop_size: int, crop: str = "random", hflip: bool = True,
                 color_mode: str = "RGB", exclude: list[str] = (), skip_unreadable: bool = False,
                 manifest: str = ""):
        self.crop_size, self.crop, self.hflip, self.color_mode = crop_size, crop, hflip, color_mode
        self.skip_unreadable, self.unreadable_in_training, self.skipped_in_training = skip_unreadable, set(), 0
        where, files, records, decoded = pool_records(roots, color_mode, manifest)
        by_file = excluded_by_content(records, exclude)
        banned = list(_readable(exclude, color_mode))
        index = PictureIndex(banned)
        same = {i for i in candidates(records, [image for _, image in banned])
                if i not in by_file and index.match(load_image(files[i], color_mode)) is not None}
        kept, skipped, masks = [], [], []
        for i, (f, r) in enumerate(zip(files, records)):
            if i in by_file or i in same:
                continue
            if not r.readable:
                if not skip_unreadable:
                    raise DataError(f"{r.error} (set data.skip_unreadable=true to skip such files)")
                warnings.warn(f"skipping unreadable image {f}", stacklevel=2)
                skipped.append(f)
                continue
            if crop == "random" and min(r.height, r.width) < crop_size:
                raise DataError(
                    f"{f}: {r.width}x{r.height} is smaller than the crop size {crop_size}; use "
                    f"data.crop=resize or a smaller data.crop_size")
            masks += [f] if r.mask_like else []
            kept.append(f)
        excluded = [files[i] for i in sorted(by_file | same)]
        if not kept:
            raise DataError(f"{', '.join(map(str, roots[:3]))}: "
                            + ("every image is excluded by data.exclude" if len(excluded) == len(files)
                               else "no readable images" + (" that are not the same picture as an excluded one"
                                                             if excluded else "")))
        if masks:
            warnings.warn(f"{len(masks)} image(s) of the pool look like label masks (at most {MASK_VALUES} distinct "
                          f"values), e.g. {masks[0]}: pretraining on masks teaches nothing of the images; move them "
                          f"out of the pool's folders", stacklevel=2)
        self.files = kept
        self.record = {"images": len(kept), "excluded": len(excluded),
                       "unreadable_skipped": len(skipped), "excluded_same_picture": len(same),
                       "mask_like": len(masks), "manifest": str(where), "manifest_decoded": decoded,
                       "excluded_files": [str(f) for f in excluded],
                       "skipped_files": [str(f) for f in skipped],
                       "mask_like_files": [str(f) for f in masks]}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]):
        """A file that no longer decodes (it changed after its manifest row was written) stops the
        run, naming it; with ``skip_unreadable`` it is skipped with a warning and the next file in
        the pool's order stands in (the same one on every resume)."""
        index, key = item
        n = len(self.files)
        (path, image), skipped = first_readable(
            (self.files[(index + shift) % n] for shift in range(n)),
            lambda p: (p, load_image(p, self.color_mode)), self.skip_unreadable, "image",
            self.unreadable_in_training,
            f"{', '.join(map(str, self.files[:3]))}: no image of the pool decodes any more",
            hint="it changed after the pool's manifest was written; ")
        self.skipped_in_training += skipped
        return crop_or_resize(image, key, self.crop_size, self.crop, self.hflip, name=str(path)), key


class SyntheticPoolDataset(torch.utils.data.Dataset):
    """``num_images`` pool images (never a labeled or test image) rendered at ``image_size`` and
    cropped or resized to ``crop_size``; an item is ``(index, key)`` -> ``(image [3, S, S], key)``.
    Rendered images are cached in memory (each process or worker renders an image once)."""

    def __init__(self, num_images: int, image_size: int, crop_size: int, crop: str = "random",
                 hflip: bool = True, seed: int = 0):
        self.source = SyntheticHistology(seed=seed, image_size=image_size)
        self.ids = self.source.unlabeled_ids(num_images)
        self.crop_size, self.crop, self.hflip = crop_size, crop, hflip
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: tuple[int, int]):
        index, key = item
        if index not in self._cache:
            self._cache[index] = self.source.render(*self.ids[index])[0]
        image = self._cache[index]
        return crop_or_resize(image, key, self.crop_size, self.crop, self.hflip), key


class CountingSkips(torch.utils.data.Dataset):
    """``pool`` whose items are ``(image, key, skipped)``: ``skipped``, how many unreadable files
    the pool skipped (``skipped_in_training``, counted in each process or loader worker) to give
    that item, for the run's log."""

    def __init__(self, pool: torch.utils.data.Dataset):
        self.pool = pool

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, item: tuple[int, int]):
        before = getattr(self.pool, "skipped_in_training", 0)
        image, key = self.pool[item]
        return image, key, getattr(self.pool, "skipped_in_training", 0) - before


@dataclass(frozen=True)
class Pool:
    """A pretraining pool: ``build(data)`` -> its dataset; ``digests(data)`` -> ``{file: content
    hash}`` of what it reads from ``data.root`` (``None``: no files, the built-in pool), which a
    study records in ``data.json``; ``containers``: it reads files that hold many images (slides,
    shards), so the labeled source's training images cannot be added to it and a test tile inside
    one cannot be found."""

    build: Callable[[DataConfig], torch.utils.data.Dataset]
    digests: Callable[[DataConfig], dict[str, str]] | None
    containers: bool = False

    @property
    def reads_root(self) -> bool:
        """It reads the folders of ``data.root``."""
        return self.digests is not None


POOLS: Registry[Pool] = Registry("pretraining pools", "data.source", "pretraining pool")
POOLS.register("folder", Pool(lambda d: ImageFolderDataset(d.root, d.crop_size, d.crop, d.hflip,
                                                           d.color_mode, d.exclude,
                                                           d.skip_unreadable, d.manifest),
                              pool_digests))
POOLS.register("synthetic", Pool(lambda d: SyntheticPoolDataset(d.synthetic_images,
                                                                d.synthetic_image_size, d.crop_size,
                                                                d.crop, d.hflip, d.synthetic_seed),
                                 None))


def build_pretrain_dataset(data_cfg: DataConfig) -> torch.utils.data.Dataset:
    """The pretraining pool ``data_cfg.source`` names (``POOLS``), built from ``data_cfg``."""
    return POOLS[data_cfg.source].build(data_cfg)
