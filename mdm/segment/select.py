"""Features chosen on validation (``seg.blocks: auto`` and/or ``seg.timesteps: auto``), the same
rule for every frozen method and both tasks (``stage2.select``).

Every candidate ``(timestep, block)`` is probed alone: one member of the run's pixel head
(``seg.head``) trains on the training pixels of the labeled images for about ``seg.probe_steps``
optimizer steps in whole epochs (``ceil(probe_steps / batches per epoch)``; with two labeled images
an epoch is a single batch, so a budget in epochs would leave the probe at chance), and is scored by
its best cross-entropy on their validation pixels (held-out labeled images, see
``splits.validation_roles``). The best timestep is the one whose best block scores best; its
``seg.auto_blocks`` best blocks are kept. Only the labeled training images are read: no test image
can reach the choice. Candidates: ``seg.sweep_blocks`` (default: every decoder block; ``mid`` and
encoder blocks by name, as the image probe's sweep offers them) for ``blocks: auto``, else the
configured ones; ``seg.auto_timesteps`` for ``timesteps: auto``, else the configured ones.
"""

from __future__ import annotations

import math

from ..common.config import SegConfig
from ..common.errors import ConfigError
from ..stage2.select import choose_parts
from ..stage2.taps import tap_name
from .pixel_heads import PIXEL_HEADS
from .pixel_stream import PixelStream


def candidates(seg: SegConfig, num_blocks: int) -> tuple[list[int | str], list[int]]:
    """The blocks (as configured: negatives and names allowed) and timesteps to probe."""
    if seg.blocks == "auto":
        blocks = list(seg.sweep_blocks) or list(range(num_blocks))
    else:
        blocks = list(seg.blocks)
    timesteps = list(seg.auto_timesteps) if seg.timesteps == "auto" else list(seg.timesteps)
    return blocks, timesteps


def select_parts(stream: PixelStream, num_classes: int, seg: SegConfig,
                 progress: bool = True) -> dict:
    """Probe every ``(timestep, block)`` of ``stream``'s extractor (``stage2.select``); returns
    ``{"timestep", "blocks", "scores": {timestep: {block: validation loss}}, "metric"}`` (decoder
    blocks as absolute numbers, others by name; in the U-Net's order)."""
    ex = stream.extractor
    epochs = math.ceil(seg.probe_steps / stream.train_batches_per_epoch())

    def probe_loss(t: int, block: int) -> float:
        probe = stream.restricted([(t, block)])
        head = PIXEL_HEADS[seg.head]
        one = head.build(probe.feature_dim, num_classes, 1, seg.seed)
        if seg.normalize == "zscore":
            one.mean, one.std = probe.feature_stats()
        one.to(ex.device)
        return head.fit(one, probe.train_batches, probe.val_batches,
                        epochs, epochs, seg.lr)[0]["best_val_loss"]

    best_t, chosen, scores = choose_parts(ex.parts, probe_loss, seg.auto_blocks, progress)
    order = list(ex.model.tap_blocks())  # the forward pass's: e0 .. mid .. the last decoder block
    chosen = sorted(chosen, key=lambda b: order.index(tap_name(b)))
    if all(math.isinf(v) for row in scores.values() for v in row.values()):
        raise ConfigError(
            "seg.blocks / seg.timesteps: auto chooses on validation pixels, and there are none "
            "(data.val_fraction is 0?)")
    return {"timestep": best_t, "blocks": chosen, "scores": scores, "probe_epochs": epochs,
            "metric": "best validation cross-entropy of a one-block probe (lower is better)"}
