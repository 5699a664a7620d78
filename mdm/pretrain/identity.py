"""Which config keys decide what a pretraining run's weights become: a resumed run must keep them
(``check_resume``), and a study shares one pretraining run between variants that agree on them
(``mdm.study.variants``).

Keys that do not decide the weights: another objective's own diffusion keys, stage 2's data keys,
and how a run is logged, saved and how long it runs. Where it runs (``HARDWARE``) and how it saves
memory (``MEMORY``: gradient checkpointing, accumulation within the same global batch) change the
floating-point path but not what the run trains on: a resume may change them, a study does not share
pretraining across them. Each key declares its role beside its declaration
(``config.key(..., roles=...)``), and these sets are read from there.
"""

from __future__ import annotations

from ..common.config import Config, keys_with_role
from ..common.config_io import to_dict
from ..common.errors import ConfigError
from .objectives import OBJECTIVES

# an objective that hides no patches (DDPM) ignores these
UNMASKED_IGNORES = {"patch_size", "mask_fill"}


def _in(section: str, *roles: str) -> set[str]:
    """The keys of ``section`` declaring any of ``roles`` (``config.ROLES``), by their names in the
    section."""
    return {k.split(".", 1)[1] for role in roles for k in keys_with_role(role) if k.startswith(f"{section}.")}


STAGE_2_DATA = _in("data", "stage2_data", "hardware")  # data keys that never reach the weights
CADENCE = _in("train", "cadence")
HARDWARE = _in("train", "hardware")
MEMORY = keys_with_role("memory")  # same samples per step, less memory: a resume may change them


def weight_keys(cfg: Config, objective: str | None = None,
                free: set[str] = frozenset()) -> dict[str, object]:
    """``{"section.key": value}`` of every key that decides the weights of ``cfg``'s pretraining
    (with ``objective``, default ``cfg.diffusion.objective``); ``free``: further train keys left
    out."""
    objective = objective or cfg.diffusion.objective
    spec = OBJECTIVES[objective]
    out = {f"model.{k}": v for k, v in to_dict(cfg.model).items()}
    for k, v in to_dict(cfg.diffusion).items():
        others = k not in spec.keys and any(
            k in s.keys for name, s in OBJECTIVES.items() if name != objective)
        if not others and not (not spec.masks and k in UNMASKED_IGNORES):
            out[f"diffusion.{k}"] = objective if k == "objective" else v
    out.update({f"data.{k}": v for k, v in to_dict(cfg.data).items() if k not in STAGE_2_DATA})
    out.update(
        {f"train.{k}": v for k, v in to_dict(cfg.train).items() if k not in CADENCE | set(free)})
    return out


def check_resume(saved: Config, cfg: Config, where: str) -> None:
    """Refuse to continue the run of ``saved`` (its config, read from ``where``) under ``cfg`` when
    a key that decides its weights differs: the export would mix steps of two different runs."""
    changed = changed_weight_keys(saved, cfg)
    if changed:
        raise ConfigError(f"--resume: {where} was trained with {changed}; a resumed run keeps the keys that decide its "
                          f"weights: start a new run (another train.out_dir) instead")


def changed_weight_keys(saved: Config, cfg: Config) -> str:
    """The first key deciding the weights (``weight_keys``; hardware and memory keys aside) on which
    ``saved`` and ``cfg`` differ, as ``"K = <saved>, this run has <cfg> (and n more key(s))"``, or
    ``""`` where none does."""
    before, now = weight_keys(saved, free=HARDWARE), weight_keys(cfg, free=HARDWARE)
    changed = [k for k in now if before.get(k) != now[k] and k not in MEMORY]
    if not changed:
        return ""
    k = changed[0]
    more = f" (and {len(changed) - 1} more key(s))" if len(changed) > 1 else ""
    return f"{k} = {before.get(k)!r}, this run has {now[k]!r}{more}"
