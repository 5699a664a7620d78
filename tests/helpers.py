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


def write_slide(path, width=768, height=512, mpp=0.5, levels=3, seed=0, tile=128):
    """A small pyramidal TIFF (tiled JPEG, ``levels`` levels halving each time, written with tifffile as a scanner's
    generic TIFF export is): synthetic H&E-like tissue (``mdm.common.synthetic`` images) inside an ellipse on white
    glass; ``mpp`` microns per pixel in the resolution tags (0: none). Returns the level-0 image ``[H, W, 3]`` uint8
    and where the tissue is ``[H, W]`` bool."""
    import tifffile

    from mdm.common.synthetic import render

    rng = np.random.default_rng(seed)
    glass = np.clip(238 + rng.normal(0, 2, (height, width, 3)), 0, 255)
    tissue = np.zeros((height, width, 3))
    for top in range(0, height, 64):
        for left in range(0, width, 64):
            image = render(seed, top // 64, left // 64, 64)[0]
            block = ((image.permute(1, 2, 0).numpy() + 1) * 127.5)[:height - top, :width - left]
            tissue[top:top + 64, left:left + 64] = block
    yy, xx = np.mgrid[:height, :width]
    inside = ((yy - height / 2) / (0.38 * height)) ** 2 + ((xx - width * 0.45) / (0.33 * width)) ** 2 < 1
    image = np.where(inside[..., None], tissue, glass).round().astype(np.uint8)
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            f = 2 ** level
            tags = dict(resolution=(1e4 / (mpp * f),) * 2, resolutionunit="CENTIMETER") if mpp else {}
            tif.write(image[::f, ::f], tile=(tile, tile), photometric="rgb", compression="jpeg",
                      **(dict(subifds=levels - 1) if level == 0 else dict(subfiletype=1)), **tags)
    return image, inside
