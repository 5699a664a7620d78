"""Every entry point, with the same flags and the same error handling.

=====================================  ===================================================================
``train.py`` / ``mdm-train``           pretrain a U-Net (MDM, or the DDPM / MAE baselines)
``finetune_seg.py`` / ``mdm-seg``      the segmentation stage (frozen features by default; ``predict``)
``python -m mdm.probe`` / ``mdm-probe``       image classification on frozen features (or fine-tuned networks)
``python -m mdm.benchmark`` / ``mdm-bench``   the label-efficiency study (an ablation with ``bench.variants``)
``python -m mdm.demo``                 ``make demo``: the demo study, then ``predict`` on new images, time per phase
``python -m mdm.convert``              a published checkpoint -> an export folder
=====================================  ===================================================================

Shared flags: ``--config``, ``--set KEY=VALUE`` (repeatable), ``--out``, ``--device`` (``auto``:
CUDA when present, else the CPU) and ``--debug``. An expected failure (``MdmError``: bad config,
data, checkpoint, diverged run; or an ``OSError`` such as a permission problem) is one line on
stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from .common.config import Config
from .common.config_io import load
from .common.devices import resolve_device
from .common.errors import ConfigError, DataError, MdmError
from .common.io import check_out, list_images, load_image

EXPECTED = (MdmError, OSError)
MESSAGE_LIMIT = 600  # characters of an error message shown


def _parser(prog: str, description: str,
            config_example: str, out_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", required=True, help=f"YAML config, e.g. {config_example}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--out", help=out_help)
    _add_runtime_flags(p)
    return p


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device",
                   help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N (default: the "
                   "config's device of the stage: train.device, seg.device or probe.device; auto)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _run(main, argv: list[str] | None) -> int:
    """Call ``main(argv)``; an expected failure becomes one line on stderr and exit code 2 (with
    ``--debug``, after its traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv) or 0
    except EXPECTED as e:
        if "--debug" in argv:
            traceback.print_exc()
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # what was written is whole: every run folder appears by a rename
        print("interrupted", file=sys.stderr)
        return 130


def one_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """An error message as one line of at most ``limit`` characters (a message that echoes a file
    can be huge)."""
    text = " ".join(message.split())
    if len(text) <= limit:
        return text
    suffix = f" ... ({len(text)} characters in all)"
    return text[:limit - len(suffix)] + suffix


def _load(args, first: list[str] = ()) -> Config:
    """The config of ``--config`` + ``first`` + ``--set``, checked against every registered name
    (``mdm.registries``)."""
    from . import registries  # noqa: F401 - deferred: --help need not import torch's stages

    return load(args.config, [*first, *args.overrides])


# ---- pretraining ---------------------------------------------------------------------------------


def _dry_run(cfg: Config) -> None:
    from .nn.unet import build_unet
    from .pretrain.pools import POOLS, build_pretrain_dataset

    with torch.device("meta"):
        model = build_unet(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n / 1e6:.1f}M ({n:,})" if n >= 1e6 else f"parameters: {n / 1e3:.1f}K ({n:,})")
    size = cfg.data.crop_size
    model.check_input_size(size, size)
    print(f"blocks at {size}x{size} (seg.blocks / probe.blocks name: channels @ resolution; "
          f"seg.blocks numbers d<i> as i):")
    for name, b in model.tap_blocks(size, size).items():
        print(f"  {name:>4}: {b.channels:4d} @ {b.resolution[0]}x{b.resolution[1]}")
    reads_root = POOLS[cfg.data.source].reads_root
    if reads_root and not all(Path(r).exists() for r in cfg.data.root):
        print(f"data: {', '.join(cfg.data.root)} not found here; data pipeline not built")
    else:
        print(f"data: {cfg.data.source}, {len(build_pretrain_dataset(cfg.data))} images, crops {size}x{size}")


