"""Files: image folders and image reading, content digests, and atomic writes.

Atomic writes: a folder is written under a temporary sibling name (``.<name>.tmp``) and made visible
by a rename; a file likewise. A reader therefore sees either the old complete version or the new
complete one, never a half written one, whatever moment a run is killed at.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


# ---- image folders and images --------------------------------------------------------------------


def list_images(root: str | Path,
                extensions: frozenset[str] | set[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All files with one of ``extensions`` (lower case, with the dot: image files by default) under
    ``root`` (a folder, searched recursively, or one file), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    return sorted(
        text_named(p) for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())


def text_named(path: Path) -> Path:
    """``path``, refused with a ``DataError`` when its name is not valid UTF-8 (the run folder
    records file names as text: such a name could not be written to a table or a manifest)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"{ascii(str(path))}: the file name is not valid UTF-8; rename the file") from None
    return path


def file_key(path: Path) -> tuple[str, int, int]:
    """``(resolved path, size, modification time)``: what per-process caches of a file's content are
    keyed by."""
    stat = os.stat(path)
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def file_digest(path: Path) -> str:
    """SHA-1 of a file's bytes (read in 1 MiB chunks: a whole-slide image need not fit in memory
    twice), remembered for the process by path, size and modification time: a study asks for the
    same files' digests several times (excluding test images from the pool, recording its data)."""
    key = file_key(path)
    if key not in _DIGESTS:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def load_image(path: Path | BinaryIO, color_mode: str = "RGB", name: str = "") -> torch.Tensor:
    """Read an image, decoding it fully, as ``[C, H, W]`` float32 in [-1, 1] (``RGB``: 3 channels,
    ``L``: 1).

    RGBA, palette and 16-bit images are converted (16-bit scaled by their maximum); an EXIF
    orientation is applied. Float images (PIL mode ``F``, e.g. 32-bit TIFF) are read as [0, 1] when
    their values lie there, as [0, 255] when they lie there, else scaled by their maximum; NaN or
    infinite values are refused. Raises ``DataError`` naming the file (or ``name``: where ``path``
    is an open file of bytes, e.g. a member of a tar shard) when it cannot be decoded.
    """
    name = name or str(path)
    try:
        with Image.open(path) as opened:
            # a camera photo as it is shown, not as its sensor stored it
            im = ImageOps.exif_transpose(opened)
            if im.mode == "F":
                arr = np.asarray(im, dtype=np.float32)
                if not np.isfinite(arr).all():
                    raise DataError(f"{name}: float image holds NaN or infinite values")
                if arr.min() < 0:
                    raise DataError(
                        f"{name}: float image holds negative values (min {arr.min():g})")
                top = arr.max()
                scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 255.0 / top
                im = Image.fromarray((arr * scale).round().astype(np.uint8))
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                im = Image.fromarray((arr / max(arr.max(), 1.0) * 255).astype(np.uint8))
            arr = np.asarray(im.convert(color_mode), dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise DataError(f"{name}: too many pixels to read safely ({e}); raise PIL.Image.MAX_IMAGE_PIXELS if the file "
                        f"is trusted, or cut it into tiles") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{name}: cannot read image ({e.__class__.__name__}: {e})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/mdm`` (or ``~/.cache/mdm``): where pool manifests and shard indexes are
    kept."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdm"


class OpenHandles:
    """At most ``limit`` files kept open by ``opener(path)`` (least recently used closed first, by
    its ``close``), per process: a forked loader worker opens its own (the parent's handles are not
    shared) and a pickled copy starts with none. A pool of thousands of slides or shards so never
    holds thousands of files open."""

    def __init__(self, opener: Callable[[str], object], limit: int = 32):
        self.opener, self.limit = opener, limit
        self._open: dict[str, object] = {}
        self._pid = os.getpid()

    def __call__(self, path: str):
        if self._pid != os.getpid():
            self._open, self._pid = {}, os.getpid()
        handle = self._open.pop(path, None) or self.opener(path)
        self._open[path] = handle  # now the most recently used (dicts keep insertion order)
        while len(self._open) > self.limit:
            oldest = next(iter(self._open))
            self._open.pop(oldest).close()
        return handle

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}


# ---- atomic writes -------------------------------------------------------------------------------


