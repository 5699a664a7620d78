"""The block x timestep sweep (``probe.blocks: auto``): which layer and noise level carry the most
class information.

Every candidate ``(timestep, block)`` gets a linear probe alone (``heads.linear`` on
``probe.pooling`` features of that block at that timestep), trained on the labeled training images
and scored by its best cross-entropy on the validation images (the training loss where none
validates), the same rule for every method and both tasks (``stage2.select``); the best pair is
kept. The validation accuracy of each probe is recorded beside it. Only labeled training images are
read: no test image can reach the choice. Candidates: ``probe.sweep_blocks`` (default: the middle
block and every decoder block) x ``probe.sweep_timesteps``; ``probe.blocks`` and ``probe.timesteps``
are ``auto`` together.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..common.config import ModelConfig, ProbeConfig
from ..nn.unet import build_unet, num_decoder_blocks
from ..stage2.select import choose_parts
from ..stage2.taps import resolve_block_names
from .features import features_of
from .heads import fit_head


def candidates(probe: ProbeConfig, model: ModelConfig) -> tuple[list[str], list[int]]:
    """The blocks (canonical names) and timesteps the sweep probes for a U-Net of ``model``."""
    count = num_decoder_blocks(model.channel_mult, model.num_res_blocks)
    names = list(probe.sweep_blocks) or ["mid", *(f"d{i}" for i in range(count))]
    with torch.device("meta"):
        unet = build_unet(model)
    return resolve_block_names(names, unet, "probe.sweep_blocks"), list(probe.sweep_timesteps)


def select_part(table: dict[str, torch.Tensor], blocks: list[str], timesteps: list[int],
                y: torch.Tensor, fit: list[int], val: list[int], num_classes: int,
                probe: ProbeConfig) -> dict:
    """Probe every ``(timestep, block)`` of ``table`` (``ImageFeatures.extract`` of the labeled
    images, labels ``y``; ``fit`` / ``val``: positions that train / validate); returns
    ``{"timestep", "blocks": [block], "scores": {timestep: {block: loss}}, "accuracy": {timestep:
    {block: validation accuracy}}, "metric"}``."""
    linear = replace(probe, head="linear", ensemble=1)
    accuracy: dict[int, dict[str, float]] = {}

    def probe_loss(t: int, b: str) -> float:
        x = features_of(table, [(t, b)], probe.pooling)
        predict, history = fit_head("linear", x[fit], y[fit], x[val], y[val], num_classes, linear)
        if val:
            accuracy.setdefault(
                t, {})[b] = float((predict(x[val]).argmax(1) == y[val]).float().mean())
        return history[0]["best_val_loss"]

    best_t, best, scores = choose_parts([(t, b) for t in timesteps for b in blocks], probe_loss)
    watched = "validation" if val else "training"
    return {"timestep": best_t, "blocks": best, "scores": scores, "accuracy": accuracy,
            "metric": f"best {watched} cross-entropy of a one-block linear probe (lower is better)"}
