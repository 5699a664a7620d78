"""``validate``: the checks of a config's values that its types cannot express, each error naming
the key.

Choices, registries and ranges come from each key's declaration (``config.key``); the checks between
keys are written here. A key that names registered things (``common.registry``) is checked once the
registries' owners are imported (every entry point imports them: ``mdm.registries``); a lookup
checks it in any case.
"""

from __future__ import annotations

import dataclasses
import math
import re

from .config import Config, check_crop
from .config_keys import ANY_TASK_METHODS, TASK_METHODS
from .errors import ConfigError
from .registry import registry


def method_registries(name: str, task: str) -> tuple[str | None, ...]:
    """The registries a key's ``registries`` entry ``name`` stands for: ``TASK_METHODS``, the
    registry of ``task``'s study methods (``stage2.tasks``; ``None`` while unknown);
    ``ANY_TASK_METHODS``, every task's; else ``name``."""
    tasks = registry("tasks")
    if name == TASK_METHODS:
        return (tasks[task].methods if tasks is not None and task in tasks else None,)
    if name == ANY_TASK_METHODS:
        return tuple(t.methods for _, t in tasks.items()) if tasks is not None else (None,)
    return (name,)


def _registered(value, names: tuple[str, ...], key: str, task: str) -> None:
    """``value`` (a name, or a list of names) against the union of the registries ``names``
    (``TASK_METHODS``: the methods of ``task``; see ``method_registries``), when all are loaded."""
    of_task, of_any = TASK_METHODS in names, ANY_TASK_METHODS in names
    names = tuple(r for n in names for r in method_registries(n, task))
    found = [registry(n) if n else None for n in names]
    if not names or None in found:
        return
    known = [k for r in found for k in r]
    for v in value if isinstance(value, list) else [value]:
        if v not in known and of_task:
            raise ConfigError(f"{key}: {v!r} is not a {task} method (bench.task: {task}; known: {', '.join(known)})")
        if v not in known:
            what = "method" if of_any else found[0].what
            raise ConfigError(
                f"{key}: unknown {what} {v!r} (known: {', '.join(dict.fromkeys(known))})")


def _declared(section, prefix: str, task: str) -> None:
    """Every key of ``section`` (and of a section inside it) against its declared choices and range
    (``task``: the study's task, whose methods the method keys name)."""
    for f in dataclasses.fields(section):
        value, name = getattr(section, f.name), f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            _declared(value, name, task)
            continue
        # what a study knows how to keep apart from its test images (``study.pool``)
        pools = registry("pretraining pools")
        study_pools = ("labeled", *pools) if pools else ()
        if name == "bench.pretrain_data.source" and study_pools and value not in study_pools:
            raise ConfigError(
                f"{name}: a study pretrains on {', '.join(study_pools)} images, not {value!r} "
                f"(pretrain on it with train.py; give the export to finetune_seg.py)")
        if name != "bench.pretrain_data.source":
            _registered(value, f.metadata.get("registries", ()), name, task)
        allowed = f.metadata.get("choices")
        if allowed and value not in allowed:
            raise ConfigError(f"{name}: {value!r} is not one of {sorted(allowed, key=str)}")
        wanted = f.metadata.get("range")
        if wanted == "positive" and not (value > 0 and value != math.inf):  # NaN fails both
            raise ConfigError(f"{name}: must be positive and finite, got {value}")
        if wanted == "not_negative" and not (value >= 0 and value != math.inf):
            raise ConfigError(f"{name}: must be 0 or more and finite, got {value}")


def as_block(value) -> int | str:
    """A block as written in a config or read back from JSON: a decoder number as an int (``"-1"``
    -> ``-1``), anything else as its text (``d3``, ``mid``)."""
    text = str(value).strip()
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else text


def seg_blocks(blocks: list, key: str) -> list[int | str]:
    """``seg.blocks`` entries as written (``as_block``); a name that is not ``d<i>``, ``mid`` or
    ``e<i>`` is a ``ConfigError`` naming ``key``. Whether the block exists is checked against the
    U-Net (``stage2.taps.resolve_seg_blocks``)."""
    out = [as_block(b) for b in blocks]
    for block in out:
        if isinstance(block, str) and not re.fullmatch(r"mid|[de]-?[0-9]+", block):
            raise ConfigError(f"{key}: {block!r} is not a decoder block number or a block name "
                              f"(d<i>, mid, e<i>)")
    return out