def temp_sibling(final: Path) -> Path:
    """An empty temporary folder ``.<name>.tmp`` beside ``final`` (a leftover of a killed write is
    cleared)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def restore_dir(final: Path) -> None:
    """Put back ``final`` from ``.<name>.old`` where a ``replace_dir`` was killed between its two
    renames (``final`` gone, its previous version aside)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists() and not final.exists():
        os.replace(old, final)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what was there, never leaving
    ``final`` half-written (a kill between the two renames leaves the previous version aside, which
    the next call restores first)."""
    restore_dir(final)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def writing_lock(final: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``final`` (holding ``pid@host`` of this process) while the block
    writes it; a second writer is refused with a ``DataError`` while the holder lives (a holder on
    another host is taken to live: its process cannot be checked from here). A lock whose process on
    this host is gone is taken over, as is one naming this process that it does not hold (left by an
    earlier process with the same pid)."""
    lock = (final.parent.resolve() / f".{final.name}.lock")
    if lock in _HELD:  # nested in a block of this process that holds it
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    here = socket.gethostname()
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            holder = _lock_holder(lock)
        pid, _, host = holder.partition("@")
        ours = pid == str(os.getpid()) and host in ("", here)
        if pid.isdigit() and not ours and (host not in ("", here) or _alive(int(pid))):
            raise DataError(f"{final}: another process ({holder}) is writing it; wait for it to finish or choose "
                            f"another folder (if no such process writes it, delete {lock})")
        lock.unlink(missing_ok=True)  # its writer is gone (killed): take it over
    else:
        raise DataError(f"{final}: could not take its lock {lock}")
    os.write(fd, f"{os.getpid()}@{here}".encode())
    os.close(fd)
    _HELD.add(lock)
    try:
        yield
    finally:
        _HELD.discard(lock)
        lock.unlink(missing_ok=True)


_HELD: set[Path] = set()  # the locks this process holds


def _lock_holder(lock: Path) -> str:
    """The process id in ``lock`` (read twice, a moment apart, when its writer has not written it
    yet)."""
    for _ in range(2):
        try:
            holder = lock.read_text().strip()
        except FileNotFoundError:  # released between the two calls: take it
            return ""
        if holder:
            return holder
        time.sleep(0.2)
    return holder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Write the folder ``final`` atomically: the block fills the temporary folder it is given,
    which then replaces ``final`` by a rename. If the block raises, the temporary folder is removed
    and ``final`` stays as it was. One writer at a time (``writing_lock``): a second is refused
    instead of clearing the first's temporary folder."""
    final = Path(final)
    with writing_lock(final):
        tmp = temp_sibling(final)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_dir(tmp, final)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write the file ``path`` by a rename, so that it is either absent, the old version or the
    whole new one: ``write(tmp)`` fills a temporary sibling (``.<name>.<pid>.tmp``, one per process:
    the shards of a study write the same config at once; pass a format where the writer reads it
    from the suffix, e.g. ``fig.savefig(tmp, format="png")``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file by a rename (``write_atomic``)."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def refuse_foreign(folder: Path, allowed: set[str], what: str, advice: str) -> None:
    """Refuse (``DataError``) a folder ``folder`` that holds anything besides ``allowed`` names and
    hidden files (the locks and temporary files of ``writing_lock`` / ``write_atomic``): ``what``
    would overwrite or delete the user's files there."""
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in allowed and not p.name.startswith("."))
        if foreign:
            raise DataError(
                f"{folder}: holds files {what} does not write ({', '.join(foreign[:3])}); {advice}")


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """safetensors' ``save_file``, with its failures (a full disk, a file over the size limit) as an
    ``OSError`` that names the file."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as e:
        raise OSError(f"{path}: could not be written ({e})") from None


def load_tensors(path: str | Path, device: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or foreign file is a
    ``CheckpointError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return load_file(str(path), device=device or "cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or damaged "
                              f"({type(e).__name__}: {str(e).strip()[:120]})") from None


def check_out(path: str | Path, what: str = "--out") -> Path:
    """Refuse an output path that is an existing file or a symbolic link before any work is done:
    runs replace their folder as a whole, and would rename away what the user put there."""
    p = Path(path)
    if p.is_symlink():
        raise DataError(
            f"{what} {p}: is a symbolic link; give the folder it points to, or a new folder")
    if p.exists() and not p.is_dir():
        raise DataError(f"{what} {p}: is a file, not a folder; give a new folder")
    return p
