"""Stateless, counter-based randomness: each draw is a hash of (key, stream, position).

Training draws every sample's timestep, mask, noise and crop from a key built from (seed, step, rank, sample
index), not from a generator's hidden state, so a resumed run replays the very same numbers and the draws of one
sample do not depend on batch size or on how many numbers other samples used. Everything is vectorised int64
arithmetic on the keys' device.
"""

from __future__ import annotations

import torch

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
    """``[B] keys`` -> ``[B, n]`` int64 of 32 random bits each; ``stream`` separates independent uses."""
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
