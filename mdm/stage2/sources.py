"""What every labeled source of either task shares: its splits (``train`` / ``test``) and its root
folder, checked to exist before anything is read, so a wrong path is one clear ``DataError`` naming
it."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import DataError

SPLITS = ("train", "test")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (use train or test)")


def source_root(source: str, root: str | None, needs_root: bool) -> Path | None:
    """The root folder of a source that reads one (checked to exist), else ``None``."""
    if not needs_root:
        return None
    if root is None or str(root) == "":
        raise DataError(f"source {source!r} needs a root folder (data.root)")
    return require_dir(Path(root).expanduser(), "dataset root folder")


def require_dir(folder: Path, what: str = "folder") -> Path:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such {what}")
    return folder
