"""Ablations: the study run once per variant (``bench.variants``), each variant a set of overrides of its config.

A variant's config is the study's with the variant's ``set`` applied, written and checked as ``--set`` overrides are
(an error names the variant). Pretraining runs are shared between variants: a run is identified by what decides its
weights (``pretraining_identity``), so a variant that only changes stage 2 (``seg.*``, ``data.val_split``) reuses the
plain study's pretraining, and one that changes the MDM loss pretrains MDM once more but shares the DDPM and MAE runs
and the random initial weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..common.config import Config, DataConfig, Variant
from ..common.config_io import from_dict, parse_override, set_nested, to_dict
from ..common.errors import ConfigError

# diffusion keys that only one objective reads: they do not make another objective's pretraining differ
OWN_KEYS = {"mdm": {"loss", "ssim_win_size", "ssim_sigma"}, "ddpm": {"beta_schedule"}, "mae": {"mae_mask_ratio"}}
UNMASKED_IGNORES = {"patch_size", "mask_fill"}  # DDPM hides no patches
# data keys that only stage 2 reads (a synthetic study pretrains on its ``data`` section itself), or that change speed
STAGE_2_DATA = {"seed", "label_fraction", "val_fraction", "val_split", "num_classes", "num_workers"}
# train keys that change where or how a run is logged, not its weights, or that the study sets itself
NOT_WEIGHTS = {"out_dir", "device", "log_every", "image_every", "checkpoint_every", "checkpoint_limit", "max_steps",
               "export_every", "export_at"}


def variant_config(cfg: Config, variant: Variant) -> Config:
    """``cfg`` with ``variant.set`` applied (its ``bench.variants`` emptied: a variant is one plain study)."""
    data = to_dict(cfg)
    data["bench"]["variants"] = []
    try:
        for text in variant.set:
            key, value = parse_override(text)
            if key.startswith("bench.variants"):
                raise ConfigError(f"{key}: a variant cannot hold variants")
            set_nested(data, key, value)
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"bench.variants: variant {variant.name!r}: {e}") from None


def arms(cfg: Config) -> list[tuple[str, Config]]:
    """``(name, config)`` of every variant in order, or ``[("", cfg)]`` for a plain study; all checked first."""
    if not cfg.bench.variants:
        return [("", cfg)]
    return [(v.name, variant_config(cfg, v)) for v in cfg.bench.variants]


def pretraining_identity(cfg: Config, objective: str, pool: DataConfig) -> str:
    """What decides the weights of ``objective``'s pretraining on ``pool`` under ``cfg``: the model, the diffusion
    keys that objective reads, the loop (not where it logs), the pool and the study's step budget and exports."""
    diffusion = {k: v for k, v in to_dict(cfg.diffusion).items()
                 if not any(k in keys for obj, keys in OWN_KEYS.items() if obj != objective)
                 and not (objective == "ddpm" and k in UNMASKED_IGNORES)}
    diffusion["objective"] = objective
    train = {k: v for k, v in to_dict(cfg.train).items() if k not in NOT_WEIGHTS}
    pool_keys = {k: v for k, v in to_dict(pool).items() if k not in STAGE_2_DATA}
    budget = {k: getattr(cfg.bench, k) for k in ("pretrain_steps", "budget_exports", "budget_spacing")}
    return json.dumps({"model": to_dict(cfg.model), "diffusion": diffusion, "train": train, "pool": pool_keys,
                       "budget": budget}, sort_keys=True)


class PretrainFolders:
    """Names the pretraining run folders of a study: ``pretrain_<objective>`` for the plain study's own pretraining,
    ``pretrain_<objective>_<variant>`` for the first variant that pretrains it otherwise (later variants that
    pretrain it the same way share that folder)."""

    def __init__(self, out: Path, base: Config, base_pool: DataConfig):
        self.out, self.base, self.base_pool = out, base, base_pool
        self.folders: dict[str, Path] = {}

    def folder(self, variant: str, cfg: Config, objective: str, pool: DataConfig) -> Path:
        identity = pretraining_identity(cfg, objective, pool)
        if identity not in self.folders:
            plain = identity == pretraining_identity(self.base, objective, self.base_pool)
            name = f"pretrain_{objective}" if plain or not variant else f"pretrain_{objective}_{variant}"
            self.folders[identity] = self.out / name
        return self.folders[identity]
