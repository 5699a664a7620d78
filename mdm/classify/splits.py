"""Which training images are labeled, and which of those only validate, for image-level labels.

- ``class_subset``: ``max(1, floor(fraction * N))`` images, the first of a seeded order that starts
  with one image of every class (so every class is labeled once there are as many images as classes)
  and then follows a seeded permutation: for one seed, a smaller fraction's set lies inside a larger
  one's.
- ``validation_images``: about ``fraction`` of the labeled images (at least one when there are two
  or more), drawn in a seeded order, never the last training image of its class; whole patients or
  slides where the source knows them.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..common import rng
from ..common.errors import DataError
from ..common.rng import Tag


def _order(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()


def class_subset(labels: list[int], fraction: float, seed: int) -> list[int]:
    """Sorted indices of the labeled images (see the module docstring); ``fraction`` in (0, 1]."""
    if not isinstance(fraction, (int, float)) or math.isnan(fraction) or not 0 < fraction <= 1:
        raise DataError(f"label fraction must be in (0, 1], got {fraction!r}")
    if not labels:
        raise DataError("cannot take a label subset of 0 training images")
    perm = _order(len(labels), seed)
    # each class's first image in the permutation
    firsts = list({labels[i]: i for i in reversed(perm)}.values())
    firsts.sort(key=perm.index)
    order = firsts + [i for i in perm if i not in set(firsts)]
    count = max(1, math.floor(fraction * len(labels) + 1e-9))
    if count < len(firsts):
        warnings.warn(f"label fraction {fraction:g} of {len(labels)} training images labels {count} image(s) for "
                      f"{len(firsts)} classes: {len(firsts) - count} class(es) have no labeled image and cannot be "
                      f"predicted", stacklevel=2)
    return sorted(order[:count])


def validation_images(labels: list[int], fraction: float, seed: int,
                      groups: list[str] | None = None) -> list[int]:
    """Positions (into ``labels``, the labeled images) that validate, sorted (see the module
    docstring). With ``groups`` (the patient or slide of each image), whole groups validate, drawn
    in a seeded order until about ``fraction`` of the images: no validation image shares its patient
    with a training image."""
    if len(labels) < 2 or fraction <= 0:
        return []
    target = min(len(labels) - 1, max(1, round(fraction * len(labels))))
    left = {c: labels.count(c) for c in set(labels)}
    units = [[i] for i in range(len(labels))]
    if groups:
        members = {g: [i for i, h in enumerate(groups) if h == g] for g in dict.fromkeys(groups)}
        units = list(members.values())
    chosen = []
    for u in _order(len(units), rng.make_key(seed, Tag.VALIDATION_IMAGES)):
        if len(chosen) >= target:
            break
        taken = {c: sum(labels[i] == c for i in units[u]) for c in left}
        if all(left[c] - taken[c] >= 1 for c in left) and len(chosen) + len(units[u]) < len(labels):
            chosen += units[u]
            left = {c: left[c] - taken[c] for c in left}
    return sorted(chosen)
