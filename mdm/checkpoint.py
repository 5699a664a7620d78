"""Exports for stage 2: ``unet.safetensors`` (EMA weights), ``unet_raw.safetensors`` (raw weights) and
``config.yaml`` (the resolved config, architecture included), independent of Accelerate's state folders.

Loading rebuilds the U-Net from the stored architecture and loads the weights strictly: a mismatch names the missing
and unexpected keys. Writes are atomic (a temporary folder renamed into place).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import Config, ConfigError, dump, load
from .unet import UNetModel

WEIGHTS = {"ema": "unet.safetensors", "raw": "unet_raw.safetensors"}


class CheckpointError(ValueError):
    """A missing or mismatched export; the message names the file."""


def build_unet(model_cfg) -> UNetModel:
    """The U-Net described by a ``ModelConfig`` (its fields are the constructor's arguments)."""
    from dataclasses import asdict

    return UNetModel(**asdict(model_cfg))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what was there, never leaving ``final`` half-written."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_export(out_dir: str | Path, cfg: Config, ema_model: torch.nn.Module, raw_model: torch.nn.Module) -> Path:
    """Write an export folder atomically; returns its path."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_state(ema_model), str(tmp / WEIGHTS["ema"]))
    save_file(_state(raw_model), str(tmp / WEIGHTS["raw"]))
    dump(cfg, tmp / "config.yaml")
    replace_dir(tmp, out_dir)
    return out_dir


def load_export(export_dir: str | Path, weights: str = "ema", map_location: str = "cpu"):
    """Rebuild the U-Net of an export and load its weights strictly: ``(model, config)``.

    ``weights``: ``ema`` (``unet.safetensors``) or ``raw`` (``unet_raw.safetensors``).
    """
    export_dir = Path(export_dir)
    cfg_path, w_path = export_dir / "config.yaml", export_dir / WEIGHTS[weights]
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{p}: not found (an export folder holds config.yaml, unet.safetensors and "
                                  f"unet_raw.safetensors)")
    try:
        cfg = load(cfg_path)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None
    model = build_unet(cfg.model)
    load_state_strict(model, load_file(str(w_path), device=map_location), str(w_path))
    return model, cfg


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` whose error names the file, the missing and unexpected keys and shape
    mismatches."""
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
        raise CheckpointError(f"{source}: weights do not match the architecture; " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
