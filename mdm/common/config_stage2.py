"""The stage-2 sections of the configuration: ``seg`` (segmentation with few labels) and ``probe``
(image classification with few labels). Keys are declared with ``config_keys.key``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config_keys import key


@dataclass
class SegConfig:
    """The segmentation stage (``finetune_seg.py``): ``mode: frozen`` trains a pixel head on
    features of frozen U-Net blocks; ``mode: finetune`` trains a whole network end to end."""

    mode: str = key("frozen",
                    "`frozen` (features + pixel MLPs), `finetune` (a whole network end to end) or "
                    "`classical` (no network: multi-scale filters + a random forest, `filterbank`)",
                    choices=("frozen", "finetune", "classical"))
    arch: str = key("unet", "the network of `seg.mode: finetune`",
                    registries=("fine-tuning networks",))
    filter_sigma_max: float = key(
        16.0, "`classical`: the largest Gaussian sigma of the filter features (px)",
        positive=True)
    forest_trees: int = key(50, "`classical`: trees of the random forest", positive=True)
    forest_pixels: int = key(
        1000, "`classical`: labeled pixels drawn per labeled image to train the forest",
        positive=True)
    smp_encoder: str = key("resnet18", "encoder of the smp U-Net (no pretrained weights)")
    finetune_lr: float = key(2e-4, "Adam learning rate of fine-tuning", positive=True)
    augment: str = key("hflip",
                       "fine-tuning crops: `hflip`, `dihedral` (flips + 90° rotations) or `none`",
                       choices=("none", "hflip", "dihedral"))
    crops_per_epoch: int = key(64, "fine-tuning crops per epoch", positive=True)
    batch_size: int = key(8, "fine-tuning batch", positive=True)
    blocks: str | list[int | str] = key(
        [-3, -2, -1], "blocks for features: decoder blocks by number (guided-diffusion numbering; "
                      "negatives count from the end) or any block by name (`d<i>`, `mid`, `e<i>`); "
                      "or `auto`: chosen on validation pixels")
    timesteps: list[int] | str = key([50], "extraction timesteps (features of all are concatenated), or `auto`: the "
                                           "best of `seg.auto_timesteps` on validation pixels")
    auto_blocks: int = key(3, "`blocks: auto`: how many of the best blocks to keep", positive=True)
    sweep_blocks: list[int | str] = key(
        [], "`blocks: auto`: the candidate blocks, as `blocks` names them (empty: every decoder "
            "block; `[mid, d0, ...]` offers the image probe's candidates)")
    auto_timesteps: list[int] = key([10, 50, 200], "`timesteps: auto`: the candidates")
    probe_steps: int = key(
        50, "`auto`: about how many optimizer steps each one-block probe takes (in whole epochs)",
        positive=True)
    extract_masks: str = key(
        "fixed", "`fixed`: one seeded extraction mask per tile; `per_epoch`: training tiles get "
                 "a new keyed draw each epoch (the reference draws one per step), validation and "
                 "test tiles keep one", choices=("fixed", "per_epoch"))
    mask_draws: int = key(
        0, "`per_epoch`: draws cycled (a cache stays bounded); 0: a new draw every epoch, never "
           "stored", not_negative=True)
    seed: int = key(0, "classifier init, pixel order, extraction masks and validation pixels")
    head: str = key("pixel-mlp", "the pixel classifier of `mode: frozen`",
                    registries=("pixel heads",))
    context: str = key("none", "`tile`: each pixel's features followed by their mean over its tile (the image probe's "
                               "pooled view beside the pixel's own; twice the features)",
                       choices=("none", "tile"))
    ensemble_size: int = key(10, "pixel classifiers in the ensemble", positive=True)
    combine: str = key(
        "vote", "`vote`, `mean_prob` or `individual` (each member scored alone: the paper's GlaS "
                "protocol)", choices=("vote", "mean_prob", "individual"))
    max_epochs: int = key(30, "epochs at most", positive=True)
    patience: int = key(
        5, "epochs without a better validation loss (training loss with `data.val_split: none`) "
           "before stopping", not_negative=True)
    min_epochs: int = key(
        0, "no early stop before this many epochs (the reference's GlaS rule: 40 + patience 20)",
        not_negative=True)
    lr: float = key(1e-3, "Adam learning rate of the pixel MLPs", positive=True)
    batch_pixels: int = key(4096, "pixels per MLP batch", positive=True)
    pixels_per_tile: int = key(2048, "training pixels drawn per tile and epoch (0: all)",
                               not_negative=True)
    balanced_pixels: bool = key(
        False, "draw a tile's training pixels class by class (as many of each class present "
               "as the tile's share allows, rarer classes whole) instead of uniformly")
    min_class_pixels: int = key(
        0, "ignore a class in an image where it has fewer pixels (FFHQ-34: 20)", not_negative=True)
    tile_size: int = key(0, "sliding-window tile (0: the export's `data.crop_size`)",
                         not_negative=True)
    overlap: float = key(0.2, "overlap of neighbouring tiles, in [0, 1)")
    normalize: bool | str = key(
        "zscore", "`zscore` (each channel with the training pixels' mean and std), `l2_image` "
                  "(each tile's feature tensor divided by its L2 norm: the reference's), "
                  "`rms_image` (divided by its root mean square: the same, at unit scale) or "
                  "`none`", choices=("zscore", "l2_image", "rms_image", "none"))
    cache_dir: str = key("runs/feature_cache", "fp16 block-output cache folder (empty: in memory)",
                         roles=("resumable",))
    weights: str = key("ema", "`ema` or `raw` export weights", choices=("ema", "raw"))
    miou_absent: str = key(
        "skip", "a class absent from prediction and ground truth on the whole test set: `skip` it "
                "in the mean or count it as `zero` (ddpm-segmentation's convention)",
                choices=("skip", "zero"))
    val_tiles: int = key(
        64, "fine-tuning: validation tiles scored each epoch (a fixed seeded subset; 0: all)",
        not_negative=True)
    mixed_precision: str = key(
        "auto", "`auto` (bf16 autocast where the device computes it natively), `no` or `bf16`",
                choices=("no", "bf16", "auto"))
    device: str = key(
        "auto", "`auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`; `--device` overrides it",
        roles=("resumable",))
    out_dir: str = key("runs/seg", "run folder", roles=("resumable",))


@dataclass
class ProbeConfig:
    """Image classification (``python -m mdm.probe``): ``mode: frozen`` trains a small head on
    pooled features of frozen U-Net blocks; ``mode: finetune`` trains a whole network end to end.
    ``data`` gives the images (an image-label source) and the labeled subset (``label_fraction``,
    ``seed``, ``val_fraction``)."""

    mode: str = key("frozen",
                    "`frozen` (a head on frozen features), `finetune` (a whole network) or `classical` "
                    "(`filterbank`: per-channel mean and std of multi-scale filter responses + logistic "
                    "regression, no network; sigmas up to min(16, `probe.image_size` / 4))",
                    choices=("frozen", "finetune", "classical"))
    head: str = key("linear",
                    "the head of `mode: frozen`: `linear` (standardised pooled features), `knn` (cosine "
                    "k nearest neighbours, no training) or `attention` (attention pooling with a learned "
                    "query over the block's tokens)", registries=("probe heads",))
    network: str = key("resnet18",
                       "the network of `mode: finetune`: `unet-encoder` (the export's encoder and middle "
                       "block, pooled, a linear head) or `resnet18` (timm, from scratch)",
                       registries=("classification networks",))
    pooling: str = key(
        "gap", "pooling of `linear` / `knn` features: `gap` (global average) or `grid` (k x k "
               "adaptive average, flattened)", choices=("gap", "grid"))
    grid_size: int = key(2, "k of `pooling: grid`", positive=True)
    blocks: str | list[str] = key("auto", "feature blocks, concatenated: `d<i>` (decoder block i, negatives count "
                                          "from the end), `mid`, `e<i>` (encoder block i); or `auto`: the best "
                                          "`(block, timestep)` of the sweep")
    timesteps: list[int] | str = key("auto", "extraction timesteps, concatenated, or `auto` (`blocks` and `timesteps` "
                                             "are `auto` together)")
    sweep_blocks: list[str] = key([], "`auto`: the candidate blocks (empty: the middle block and every decoder block)")
    sweep_timesteps: list[int] = key([0, 50, 200], "`auto`: the candidate timesteps")
    image_size: int = key(64, "images are resized to this square before the network", positive=True)
    tokens: int = key(
        8, "`attention`: a block's token map is average-pooled to at most this side", positive=True)
    knn_k: int = key(5, "neighbours of `knn`", positive=True)
    lr: float = key(1e-2, "Adam learning rate of the `linear` head (the `attention` head, deeper, takes a tenth of "
                          "it)", positive=True)
    weight_decay: float = key(1e-4, "Adam weight decay of the heads and of fine-tuning",
                              not_negative=True)
    max_epochs: int = key(300, "head training epochs at most", positive=True)
    finetune_lr: float = key(1e-3, "Adam learning rate of `mode: finetune`", positive=True)
    finetune_epochs: int = key(60, "fine-tuning epochs at most", positive=True)
    finetune_epoch_images: int = key(
        128, "fine-tuning: images per epoch at least (a few labeled images are cycled, "
             "reshuffled, so that an epoch is never a single step)", not_negative=True)
    patience: int = key(
        20, "epochs without a better validation loss before stopping (the training loss where no "
            "image validates)", not_negative=True)
    batch_size: int = key(32, "images per optimizer step", positive=True)
    augment: str = key("dihedral",
                       "fine-tuning augmentation: `hflip`, `dihedral` (flips + 90° rotations) or `none`",
                       choices=("none", "hflip", "dihedral"))
    ensemble: int = key(
        1, "heads trained with seeds `seed` .. `seed + n - 1`, their probabilities averaged",
        positive=True)
    seed: int = key(0,
                    "head / network initialisation, batch order and the extraction masks or noise")
    weights: str = key("ema", "`ema` or `raw` export weights", choices=("ema", "raw"))
    cache_dir: str = key("", "fp16 pooled-feature cache folder (empty: in memory, for the run)",
                         roles=("resumable",))
    mixed_precision: str = key("auto", "`auto` (bf16 autocast where native), `no` or `bf16`",
                               choices=("no", "bf16", "auto"))
    device: str = key(
        "auto", "`auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`; `--device` overrides it",
        roles=("resumable",))
    out_dir: str = key("runs/probe", "run folder", roles=("resumable",))
