"""The classical baseline's features, shared by both tasks: per-pixel multi-scale filter responses
(Gaussian-smoothed intensity, edges and texture of each channel at sigmas from 0.5 to ``sigma_max``;
scikit-image's ``multiscale_basic_features``). Segmentation feeds them per pixel to a random forest
(``segment.filterbank``), classification pools them per image for a logistic regression
(``classify.run``)."""

from __future__ import annotations

import numpy as np
import torch
from skimage.feature import multiscale_basic_features


def filter_features(image: torch.Tensor, sigma_max: float) -> np.ndarray:
    """``image [3, H, W]`` in [-1, 1] -> per-pixel filter features ``[H, W, F]`` float32."""
    rgb = ((image.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    return multiscale_basic_features(rgb, sigma_min=0.5, sigma_max=sigma_max,
                                     channel_axis=-1).astype(np.float32)
