"""The table of every config key for the README, generated from the dataclasses.

    python -m mdm.common.config_docs            # print the table
    python -m mdm.common.config_docs --write    # replace the table in README.md (between the markers)

Every key needs a line in ``HELP`` (a test checks that, and that the README's table is the one this prints).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .config import Config

START, END = "<!-- config-table -->", "<!-- /config-table -->"

SECTIONS = {
    "model": "the U-Net (stored in every export; stage 2 reads it from there, never retyped)",
    "diffusion": "the pretraining objective",
    "data": "images: the pretraining pool, or the labeled dataset of stage 2",
    "train": "the pretraining loop",
    "seg": "the segmentation stage",
    "bench": "the label-efficiency study",
}

HELP = {
    "model.image_size": "nominal input size; `attention_resolutions` are relative to it",
    "model.in_channels": "input channels",
    "model.out_channels": "output channels (6 for a guided-diffusion learn-sigma model)",
    "model.model_channels": "base width",
    "model.channel_mult": "width multiplier per resolution level",
    "model.num_res_blocks": "residual blocks per level (the decoder has one more)",
    "model.attention_resolutions": "feature-map sizes (px at `image_size`) with self-attention",
    "model.num_heads": "attention heads (when `num_head_channels` is -1)",
    "model.num_head_channels": "channels per attention head (-1: use `num_heads`)",
    "model.dropout": "dropout in the residual blocks",
    "model.resblock_updown": "resample inside residual blocks (guided-diffusion's `resblock_updown`)",
    "model.use_scale_shift_norm": "the timestep embedding scales and shifts the second norm",
    "model.conv_resample": "convolution in separate up/downsampling layers",
    "model.use_checkpoint": "gradient checkpointing (less memory, slower)",
    "model.norm_groups": "GroupNorm groups",
    "model.use_new_attention_order": "guided-diffusion's `use_new_attention_order` (q, k, v split before the "
                                     "heads); the weights cannot tell, take it from the release's flags",
    "diffusion.objective": "`mdm` (hide patches, predict the clean image), `ddpm` (Gaussian noise, predict it) or "
                           "`mae` (a fixed share of patches hidden, timestep 0, MSE on the hidden pixels)",
    "diffusion.timesteps": "T; the MDM mask ratio is t / T",
    "diffusion.patch_size": "MDM patch size in px",
    "diffusion.mask_fill": "value of masked pixels (images are in [-1, 1])",
    "diffusion.loss": "MDM loss: `ssim` (pytorch-msssim's, on [0, 1]), `ssim_ref` (the reference code's: zero "
                      "padding, range-1 constants on [-1, 1], `mean(clamp(1 - map, 0, 1)) / 2`; keeps colour), "
                      "`ssim_masked` (masked pixels only), `mse` or `l1`",
    "diffusion.ssim_win_size": "SSIM Gaussian window size (odd)",
    "diffusion.ssim_sigma": "SSIM Gaussian window sigma",
    "diffusion.beta_schedule": "DDPM noise schedule: `linear` or `cosine`",
    "diffusion.mae_mask_ratio": "MAE: the fixed fraction of patches hidden",
    "data.source": "`folder` or `synthetic` (pretraining); `glas`, `monuseg`, `ffhq34`, `celeba19`, `generic` or "
                   "`synthetic` (stage 2)",
    "data.root": "folder(s) of the source",
    "data.crop_size": "pretraining crop size; also stage 2's default tile size",
    "data.crop": "`random` crops (no resize) or `resize` whole images",
    "data.hflip": "random horizontal flips in pretraining",
    "data.color_mode": "`RGB` or `L`",
    "data.exclude": "files or folders never pretrained on (matched by path and by content)",
    "data.skip_unreadable": "skip unreadable images with a warning instead of stopping",
    "data.num_workers": "DataLoader workers",
    "data.synthetic_images": "size of the synthetic unlabeled pool",
    "data.synthetic_image_size": "side of synthetic images in px",
    "data.synthetic_seed": "which synthetic world (slides, stains, images): the same in both stages",
    "data.seed": "which training images are labeled (the label subset)",
    "data.label_fraction": "fraction of the training images that are labeled, in (0, 1]",
    "data.val_fraction": "fraction of the labeled images (or pixels) held out for early stopping",
    "data.val_split": "`images`: hold out whole labeled images (pixel blocks when there is only one); `pixels`: "
                      "8x8 pixel blocks of every labeled image; `none`: every labeled pixel trains and early stopping "
                      "watches the training loss (the reference's rule)",
    "data.num_classes": "0: the source's own (2 for glas/monuseg/synthetic, 34 for ffhq34)",
    "train.max_steps": "optimizer steps",
    "train.batch_size": "global batch per optimizer step (over processes and accumulation)",
    "train.grad_accum_steps": "gradient accumulation steps",
    "train.lr": "AdamW learning rate (constant after warm-up)",
    "train.weight_decay": "AdamW weight decay",
    "train.warmup_steps": "linear learning-rate warm-up",
    "train.grad_clip": "gradient-norm clip (0: off)",
    "train.ema_decay": "EMA decay of the exported weights",
    "train.ema_warmup": "EMA warm-up (short runs need it)",
    "train.mixed_precision": "`no`, `bf16`, `fp16` (GPU only) or `auto` (bf16 where native, else fp16 on a GPU "
                             "and fp32 on a CPU)",
    "train.channels_last": "NHWC memory format: `auto` (on the CPU, where it is faster and the fused norm kernel "
                           "needs it; NCHW on GPUs), `true` or `false`",
    "train.device": "`auto` (CUDA when present), `cpu` or `cuda` (pick the GPU with `CUDA_VISIBLE_DEVICES`: "
                    "Accelerate places each process); `--device` overrides it",
    "train.compile": "`torch.compile`: `auto` (`regional` on GPUs, `none` on CPUs), `none`, `regional` (each "
                     "residual and attention block) or `full`",
    "train.seed": "initial weights and every sample's crop, timestep, mask and noise",
    "train.log_every": "steps between log.jsonl rows",
    "train.image_every": "steps between reconstruction grids (0: none)",
    "train.checkpoint_every": "steps between checkpoints",
    "train.checkpoint_limit": "checkpoints kept",
    "train.export_every": "steps between kept exports (0: only the first and last)",
    "train.export_at": "further steps with a kept export (the study's budget curve)",
    "train.out_dir": "run folder",
    "seg.mode": "`frozen` (features + pixel MLPs) or `finetune` (a whole network end to end)",
    "seg.arch": "fine-tuning network: `unet` (the export's U-Net + 1x1 head) or `smp` (from scratch)",
    "seg.smp_encoder": "encoder of the smp U-Net (no pretrained weights)",
    "seg.finetune_lr": "Adam learning rate of fine-tuning",
    "seg.augment": "fine-tuning crops: `hflip`, `dihedral` (flips + 90° rotations) or `none`",
    "seg.crops_per_epoch": "fine-tuning crops per epoch",
    "seg.batch_size": "fine-tuning batch",
    "seg.blocks": "decoder blocks for features (guided-diffusion numbering; negatives count from the end), or `auto`: "
                  "chosen on validation pixels",
    "seg.timesteps": "extraction timesteps (features of all are concatenated), or `auto`: the best of "
                     "`seg.auto_timesteps` on validation pixels",
    "seg.auto_blocks": "`blocks: auto`: how many of the best blocks to keep",
    "seg.auto_timesteps": "`timesteps: auto`: the candidates",
    "seg.probe_steps": "`auto`: about how many optimizer steps each one-block probe takes (in whole epochs)",
    "seg.extract_masks": "`fixed`: one seeded extraction mask per tile; `per_epoch`: training tiles get a new keyed "
                         "draw each epoch (the reference draws one per step), validation and test tiles keep one",
    "seg.mask_draws": "`per_epoch`: draws cycled (a cache stays bounded); 0: a new draw every epoch, never stored",
    "seg.seed": "classifier init, pixel order, extraction masks and validation pixels",
    "seg.ensemble_size": "pixel MLPs in the ensemble",
    "seg.combine": "`vote`, `mean_prob` or `individual` (each member scored alone: the paper's GlaS protocol)",
    "seg.max_epochs": "epochs at most",
    "seg.patience": "epochs without a better validation loss (training loss with `data.val_split: none`) before "
                    "stopping",
    "seg.min_epochs": "no early stop before this many epochs (the reference's GlaS rule: 40 + patience 20)",
    "seg.lr": "Adam learning rate of the pixel MLPs",
    "seg.batch_pixels": "pixels per MLP batch",
    "seg.pixels_per_tile": "training pixels drawn per tile and epoch (0: all)",
    "seg.min_class_pixels": "ignore a class in an image where it has fewer pixels (FFHQ-34: 20)",
    "seg.tile_size": "sliding-window tile (0: the export's `data.crop_size`)",
    "seg.overlap": "overlap of neighbouring tiles, in [0, 1)",
    "seg.normalize": "`zscore` (each channel with the training pixels' mean and std), `l2_image` (each tile's "
                     "feature tensor divided by its L2 norm: the reference's), `rms_image` (divided by its root mean "
                     "square: the same, at unit scale) or `none`",
    "seg.cache_dir": "fp16 block-output cache folder (empty: in memory)",
    "seg.weights": "`ema` or `raw` export weights",
    "seg.miou_absent": "a class absent from prediction and ground truth on the whole test set: `skip` it in the mean "
                       "or count it as `zero` (ddpm-segmentation's convention)",
    "seg.val_tiles": "fine-tuning: validation tiles scored each epoch (a fixed seeded subset; 0: all)",
    "seg.mixed_precision": "`auto` (bf16 autocast where the device computes it natively), `no` or `bf16`",
    "seg.device": "`auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`; `--device` overrides it",
    "seg.out_dir": "run folder",
    "bench.fractions": "label fractions",
    "bench.seeds": "seeds (each draws its own labeled subset and initialisations)",
    "bench.methods": "`mdm`, `ddpm`, `mae`, `random`, `mdm-ft`, `mae-ft`, `unet-scratch`, `smp-scratch`",
    "bench.metric": "the metric of the table and plots",
    "bench.pretrain_steps": "pretraining steps of each objective",
    "bench.budget_exports": "exports kept along the way for the pretraining-budget curve",
    "bench.budget_methods": "methods on the pretraining-budget curve (of `mdm`, `ddpm`, `mae`, `mdm-ft`, "
                            "`mae-ft`)",
    "bench.budget_seeds": "how many of `bench.seeds` score the budget curve",
    "bench.budget_spacing": "budget exports `linear`ly or `log`arithmically spaced in steps",
    "bench.variants": "an ablation: `[{name: NAME, set: [KEY=VALUE, ...]}, ...]`, the study run once per variant; "
                      "pretraining shared where a variant leaves it unchanged (empty: one plain study)",
    "bench.out_dir": "study folder",
    "bench.pretrain_data": "the pretraining pool, keys as `data` (`bench.pretrain_data.root=[...]` etc.): `source: "
                           "labeled` = the labeled source's training images + `ROOT/unlabeled/` + `root`; `folder` = "
                           "`root` only; `synthetic` = the built-in pool; test images always excluded",
}


def keys() -> list[tuple[str, object]]:
    """Every ``section.key`` with its default, in declaration order (a nested section is one key)."""
    cfg = Config()
    out = []
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            value = getattr(getattr(cfg, section.name), f.name)
            out.append((f"{section.name}.{f.name}", f"source: {value.source}" if dataclasses.is_dataclass(value)
                        else value))
    return out


def _fmt(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return '""' if value == "" else str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    lines, section = [], None
    for key, default in keys():
        name = key.split(".")[0]
        if name != section:
            section = name
            lines += ([""] if lines else []) + [f"**{name}**: {SECTIONS[name]}", "",
                                                "| key | default | meaning |", "|---|---|---|"]
        lines.append(f"| `{key}` | `{_fmt(default)}` | {HELP[key]} |")
    return "\n".join(lines)


def replace_in(text: str) -> str:
    """``text`` with the part between the markers replaced by the current table."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="update README.md in place")
    args = p.parse_args()
    if args.write:
        readme = Path(__file__).resolve().parents[2] / "README.md"
        readme.write_text(replace_in(readme.read_text()))
    else:
        print(markdown_table())


if __name__ == "__main__":
    main()