def _train(argv: list[str]) -> int:
    p = _parser("train.py", "Pretrain a U-Net with MDM (or the DDPM or MAE baseline).",
                "configs/tiny.yaml", "run folder (default: train.out_dir)")
    p.add_argument("--resume",
                   help="'latest' (newest checkpoint in the run folder) or a checkpoint folder")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model and data, print a summary, exit")
    args = p.parse_args(argv)
    cfg = _load(args)
    if args.out:
        cfg = replace(cfg, train=replace(cfg.train, out_dir=args.out))
    check_out(cfg.train.out_dir, "--out" if args.out else "train.out_dir")
    if args.dry_run:
        _dry_run(cfg)
        return 0
    # deferred: Accelerate's import costs seconds that --dry-run does not need
    from .pretrain.trainer import train

    train(cfg, resume=args.resume, device=resolve_device(args.device or cfg.train.device))
    return 0


def train_main(argv: list[str] | None = None) -> int:
    return _run(_train, argv)


# ---- segmentation --------------------------------------------------------------------------------

SUMMARY_KEYS = ["dice", "iou", "miou", "member_dice_mean", "member_dice_std", "object_f1",
                "object_dice", "aji"]


def _stage_two(args, section: str) -> tuple[Config, Path, torch.device, object]:
    """What a stage-2 command (config section ``section``: ``seg`` or ``probe``) starts from: the
    config, the run folder (``--out`` or ``<section>.out_dir``), the device and the export of
    ``--checkpoint`` (``None`` without)."""
    from .pretrain.export import open_export

    cfg = _load(args)
    sc = getattr(cfg, section)
    out = check_out(args.out or sc.out_dir, "--out" if args.out else f"{section}.out_dir")
    device = resolve_device(args.device or sc.device)
    print(f"device: {device}")
    return cfg, out, device, open_export(args.checkpoint, sc.weights) if args.checkpoint else None


def _segment(argv: list[str]) -> int:
    from .segment.run import run_segmentation

    p = _parser("finetune_seg.py",
                "The segmentation stage: train on the labeled images of a dataset, evaluate on its "
                "test images and save the segmenter. By default (seg.mode=frozen) the pretrained U-Net stays frozen "
                "and small pixel classifiers learn from its decoder features; seg.mode=finetune trains a whole "
                "network end to end instead. 'finetune_seg.py predict --help' segments new images with a saved run.",
                "configs/seg_glas.yaml", "run folder (default: seg.out_dir)")
    p.add_argument("--checkpoint",
                   help="a pretraining export folder, e.g. runs/tiny/export (not needed for "
                   "seg.mode=finetune with seg.arch=smp)")
    cfg, out, device, export = _stage_two(p.parse_args(argv), "seg")
    result = run_segmentation(cfg.seg, cfg.data, export, out, device=device)
    print(json.dumps({k: round(result[k], 4) for k in SUMMARY_KEYS if k in result}))
    print(f"results in {out}")
    return 0


def _predict(argv: list[str]) -> int:
    from .segment.segmenter import load_segmenter
    from .segment.visualize import check_predict_out, output_names, save_prediction_images

    p = argparse.ArgumentParser(prog="finetune_seg.py predict",
                                description="Segment a folder of images with a saved "
                                "segmentation run.")
    p.add_argument("--model", required=True, help="a segmentation run folder (or its segmenter/)")
    p.add_argument("--images", required=True,
                   help="a folder of images (searched recursively) or one image")
    p.add_argument("--out", required=True, help="where masks, overlays and uncertainty maps go")
    _add_runtime_flags(p)
    args = p.parse_args(argv)
    check_predict_out(Path(args.out), Path(args.images), Path(args.model))
    device = resolve_device(args.device or "auto")
    print(f"device: {device}")
    segmenter = load_segmenter(args.model, device)
    files = list_images(args.images)
    if not files:
        raise DataError(f"{args.images}: no images found")
    out = Path(args.out)
    for f, name in zip(files, output_names(files, Path(args.images))):
        image = load_image(f, "RGB")
        labels, unc, _ = segmenter.predict(name, image)
        save_prediction_images(out, name, image, labels, unc, segmenter.num_classes)
    print(f"segmented {len(files)} images into {out}")
    return 0


def seg_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "predict":
        return _run(_predict, argv[1:])
    return _run(_segment, argv)


# ---- classification ------------------------------------------------------------------------------


def _probe(argv: list[str]) -> int:
    from .classify.run import run_classification

    p = _parser("python -m mdm.probe",
                "Image classification with few labels: by default (probe.mode=frozen) a head "
                "(probe.head: linear, knn or attention) on pooled features of frozen U-Net blocks, the block and "
                "timestep chosen by a sweep on validation images; probe.mode=finetune trains a whole network.",
                "configs/probe_synthetic.yaml", "run folder (default: probe.out_dir)")
    p.add_argument("--checkpoint",
                   help="a pretraining export folder, e.g. runs/tiny/export (not needed for "
                   "probe.mode=finetune with probe.network=resnet18)")
    cfg, out, device, export = _stage_two(p.parse_args(argv), "probe")
    result = run_classification(cfg.probe, cfg.data, export, out, device=device)
    if "selection" in result:
        chosen = result["selection"]
        print(f"sweep: block {chosen['blocks'][0]} at t={chosen['timestep']} (block_selection.png)")
    print(json.dumps({k: round(result[k], 4) for k in ("accuracy",
                                                       "balanced_accuracy", "roc_auc")}))
    print(f"results in {out}")
    return 0


def probe_main(argv: list[str] | None = None) -> int:
    return _run(_probe, argv)


# ---- the study -----------------------------------------------------------------------------------


def _study(args, task: str | None = None) -> tuple[Config, Path, torch.device, dict]:
    """Run the study of ``--config`` / ``--set`` / ``--out`` / ``--device`` (of ``bench.task``
    ``task`` when given; ``--shard`` / ``--report`` where the parser has them) and print its table;
    returns the config, the study folder, the stage-2 device and ``run_benchmark``'s result."""
    from .stage2.tasks import TASKS
    from .study.shards import Shard
    from .study.sweep import run_benchmark
    from .study.verdicts import verdict_sentences

    cfg = _load(args)
    if task and cfg.bench.task != task:
        raise ConfigError(f"bench.task: this command runs a {task} study, the config asks for {cfg.bench.task} (use "
                          f"python -m mdm.benchmark)")
    if args.out:
        cfg = replace(cfg, bench=replace(cfg.bench, out_dir=args.out))
    out = check_out(cfg.bench.out_dir, "--out" if args.out else "bench.out_dir")
    stage_two = TASKS[cfg.bench.task].config_of(cfg).device
    train_device, seg_device = (resolve_device(args.device or d) for d in (cfg.train.device, stage_two))
    print(f"devices: pretraining {train_device}, {cfg.bench.task} {seg_device}")
    shard = Shard.parse(args.shard) if getattr(args, "shard", None) else None
    result = run_benchmark(cfg, train_device, seg_device, shard=shard,
                           report=getattr(args, "report", False))
    if shard is not None:
        return cfg, out, seg_device, result
    print(f"\n{cfg.bench.metric}, mean ± sample std (ddof 1) over seeds {cfg.bench.seeds}:\n{result['table']}")
    if result["verdicts"]:
        print(f"\nverdicts (paired differences, 95% two-way bootstrap intervals):\n"
              f"{verdict_sentences(result['verdicts'], cfg.bench.metric)}")
    if result.get("levels"):
        print(f"\n{result['levels']}")
    return cfg, out, seg_device, result


