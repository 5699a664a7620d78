"""The record of a network a task fine-tunes whole (``seg.arch``, ``probe.network``), one type for
every task's registry, and the one way to build it: refused without the export it starts from, built
under torch's generator seeded from the run's seed (a head's initial weights, a network's from
scratch), so the same run gives the same result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..common.errors import ConfigError
from ..common.rng import seeded_init


@dataclass(frozen=True)
class Network:
    """``build(section, num_classes, export)`` makes it (``section``: the run's config section;
    ``export``: the pretraining export where ``needs_export``, else ``None``). Segmentation also
    reads ``check_tile(model, tile)``, which refuses a tile size the network cannot take (a
    ``ConfigError`` naming ``seg.tile_size``), and ``unet(model)``: the pretraining U-Net inside it,
    saved beside a segmenter so that it reloads (``None``: the network alone rebuilds it). ``help``:
    its line in the README's config table."""

    build: Callable[..., nn.Module]
    needs_export: bool
    check_tile: Callable[[nn.Module, int], None] = lambda model, tile: None
    unet: Callable[[nn.Module], nn.Module] | None = None
    help: str = ""


def build_network(network: Network, key: str, section, num_classes: int,
                  export, seed: int) -> nn.Module:
    """``network`` (chosen by the config key ``key``, named in the refusal) for ``num_classes``,
    seeded by ``seed``."""
    if network.needs_export and export is None:
        raise ConfigError(
            f"{key} needs --checkpoint (an export; exports/step_0 is the random initialisation)")
    with seeded_init(seed):
        return network.build(section, num_classes, export if network.needs_export else None)
