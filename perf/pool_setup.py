#!/usr/bin/env python
"""Set-up time of an image-folder pretraining pool (``ImageFolderDataset``) over many files, in one run.

    python perf/pool_setup.py --folder /tmp/pool100k --files 100000 [--size 32] [--changed 1000]

Writes ``--files`` random RGB PNGs of ``--size`` px into ``--folder`` (kept for later runs), then times building
the pool: with a new manifest (every file decoded and hashed once), again with that manifest (nothing decoded),
and after ``--changed`` files were rewritten (those decoded again). Run it with ``PYTHONPATH`` pointing at another
checkout to time that checkout's pool instead (one without manifests is timed once: it decodes every file at every
start). It prints the seconds and the ratios measured in this one run.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_files(folder: Path, count: int, size: int) -> None:
    """``count`` random PNGs in ``folder/<k // 1000>/<k>.png`` (1,000 a subfolder), those missing only."""
    rng = np.random.default_rng(0)
    for k in range(count):
        path = folder / f"{k // 1000:04d}" / f"{k:07d}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def timed(build) -> tuple[float, object]:
    started = time.perf_counter()
    pool = build()
    return time.perf_counter() - started, pool


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, required=True)
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--changed", type=int, default=1000)
    args = p.parse_args()
    started = time.perf_counter()
    make_files(args.folder, args.files, args.size)
    print(f"{args.files} files of {args.size} px in {args.folder} ({time.perf_counter() - started:.0f} s to make "
          f"the missing ones)")
    import mdm
    from mdm.pretrain.pools import ImageFolderDataset

    print(f"mdm from {os.path.dirname(mdm.__file__)}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    crop = args.size
    if "manifest" not in inspect.signature(ImageFolderDataset).parameters:
        seconds, pool = timed(lambda: ImageFolderDataset([str(args.folder)], crop))
        print(f"no manifest: {seconds:.1f} s for {len(pool)} images (every file decoded at every start)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(Path(tmp) / "manifest.csv")
        build = lambda: ImageFolderDataset([str(args.folder)], crop, manifest=manifest)  # noqa: E731
        cold, pool = timed(build)
        warm, _ = timed(build)
        rng = np.random.default_rng(1)
        files = sorted(args.folder.rglob("*.png"))[:args.changed]
        for f in files:
            Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(f)
        changed, again = timed(build)
    print(f"new manifest:      {cold:7.1f} s for {len(pool)} images (every file decoded and hashed)")
    print(f"manifest reused:   {warm:7.1f} s (nothing decoded; {cold / warm:.0f}x faster than the first start)")
    print(f"{args.changed} files changed: {changed:7.1f} s ({again.record['manifest_decoded']} decoded)")


if __name__ == "__main__":
    main()
