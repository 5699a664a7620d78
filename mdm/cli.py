"""Command-line entry points (``train.py`` and the ``mdm-train`` console script call ``train_main``)."""

from __future__ import annotations

import argparse
import os
import sys

from .checkpoint import CheckpointError, build_unet
from .config import ConfigError, load
from .data import DataError, build_pretrain_dataset


def _format_params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Pretrain a U-Net with MDM (or the DDPM baseline).")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--out", help="run folder (default: train.out_dir)")
    p.add_argument("--resume", help="'latest' (newest checkpoint in the run folder) or a checkpoint folder")
    p.add_argument("--dry-run", action="store_true", help="build the model and data, print a summary, exit")
    return p


def dry_run(cfg) -> None:
    import torch

    with torch.device("meta"):
        model = build_unet(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    print(f"parameters: {_format_params(n)} ({n:,})")
    size = cfg.data.crop_size
    model.check_input_size(size, size)
    print(f"decoder blocks at {size}x{size} (block: channels @ resolution):")
    for b in model.decoder_blocks(size, size):
        print(f"  {b.index:2d}: {b.channels:4d} @ {b.resolution[0]}x{b.resolution[1]}")
    if cfg.data.source == "folder" and not all(os.path.exists(r) for r in cfg.data.root):
        print(f"data: {', '.join(cfg.data.root)} not found here; data pipeline not built")
    else:
        ds = build_pretrain_dataset(cfg.data)
        print(f"data: {cfg.data.source}, {len(ds)} images, crops {size}x{size}")


def train_main(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    try:
        cfg = load(args.config, args.overrides)
        if args.out:
            cfg.train.out_dir = args.out
        if args.dry_run:
            dry_run(cfg)
            return 0
        from .trainer import train

        train(cfg, resume=args.resume)
        return 0
    except (ConfigError, DataError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
