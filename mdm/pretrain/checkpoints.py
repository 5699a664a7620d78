"""Training checkpoints: what continuing a run exactly needs, in files that run no code when read.

``checkpoints/step_N/``::

    model.safetensors      the raw weights
    ema.safetensors        the EMA weights
    optimizer.safetensors  the optimizer's per-parameter tensors, keyed ``<parameter index>.<name>``
    optimizer.json         its hyper-parameters (``param_groups``) and any state that is not a tensor
    trainer_state.json     ``{"step": N, "format": 1}``

A checkpoint is written into a temporary folder and made visible by a rename. Nothing is ever
unpickled, so a checkpoint folder cannot run code; a folder in Accelerate's own format (whose
``.pkl`` / ``.bin`` files would be unpickled) is refused. Randomness needs no state: every draw is
keyed by (seed, step, sample).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..common.errors import CheckpointError
from ..common.io import load_tensors, save_tensors
from .export import load_state_strict

FORMAT = 1
CHECKPOINT_RE = re.compile(r"^step_(\d+)$")
FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json",
         "trainer_state.json")


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints ``(step, path)``, oldest first (temporary folders are ignored)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def find_resume(run_dir: Path, resume: str) -> Path:
    """The checkpoint folder ``--resume`` names: ``latest`` (the newest in the run folder) or a
    path."""
    if resume == "latest":
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            raise CheckpointError(
                f"--resume latest: no checkpoint in {Path(run_dir) / 'checkpoints'}")
        return ckpts[-1][1]
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise CheckpointError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json)")
    return path


def save_checkpoint(folder: Path, step: int, model: nn.Module, ema: nn.Module, optimizer) -> None:
    """Write the checkpoint files into the (temporary) ``folder``."""
    def cpu(state):
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    save_tensors(cpu(model.state_dict()), str(folder / "model.safetensors"))
    save_tensors(cpu(ema.state_dict()), str(folder / "ema.safetensors"))
    opt = optimizer.state_dict()
    tensors, other = {}, {}
    for index, state in opt["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(index), {})[name] = value
    save_tensors(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": opt["param_groups"], "state": other}))
    (folder / "trainer_state.json").write_text(json.dumps({"step": step, "format": FORMAT}))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def _previous_intact(path: Path) -> Path | None:
    """The newest checkpoint older than ``path`` in the same run whose files all read."""
    for step, other in reversed(list_checkpoints(path.parent.parent)):
        if other.name == path.name or step >= int(CHECKPOINT_RE.match(path.name).group(1)):
            continue
        try:
            for name in FILES:
                (load_tensors if name.endswith(".safetensors") else _read_json)(other / name)
            return other
        except CheckpointError:
            continue
    return None


def load_checkpoint(path: Path, model: nn.Module, ema: nn.Module, optimizer) -> int:
    """Load a checkpoint into the live objects (strictly); returns its step. A damaged file is a
    one-line error that names it and, where there is one, the previous intact checkpoint to resume
    from instead."""
    path = Path(path)
    if not (path / "model.safetensors").is_file() and any(path.glob("*.pkl")):
        raise CheckpointError(
            f"{path}: a checkpoint in Accelerate's pickle format, which this version does not "
            f"read (loading it could run code); resume from a checkpoint written by this version")
    try:
        state = _read_json(path / "trainer_state.json")
        if state.get("format") != FORMAT:
            raise CheckpointError(
                f"{path / 'trainer_state.json'}: unknown checkpoint format {state.get('format')!r}")
        model_state = load_tensors(path / "model.safetensors")
        ema_state = load_tensors(path / "ema.safetensors")
        opt_tensors = load_tensors(path / "optimizer.safetensors")
        opt_meta = _read_json(path / "optimizer.json")
    except CheckpointError as e:
        previous = _previous_intact(path) if CHECKPOINT_RE.match(path.name) else None
        hint = (f"; the previous intact checkpoint is {previous}: resume with --resume {previous}" if previous
                else "; no earlier intact checkpoint in this run")
        raise CheckpointError(f"{e}{hint}") from None
    load_state_strict(model, model_state, str(path / "model.safetensors"))
    load_state_strict(ema, ema_state, str(path / "ema.safetensors"))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    opt_state: dict[int, dict] = {}
    for key, value in opt_tensors.items():
        index, name = key.split(".", 1)
        param = params[int(index)] if int(index) < len(params) else None
        # e.g. channels-last moments of channels-last weights
        if param is not None and value.shape == param.shape:
            value = torch.empty_like(param, dtype=value.dtype, device=value.device).copy_(value)
        opt_state.setdefault(int(index), {})[name] = value
    for index, values in opt_meta["state"].items():
        opt_state.setdefault(int(index), {}).update(values)
    groups = [{**g,
               "betas": tuple(g["betas"])} if "betas" in g else g for g in opt_meta["param_groups"]]
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(
            f"{path / 'optimizer.json'}: does not fit this model's optimizer ({e})") from None
    return int(state["step"])
