#!/usr/bin/env python
"""Peak memory of the segmentation stage at FFHQ-34 scale: 20 training images at 256 px, the paper preset U-Net
(random weights suffice), decoder blocks 5-12 (3264 channels), extraction into the fp16 on-disk cache, then a fixed
number of pixel-classifier training steps on pixels streamed tile by tile.

    python bench/seg_memory.py [--images 20] [--steps 50] [--preset configs/paper.yaml] [--json]

Prints the peak resident set size of this process, the size the reference's in-RAM fp32 feature matrix would have
for the same protocol (images x 256 x 256 x 3264 x 4 bytes), and the extraction time per image.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mdm.common.config import load  # noqa: E402
from mdm.pretrain.export import build_unet  # noqa: E402
from mdm.pretrain.objectives import build_objective  # noqa: E402
from mdm.segment.datasets import LabeledImage  # noqa: E402
from mdm.segment.features import FeatureExtractor  # noqa: E402
from mdm.segment.pixel_mlp import PixelEnsemble, fit_ensemble  # noqa: E402
from mdm.segment.pixel_stream import PixelStream  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is in KiB on Linux


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=os.path.join(here, "..", "configs", "paper.yaml"))
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--blocks", default="5-12")
    p.add_argument("--classes", type=int, default=34)
    p.add_argument("--steps", type=int, default=50, help="classifier training batches")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    lo, hi = (int(x) for x in args.blocks.split("-"))
    cfg = load(args.preset)
    torch.manual_seed(0)
    model = build_unet(cfg.model)
    g = torch.Generator().manual_seed(0)
    images = [LabeledImage(f"img{i}", torch.rand(3, args.size, args.size, generator=g) * 2 - 1,
                           torch.randint(0, args.classes, (args.size, args.size), generator=g), None)
              for i in range(args.images)]
    with tempfile.TemporaryDirectory() as cache:
        extractor = FeatureExtractor(model, build_objective(cfg.diffusion), list(range(lo, hi + 1)), [50], seed=0,
                                     cache_dir=cache, fingerprint="bench")
        dim = extractor.feature_dim
        stream = PixelStream(extractor, images, args.size, 0.0, 0.1, 0, 0, batch_pixels=4096, pixels_per_tile=4096)
        t0 = time.perf_counter()
        stream.prefetch(progress=False)
        per_image = (time.perf_counter() - t0) / args.images
        cache_gb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs) / 1024 ** 3
        ensemble = PixelEnsemble(dim, args.classes, members=1)
        steps = {"n": 0}

        def limited(epoch):
            for batch in stream.train_batches(epoch):
                if steps["n"] >= args.steps:
                    return
                steps["n"] += 1
                yield batch

        t1 = time.perf_counter()
        while steps["n"] < args.steps:
            fit_ensemble(ensemble, limited, lambda: iter(()), max_epochs=1)
        train_s = time.perf_counter() - t1
    result = {"peak_rss_gb": peak_rss_gb(), "reference_matrix_gb": args.images * args.size ** 2 * dim * 4 / 1024 ** 3,
              "seconds_per_image": per_image, "feature_dim": dim, "cache_gb": cache_gb,
              "classifier_steps": steps["n"], "classifier_seconds": train_s}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.images} images at {args.size} px, blocks {lo}-{hi} ({dim} channels), {args.classes} classes")
    print(f"peak RSS {result['peak_rss_gb']:.2f} GB (target < 4 GB); the reference's fp32 matrix alone would be "
          f"{result['reference_matrix_gb']:.1f} GB; fp16 cache on disk {cache_gb:.2f} GB")
    print(f"extraction {per_image:.1f} s/image; {steps['n']} classifier batches in {train_s:.1f} s")


if __name__ == "__main__":
    main()
