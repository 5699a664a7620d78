#!/usr/bin/env python
"""Pretraining images per second of the real trainer (data, masking, forward, loss, backward, AdamW, EMA, logging)
at several batch sizes, measured in one process so the ratios between them are fair on a shared machine.

    python perf/batch_scan.py [--config configs/bench_demo.yaml] [--batches 8,16,32,64] [--images 1600] [--json]

Each batch size trains a fresh run for three windows of about ``--images`` images each (``train.log_every``
steps); the first window (the synthetic pool being rendered, caches warming) is dropped and the rate is the mean of
the other two. It prints the trainer's own summary line first (precision, layout, norm kernel), so a run under
``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` shows what the emulated machine computes in.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mdm.common.config_io import load  # noqa: E402
from mdm.pretrain.trainer import train  # noqa: E402


def rate_at(cfg, batch: int, images: int, folder: str) -> tuple[float, str]:
    steps = max(1, round(images / batch))
    tc = replace(cfg.train, batch_size=batch, max_steps=3 * steps, log_every=steps, image_every=0,
                 checkpoint_every=10 ** 9, export_every=0, out_dir=folder, device="cpu")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train(replace(cfg, train=tc))
    rows = [json.loads(line) for line in open(os.path.join(folder, "log.jsonl"))]
    summary = next((line for line in printed.getvalue().splitlines() if line.startswith("device:")), "")
    return sum(r["img_per_s"] for r in rows[1:]) / len(rows[1:]), summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "bench_demo.yaml"))
    p.add_argument("--batches", default="8,16,32,64")
    p.add_argument("--images", type=int, default=1600, help="images per timed window")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    cfg = load(args.config, args.overrides)
    results, summary = {}, ""
    with tempfile.TemporaryDirectory() as tmp:
        for b in [int(x) for x in args.batches.split(",")]:
            results[b], summary = rate_at(cfg, b, args.images, os.path.join(tmp, f"b{b}"))
    first = next(iter(results.values()))
    if args.json:
        print(json.dumps({"summary": summary, "images_per_s": results}))
        return
    print(summary)
    print("batch | images/s | ratio to the first")
    for b, r in results.items():
        print(f"{b:5d} | {r:8.1f} | {r / first:5.2f}")


if __name__ == "__main__":
    main()
