"""Configuration: the dataclasses of the seven sections (``model``, ``diffusion``, ``data``,
``train`` and ``bench`` here, the stage-2 sections ``seg`` and ``probe`` in ``config_stage2``) and
``Config``, which holds them. Each key is described once, where it is declared
(``config_keys.key``): its default, its help line (the README's table, ``mdm.config_docs``), its
choices and its range, which ``config_checks.validate`` checks. Files and ``--set`` overrides are
read and written by ``config_io``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config_keys import ANY_TASK_METHODS, ROLES, TASK_METHODS, key
from .config_stage2 import ProbeConfig, SegConfig
from .errors import ConfigError


@dataclass
class ModelConfig:
    """U-Net architecture (see ``mdm.nn.unet.UNetModel``)."""

    image_size: int = key(
        32, "nominal input size; `attention_resolutions` are relative to it", positive=True)
    in_channels: int = key(3, "input channels")
    out_channels: int = key(3, "output channels (6 for a guided-diffusion learn-sigma model)")
    model_channels: int = key(32, "base width")
    channel_mult: list[int] = key([1, 2, 2], "width multiplier per resolution level")
    num_res_blocks: int = key(1, "residual blocks per level (the decoder has one more)")
    attention_resolutions: list[int] = key([8], "feature-map sizes (px at `image_size`) with self-attention")
    num_heads: int = key(1, "attention heads (when `num_head_channels` is -1)")
    num_head_channels: int = key(32, "channels per attention head (-1: use `num_heads`)")
    dropout: float = key(0.0, "dropout in the residual blocks")
    resblock_updown: bool = key(
        True, "resample inside residual blocks (guided-diffusion's `resblock_updown`)")
    use_scale_shift_norm: bool = key(True,
                                     "the timestep embedding scales and shifts the second norm")
    conv_resample: bool = key(True, "convolution in separate up/downsampling layers")
    use_checkpoint: bool = key(False, "gradient checkpointing (less memory, slower)",
                               roles=("memory",))
    norm_groups: int = key(32, "GroupNorm groups")
    use_new_attention_order: bool = key(
        False, "guided-diffusion's `use_new_attention_order` (q, k, v split before "
               "the heads); the weights cannot tell, take it from the release's flags")


@dataclass
class DiffusionConfig:
    """The corruption process and its loss."""

    objective: str = key("mdm", "the pretraining objective", registries=("objectives",))
    timesteps: int = key(1000, "T; the MDM mask ratio is t / T", positive=True)
    patch_size: int = key(8, "MDM patch size in px", positive=True)
    mask_fill: float = key(0.0, "value of masked pixels (images are in [-1, 1])")
    loss: str = key("ssim", "MDM loss", registries=("reconstruction losses",))
    ssim_win_size: int = key(5, "SSIM Gaussian window size (odd)")
    ssim_sigma: float = key(1.5, "SSIM Gaussian window sigma")
    beta_schedule: str = key("linear", "DDPM noise schedule: `linear` or `cosine`",
                             choices=("linear", "cosine"))
    mae_mask_ratio: float = key(0.75, "MAE: the fixed fraction of patches hidden")


@dataclass
class DataConfig:
    """Where images come from: the pretraining pool, or the labeled dataset of stage 2."""

    source: str = key("synthetic",
                      "what the images are: a pretraining pool (pretraining) or a labeled source "
                      "(stage 2)", registries=("pretraining pools", "labeled sources",
                                                    "image-label sources"))
    root: list[str] = key([], "folder(s) of the source")
    crop_size: int = key(32,
                         "pretraining crop size; also stage 2's default tile size", positive=True)
    crop: str = key("random", "`random` crops (no resize) or `resize` whole images",
                    choices=("random", "resize"))
    hflip: bool = key(True, "random horizontal flips in pretraining")
    color_mode: str = key(
        "RGB", "`RGB` (grayscale images are read as three equal channels; `L` is refused: stage 2 "
               "reads RGB)", choices=("RGB", "L"))
    exclude: list[str] = key([], "files or folders never pretrained on (matched by path, by content and by picture)")
    skip_unreadable: bool = key(False, "skip unreadable images with a warning instead of stopping")
    manifest: str = key(
        "", "the image-folder pool's manifest file (each file's size, dimensions, hash and "
            "thumbnail, read once; empty: ~/.cache/mdm/pools/, shared by every run over the same "
            "folders)", roles=("hardware", "resumable"))
    mpp: float = key(0.0, "slide pools: microns per pixel of the tiles (0: tiles read at `data.slide_level` as they "
                          "are)", not_negative=True)
    slide_level: int = key(0,
                           "slide pools: the pyramid level tiles are read at when `data.mpp` is 0",
                           not_negative=True)
    tissue_threshold: float = key(
        0.0, "slide pools: the saturation above which a thumbnail pixel is tissue (0: Otsu's "
             "threshold of each slide)", not_negative=True)
    tissue_min: float = key(
        0.5, "slide pools: the least share of tissue in a sampled tile, in (0, 1]", positive=True)
    slide_reader: str = key(
        "tiffslide", "slide pools: `tiffslide` (SVS, NDPI, SCN, pyramidal TIFF) or `openslide` "
                     "(also MRXS and more; needs openslide-python and openslide-bin)",
        choices=("tiffslide", "openslide"))
    shuffle_buffer: int = key(
        1000, "shard pools: the samples of a stream's shuffle buffer (1: read in shard order)",
        positive=True)
    num_workers: int = key(0, "DataLoader workers", not_negative=True,
                           roles=("hardware", "resumable"))
    synthetic_images: int = key(256, "size of the synthetic unlabeled pool", positive=True)
    synthetic_image_size: int = key(64, "side of synthetic images in px", positive=True)
    synthetic_seed: int = key(
        0, "which synthetic world (slides, stains, images): the same in both stages")
    seed: int = key(0, "which training images are labeled (the label subset)",
                    roles=("stage2_data",))
    # segmentation stage
    label_fraction: float = key(1.0, "fraction of the training images that are labeled, in (0, 1]",
                                roles=("stage2_data",))
    val_fraction: float = key(
        0.1, "fraction of the labeled images (or pixels) held out for early stopping",
        roles=("stage2_data",))
    val_split: str = key(
        "images", "`images`: hold out whole labeled images (pixel blocks when there is only one); "
                  "`pixels`: 8x8 pixel blocks of every labeled image; `none`: every labeled pixel "
                  "trains and early stopping watches the training loss (the reference's rule)",
                  choices=("images", "pixels", "none"), roles=("stage2_data",))
    num_classes: int = key(0, "0: the source's own (2 for glas/monuseg/synthetic, 34 for ffhq34)",
                           roles=("stage2_data",))


@dataclass
class TrainConfig:
    """The pretraining loop. ``batch_size`` is the global batch per optimizer step (over all
    processes and accumulation steps)."""

    max_steps: int = key(1000, "optimizer steps", positive=True, roles=("cadence",))
    batch_size: int = key(
        8, "global batch per optimizer step (over processes and accumulation)", positive=True)
    grad_accum_steps: int = key(1, "gradient accumulation steps", positive=True, roles=("memory",))
    lr: float = key(1e-4, "AdamW learning rate (constant after warm-up)", positive=True)
    weight_decay: float = key(0.0, "AdamW weight decay", not_negative=True)
    warmup_steps: int = key(0, "linear learning-rate warm-up", not_negative=True)
    grad_clip: float = key(1.0, "gradient-norm clip (0: off)", not_negative=True)
    ema_decay: float = key(0.9999, "EMA decay of the exported weights")
    ema_warmup: bool = key(True, "EMA warm-up (short runs need it)")
    mixed_precision: str = key(
        "no", "`no`, `bf16`, `fp16` (GPU only) or `auto` (bf16 where native, else fp16 on a "
              "GPU and fp32 on a CPU)", choices=("no", "fp16", "bf16", "auto"),
              roles=("hardware",))
    channels_last: bool | str = key(
        "auto", "NHWC memory format: `auto` (on the CPU, where it is faster and the fused "
                "norm kernel needs it; NCHW on GPUs), `true` or `false`",
                choices=(True, False, "auto"), roles=("hardware",))
    device: str = key("auto", "`auto` (CUDA when present), `cpu` or `cuda` (pick the GPU with `CUDA_VISIBLE_DEVICES`: "
                              "Accelerate places each process); `--device` overrides it",
                              roles=("hardware", "resumable"))
    compile: str = key(
        "auto", "`torch.compile`: `auto` (`regional` on GPUs, `none` on CPUs), `none`, `regional` "
                "(each residual and attention block) or `full`",
                choices=("auto", "none", "regional", "full"), roles=("hardware",))
    seed: int = key(0, "initial weights and every sample's crop, timestep, mask and noise")
    log_every: int = key(10, "steps between log.jsonl rows", positive=True,
                         roles=("cadence", "resumable"))
    image_every: int = key(250, "steps between reconstruction grids (0: none)", not_negative=True,
                           roles=("cadence", "resumable"))
    checkpoint_every: int = key(500, "steps between checkpoints", positive=True, roles=("cadence",))
    checkpoint_limit: int = key(2, "checkpoints kept", positive=True, roles=("cadence",))
    export_every: int = key(0, "steps between kept exports (0: only the first and last)",
                            not_negative=True, roles=("cadence",))
    export_at: list[int] = key([], "further steps with a kept export (the study's budget curve)",
                               roles=("cadence",))
    out_dir: str = key("runs/pretrain", "run folder", roles=("cadence", "resumable"))


@dataclass
class Variant:
    """One arm of an ablation (``bench.variants``): its ``name`` and the overrides it applies to the
    study's config, written as ``--set`` takes them (``["seg.normalize=l2_image",
    "diffusion.loss=ssim_ref"]``)."""

    name: str = ""
    set: list[str] = field(default_factory=list)


@dataclass
class BenchConfig:
    """The label-efficiency study (``python -m mdm.benchmark``): label fractions x seeds x methods,
    once per variant of ``variants`` (an ablation); pretraining runs once per objective and is
    shared where it can be."""

    task: str = key("segmentation", "what the study measures", registries=("tasks",))
    fractions: list[float] = key([0.1, 1.0], "label fractions", roles=("resumable",))
    seeds: list[int] = key([0, 1], "seeds (each draws its own labeled subset and initialisations)",
                           roles=("resumable",))
    methods: list[str] = key(["mdm", "ddpm", "random", "mdm-ft", "unet-scratch", "smp-scratch"],
                             "the methods compared", registries=(TASK_METHODS,),
                             roles=("resumable",))
    metric: str = key("dice", "the metric of the table and plots (classification: `accuracy`, `balanced_accuracy` "
                              "or `roc_auc`; segmentation: any column its runs report)")
    pretrain_steps: int = key(1000, "pretraining steps of each objective", positive=True)
    budget_exports: int = key(
        4, "exports kept along the way for the pretraining-budget curve", positive=True)
    budget_methods: list[str] = key(["mdm", "ddpm", "mae"],
                                    "methods on the pretraining-budget curve (methods of "
                                    "pretrained weights; those not in `bench.methods` are left out)",
                                    registries=(ANY_TASK_METHODS,), roles=("resumable",))
    budget_seeds: int = key(1, "how many of `bench.seeds` score the budget curve", positive=True,
                            roles=("resumable",))
    budget_spacing: str = key("linear",
                              "budget exports `linear`ly or `log`arithmically spaced in steps",
                              choices=("linear", "log"))
    variants: list[Variant] = key([], "an ablation: `[{name: NAME, set: [KEY=VALUE, ...]}, ...]`, the study run once "
                                      "per variant; pretraining shared where a variant leaves it unchanged (empty: "
                                      "one plain study)", roles=("resumable",))
    references: list[str] = key([], "the methods every other is judged against in the verdict table (empty: the best "
                                     "method trained from scratch at each fraction and the frozen random features)",
                                registries=(TASK_METHODS,), roles=("resumable",))
    bootstrap: int = key(2000,
                         "replicates of the verdicts' two-way bootstrap (docs/statistics.md)",
                         positive=True, roles=("resumable",))
    bootstrap_seed: int = key(0, "seed of the verdicts' bootstrap resamples", roles=("resumable",))
    image_methods: list[str] = key(
        [], "a segmentation study's exports judged at image level too: these classification methods "
            "on windows of the same labeled images (`<source>-windows`), in `image_level/`; both "
            "levels side by side in results.md (empty: none)",
        registries=("classification methods",), roles=("resumable",))
    image_window: int = key(16, "`image_methods`: the windows' side in px (each labeled by the class "
                                "covering more than half of it)", positive=True, roles=("resumable",))
    image_metric: str = key("balanced_accuracy", "`image_methods`: the image-level metric (`accuracy`, "
                                                 "`balanced_accuracy` or `roc_auc`)",
                            roles=("resumable",))
    out_dir: str = key("runs/bench", "study folder", roles=("resumable",))
    pretrain_data: DataConfig = key(
        DataConfig(source="labeled"),
        "the pretraining pool, keys as `data` (`bench.pretrain_data.root=[...]` etc.): "
        "`source: labeled` = the labeled source's training images + `ROOT/unlabeled/` + `root`; `folder` = `root` "
        "only; `slides` / `shards` = the whole-slide images / tar shards under `root`; `synthetic` = the built-in "
        "pool; test images always excluded")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


def check_crop(key: str, crop: int, patch_size: int) -> None:
    """A masked objective's crops must hold whole patches."""
    if crop % patch_size:
        raise ConfigError(f"{key}: {crop} is not divisible by diffusion.patch_size={patch_size}")


def keys_with_role(role: str) -> set[str]:
    """``"section.key"`` of every key of ``Config``'s sections declaring ``role`` (``ROLES``;
    sections nested in a section, such as ``bench.pretrain_data``, are not searched)."""
    if role not in ROLES:
        raise ValueError(f"unknown key role {role!r} (known: {', '.join(ROLES)})")
    return {f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
            for f in dataclasses.fields(
                section.default_factory) if role in f.metadata.get("roles", ())}
