"""Shared test helpers: a miniature pretraining config that runs a step in a few milliseconds."""

import json
import os

import numpy as np
from PIL import Image

from mdm.common.config_io import load

TINY_OVERRIDES = [
    "model.image_size=16", "model.channel_mult=[1,1]", "model.attention_resolutions=[8]",
    "data.source=synthetic", "data.synthetic_images=16", "data.synthetic_image_size=32", "data.crop_size=16",
    "train.batch_size=4", "train.log_every=1", "train.image_every=0", "train.lr=1e-3", "train.device=cpu",
]


def tiny_config(configs_dir, out_dir, *extra):
    return load(os.path.join(configs_dir, "tiny.yaml"), TINY_OVERRIDES + [f"train.out_dir={out_dir}", *extra])


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def half_mask(size: int, foreground: int = 1) -> np.ndarray:
    """``[size, size]`` uint8: the right half is ``foreground``, the left half 0."""
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2:] = foreground
    return mask


def make_generic(root, size=32, mask_of=None, train=4, test=2):
    """A generic-layout dataset (``ROOT/{train,test}/{images,masks}``) of random ``size``-px images whose masks are
    ``mask_of(k)`` (default: ``half_mask``)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for k in range(count):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{k}.png")
            mask = half_mask(size) if mask_of is None else mask_of(k)
            Image.fromarray(np.asarray(mask).astype(np.uint8)).save(root / split / "masks" / f"{k}.png")
    return root


def swap_record(monkeypatch, registry, name: str, **changes) -> None:
    """For one test, registry ``name``'s record with ``changes`` (a frozen dataclass: ``dataclasses.replace``)."""
    import dataclasses

    monkeypatch.setitem(registry._records, name, dataclasses.replace(registry[name], **changes))
