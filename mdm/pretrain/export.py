"""Exports: what pretraining hands to stage 2, independent of Accelerate's state folders.

An export folder holds ``unet.safetensors`` (EMA weights), ``unet_raw.safetensors`` (raw weights)
and ``config.yaml`` (the resolved config, architecture included). ``open_export`` reads and checks
the config only; ``Export.load_model`` rebuilds the U-Net from the stored architecture and loads the
weights strictly: a mismatch names the missing and unexpected keys. Writes are atomic (a temporary
folder renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..common.config import Config
from ..common.config_io import dump, load
from ..common.errors import CheckpointError, ConfigError
from ..common.io import atomic_dir, file_digest, load_tensors, save_tensors
from ..nn.unet import UNetModel, build_unet

WEIGHTS = {"ema": "unet.safetensors", "raw": "unet_raw.safetensors"}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}


def write_export(folder: Path, cfg: Config, ema_model: torch.nn.Module,
                 raw_model: torch.nn.Module) -> None:
    """Write the export files into an existing (temporary) folder."""
    save_tensors(_state(ema_model), str(folder / WEIGHTS["ema"]))
    save_tensors(_state(raw_model), str(folder / WEIGHTS["raw"]))
    dump(cfg, folder / "config.yaml")


def save_export(out_dir: str | Path, cfg: Config, ema_model: torch.nn.Module,
                raw_model: torch.nn.Module) -> Path:
    """Write an export folder atomically; returns its path."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_export(tmp, cfg, ema_model, raw_model)
    return out_dir


def file_fingerprint(path: str | Path, whole: bool = True) -> str:
    """A short content hash of a weights file (SHA-1 of all its bytes, ``file_digest``), to key
    caches of what it computes and to tell two exports apart: one changed tensor anywhere in the
    file changes it. ``whole=False``: the size and the first and last MiB only, what segmenters
    saved before the whole-file hash recorded (checked so)."""
    if whole:
        return file_digest(Path(path))[:16]
    path, chunk = Path(path), 1 << 20
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(chunk))
        f.seek(max(0, size - chunk))
        h.update(f.read(chunk))
    return h.hexdigest()[:16]


def export_is_current(run_dir: Path, step: int) -> bool:
    """Whether ``run_dir/exports/step_<step>`` exists and ``run_dir/export`` holds the same
    files."""
    ours, latest = run_dir / "exports" / f"step_{step}", run_dir / "export"
    files = [*WEIGHTS.values(), "config.yaml"]
    if not all((ours / f).is_file() and (latest / f).is_file() for f in files):
        return False
    return all(file_fingerprint(ours / f) == file_fingerprint(latest / f) for f in files)


def publish_export(run_dir: Path, step: int) -> None:
    """``run_dir/export`` replaced (atomically) by a copy of ``run_dir/exports/step_<step>``: the
    export stage 2 reads by default is the run's newest."""
    with atomic_dir(run_dir / "export") as tmp:
        shutil.copytree(run_dir / "exports" / f"step_{step}", tmp, dirs_exist_ok=True)


@dataclass(frozen=True)
class Export:
    """An export folder whose config has been read and checked; ``weights`` is ``ema`` or
    ``raw``."""

    folder: Path
    config: Config
    weights: str = "ema"

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS[self.weights]

    def fingerprint(self, whole: bool = True) -> str:
        """Identifies what the export computes: its weights (``file_fingerprint``) and its model and
        objective settings (two objectives' step-0 exports hold the same weights but corrupt their
        inputs differently)."""
        settings = json.dumps([asdict(self.config.model),
                               asdict(self.config.diffusion)], sort_keys=True)
        return hashlib.sha1(
            f"{file_fingerprint(self.weights_path, whole)}|{settings}".encode()).hexdigest()[:16]

    def load_model(self) -> UNetModel:
        """The U-Net with the export's weights (strict), on the CPU in fp32."""
        model = build_unet(self.config.model)
        load_state_strict(model, load_tensors(self.weights_path), str(self.weights_path))
        return model


EXPORT_SECTIONS = ("model", "diffusion", "data", "train")


def open_export(export_dir: str | Path, weights: str = "ema") -> Export:
    """Read an export's ``config.yaml`` and check that its weights file is there (not loaded
    yet)."""
    export_dir = Path(export_dir)
    cfg_path, w_path = export_dir / "config.yaml", export_dir / WEIGHTS[weights]
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(
                f"{p}: not found (an export folder holds config.yaml, unet.safetensors and "
                f"unet_raw.safetensors)")
    # the sections that describe the network: stage 2's and the study's keys may change between
    # versions
    try:
        cfg = load(cfg_path, sections=EXPORT_SECTIONS)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None
    return Export(export_dir, cfg, weights)


def load_export(export_dir: str | Path, weights: str = "ema") -> tuple[UNetModel, Config]:
    """Rebuild the U-Net of an export and load its weights strictly: ``(model, config)``."""
    export = open_export(export_dir, weights)
    return export.load_model(), export.config


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` whose error names the file, the missing and unexpected keys
    and shape mismatches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")

        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatches: {few(shapes)}" if shapes else ""]
        raise CheckpointError(
            f"{source}: weights do not match the architecture; " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
