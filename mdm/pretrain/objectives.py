"""The corruption processes and their per-sample losses, behind one interface, registered in
``OBJECTIVES``.

``objective = build_objective(cfg.diffusion)``; ``out = objective.loss(model, x0, keys[, t])``
returns an ``ObjectiveOutput`` whose ``loss`` is per sample ``[B]`` (fp32). ``x0 [B, C, H, W]`` is
in [-1, 1]; ``keys [B]`` (int64, see ``mdm.common.rng``) make every random draw (timestep, mask,
noise) a function of the sample's key.

- ``MaskedDiffusion`` (MDM): t ~ U{1..T}, mask ratio t / T, masked patches filled with ``fill``, the
  model predicts x0 from ``(x_t, t)``; loss SSIM (default), the reference code's SSIM, masked SSIM,
  MSE or L1.
- ``GaussianDiffusion`` (DDPM baseline): t ~ U{0..T-1}, ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)
  eps``, the model predicts eps; MSE.
- ``MaskedAutoencoder`` (MAE baseline): a fixed mask ratio, timestep 0, MSE on the masked pixels.

``objective.model_timesteps(t)`` is the timestep input the U-Net sees for corruption level ``t``
(MAE: 0), and ``objective.reconstruct(model, x0, t, keys)`` the clean-image estimate from the input
corrupted at level ``t`` (what feature extraction feeds the U-Net), with the pixels the model saw.

A new objective is a class with ``sample_t``, ``corrupt``, ``model_timesteps``, ``reconstruct`` and
``loss``, plus ``OBJECTIVES.register(name, ObjectiveSpec(...))``; the study methods that use it
follow by themselves (``mdm.study.methods.generated_methods``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..common import rng
from ..common.config import DiffusionConfig
from ..common.registry import Registry
from ..common.rng import Stream
from .losses import LOSSES, masked_mse_loss, mse_loss
from .masking import apply_mask, check_patchable, mask_to_pixels, patch_mask


@dataclass
class ObjectiveOutput:
    """``loss [B]`` fp32; ``t [B]`` the timesteps; ``x_t`` the model input; ``x0_pred`` the
    clean-image estimate."""

    loss: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor
    x0_pred: torch.Tensor


@dataclass
class Reconstruction:
    """``x0_pred [B, C, H, W]`` the clean-image estimate; ``visible [B, 1, H, W]`` 1 where the model
    saw the pixel (all ones for DDPM, whose noise hides nothing entirely)."""

    x0_pred: torch.Tensor
    visible: torch.Tensor


def mask_keyed(x0: torch.Tensor, ratio: torch.Tensor, keys: torch.Tensor,
               patch_size: int, fill: float):
    """Hide a fraction ``ratio [B]`` of the ``patch_size`` patches of ``x0 [B, C, H, W]``, which
    ones drawn from each sample's key; returns ``(x_t, mask [B, L])`` (True = hidden). MDM and MAE
    corrupt through this one function."""
    num_patches = check_patchable(x0.shape[-2], x0.shape[-1], patch_size)
    noise = rng.uniform(keys, Stream.MASK, num_patches).to(x0.device)
    mask = patch_mask(ratio, num_patches, noise=noise)
    return apply_mask(x0, mask, patch_size, fill), mask


class MaskedDiffusion:
    """MDM: hide a fraction t / T of the ``patch_size`` patches and reconstruct the clean image."""

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep input the U-Net sees for corruption level ``t`` (MDM: ``t`` itself)."""
        return t

    def __init__(self, timesteps: int = 1000, patch_size: int = 8, fill: float = 0.0,
                 loss: str = "ssim", ssim_win_size: int = 5, ssim_sigma: float = 1.5):
        self.timesteps, self.patch_size, self.fill = timesteps, patch_size, fill
        self.loss_name, self.win, self.sigma = loss, ssim_win_size, ssim_sigma

    def sample_t(self, keys: torch.Tensor) -> torch.Tensor:
        """``[B]`` int64 uniform in 1..T (t = 0 would be an uncorrupted image)."""
        return rng.randint(keys, Stream.TIMESTEP, 1, self.timesteps + 1)

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, keys: torch.Tensor):
        """Return ``(x_t [B, C, H, W], mask [B, L])``; ``mask`` True = hidden patch."""
        return mask_keyed(x0, t.double() / self.timesteps, keys, self.patch_size, self.fill)

    def reconstruct(self, model, x0: torch.Tensor, t: torch.Tensor,
                    keys: torch.Tensor) -> Reconstruction:
        return masked_reconstruction(self, model, x0, t, keys)

    def loss(self, model, x0: torch.Tensor, keys: torch.Tensor,
             t: torch.Tensor | None = None) -> ObjectiveOutput:
        t = self.sample_t(keys).to(x0.device) if t is None else t
        x_t, mask = self.corrupt(x0, t, keys)
        pred = model(x_t, t)
        spec = LOSSES[self.loss_name]
        pix = mask_to_pixels(mask, x0.shape[-2], x0.shape[-1],
                             self.patch_size) if spec.masked else None
        loss = spec.compute(pred, x0, pix, self.win, self.sigma)
        return ObjectiveOutput(loss, t, x_t, pred)


