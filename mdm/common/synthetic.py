"""A built-in, deterministic, histology-like data source (no download needed).

Images look like H&E-stained colon tissue: glands (an epithelial ring dense with dark nuclei around
a pale lumen) on a fibrous pink stroma that also holds scattered nuclei, inflammatory clusters
(dark, like epithelium) and white spaces (bright, like lumens). Colours follow Beer-Lambert mixing
of two stain vectors.

Collections vary from slide to slide, so the generator models **slides**: each slide draws its own
stain vectors, stain strength, contrast, blur and noise, and every image ``(slide, index)`` belongs
to one slide. Everything is a pure function of ``(seed, slide, index, size)``.

``SyntheticHistology`` hands out the three sets a label-efficiency study needs:
- ``labeled_ids()``: the training images, from the first ``label_slides`` slides;
- ``test_ids()``: images from ``test_slides`` other slides, which no labeled image comes from;
- ``unlabeled_ids(n)``: a pool drawn from all slides (labeled, test and extra ones) with image
  indices that never coincide with a labeled or test image.

Images are ``[3, H, W]`` float32 in [-1, 1]; instance maps ``[H, W]`` int64 with 0 = background and
1..K glands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .labels import consecutive_ids
from .rng import Tag, make_key

# unlabeled-pool images use indices from here on: never a labeled or test image
POOL_INDEX_OFFSET = 1_000_000


def _gen(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(make_key(*parts))


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def smooth_noise(g: torch.Generator, h: int, w: int, scale: float,
                 aniso: float = 1.0) -> torch.Tensor:
    """Zero-mean, unit-std noise ``[H, W]`` with correlation length ~``scale`` px (``aniso``
    stretches x)."""
    gh, gw = max(2, math.ceil(h / scale) + 1), max(2, math.ceil(w / (scale * aniso)) + 1)
    n = torch.randn(1, 1, gh, gw, generator=g)
    n = F.interpolate(n, size=(h, w), mode="bicubic", align_corners=True)[0, 0]
    return (n - n.mean()) / n.std().clamp_min(1e-6)


def spots(g: torch.Generator, h: int, w: int, radius: float, density: float) -> torch.Tensor:
    """Soft dark dots (nuclei) ``[H, W]`` in [0, 1]; ``density`` in [0, 1] is roughly the covered
    fraction."""
    n = smooth_noise(g, h, w, max(radius, 1.0))
    thr = torch.quantile(n.flatten(), 1.0 - density) if 0 < density < 1 else n.max() + 1
    return torch.sigmoid((n - thr) * 6.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``[C, H, W]`` with a separable Gaussian (reflect padding)."""
    if sigma < 0.3:
        return x
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma ** 2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[0]
    x = F.pad(x[None], (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


@dataclass(frozen=True)
class SlideStyle:
    """One slide's appearance: stain optical-density vectors, strength, contrast, blur and noise."""

    hematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    strength: float
    contrast: float
    blur: float
    noise: float
    gland_scale: float  # typical gland radius / 64 px


def slide_style(seed: int, slide: int) -> SlideStyle:
    g = _gen(seed, slide, Tag.SLIDE_STYLE)

    def jitter(base, amount):
        v = torch.tensor(base) * (1 + amount * (torch.rand(3, generator=g) * 2 - 1))
        return tuple((v / v.norm()).tolist())

    return SlideStyle(
        hematoxylin=jitter((0.65, 0.70, 0.29), 0.35),
        eosin=jitter((0.07, 0.99, 0.11), 0.5),
        strength=_u(g, 0.55, 1.5),
        contrast=_u(g, 0.7, 1.25),
        blur=_u(g, 0.0, 1.3),
        noise=_u(g, 0.01, 0.06),
        gland_scale=_u(g, 0.16, 0.28),
    )


# gland shapes of the image-level labels (``render(..., shape=)``): (aspect range, wobble amplitude
# range per harmonic)
SHAPES = {"regular": ((0.85, 1.0), (0.0, 0.02)), "irregular": ((0.45, 0.65), (0.12, 0.22))}


def _gland_field(g, yy, xx, cy, cx, radius, shape: str | None = None):
    """Normalised distance ``[H, W]`` (< 1 inside) of a wobbly, rotated ellipse centred at (cy, cx).
    ``shape`` (``SHAPES``) narrows the aspect and the wobble to round, smooth glands or elongated,
    ragged ones, at the area of a circle of ``radius`` (so that the two differ in shape, not in how
    much of the image is gland)."""
    angle = _u(g, 0, math.pi)
    (a_lo, a_hi), (w_lo, w_hi) = SHAPES[shape] if shape else ((0.55, 1.0), (0.0, 0.12))
    aspect = _u(g, a_lo, a_hi)
    if shape:
        radius = radius / math.sqrt(aspect)
    dy, dx = yy - cy, xx - cx
    ry = math.cos(angle) * dy - math.sin(angle) * dx
    rx = math.sin(angle) * dy + math.cos(angle) * dx
    phi = torch.atan2(ry, rx)
    wobble = 1.0
    for k in (2, 3, 5):
        wobble = wobble + _u(g, w_lo, w_hi) * torch.cos(k * phi + _u(g, 0, 2 * math.pi))
    return torch.sqrt((ry / aspect) ** 2 + rx ** 2) / (radius * wobble)


def render(seed: int, slide: int, index: int, height: int, width: int | None = None,
           shape: str | None = None):
    """Render image ``(slide, index)`` at ``height x width``: ``(image [3, H, W] in [-1, 1],
    instances [H, W])``; ``shape`` (``SHAPES``: ``regular`` / ``irregular``) gives every gland of
    the image that shape."""
    width = width or height
    style = slide_style(seed, slide)
    g = _gen(seed, slide, index, Tag.SLIDE_IMAGE)
    h, w = height, width
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")

    # place non-overlapping glands by rejection sampling
    instances = torch.zeros(h, w, dtype=torch.int64)
    lumen = torch.zeros(h, w)
    ring = torch.zeros(h, w)  # 0 outside glands, rising to 1 at the basal edge of the epithelium
    placed: list[tuple[float, float, float]] = []
    target = max(1,
                 round(_u(g, 0.6, 1.6) * h * w / (math.pi * (style.gland_scale * 64 * 1.7) ** 2)))
    for _ in range(target * 8):
        if len(placed) >= target:
            break
        # in px: the magnification is fixed, as in a scanner
        radius = style.gland_scale * 64 * _u(g, 0.6, 1.4)
        cy, cx = _u(g, -0.1, 1.1) * h, _u(g, -0.1, 1.1) * w
        if any(math.hypot(cy - py, cx - px) < (radius + pr) * 1.1 for py, px, pr in placed):
            continue
        placed.append((cy, cx, radius))
        d = _gland_field(g, yy, xx, cy, cx, radius, shape)
        inside = d < 1
        if not inside.any():
            placed.pop()
            continue
        instances[inside] = len(placed)
        lumen_frac = _u(g, 0.0, 0.65)
        lumen = torch.maximum(lumen, torch.sigmoid((lumen_frac - d) * 12) * inside)
        ring = torch.maximum(ring, inside * d.clamp(0, 1))
    # consecutive ids (a placed gland may be fully overwritten only in degenerate cases)
    instances = torch.from_numpy(consecutive_ids(instances.numpy())[0])
    gland = (instances > 0).float()
    epithelium = gland * (1 - lumen)

    # stroma texture and distractors
    fibres = smooth_noise(g, h, w, 2.0, aniso=_u(g, 2.0, 5.0))
    coarse = smooth_noise(g, h, w, 16.0)
    white = torch.sigmoid((smooth_noise(g, h, w, 10.0) - _u(g, 1.0, 1.8)) * 6) * (1 - gland)
    inflam = torch.sigmoid((smooth_noise(g, h, w, 8.0) - _u(g, 1.2, 2.0)) * 5) * (1 - gland)
    stromal_nuclei = spots(g, h, w, 1.2, _u(g, 0.03, 0.10))
    dense_nuclei = spots(g, h, w, 1.0, _u(g, 0.35, 0.55))

    basal = torch.sigmoid((ring - 0.7) * 10)  # nuclei crowd at the basal side of the ring
    hema = (0.12 + 0.9 * stromal_nuclei) * (1 - gland) * (1 - white)
    hema = hema + inflam * (0.3 + 0.9 * dense_nuclei)
    hema = hema + epithelium * (0.18 + 0.25 * basal + 0.9 * dense_nuclei * (0.4 + 0.6 * basal))
    hema = hema + lumen * 0.03
    eos = (0.55 + 0.18 * fibres + 0.1 * coarse) * (1 - gland) * (1 - white)
    eos = eos + epithelium * (0.35 + 0.1 * coarse) + lumen * _u(g, 0.02, 0.25) + white * 0.03
    od = (hema.clamp_min(0)[None] * torch.tensor(style.hematoxylin)[:, None, None]
          + eos.clamp_min(0)[None] * torch.tensor(style.eosin)[:, None, None]) * style.strength
    rgb = torch.exp(-od * 1.6)
    rgb = gaussian_blur(rgb, style.blur)
    rgb = 0.5 + (rgb - 0.5) * style.contrast + torch.randn(rgb.shape, generator=g) * style.noise
    image = rgb.clamp(0, 1) * 2 - 1
    return image, instances


class SyntheticHistology:
    """The three sets of a label-efficiency study, as ``(slide, index)`` ids rendered on demand.

    Slides ``0 .. label_slides-1`` give the labeled images (``images_per_slide`` each), the next
    ``test_slides`` slides give the test images, and ``pool_slides`` further slides only feed the
    unlabeled pool.
    """

    def __init__(self, seed: int = 0, image_size: int = 64, label_slides: int = 4,
                 test_slides: int = 4, images_per_slide: int = 5, pool_slides: int = 8):
        self.seed, self.image_size = seed, image_size
        self.label_slides, self.test_slides = label_slides, test_slides
        self.images_per_slide, self.pool_slides = images_per_slide, pool_slides

    def labeled_ids(self) -> list[tuple[int, int]]:
        return [(s, i) for s in range(self.label_slides) for i in range(self.images_per_slide)]

    def test_ids(self) -> list[tuple[int, int]]:
        first = self.label_slides
        return [(s, i) for s in range(first, first + self.test_slides) for i in range(self.images_per_slide)]

    def unlabeled_ids(self, n: int) -> list[tuple[int, int]]:
        """``n`` pool images spread round-robin over all slides, never a labeled or test image."""
        slides = self.label_slides + self.test_slides + self.pool_slides
        return [(k % slides, POOL_INDEX_OFFSET + k // slides) for k in range(n)]

    def render(self, slide: int, index: int, size: int | None = None):
        """``(image [3, H, W] in [-1, 1], instances [H, W])``."""
        size = size or self.image_size
        return render(self.seed, slide, index, size, size)


def save_examples(folder: str, count: int, seed: int = 99) -> list[str]:
    """Write ``count`` new synthetic images of varied, odd sizes (from slides no split uses) as PNG
    files, for trying ``finetune_seg.py predict``; returns their paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        h, w = 48 + 17 * k, 80 + 9 * k
        image, _ = render(seed, 500 + k, 0, h, w)
        path = out / f"new_{k}.png"
        Image.fromarray(
            ((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths
