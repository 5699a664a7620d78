"""A cache of small tensor dicts by key (feature extraction's): fp16 safetensors files under a
folder, written by a rename (a killed run never leaves half a file, and two processes may fill one
folder), or a dict in memory when there is no folder. A damaged file reads as absent, so it is
computed again."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import CheckpointError
from .io import load_tensors, save_tensors


class TensorCache:
    """``get(key)`` / ``put(key, entry)`` of ``{name: tensor}`` entries; ``folder`` ``None``: in
    memory."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        self._memory: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.folder is None:
            return self._memory.get(key)
        path = self._path(key)
        try:
            return load_tensors(path) if path.is_file() else None
        except CheckpointError:
            return None

    def put(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            self._memory[key] = entry
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_tensors(entry, str(tmp))
        os.replace(tmp, path)