def masked_reconstruction(objective, model, x0: torch.Tensor, t: torch.Tensor,
                          keys: torch.Tensor) -> Reconstruction:
    """MDM and MAE: hide a fraction ``t / T`` of the patches, predict the clean image; the kept
    patches are visible."""
    x_t, mask = objective.corrupt(x0, t, keys)
    pred = model(x_t, objective.model_timesteps(t))
    return Reconstruction(pred, 1 - mask_to_pixels(mask, x0.shape[-2], x0.shape[-1],
                                                   objective.patch_size))


def beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    """``[T]`` float64 betas: ``linear`` (DDPM, 1e-4..0.02 scaled to T) or ``cosine`` (Nichol &
    Dhariwal)."""
    if name == "linear":
        scale = 1000 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    if name == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {name!r} (use linear or cosine)")


class GaussianDiffusion:
    """DDPM baseline: Gaussian noising, epsilon prediction, MSE."""

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def __init__(self, timesteps: int = 1000, schedule: str = "linear"):
        self.timesteps = timesteps
        self.alphas_cumprod = torch.cumprod(1 - beta_schedule(schedule, timesteps), 0)

    def sample_t(self, keys: torch.Tensor) -> torch.Tensor:
        """``[B]`` int64 uniform in 0..T-1."""
        return rng.randint(keys, Stream.TIMESTEP, 0, self.timesteps)

    def _coefs(self, t: torch.Tensor, like: torch.Tensor):
        abar = self.alphas_cumprod.to(like.device)[t].float().reshape(-1, 1, 1, 1)
        return abar.sqrt(), (1 - abar).sqrt()

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, keys: torch.Tensor):
        """Return ``(x_t, eps)``, both ``[B, C, H, W]``."""
        eps = rng.normal(keys, Stream.NOISE, tuple(x0.shape[1:])).to(x0.device, x0.dtype)
        a, s = self._coefs(t, x0)
        return a * x0 + s * eps, eps

    def reconstruct(self, model, x0: torch.Tensor, t: torch.Tensor,
                    keys: torch.Tensor) -> Reconstruction:
        x_t, _ = self.corrupt(x0, t, keys)
        a, s = self._coefs(t, x0)
        x0_pred = ((x_t - s * model(x_t, t).float()) / a).clamp(-1, 1)
        return Reconstruction(x0_pred, torch.ones_like(x0[:, :1]))

    def loss(self, model, x0: torch.Tensor, keys: torch.Tensor,
             t: torch.Tensor | None = None) -> ObjectiveOutput:
        t = self.sample_t(keys).to(x0.device) if t is None else t
        x_t, eps = self.corrupt(x0, t, keys)
        eps_pred = model(x_t, t)
        a, s = self._coefs(t, x0)
        with torch.no_grad():
            x0_pred = ((x_t - s * eps_pred.float()) / a).clamp(-1, 1)
        return ObjectiveOutput(mse_loss(eps_pred, eps), t, x_t, x0_pred)


