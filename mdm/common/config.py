"""Configuration: the dataclasses of the six sections (``model``, ``diffusion``, ``data``, ``train``, ``seg``,
``bench``) with their defaults and ``Config.validate``'s checks of ranges and choices. Files and ``--set``
overrides are read and written by ``config_io``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError

BENCH_METHODS = ("mdm", "ddpm", "mae", "random", "mdm-ft", "mae-ft", "unet-scratch", "smp-scratch")


@dataclass
class ModelConfig:
    """U-Net architecture (see ``mdm.nn.unet.UNetModel``)."""

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attention_resolutions: list[int] = field(default_factory=lambda: [8])
    num_heads: int = 1
    num_head_channels: int = 32
    dropout: float = 0.0
    resblock_updown: bool = True
    use_scale_shift_norm: bool = True
    conv_resample: bool = True
    use_checkpoint: bool = False
    norm_groups: int = 32
    use_new_attention_order: bool = False


@dataclass
class DiffusionConfig:
    """The corruption process and its loss.

    ``objective``: ``mdm`` (hide patches, predict x0), ``ddpm`` (Gaussian noise, predict epsilon, MSE) or ``mae``
    (a fixed share ``mae_mask_ratio`` of the patches hidden, timestep 0, MSE on the hidden pixels).
    ``loss`` (MDM only): ``ssim`` (whole image), ``ssim_ref`` (the reference code's SSIM, see ``losses``),
    ``ssim_masked`` (SSIM map averaged over masked pixels), ``mse``, ``l1``.
    """

    objective: str = "mdm"
    timesteps: int = 1000
    patch_size: int = 8
    mask_fill: float = 0.0
    loss: str = "ssim"
    ssim_win_size: int = 5
    ssim_sigma: float = 1.5
    beta_schedule: str = "linear"
    mae_mask_ratio: float = 0.75


@dataclass
class DataConfig:
    """Where images come from and how they are cropped.

    ``source``: ``folder`` (``root``: a folder or a list of folders, searched recursively) or ``synthetic`` for
    pretraining; ``glas``, ``monuseg``, ``ffhq34``, ``celeba19``, ``generic`` or ``synthetic`` for stage 2.
    ``crop``: ``random`` (random ``crop_size`` crops, no resize, as the reference) or ``resize``.
    """

    source: str = "synthetic"
    root: list[str] = field(default_factory=list)
    crop_size: int = 32
    crop: str = "random"
    hflip: bool = True
    color_mode: str = "RGB"
    exclude: list[str] = field(default_factory=list)
    skip_unreadable: bool = False
    num_workers: int = 0
    synthetic_images: int = 256
    synthetic_image_size: int = 64
    synthetic_seed: int = 0  # which synthetic world (slides, images); the same for pretraining and segmentation
    seed: int = 0  # draws the labeled subset (segmentation)
    # segmentation stage
    label_fraction: float = 1.0
    val_fraction: float = 0.1
    val_split: str = "images"  # images: hold out whole labeled images (pixel blocks when only one); pixels; none
    num_classes: int = 0  # 0: the dataset's own (2 for glas/monuseg/synthetic, 34 for ffhq34)


@dataclass
class TrainConfig:
    """The optimisation loop. ``batch_size`` is the global batch per optimizer step (over all processes and
    accumulation steps)."""

    max_steps: int = 1000
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    mixed_precision: str = "no"
    channels_last: bool | str = "auto"  # auto: NHWC on the CPU (faster, and the fused norm kernel needs it), else NCHW
    device: str = "auto"
    compile: str = "auto"
    seed: int = 0
    log_every: int = 10
    image_every: int = 250
    checkpoint_every: int = 500
    checkpoint_limit: int = 2
    export_every: int = 0
    export_at: list[int] = field(default_factory=list)
    out_dir: str = "runs/pretrain"


@dataclass
class SegConfig:
    """The segmentation stage (``finetune_seg.py``): ``mode: frozen`` trains a pixel MLP ensemble on features of
    frozen decoder blocks; ``mode: finetune`` trains a whole network end to end (the export's U-Net + a 1x1 head, or
    an smp U-Net from scratch).

    Frozen: ``blocks``: inclusive list of decoder block numbers (negatives count from the end), or ``auto``.
    ``timesteps``: extraction timesteps, or ``auto``. ``extract_masks``: ``fixed`` (one seeded mask per tile) or
    ``per_epoch`` (training tiles get a new keyed draw each epoch, ``mask_draws`` of them cycled; 0: no cycle).
    ``normalize``: ``zscore`` (per channel, from the training pixels), ``l2_image`` (each tile's feature tensor
    divided by its L2 norm: the reference's), ``rms_image`` (by its root mean square) or ``none``. ``combine``:
    ``vote``, ``mean_prob`` or ``individual``.
    Both: ``tile_size`` 0 means the export's ``data.crop_size``; early stopping after ``patience`` epochs without a
    better validation loss (the training loss with ``data.val_split: none``), never before ``min_epochs``.
    ``cache_dir`` empty keeps block outputs in memory instead of on disk.
    """

    mode: str = "frozen"  # frozen: features + pixel MLPs; finetune: train a whole network end to end
    arch: str = "unet"  # finetune only: unet (the export's U-Net + 1x1 head) or smp (segmentation-models-pytorch)
    smp_encoder: str = "resnet18"
    finetune_lr: float = 2e-4
    augment: str = "hflip"  # finetune only: hflip, or dihedral (flips + 90-degree rotations: histology), or none
    crops_per_epoch: int = 64
    batch_size: int = 8
    blocks: list[int] | str = field(default_factory=lambda: [-3, -2, -1])
    timesteps: list[int] | str = field(default_factory=lambda: [50])
    auto_blocks: int = 3
    auto_timesteps: list[int] = field(default_factory=lambda: [10, 50, 200])
    probe_steps: int = 50
    extract_masks: str = "fixed"
    mask_draws: int = 0
    seed: int = 0
    ensemble_size: int = 10
    combine: str = "vote"
    max_epochs: int = 30
    patience: int = 5
    min_epochs: int = 0
    lr: float = 1e-3
    batch_pixels: int = 4096
    pixels_per_tile: int = 2048
    min_class_pixels: int = 0
    tile_size: int = 0
    overlap: float = 0.2
    normalize: bool | str = "zscore"  # a bool is read as before the key took names: true = zscore, false = none
    cache_dir: str = "runs/feature_cache"
    weights: str = "ema"
    miou_absent: str = "skip"
    val_tiles: int = 64
    mixed_precision: str = "auto"
    device: str = "auto"
    out_dir: str = "runs/seg"


@dataclass
class Variant:
    """One arm of an ablation (``bench.variants``): its ``name`` and the overrides it applies to the study's config,
    written as ``--set`` takes them (``["seg.normalize=l2_image", "diffusion.loss=ssim_ref"]``)."""

    name: str = ""
    set: list[str] = field(default_factory=list)


@dataclass
class BenchConfig:
    """The label-efficiency study (``python -m mdm.benchmark``): label fractions x seeds x methods.

    Methods: ``mdm``, ``ddpm``, ``mae``, ``random`` (frozen features + pixel MLPs of the MDM-, DDPM- and
    MAE-pretrained and the randomly initialised U-Net), ``mdm-ft``, ``mae-ft``, ``unet-scratch`` (the U-Net + 1x1
    head fine-tuned end to end from the MDM / MAE weights / from the same random init), ``smp-scratch`` (a
    segmentation-models-pytorch U-Net from scratch). ``pretrain_steps`` is the pretraining budget of every
    objective; ``budget_exports`` exports are kept along the way (``budget_spacing``: evenly or logarithmically
    spaced, plus step 0) for the pretraining-budget curve, scored with the first ``budget_seeds`` seeds.
    ``variants`` (an ablation): the study runs once per variant, each with its overrides; a pretraining run is
    shared by every variant that leaves it unchanged. ``pretrain_data`` is the pool
    pretraining reads (keys as ``data``): ``source: labeled`` (the default) takes the labeled source's training
    images without their labels, plus ``ROOT/unlabeled/`` when it exists and the folders in ``root``; ``folder``
    takes ``root`` only. The labeled source's test images are always excluded. A ``synthetic`` labeled source
    pretrains on its own unlabeled pool (``data.synthetic_images``).
    """

    fractions: list[float] = field(default_factory=lambda: [0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    methods: list[str] = field(default_factory=lambda: ["mdm", "ddpm", "random", "mdm-ft", "unet-scratch",
                                                        "smp-scratch"])
    metric: str = "dice"
    pretrain_steps: int = 1000
    budget_exports: int = 4
    budget_methods: list[str] = field(default_factory=lambda: ["mdm", "ddpm", "mae"])
    budget_seeds: int = 1
    budget_spacing: str = "linear"
    variants: list[Variant] = field(default_factory=list)
    out_dir: str = "runs/bench"
    pretrain_data: DataConfig = field(default_factory=lambda: DataConfig(source="labeled"))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def validate(self) -> "Config":
        """Check value ranges and choices; raise ``ConfigError`` naming the key."""
        if isinstance(self.seg.normalize, bool):  # written before the key took names
            self.seg.normalize = "zscore" if self.seg.normalize else "none"
        choices = {
            "diffusion.objective": (self.diffusion.objective, {"mdm", "ddpm", "mae"}),
            "diffusion.loss": (self.diffusion.loss, {"ssim", "ssim_ref", "ssim_masked", "mse", "l1"}),
            "diffusion.beta_schedule": (self.diffusion.beta_schedule, {"linear", "cosine"}),
            "data.source": (self.data.source, {"folder", "synthetic", "glas", "monuseg", "ffhq34", "celeba19",
                                               "generic"}),
            "seg.combine": (self.seg.combine, {"vote", "mean_prob", "individual"}),
            "seg.weights": (self.seg.weights, {"ema", "raw"}),
            "seg.mode": (self.seg.mode, {"frozen", "finetune"}),
            "seg.arch": (self.seg.arch, {"unet", "smp"}),
            "seg.augment": (self.seg.augment, {"none", "hflip", "dihedral"}),
            "data.crop": (self.data.crop, {"random", "resize"}),
            "data.color_mode": (self.data.color_mode, {"RGB", "L"}),
            "train.mixed_precision": (self.train.mixed_precision, {"no", "fp16", "bf16", "auto"}),
            "train.channels_last": (self.train.channels_last, {True, False, "auto"}),
            "train.compile": (self.train.compile, {"auto", "none", "regional", "full"}),
            "seg.mixed_precision": (self.seg.mixed_precision, {"no", "bf16", "auto"}),
            "seg.miou_absent": (self.seg.miou_absent, {"skip", "zero"}),
            "data.val_split": (self.data.val_split, {"images", "pixels", "none"}),
            "seg.extract_masks": (self.seg.extract_masks, {"fixed", "per_epoch"}),
            "seg.normalize": (self.seg.normalize, {"zscore", "l2_image", "rms_image", "none"}),
            "bench.budget_spacing": (self.bench.budget_spacing, {"linear", "log"}),
            "bench.pretrain_data.source": (self.bench.pretrain_data.source, {"labeled", "folder", "synthetic"}),
            "bench.pretrain_data.crop": (self.bench.pretrain_data.crop, {"random", "resize"}),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}: {value!r} is not one of {sorted(allowed, key=str)}")
        unknown = sorted(set(self.bench.methods) - set(BENCH_METHODS))
        if unknown:
            raise ConfigError(f"bench.methods: unknown method {unknown[0]!r} (known: {', '.join(BENCH_METHODS)})")
        t, sc, bc = self.train, self.seg, self.bench
        positive = {"train.max_steps": t.max_steps, "train.batch_size": t.batch_size,
                    "train.grad_accum_steps": t.grad_accum_steps, "model.image_size": self.model.image_size,
                    "data.crop_size": self.data.crop_size, "diffusion.timesteps": self.diffusion.timesteps,
                    "diffusion.patch_size": self.diffusion.patch_size, "train.log_every": t.log_every,
                    "train.checkpoint_every": t.checkpoint_every, "train.checkpoint_limit": t.checkpoint_limit,
                    "seg.max_epochs": sc.max_epochs, "seg.batch_pixels": sc.batch_pixels,
                    "seg.crops_per_epoch": sc.crops_per_epoch, "seg.batch_size": sc.batch_size,
                    "bench.pretrain_steps": bc.pretrain_steps, "bench.budget_exports": bc.budget_exports,
                    "bench.pretrain_data.crop_size": bc.pretrain_data.crop_size, "seg.auto_blocks": sc.auto_blocks,
                    "seg.probe_steps": sc.probe_steps, "bench.budget_seeds": bc.budget_seeds}
        not_negative = {"train.image_every": t.image_every, "train.export_every": t.export_every,
                        "train.warmup_steps": t.warmup_steps, "seg.patience": sc.patience,
                        "seg.pixels_per_tile": sc.pixels_per_tile, "seg.tile_size": sc.tile_size,
                        "seg.min_class_pixels": sc.min_class_pixels, "data.num_workers": self.data.num_workers,
                        "seg.val_tiles": sc.val_tiles, "seg.mask_draws": sc.mask_draws,
                        "seg.min_epochs": sc.min_epochs}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key}: must be positive, got {value}")
        for key, value in not_negative.items():
            if value < 0:
                raise ConfigError(f"{key}: must be 0 or more, got {value}")
        lists = {"bench.fractions": bc.fractions, "bench.seeds": bc.seeds, "bench.methods": bc.methods}
        for key, values in lists.items():
            if not values:
                raise ConfigError(f"{key}: must not be empty")
        bad = [f for f in bc.fractions if not 0.0 < f <= 1.0]
        if bad:
            raise ConfigError(f"bench.fractions: {bad[0]} is not in (0, 1]")
        if not 0.0 < self.data.label_fraction <= 1.0:
            raise ConfigError(f"data.label_fraction: must be in (0, 1], got {self.data.label_fraction}")
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction: must be in [0, 1), got {self.data.val_fraction}")
        if not 0.0 <= self.seg.overlap < 1.0:
            raise ConfigError(f"seg.overlap: must be in [0, 1), got {self.seg.overlap}")
        for key in ("blocks", "timesteps"):
            if isinstance(getattr(self.seg, key), str) and getattr(self.seg, key) != "auto":
                raise ConfigError(f"seg.{key}: {getattr(self.seg, key)!r} is not a list of numbers or auto")
        if self.data.val_split == "none" and "auto" in (self.seg.blocks, self.seg.timesteps):
            raise ConfigError("seg.blocks / seg.timesteps: auto chooses on validation pixels, and data.val_split: none "
                              "holds none out; give the blocks and timesteps, or another data.val_split")
        names = [v.name for v in bc.variants]
        if "" in names or len(set(names)) != len(names):
            raise ConfigError(f"bench.variants: every variant needs a name of its own, got {names}")
        odd = [n for n in names if n in (".", "..") or any(c in n for c in "/\\")]
        if odd:
            raise ConfigError(f"bench.variants: {odd[0]!r} cannot name a folder (no / or \\, not . or ..)")
        if self.seg.ensemble_size < 1 or not self.seg.timesteps or not self.seg.blocks:
            raise ConfigError("seg.ensemble_size, seg.timesteps and seg.blocks must be non-empty / positive")
        if not 0.0 <= self.train.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay: must be in [0, 1), got {self.train.ema_decay}")
        if self.diffusion.ssim_win_size % 2 == 0:
            raise ConfigError(f"diffusion.ssim_win_size: must be odd, got {self.diffusion.ssim_win_size}")
        if not 0.0 < self.diffusion.mae_mask_ratio < 1.0:
            raise ConfigError(f"diffusion.mae_mask_ratio: must be in (0, 1), got {self.diffusion.mae_mask_ratio}")
        if self.diffusion.objective in MASKED_OBJECTIVES:  # crops must hold whole patches (a study checks its pool)
            check_crop("data.crop_size", self.data.crop_size, self.diffusion.patch_size)
        if self.data.source == "folder" and not self.data.root:
            raise ConfigError("data.root: data.source is 'folder' but no folder is given (--set data.root=DIR)")
        return self


MASKED_OBJECTIVES = ("mdm", "mae")  # objectives that hide patches


def check_crop(key: str, crop: int, patch_size: int) -> None:
    """A masked objective's crops must hold whole patches."""
    if crop % patch_size:
        raise ConfigError(f"{key}: {crop} is not divisible by diffusion.patch_size={patch_size}")
