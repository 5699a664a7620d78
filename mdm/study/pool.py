"""What the study pretrains on: a pool beside the labeled source, never holding one of its test
images.

``bench.pretrain_data`` (keys as ``data``) with ``source: labeled`` (the default) is the labeled
source's training images without their labels, plus ``ROOT/unlabeled/`` when that folder exists,
plus the folders in its ``root``; with ``source: folder`` its ``root`` alone; with
``source: slides`` or ``shards`` the whole-slide images or tar shards under its ``root``
(``pretrain.slides``, ``pretrain.shards``). The labeled source's test images and their masks (or
annotation files) are always added to ``exclude``, so they are removed by path, by content hash and
by what they show whatever the folders hold (a renamed copy, a re-saved one: ``pretrain.pools``). A
``synthetic`` labeled source pretrains on its own unlabeled pool, which never holds a labeled or
test image. A test image inside a shard is left out by its bytes; a test tile cut from a slide
cannot be found inside that slide: keep the slides of the test images out of the pool.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..common.config import Config, DataConfig
from ..common.errors import ConfigError
from ..pretrain import shards, slides  # noqa: F401 - register their pools in POOLS
from ..pretrain.pools import POOLS
from ..stage2.tasks import TASKS


def labeled_split(cfg: Config, split: str):
    """One split of the study's labeled source, as ``bench.task``'s task opens it
    (``Task.open_split``): anything with ``image_files`` and ``files``."""
    return TASKS[cfg.bench.task].open_split(cfg.data, split)


def pretraining_data(cfg: Config) -> DataConfig:
    """The ``DataConfig`` the pretraining runs of a study read (see the module docstring)."""
    pool, data = cfg.bench.pretrain_data, cfg.data
    if data.source == "synthetic" and pool.source == "labeled":
        return data  # the synthetic world's own unlabeled pool
    if pool.source == "synthetic":
        return pool
    # images and masks (or annotation files)
    test_files = [str(f) for f in labeled_split(cfg, "test").files]
    if pool.source in POOLS and POOLS[pool.source].containers:
        if not pool.root:
            raise ConfigError(f"bench.pretrain_data: source {pool.source} needs bench.pretrain_data.root=[FOLDER, ...]")
        return replace(pool, exclude=[*test_files, *pool.exclude])
    root = data.root[0] if data.root else None
    roots = [str(r) for r in pool.root]
    if pool.source == "labeled":
        # windows: once
        roots = list(dict.fromkeys(str(f) for f in labeled_split(cfg, "train").image_files)) + roots
        unlabeled = Path(root) / "unlabeled" if root else None
        if unlabeled is not None and unlabeled.is_dir():
            roots.append(str(unlabeled))
    if not roots:
        raise ConfigError("bench.pretrain_data: no pretraining images (source: folder needs "
                          "bench.pretrain_data.root=[FOLDER, ...])")
    return replace(pool, source="folder", root=roots, exclude=[*test_files, *pool.exclude])