def validate(cfg: Config) -> Config:
    """Check ``cfg``'s values; raise ``ConfigError`` naming the key. Returns ``cfg``
    (``seg.normalize`` of an older save, a bool, becomes its name)."""
    if isinstance(cfg.seg.normalize, bool):  # written before the key took names
        cfg.seg.normalize = "zscore" if cfg.seg.normalize else "none"
    bc = cfg.bench
    # first: the metric and the method keys depend on it
    _registered(bc.task, ("tasks",), "bench.task", bc.task)
    tasks = registry("tasks")
    metrics = tasks[bc.task].metrics if tasks is not None else None
    if metrics is not None and bc.metric not in metrics:
        raise ConfigError(
            f"bench.metric: a {bc.task} study reports {', '.join(metrics)}, not {bc.metric!r}")
    for section in dataclasses.fields(cfg):
        _declared(getattr(cfg, section.name), section.name, cfg.bench.task)
    d, sc, bc = cfg.data, cfg.seg, cfg.bench
    pc = cfg.probe
    for key, values in {"seg.timesteps": sc.timesteps, "seg.auto_timesteps": sc.auto_timesteps,
                        "probe.timesteps": pc.timesteps,
                        "probe.sweep_timesteps": pc.sweep_timesteps}.items():
        bad = [v for v in (values if isinstance(values, list) else []) if not 0 <= v < cfg.diffusion.timesteps]
        if bad:
            raise ConfigError(f"{key}: {bad[0]} is not a timestep of diffusion.timesteps = "
                              f"{cfg.diffusion.timesteps} (0 .. {cfg.diffusion.timesteps - 1})")
    for key, values in {"bench.fractions": bc.fractions, "bench.seeds": bc.seeds,
                        "bench.methods": bc.methods}.items():
        if not values:
            raise ConfigError(f"{key}: must not be empty")
    bad = [f for f in bc.fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ConfigError(f"bench.fractions: {bad[0]} is not in (0, 1]")
    if not 0.0 < d.label_fraction <= 1.0:
        raise ConfigError(f"data.label_fraction: must be in (0, 1], got {d.label_fraction}")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: must be in [0, 1), got {d.val_fraction}")
    if not 0.0 <= sc.overlap < 1.0:
        raise ConfigError(f"seg.overlap: must be in [0, 1), got {sc.overlap}")
    if isinstance(sc.blocks, str) and sc.blocks != "auto":
        sc.blocks = [sc.blocks]  # one block named alone
    if sc.blocks != "auto":
        sc.blocks = seg_blocks(sc.blocks, "seg.blocks")
    sc.sweep_blocks = seg_blocks(sc.sweep_blocks, "seg.sweep_blocks")
    for key, value in {"seg.timesteps": sc.timesteps, "probe.timesteps": pc.timesteps}.items():
        if isinstance(value, str) and value != "auto":
            raise ConfigError(f"{key}: {value!r} is not a list of numbers or auto")
    if not sc.timesteps or not sc.blocks:
        raise ConfigError("seg.timesteps and seg.blocks must not be empty")
    if d.val_split == "none" and "auto" in (sc.blocks, sc.timesteps):
        raise ConfigError("seg.blocks / seg.timesteps: auto chooses on validation pixels, and data.val_split: none "
                          "holds none out; give the blocks and timesteps, or another data.val_split")
    if isinstance(pc.blocks, str) and pc.blocks != "auto":
        pc.blocks = [pc.blocks]  # one block named alone
    if (pc.blocks == "auto") != (pc.timesteps == "auto"):
        raise ConfigError("probe.blocks / probe.timesteps: the sweep chooses one block at one timestep, so both are "
                          "auto or neither is (a list keeps every block and timestep it names)")
    if not pc.blocks or not pc.timesteps or not pc.sweep_timesteps:
        raise ConfigError(
            "probe.blocks, probe.timesteps and probe.sweep_timesteps must not be empty")
    absent = [m for m in bc.references if m not in bc.methods]
    if absent:
        raise ConfigError(f"bench.references: {absent[0]!r} is not among bench.methods ({', '.join(bc.methods)}): a "
                          f"reference is judged on the same runs as the methods")
    names = [v.name for v in bc.variants]
    if "" in names or len(set(names)) != len(names):
        raise ConfigError(f"bench.variants: every variant needs a name of its own, got {names}")
    odd = [n for n in names if n in (".", "..") or any(c in n for c in "/\\")]
    if odd:
        raise ConfigError(
            f"bench.variants: {odd[0]!r} cannot name a folder (no / or \\, not . or ..)")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {cfg.train.ema_decay}")
    if cfg.diffusion.ssim_win_size % 2 == 0:
        raise ConfigError(
            f"diffusion.ssim_win_size: must be odd, got {cfg.diffusion.ssim_win_size}")
    if not 0.0 < cfg.diffusion.mae_mask_ratio < 1.0:
        raise ConfigError(
            f"diffusion.mae_mask_ratio: must be in (0, 1), got {cfg.diffusion.mae_mask_ratio}")
    objectives = registry("objectives")
    if objectives and cfg.diffusion.objective in objectives and objectives[cfg.diffusion.objective].masks:
        # whole patches (a study checks its pool)
        check_crop("data.crop_size", d.crop_size, cfg.diffusion.patch_size)
    if d.color_mode == "L":
        raise ConfigError(
            "data.color_mode: L would pretrain a one-channel U-Net that stage 2 (which reads RGB) "
            "cannot use; keep RGB: grayscale images are then read as three equal channels")
    pools = registry("pretraining pools")
    if pools and d.source not in pools and len(d.root) > 1:
        raise ConfigError(f"data.root: the {d.source} source reads one folder, got {len(d.root)} "
                          f"({', '.join(d.root)}); unlabeled folders for pretraining go in bench.pretrain_data.root")
    if pools and d.source in pools and pools[d.source].reads_root and not d.root:
        raise ConfigError(
            f"data.root: data.source is '{d.source}' but no folder is given (--set data.root=DIR)")
    if d.tissue_threshold >= 1:
        raise ConfigError(
            f"data.tissue_threshold: a saturation in [0, 1), got {d.tissue_threshold}")
    if d.tissue_min > 1:
        raise ConfigError(f"data.tissue_min: a share in (0, 1], got {d.tissue_min}")
    return cfg
