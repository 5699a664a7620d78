"""Stateless, counter-based randomness: each draw is a hash of (key, stream, position).

Training draws every sample's timestep, mask, noise and crop from a key built from (seed, step,
rank, sample index), not from a generator's hidden state, so a resumed run replays the very same
numbers and the draws of one sample do not depend on batch size or on how many numbers other samples
used. Everything is vectorised int64 arithmetic on the keys' device.

Every use of randomness in the package has its number in ``Stream`` (for ``random_bits``,
``uniform``, ``normal`` and ``randint``) or ``Tag`` (folded into a key with ``make_key`` to seed a
``torch.Generator``): one table, so no two uses can share a number by accident. The values are part
of the results (changing one changes every run that uses it), so they only ever get added to.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum, unique

import torch


@unique
class Stream(IntEnum):
    """Independent random streams of one sample key (``normal`` also uses ``stream + 0x10000``)."""

    TIMESTEP = 1  # pretraining: the sample's timestep
    MASK = 2  # MDM: which patches are hidden
    NOISE = 3  # DDPM: the Gaussian noise
    POOL_CROP_TOP = 11  # pretraining crops: top offset
    POOL_FLIP = 12  # pretraining crops: horizontal flip
    POOL_CROP_LEFT = 111  # pretraining crops: left offset
    SLIDE_POSITION = 13  # slide pools: which tissue cell of the slide's mask a tile starts in
    SLIDE_OFFSET = 14  # slide pools: where in that cell (x, y)
    VALIDATION_BLOCKS = 21  # segmentation: which pixel blocks of a labeled image are held out
    TUNE_CROP_IMAGE = 31  # fine-tuning crops: which labeled image
    TUNE_CROP_TOP = 32
    TUNE_CROP_LEFT = 33
    TUNE_FLIP = 34
    TUNE_ROTATION = 35


@unique
class Tag(IntEnum):
    """Domain tags folded into ``make_key`` (or added to a key) so that different uses of one seed
    differ."""

    EPOCH_PERMUTATION = 0xE90C  # pretraining sampler: the image order of an epoch
    PREVIEW = 0x5EED  # pretraining: the fixed preview samples (key = PREVIEW + i)
    TILE_ORDER = 0x7A1  # pixel MLPs: the training tile order of an epoch
    VALIDATION_TILES = 0x7A2  # fine-tuning: which validation tiles are scored
    VALIDATION_IMAGES = 0x7A3  # segmentation: which labeled images (or slides) validate
    # segmentation: a training tile's extraction masks after the first (seg.extract_masks)
    MASK_DRAW = 0x7A4
    SLIDE_STYLE = 0xC01  # synthetic data: a slide's stain and optics
    SLIDE_IMAGE = 0x1A6E  # synthetic data: one image's content
    BOOTSTRAP = 0xB007  # studies: the resamples of a verdict's two-way bootstrap
    FOREST_PIXELS = 0xF0E5  # filterbank baseline: which labeled pixels of an image train the forest
    SHARD_ORDER = 0x5A4D  # shard pools: the shard order of an epoch
    SHARD_BUFFER = 0x5B0F  # shard pools: which buffered sample a stream gives out next

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (``lowbias32``-style) on int64 tensors holding values < 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32  # int64 products wrap; the low 32 bits stay exact
    return x ^ (x >> 16)


def make_key(*parts: int) -> int:
    """Fold integers (seed, step, rank, index, ...) into one 32-bit key."""
    h = torch.tensor(0x9E3779B9, dtype=torch.int64)
    for p in parts:
        h = _mix32(h ^ (torch.tensor(int(p) & _M32, dtype=torch.int64) + 0x632BE5AB))
    return int(h)


def sample_keys(seed: int, step: int, rank: int, batch_size: int, device=None) -> torch.Tensor:
    """Per-sample keys ``[B]`` (int64) for the samples of one optimizer step on one process."""
    base = make_key(seed, step, rank)
    idx = torch.arange(batch_size, dtype=torch.int64, device=device)
    return _mix32((idx * 0x2545F491 + base) & _M32)


def random_bits(keys: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """``[B] keys`` -> ``[B, n]`` int64 of 32 random bits each; ``stream`` separates independent
    uses."""
    keys = keys.to(torch.int64).reshape(-1, 1)
    pos = torch.arange(n, dtype=torch.int64, device=keys.device).reshape(1, -1)
    s = _mix32(keys ^ ((stream * 0x68E31DA4 + 0x1B56C4E9) & _M32))
    return _mix32(_mix32(s ^ pos) + pos * 0x5BD1E995 & _M32)


def uniform(keys: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """``[B, n]`` float32 uniform in [0, 1) (24-bit resolution)."""
    return (random_bits(keys, stream, n) >> 8).float() * (1.0 / (1 << 24))


def normal(keys: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``[B, *shape]`` float32 standard normal (Box-Muller on two uniform streams)."""
    n = 1
    for s in shape:
        n *= s
    u1 = 1.0 - uniform(keys, stream, n)  # (0, 1]
    u2 = uniform(keys, stream + 0x10000, n)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
    return z.reshape(keys.shape[0], *shape)


def randint(keys: torch.Tensor, stream: int, low: int, high: int) -> torch.Tensor:
    """``[B]`` int64 uniform in ``[low, high)``."""
    return low + (random_bits(keys, stream, 1)[:, 0] % (high - low))


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build modules whose constructors draw from torch's default CPU generator (``nn.Linear``'s
    init, the encoders of segmentation-models-pytorch: they take no generator) as if that generator
    had been seeded with ``seed``; the caller's random state is restored afterwards, so nothing
    outside the block sees a reseeded global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield
