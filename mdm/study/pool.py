"""What the study pretrains on: a pool beside the labeled source, never holding one of its test images.

``bench.pretrain_data`` (keys as ``data``) with ``source: labeled`` (the default) is the labeled source's training
images without their labels, plus ``ROOT/unlabeled/`` when that folder exists, plus the folders in its ``root``;
with ``source: folder`` its ``root`` alone. The labeled source's test images and their masks (or annotation files)
are always added to ``exclude``, so they are removed by path, by content hash and by what they show whatever the
folders hold (a renamed copy, a re-saved one: ``pretrain.pools``). A ``synthetic``
labeled source pretrains on its own unlabeled pool, which never holds a labeled or test image.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..classify.datasets import open_class_split
from ..common.config import Config, DataConfig
from ..common.errors import ConfigError
from ..segment.datasets import load_split


def labeled_split(cfg: Config, split: str):
    """One split of the study's labeled source, of segmentation masks (``segment.datasets``) or image labels
    (``classify.datasets``) by ``bench.task``: anything with ``image_files`` and ``files``."""
    data = cfg.data
    root = data.root[0] if data.root else None
    kw = dict(synthetic_seed=data.synthetic_seed, synthetic_size=data.synthetic_image_size)
    if cfg.bench.task == "classification":
        return open_class_split(data.source, root, split, **kw)
    if data.num_classes:
        kw["num_classes"] = data.num_classes
    return load_split(data.source, root, split, **kw)


def pretraining_data(cfg: Config) -> DataConfig:
    """The ``DataConfig`` the pretraining runs of a study read (see the module docstring)."""
    pool, data = cfg.bench.pretrain_data, cfg.data
    if data.source == "synthetic" and pool.source == "labeled":
        return data  # the synthetic world's own unlabeled pool
    if pool.source == "synthetic":
        return pool
    root = data.root[0] if data.root else None
    roots = [str(r) for r in pool.root]
    if pool.source == "labeled":
        roots = [str(f) for f in labeled_split(cfg, "train").image_files] + roots
        unlabeled = Path(root) / "unlabeled" if root else None
        if unlabeled is not None and unlabeled.is_dir():
            roots.append(str(unlabeled))
    if not roots:
        raise ConfigError("bench.pretrain_data: no pretraining images (source: folder needs "
                          "bench.pretrain_data.root=[FOLDER, ...])")
    test_files = [str(f) for f in labeled_split(cfg, "test").files]  # images and masks (or annotation files)
    return replace(pool, source="folder", root=roots, exclude=[*test_files, *pool.exclude])
