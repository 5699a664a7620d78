#!/usr/bin/env python
"""Does the loader keep up with the training step? Images per second one loader worker gives, per pool kind, at the
tiny preset's 32-px crops and the paper preset's 256 px, beside the training step's images per second.

    python perf/loader_rate.py [--items 200] [--step-batch 32] [--step-steps 6]

A worker's rate is timed in this process (``pool[(index, key)]`` for ``--items`` items: decode, crop, flip, as a
DataLoader worker runs it, without the inter-process copy). Pools: ``folder`` (PNG files written to a temporary
folder at 1.25x the crop, so a random crop is taken; the files are in the page cache, as after the first epoch),
``synthetic`` (rendered on the fly; each image once per worker, then cached in memory, which this run times
separately), ``slides`` (a pyramidal TIFF of 3072 x 2048 px at 0.25 microns per pixel, JPEG tiles, written with
tests/helpers.py's ``write_slide``; tiles at 0.5 mpp, read from level 1) and ``shards`` (the folder's PNG files in 4
tar shards, read as a worker streams them, shuffle buffer 16). The step: the tiny preset (32 px) timed here in fp32
or bf16 as ``mixed_precision: auto`` picks; the paper preset's step (256 px) cannot be timed on a laptop CPU, so its
row uses the rate given with
``--paper-step`` (default: 47 images/s, one H200, docs/throughput.md). "workers" is how many such workers the step
needs: its rate over one worker's, rounded up. All numbers of one run; the machine is named in the output.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain_throughput import train_step_rate  # noqa: E402

from mdm.common.config_io import load  # noqa: E402
from mdm.common.devices import native_bf16  # noqa: E402
from mdm.pretrain.pools import ImageFolderDataset, SyntheticPoolDataset  # noqa: E402
from mdm.pretrain.shards import ShardPool  # noqa: E402
from mdm.pretrain.slides import SlideDataset  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from helpers import write_slide  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def worker_rate(pool, items: int) -> float:
    """Images/s of ``pool[(index, key)]`` over ``items`` items (indices cycling over the pool), or of a streaming
    pool's stream (one process, one worker, micro-batches of 8)."""
    if hasattr(pool, "stream"):
        stream = iter(pool.stream(0, 0, -(-items // 8), 8, 1, 1, 0))
        started = time.perf_counter()
        for _ in range(items):
            next(stream)
        return items / (time.perf_counter() - started)
    started = time.perf_counter()
    for k in range(items):
        pool[(k % len(pool), k)]
    return items / (time.perf_counter() - started)


def shard_pool(root: Path, crop: int) -> ShardPool:
    """The PNG files of ``root`` in 4 tar shards (webdataset's layout: ``<key>.png``)."""
    files = sorted(root.glob("*.png"))
    for s in range(4):
        with tarfile.open(root.parent / f"shard_{crop}_{s}.tar", "w") as tar:
            for f in files[s::4]:
                tar.add(f, arcname=f.name)
    return ShardPool([str(p) for p in sorted(root.parent.glob(f"shard_{crop}_*.tar"))], crop, shuffle_buffer=16)


def folder_pool(root: Path, crop: int, count: int) -> ImageFolderDataset:
    side = crop * 5 // 4
    rng = np.random.default_rng(0)
    for k in range(count):  # smooth random pictures: PNG sizes as photographs', not as noise's
        small = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        small.resize((side, side), Image.BICUBIC).save(root / f"{k}.png")
    return ImageFolderDataset([str(root)], crop, manifest=str(root.parent / f"manifest_{crop}.csv"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--step-batch", type=int, default=32)
    p.add_argument("--step-steps", type=int, default=6)
    p.add_argument("--paper-step", type=float, default=47.0, help="the paper preset's training images/s to compare")
    args = p.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    tiny = load(str(CONFIGS / "tiny.yaml"))
    bf16 = native_bf16(torch.device("cpu"))
    step = {32: train_step_rate(tiny, args.step_batch, args.step_steps, bf16),  # the tiny preset, here
            256: args.paper_step}
    print(f"training step: tiny preset, batch {args.step_batch}, {'bf16' if bf16 else 'fp32'}: {step[32]:.0f} "
          f"img/s (this CPU); paper preset: {step[256]:.0f} img/s (given, --paper-step)\n")
    print("| pool | crop | one worker, img/s | step, img/s | workers the step needs |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp  # the shard and slide pools' indexes
        write_slide(Path(tmp) / "slide.tif", width=3072, height=2048, mpp=0.25, levels=4, tile=256)
        for crop in (32, 256):
            root = Path(tmp) / f"pool_{crop}"
            root.mkdir()
            pools = {"folder (PNG)": folder_pool(root, crop, 64), "shards (the same PNG files, streamed)":
                     shard_pool(root, crop),
                     "slides (JPEG-tiled pyramidal TIFF, 0.5 mpp from level 1)":
                     SlideDataset([str(Path(tmp) / "slide.tif")], crop, mpp=0.5,
                                  manifest=str(Path(tmp) / "slides.csv"))}
            synthetic = SyntheticPoolDataset(args.items, crop * 5 // 4, crop)
            pools["synthetic, first epoch (rendered)"] = synthetic
            for name, pool in pools.items():
                rate = worker_rate(pool, args.items)
                print(f"| {name} | {crop} | {rate:.0f} | {step[crop]:.0f} | {math.ceil(step[crop] / rate)} |")
            rate = worker_rate(synthetic, args.items)  # every image rendered above: now from the memory cache
            print(f"| synthetic, later epochs (cached) | {crop} | {rate:.0f} | {step[crop]:.0f} | "
                  f"{math.ceil(step[crop] / rate)} |")


if __name__ == "__main__":
    main()