def _bench(argv: list[str]) -> int:
    p = _parser("python -m mdm.benchmark",
                "The label-efficiency study: pretrain, then label fractions x seeds x "
                "methods, a table and plots.", "configs/bench_demo.yaml",
                "output folder (default: bench.out_dir)")
    spread = p.add_mutually_exclusive_group()
    spread.add_argument("--shard", metavar="K/N",
                        help="run only the K-th of N slices of the study's runs (1 <= K <= "
                        "N; README: a SLURM array, several GPUs); then --report")
    spread.add_argument("--report", action="store_true",
                        help="write the tables, plots and verdicts of a study "
                        "whose runs the shards have all finished; trains nothing")
    cfg, out, _, result = _study(p.parse_args(argv))
    if "shard" in result:
        print(f"shard {result['shard']} done in {out}/; once every shard is done: the same command with --report")
        return 0
    print(f"results in {out}/ (results.csv, results.md, label_efficiency.png, pretrain_budget.png)")
    return 0


def bench_main(argv: list[str] | None = None) -> int:
    return _run(_bench, argv)


def _demo(argv: list[str]) -> int:
    from .common.synthetic import save_examples

    p = _parser("python -m mdm.demo",
                "The whole story on built-in synthetic histology: the study of the config, then "
                "its first method's segmenter (lowest label fraction, first seed) on three new images; prints the "
                "time of each phase.", "configs/bench_demo.yaml",
                "output folder (default: bench.out_dir)")
    cfg, out, seg_device, result = _study(p.parse_args(argv), "segmentation")
    bc = cfg.bench
    print()
    started = time.perf_counter()
    model = out / "runs" / bc.methods[0] / f"f{min(bc.fractions):g}_s{bc.seeds[0]}"
    save_examples(str(out / "new_images"), 3)
    _predict(["--model", str(model), "--images", str(out / "new_images"), "--out",
              str(out / "predict"), "--device", str(seg_device)])
    phases = {**result["phases"], f"predict ({model.relative_to(out)} on 3 new images)":
              time.perf_counter() - started}
    print("\ntime per phase (installation aside):")
    for name, seconds in phases.items():
        print(f"  {name:<48} {seconds:7.1f} s")
    print(f"  {'total':<48} {sum(phases.values()):7.1f} s")
    print(f"see {out}/results.md, label_efficiency.png, pretrain_budget.png, pretrain_mdm/samples/, predict/overlays/")
    return 0


def demo_main(argv: list[str] | None = None) -> int:
    return _run(_demo, argv)


# ---- conversion ----------------------------------------------------------------------------------


def _convert(argv: list[str]) -> int:
    from .pretrain.convert import convert, count_parameters, flags_to_overrides, read_flags, unconfirmed_warning

    p = argparse.ArgumentParser(prog="python -m mdm.convert",
                                description="Convert a guided-diffusion / MDM / "
                                "DDPM-segmentation checkpoint (a state dict in .pt/.pth) into an export folder for "
                                "finetune_seg.py (config.yaml, unet.safetensors, unet_raw.safetensors).")
    p.add_argument("--checkpoint", required=True, help="the .pt/.pth file (downloaded by you)")
    p.add_argument("--config", required=True,
                   help="the preset describing its architecture, e.g. configs/paper.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. model.out_channels=6 (repeatable)")
    p.add_argument("--flags",
                   help="the release's training flags (a file of --name value pairs, e.g. its MODEL_FLAGS "
                   "line, or an args.json): the architecture, attention layout and order come from them")
    p.add_argument("--key",
                   help="the entry holding the state dict when the file wraps several (e.g. ema)")
    p.add_argument("--out", required=True, help="the export folder to write, e.g. exports/mdm_glas")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    flags = flags_to_overrides(read_flags(args.flags), args.flags) if args.flags else []
    cfg = _load(args, flags)  # the config file, then the release's flags, then --set
    out = convert(args.checkpoint, cfg, args.out, key=args.key)
    warning = unconfirmed_warning(cfg, args.overrides, bool(args.flags))
    if warning:  # after a conversion that worked: a failed one is one line, the error
        print(f"warning: {warning}", file=sys.stderr)
    n = count_parameters(out)
    print(f"converted {args.checkpoint}: {n:,} parameters ({n / 1e6:.2f}M), objective {cfg.diffusion.objective} "
          f"-> {out}")
    return 0


def convert_main(argv: list[str] | None = None) -> int:
    return _run(_convert, argv)
