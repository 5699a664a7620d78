"""Image losses, always computed in fp32 outside autocast.

Two SSIM losses, the same minimiser, different gradients away from it:

- ``ssim_loss`` (``diffusion.loss: ssim``) is pytorch-msssim's SSIM: a Gaussian window (``win_size``
  x ``win_size``, ``sigma``), *valid* convolution (no padding), constants K1=0.01, K2=0.03 for a
  data range of 1, on images rescaled from [-1, 1] to [0, 1]; the loss is ``1 - mean SSIM`` per
  sample.
- ``ssim_ref_loss`` (``diffusion.loss: ssim_ref``) is the reference MDM code's: the same window with
  zero padding (a map of the image's size, darker statistics at the border), the data-range-1
  constants applied to the [-1, 1] images themselves, and ``mean(clamp(1 - ssim_map, 0, 1)) / 2``.
  On [-1, 1] the luminance term ``(2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)`` turns negative where
  the two local means straddle 0, so a colour shift costs far more than under ``ssim_loss``, where a
  local mean of 0.62 predicted as 0.42 ([0, 1] scale) costs about 0.035: a model trained with
  ``ssim_loss`` is free to drop colour.

The reconstruction losses ``diffusion.loss`` chooses are registered in ``LOSSES``: a new one is a
function of ``(pred, target, pixel_mask, win_size, sigma) -> [B]`` and one ``register`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as msssim_ssim

from ..common.registry import Registry

K1, K2 = 0.01, 0.03


def _fp32(*xs: torch.Tensor):
    return [x.float() for x in xs]


def gaussian_window(win_size: int, sigma: float, device=None) -> torch.Tensor:
    """1-D normalised Gaussian ``[win_size]``."""
    coords = torch.arange(win_size, dtype=torch.float32, device=device) - win_size // 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim_map(x: torch.Tensor, y: torch.Tensor, win_size: int = 5, sigma: float = 1.5,
             data_range: float = 1.0, zero_pad: bool = False) -> torch.Tensor:
    """Per-pixel SSIM of ``x, y [B, C, H, W]`` -> ``[B, C, H - win + 1, W - win + 1]`` (valid
    region), or ``[B, C, H, W]`` with ``zero_pad`` (the window sees zeros beyond the border, as the
    reference MDM code's).

    Without padding, the same definition as pytorch-msssim (separable Gaussian window, valid
    convolution), which does not expose the map; ``ssim_map(x, y).mean((1, 2, 3))`` equals
    ``pytorch_msssim.ssim(x, y, size_average=False)``.
    """
    c = x.shape[1]
    g = gaussian_window(win_size, sigma, x.device)
    wh = g.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1)
    wv = g.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1)
    pad = win_size // 2 if zero_pad else 0

    def blur(t):
        return F.conv2d(F.conv2d(t, wh, padding=(0, pad), groups=c), wv, padding=(pad, 0), groups=c)

    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return ((2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)) * cs


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1) * 0.5


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, win_size: int = 5,
              sigma: float = 1.5) -> torch.Tensor:
    """``1 - SSIM`` per sample ``[B]`` over the whole image; inputs ``[B, C, H, W]`` in [-1, 1]."""
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = _fp32(pred, target)
        s = msssim_ssim(to_unit(pred), to_unit(target), data_range=1.0, size_average=False,
                        win_size=win_size, win_sigma=sigma)
        return 1.0 - s


def ssim_ref_loss(pred: torch.Tensor, target: torch.Tensor, win_size: int = 5,
                  sigma: float = 1.5) -> torch.Tensor:
    """The reference MDM code's SSIM loss per sample ``[B]``:
    ``mean(clamp(1 - ssim_map, 0, 1)) / 2`` with a zero-padded window and the data-range-1 constants
    on the [-1, 1] inputs ``[B, C, H, W]`` themselves."""
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = _fp32(pred, target)
        m = ssim_map(pred, target, win_size, sigma, data_range=1.0, zero_pad=True)
        return (1.0 - m).clamp(0.0, 1.0).mean((1, 2, 3)) / 2


def masked_ssim_loss(pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor,
                     win_size: int = 5, sigma: float = 1.5) -> torch.Tensor:
    """``1 - SSIM`` per sample ``[B]``, the SSIM map averaged over masked pixels only.

    ``pixel_mask [B, 1, H, W]`` (1 = masked) is cropped to the map's valid region; a sample with no
    masked pixel in that region scores 0.
    """
    with torch.autocast(pred.device.type, enabled=False):
        pred, target, pixel_mask = _fp32(pred, target, pixel_mask)
        m = ssim_map(to_unit(pred), to_unit(target), win_size, sigma)
        r = win_size // 2
        w = pixel_mask[:, :, r:pixel_mask.shape[-2] - r, r:pixel_mask.shape[-1] - r].expand_as(m)
        num = ((1.0 - m) * w).sum((1, 2, 3))
        return num / w.sum((1, 2, 3)).clamp_min(1.0)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample ``[B]``."""
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = _fp32(pred, target)
        return (pred - target).pow(2).flatten(1).mean(1)


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor,
                    pixel_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample ``[B]`` over the masked pixels only
    (``pixel_mask [B, 1, H, W]``, 1 = masked), averaged over channels; a sample with no masked pixel
    scores 0."""
    with torch.autocast(pred.device.type, enabled=False):
        pred, target, pixel_mask = _fp32(pred, target, pixel_mask)
        num = ((pred - target).pow(2) * pixel_mask).sum((1, 2, 3))
        return num / (pixel_mask.sum((1, 2, 3)) * pred.shape[1]).clamp_min(1.0)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample ``[B]``."""
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = _fp32(pred, target)
        return (pred - target).abs().flatten(1).mean(1)


@dataclass(frozen=True)
class ReconstructionLoss:
    """A registered reconstruction loss (``diffusion.loss``): ``compute(pred, target, pixel_mask,
    win_size, sigma)`` -> ``[B]`` fp32, inputs ``[B, C, H, W]`` in [-1, 1]; ``masked``: it reads
    ``pixel_mask`` ``[B, 1, H, W]`` (1 = hidden pixel; ``None`` is passed otherwise); ``help``: its
    line in the README's config table."""

    compute: Callable[..., torch.Tensor]
    masked: bool = False
    help: str = ""


LOSSES: Registry[ReconstructionLoss] = Registry("reconstruction losses", "diffusion.loss", "loss")
LOSSES.register("ssim", ReconstructionLoss(lambda p, t, m, w, s: ssim_loss(p, t, w, s),
                                           help="pytorch-msssim's, on [0, 1]"))
LOSSES.register("ssim_ref", ReconstructionLoss(
    lambda p, t, m, w, s: ssim_ref_loss(p, t, w, s),
    help="the reference code's: zero padding, range-1 constants on [-1, 1], `mean(clamp(1 - map, 0, 1)) / 2`; "
         "keeps colour"))
LOSSES.register("ssim_masked",
                ReconstructionLoss(lambda p, t, m, w, s: masked_ssim_loss(p, t, m, w, s),
                                   masked=True, help="masked pixels only"))
LOSSES.register("mse", ReconstructionLoss(lambda p, t, m, w, s: mse_loss(p, t)))
LOSSES.register("l1", ReconstructionLoss(lambda p, t, m, w, s: l1_loss(p, t)))
