#!/usr/bin/env python
"""Time and memory of the segmentation stage at FFHQ-34 scale: the paper preset U-Net (random weights suffice),
decoder blocks 5-12 (3264 channels), 34 classes, an ensemble of 10 pixel MLPs.

    python perf/seg_memory.py [--images 20] [--steps 50] [--members 1] [--json]             # the CPU
    python perf/seg_memory.py --device cuda --members 10 --steps 300 --test-images 20        # the whole protocol

``--images`` training images at 256 px are extracted into the fp16 on-disk cache, then ``--steps`` pixel-classifier
batches (4096 pixels each) train ``--members`` MLPs at once, then ``--test-images`` images are segmented (every pixel,
every member). Prints seconds per image for extraction, seconds for the ensemble and for prediction, the peak
resident set size of this process and, on a GPU, its peak memory; and the size the reference's in-RAM fp32 feature
matrix would have for the same images (images x 256 x 256 x 3264 x 4 bytes). FFHQ-34 trains 30 epochs of 20 images
x 2048 pixels: 300 batches.
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

from mdm.common.config_io import load  # noqa: E402
from mdm.common.devices import autocast_dtype  # noqa: E402
from mdm.common.tiling import Tile  # noqa: E402
from mdm.nn.unet import build_unet  # noqa: E402
from mdm.pretrain.objectives import build_objective  # noqa: E402
from mdm.segment.datasets import LabeledImage  # noqa: E402
from mdm.segment.features import FeatureExtractor  # noqa: E402
from mdm.segment.pixel_mlp import PixelEnsemble, fit_ensemble  # noqa: E402
from mdm.segment.pixel_stream import PixelStream  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is in KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=os.path.join(here, "..", "configs", "paper.yaml"))
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--test-images", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--blocks", default="5-12")
    p.add_argument("--classes", type=int, default=34)
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--steps", type=int, default=50, help="classifier training batches")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    lo, hi = (int(x) for x in args.blocks.split("-"))
    cfg = load(args.preset)
    torch.manual_seed(0)
    model = build_unet(cfg.model)
    g = torch.Generator().manual_seed(0)
    images = [LabeledImage(f"img{i}", torch.rand(3, args.size, args.size, generator=g) * 2 - 1,
                           torch.randint(0, args.classes, (args.size, args.size), generator=g), None)
              for i in range(args.images + args.test_images)]
    train, test = images[:args.images], images[args.images:]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as cache:
        extractor = FeatureExtractor(model, build_objective(cfg.diffusion), list(range(lo, hi + 1)), [50], seed=0,
                                     cache_dir=cache, fingerprint="bench", device=device,
                                     dtype=autocast_dtype("auto", device))
        dim = extractor.feature_dim
        stream = PixelStream(extractor, train, args.size, 0.0, 0.1, 0, 0, batch_pixels=4096, pixels_per_tile=2048)
        t0 = time.perf_counter()
        stream.prefetch(progress=False)
        sync(device)
        per_image = (time.perf_counter() - t0) / args.images
        cache_gb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs) / 1024 ** 3
        ensemble = PixelEnsemble(dim, args.classes, members=args.members).to(device)
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
        sync(device)
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        for im in test:
            blocks = extractor.tile_blocks(im.name, im.image, args.size, [Tile(0, 0)])[0]
            for chunk in torch.arange(args.size ** 2, device=device).split(8192):
                ensemble.member_probs(extractor.pixel_features(blocks, args.size, chunk)).argmax(-1).cpu()
        sync(device)
        predict_s = time.perf_counter() - t2
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "peak_rss_gb": peak_rss_gb(), "reference_matrix_gb": args.images * args.size ** 2 * dim * 4 / 1024 ** 3,
              "seconds_per_image": per_image, "feature_dim": dim, "cache_gb": cache_gb, "members": args.members,
              "classifier_steps": steps["n"], "classifier_seconds": train_s, "test_images": len(test),
              "predict_seconds": predict_s,
              "total_seconds": per_image * args.images + train_s + predict_s,
              "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['device']}: {args.images} + {len(test)} images at {args.size} px, blocks {lo}-{hi} ({dim} "
          f"channels), {args.classes} classes, {args.members} MLPs")
    print(f"peak RSS {result['peak_rss_gb']:.2f} GB; the reference's fp32 matrix alone would be "
          f"{result['reference_matrix_gb']:.1f} GB; fp16 cache on disk {cache_gb:.2f} GB"
          + (f"; peak GPU memory {result['peak_gpu_gb']:.2f} GB" if result["peak_gpu_gb"] is not None else ""))
    print(f"extraction {per_image:.2f} s/image; {steps['n']} classifier batches in {train_s:.1f} s; "
          f"{len(test)} test images segmented in {predict_s:.1f} s; total {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
