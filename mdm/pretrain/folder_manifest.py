"""The manifest of an image-folder pool: what a pool needs to know of each file without decoding it
again.

One row per image file (``path``: absolute; ``size``, ``mtime_ns``: the file as it was read;
``color_mode``: as it was decoded; ``width``, ``height``; ``sha1``: its content hash; ``mask_like``;
``thumb``: its 4 x 4 thumbnail, one byte a value; ``error``: why it could not be read, empty when it
could). The first run over a folder decodes every file once, with a progress bar; later runs (and
every process of a multi-process run) read the manifest and decode only the files that are new or
changed (another size, modification time or colour mode), and those that failed before (a newer
Pillow, a larger ``MAX_IMAGE_PIXELS`` may read them now); rows of files that left the pool's folders
are dropped, rows of other folders kept (one ``data.manifest`` may serve several pools). The
manifest is a CSV file written by a rename under a file lock (``fcntl.flock``): the first process to
take the lock brings it up to date, the others wait for it and find nothing left to decode.

The 4 x 4 thumbnail is the mean of the 16 x 16 one of ``common.pictures`` (each cell the mean of 16
of its cells), so the mean distance of two 4 x 4 thumbnails is at most that of their 16 x 16
thumbnails: a file whose 4 x 4 thumbnail is further than ``SAME_PICTURE`` (plus the rounding of the
stored bytes) from an excluded image's is not the same picture, and only the few closer ones are
decoded to be compared in full (``candidates``).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..common.errors import DataError
from ..common.io import cache_root, file_digest, load_image, write_atomic
from ..common.pictures import SAME_PICTURE, THUMBNAIL, looks_like_mask, thumbnail

SMALL = 4  # the side of the stored thumbnail
# the most two stored thumbnails' mean distance can differ from their true one (one byte a value)
ROUNDING = 2 / 127.5


@dataclass
class FileRecord:
    """One image file of a pool as the manifest holds it (see the module's docstring)."""

    path: str
    size: int
    mtime_ns: int
    color_mode: str = "RGB"
    width: int = 0
    height: int = 0
    sha1: str = ""
    mask_like: bool = False
    # hex, channel-major: C x 4 x 4 bytes, value v in [-1, 1] stored as round((v + 1) * 127.5)
    thumb: str = ""
    error: str = ""

    @property
    def readable(self) -> bool:
        return not self.error

    def small(self) -> torch.Tensor:
        """The stored 4 x 4 thumbnail ``[C, 4, 4]`` on the [-1, 1] scale."""
        values = torch.tensor(list(bytes.fromhex(self.thumb)), dtype=torch.float32)
        return (values / 127.5 - 1).view(-1, SMALL, SMALL)


COLUMNS = [f.name for f in fields(FileRecord)]


def small_thumbnail(image: torch.Tensor) -> torch.Tensor:
    """``image [C, H, W]`` -> ``[C, 4, 4]``: the 16 x 16 thumbnail of ``common.pictures`` averaged
    in 4 x 4 cells."""
    return F.avg_pool2d(thumbnail(image)[None], THUMBNAIL // SMALL)[0]


def read_record(path: Path, mode: str, picture: Callable[[Path], tuple[torch.Tensor, int, int]],
                what: str = "image") -> FileRecord:
    """Read ``path`` once and record it: ``picture(path)`` gives ``(image [C, h, w] whose thumbnail
    is stored, width, height)`` or raises ``DataError`` (recorded in ``error``, as an ``OSError``
    is: no permission, removed since the folder was listed); ``mode``: the row's colour mode."""
    record = FileRecord(os.path.abspath(path), 0, 0, mode)
    try:
        stat = os.stat(path)
        record.size, record.mtime_ns = stat.st_size, stat.st_mtime_ns
        image, record.width, record.height = picture(path)
        # after the read: an unreadable file, read again at every start, is not hashed
        record.sha1 = file_digest(path)
    except (DataError, OSError) as e:
        record.error = str(
            e) if isinstance(e, DataError) else f"{path}: cannot read {what} ({e.strerror or e})"
        return record
    stored = ((small_thumbnail(image) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    record.mask_like = looks_like_mask(image)
    record.thumb = bytes(stored.flatten().tolist()).hex()
    return record


def read_file(path: Path, color_mode: str) -> FileRecord:
    """Decode the image ``path`` once and record it (``error``: the decoder's message when it
    fails)."""

    def picture(p: Path) -> tuple[torch.Tensor, int, int]:
        image = load_image(p, color_mode)
        return image, image.shape[2], image.shape[1]

    return read_record(path, color_mode, picture)


def manifest_path(setting: str, roots: list[str], color_mode: str) -> Path:
    """Where the manifest of a pool lives: ``data.manifest`` when set, else the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``) / ``mdm/pools/<hash of the resolved roots and colour
    mode>.csv``, so every run over the same folders shares it."""
    if setting:
        return Path(setting)
    named = "\n".join([color_mode, *sorted(str(Path(r).resolve()) for r in roots)])
    return cache_root() / "pools" / f"{hashlib.sha1(named.encode()).hexdigest()[:16]}.csv"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<name>.lock`` beside ``path`` (waiting for another
    holder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_manifest(path: Path) -> dict[str, FileRecord]:
    """The manifest's rows by path (empty when there is no manifest; a damaged one is named)."""
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return {r["path"]: FileRecord(r["path"], int(r["size"]), int(r["mtime_ns"]),
                                      r["color_mode"], int(r["width"]), int(r["height"]), r["sha1"],
                                      r["mask_like"] == "True", r["thumb"], r["error"])
                for r in rows}
    except (KeyError, ValueError, TypeError, csv.Error) as e:
        raise DataError(
            f"{path}: not a pool manifest ({e}); delete it and it is built again") from None


def _write(path: Path, records: list[FileRecord]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(COLUMNS)
            out.writerows([getattr(r, c) for c in COLUMNS] for r in records)

    write_atomic(path, write)


def update_manifest(path: Path, files: list[Path], color_mode: str, roots: list[str],
                    read: Callable[[Path, str], FileRecord] = read_file) -> tuple[list[FileRecord], int]:
    """The records of ``files`` (the images under ``roots``) in order, from the manifest at ``path``
    where a file is unchanged (same size, modification time and colour mode; read without error
    before) and read by ``read`` otherwise (``read_file``: decoded as an image; a slide pool reads
    slides; its ``color_mode`` names it); rows of files under ``roots`` that are no longer there are
    dropped, rows of other folders kept (a manifest may serve several pools). The manifest is
    rewritten when anything was decoded or dropped. Returns the records and how many files were
    decoded."""
    with locked(path):
        known = read_manifest(path)
        records, fresh = [], []
        for f in files:
            record = known.pop(os.path.abspath(f), None)
            try:
                stat = os.stat(f)
                same = record is not None and (record.size, record.mtime_ns) == (stat.st_size,
                                                                                 stat.st_mtime_ns)
            except OSError:
                same = False
            if not (same and record.color_mode == color_mode and record.readable):
                fresh.append(len(records))
                record = None
            records.append(record)
        for i in tqdm(fresh, desc=f"reading {len(fresh)} new or changed files",
                      disable=None, leave=False):
            records[i] = read(files[i], color_mode)
        under = tuple(os.path.abspath(r) for r in roots)
        others = [r for p, r in known.items() if not any(p == u or p.startswith(u + os.sep) for u in under)]
        if fresh or len(others) != len(known):
            _write(path, records + others)
    return records, len(fresh)


def candidates(records: list[FileRecord], banned: list[torch.Tensor]) -> list[int]:
    """The indices of ``records`` that may be the same picture as one of ``banned`` (images
    ``[C, H, W]``): the same shape and a 4 x 4 thumbnail within ``SAME_PICTURE`` + ``ROUNDING`` of
    it. Only these need decoding."""
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for image in banned:
        by_shape.setdefault(tuple(image.shape[1:]), []).append(small_thumbnail(image))
    found = []
    for i, r in enumerate(records):
        near = by_shape.get((r.height, r.width)) if r.readable else None
        if near:
            small = r.small()
            if any(small.shape == b.shape and (small - b).abs().mean() < SAME_PICTURE + ROUNDING for b in near):
                found.append(i)
    return found
