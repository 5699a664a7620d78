"""Ablations: the study run once per variant (``bench.variants``), each variant a set of overrides
of its config.

A variant's config is the study's with the variant's ``set`` applied, written and checked as
``--set`` overrides are (an error names the variant). Pretraining runs are shared between variants:
a run is identified by what decides its weights (``pretraining_identity``), so a variant that only
changes stage 2 (``seg.*``, ``data.val_split``) reuses the plain study's pretraining, and one that
changes the MDM loss pretrains MDM once more but shares the DDPM and MAE runs and the random initial
weights.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..common.config import Config, DataConfig, Variant
from ..common.config_io import from_dict, parse_override, set_nested, to_dict
from ..common.errors import ConfigError
from ..pretrain.identity import weight_keys


def variant_config(cfg: Config, variant: Variant) -> Config:
    """``cfg`` with ``variant.set`` applied (its ``bench.variants`` emptied: a variant is one plain
    study)."""
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
    """``(name, config)`` of every variant in order, or ``[("", cfg)]`` for a plain study; all
    checked first."""
    if not cfg.bench.variants:
        return [("", cfg)]
    return [(v.name, variant_config(cfg, v)) for v in cfg.bench.variants]


def pretraining_identity(cfg: Config, objective: str, pool: DataConfig) -> str:
    """What decides the weights of ``objective``'s pretraining on ``pool`` under ``cfg``
    (``identity.weight_keys``: the model, the diffusion keys that objective reads, the loop, the
    pool) and the study's step budget and exports."""
    keys = weight_keys(replace(cfg, data=pool), objective)
    keys.update({f"bench.{k}": getattr(cfg.bench, k) for k in ("pretrain_steps", "budget_exports",
                                                               "budget_spacing")})
    return json.dumps(keys, sort_keys=True)


class PretrainFolders:
    """Names the pretraining run folders of a study: ``pretrain_<objective>`` for the plain study's
    own pretraining, ``pretrain_<objective>_<variant>`` for the first variant that pretrains it
    otherwise (later variants that pretrain it the same way share that folder)."""

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