class MaskedAutoencoder:
    """MAE baseline in the same U-Net: a fixed fraction ``mask_ratio`` (0.75) of the patches hidden,
    the U-Net sees timestep 0 (no notion of a corruption level) and predicts the clean image; MSE
    over the masked pixels only.

    ``corrupt(x0, t, keys)`` masks a fraction ``t / T``, as MDM does, so that feature extraction at
    ``seg.timesteps`` hides the same share of patches for both masked objectives; ``loss`` always
    masks ``mask_ratio``.
    """

    def __init__(self, timesteps: int = 1000, patch_size: int = 8, fill: float = 0.0,
                 mask_ratio: float = 0.75):
        self.timesteps, self.patch_size, self.fill, self.mask_ratio = timesteps, patch_size, fill, mask_ratio

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def sample_t(self, keys: torch.Tensor) -> torch.Tensor:
        """``[B]`` the corruption level of ``mask_ratio`` (for logging; the model sees 0)."""
        return torch.full((keys.shape[0],), round(self.mask_ratio * self.timesteps),
                          dtype=torch.int64)

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, keys: torch.Tensor):
        """``(x_t, mask)`` with a fraction ``t / T`` of the patches hidden."""
        return mask_keyed(x0, t.double() / self.timesteps, keys, self.patch_size, self.fill)

    def reconstruct(self, model, x0: torch.Tensor, t: torch.Tensor,
                    keys: torch.Tensor) -> Reconstruction:
        return masked_reconstruction(self, model, x0, t, keys)

    def loss(self, model, x0: torch.Tensor, keys: torch.Tensor,
             t: torch.Tensor | None = None) -> ObjectiveOutput:
        t = self.sample_t(keys).to(x0.device)
        ratio = torch.full((x0.shape[0],), self.mask_ratio, dtype=torch.float64, device=x0.device)
        x_t, mask = mask_keyed(x0, ratio, keys, self.patch_size, self.fill)
        pred = model(x_t, self.model_timesteps(t))
        pix = mask_to_pixels(mask, x0.shape[-2], x0.shape[-1], self.patch_size)
        return ObjectiveOutput(masked_mse_loss(pred, x0, pix), t, x_t, pred)


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: ``build(diffusion_cfg)`` makes it; ``masks``: it hides patches (crops
    must hold whole ``diffusion.patch_size`` patches, and ``patch_size`` / ``mask_fill`` decide its
    weights); ``keys``: the ``diffusion`` keys only it reads (a run of another objective ignores
    them); ``loss``: its loss's name for tables, from the config; ``help``: one line for the
    README."""

    build: Callable[[DiffusionConfig], object]
    masks: bool
    keys: tuple[str, ...] = ()
    loss: Callable[[DiffusionConfig], str] = lambda d: "mse"
    help: str = ""


OBJECTIVES: Registry[ObjectiveSpec] = Registry("objectives", "diffusion.objective", "objective")
OBJECTIVES.register("mdm", ObjectiveSpec(
    lambda d: MaskedDiffusion(d.timesteps, d.patch_size, d.mask_fill, d.loss,
                              d.ssim_win_size, d.ssim_sigma),
    masks=True, keys=("loss", "ssim_win_size", "ssim_sigma"), loss=lambda d: d.loss,
    help="hide a fraction t / T of the patches, predict the clean image"))
OBJECTIVES.register("ddpm", ObjectiveSpec(
    lambda d: GaussianDiffusion(d.timesteps, d.beta_schedule), masks=False, keys=("beta_schedule",),
    help="Gaussian noise, predict it"))
OBJECTIVES.register("mae", ObjectiveSpec(
    lambda d: MaskedAutoencoder(d.timesteps, d.patch_size, d.mask_fill,
                                d.mae_mask_ratio), masks=True,
    keys=("mae_mask_ratio",),
    help="a fixed share of patches hidden, timestep 0, MSE on the hidden pixels"))


def build_objective(cfg: DiffusionConfig):
    """The objective ``cfg.objective`` names, built from ``cfg``."""
    return OBJECTIVES[cfg.objective].build(cfg)
