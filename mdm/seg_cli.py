"""``finetune_seg.py``: train + evaluate a segmenter, or segment new images with a saved one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .config import ConfigError, load
from .data.folder import DataError, list_images, load_image


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune_seg.py", description="Train pixel classifiers on frozen U-Net "
                                "features of a pretraining export, evaluate them, and save the segmenter. "
                                "Use 'finetune_seg.py predict --help' to segment new images.")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/seg_glas.yaml")
    p.add_argument("--checkpoint", help="a pretraining export folder, e.g. runs/tiny/export (not needed for "
                   "seg.mode=finetune with seg.arch=smp)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="run folder (default: seg.out_dir)")
    return p


def _predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune_seg.py predict", description="Segment a folder of images.")
    p.add_argument("--model", required=True, help="a segmentation run folder (or its segmenter/)")
    p.add_argument("--images", required=True, help="a folder of images (searched recursively) or one image")
    p.add_argument("--out", required=True, help="where masks, overlays and uncertainty maps go")
    return p


def predict_main(args) -> None:
    from .segmentation import Segmenter, save_prediction_images

    seg = Segmenter.load(args.model)
    files = list_images(args.images)
    if not files:
        raise DataError(f"{args.images}: no images found")
    out = Path(args.out)
    for f in files:
        image = load_image(f, "RGB")
        labels, unc, _ = seg.predict(f.stem, image)
        save_prediction_images(out, f.stem, image, labels, unc, seg.num_classes)
    print(f"segmented {len(files)} images into {out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "predict":
            predict_main(_predict_parser().parse_args(argv[1:]))
            return 0
        args = _train_parser().parse_args(argv)
        cfg = load(args.config, args.overrides)
        if args.out:
            cfg.seg.out_dir = args.out
        if cfg.seg.mode == "finetune":
            from .finetune import run_finetune

            result = run_finetune(cfg, args.checkpoint)
        else:
            if not args.checkpoint:
                raise ValueError("--checkpoint is required (a pretraining export folder) for seg.mode=frozen")
            from .segmentation import run_segmentation

            result = run_segmentation(cfg, args.checkpoint)
        keys = ["dice", "iou", "miou", "member_dice_mean", "member_dice_std", "object_f1", "object_dice", "aji"]
        print(json.dumps({k: round(result[k], 4) for k in keys if k in result}))
        print(f"results in {cfg.seg.out_dir}")
        return 0
    except (ConfigError, DataError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
