"""Data sources. ``build_pretrain_dataset(cfg.data)`` gives the unlabeled pretraining set."""

from __future__ import annotations

from .folder import DataError, ImageFolderDataset
from .synthetic_pool import SyntheticPoolDataset


def build_pretrain_dataset(data_cfg):
    """``data_cfg``: a ``DataConfig``. Items are requested as ``(index, key)`` (see ``sampler.StepBatchSampler``)."""
    if data_cfg.source == "folder":
        return ImageFolderDataset(data_cfg.root, data_cfg.crop_size, data_cfg.crop, data_cfg.hflip,
                                  data_cfg.color_mode, data_cfg.exclude, data_cfg.skip_unreadable)
    if data_cfg.source == "synthetic":
        return SyntheticPoolDataset(data_cfg.synthetic_images, data_cfg.synthetic_image_size, data_cfg.crop_size,
                                    data_cfg.crop, data_cfg.hflip, data_cfg.synthetic_seed)
    raise DataError(f"data.source {data_cfg.source!r} is not a pretraining source (use folder or synthetic)")


__all__ = ["DataError", "build_pretrain_dataset"]
