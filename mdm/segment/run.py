"""One segmentation run: train on the labeled subset, evaluate on the test split, save everything.

Every input is read and checked before anything is written; the run folder is then built under a
temporary name and renamed into place when it is complete (``metrics.json``, written last, marks a
finished run), so a killed run leaves the folder as it was before.

``run_segmentation(seg, data, export, out)`` takes the ``SegConfig`` and ``DataConfig`` it uses and
the opened export (``None`` for an smp network from scratch), changes none of them, and returns the
metrics with what it decided (``tile_size``, ``labeled_images``). ``seg.mode`` picks the path:
``frozen`` (export features + pixel MLP ensemble), ``finetune`` (a whole network trained end to end,
see ``finetune``) or ``classical`` (filter features + a random forest on every labeled image, see
``filterbank``; nothing validates, so validation images train too).

Run folder::

    config.yaml           the resolved config: the export's model and diffusion, this run's data and seg
    label_subset.json     the labeled training images drawn for (label_fraction, data.seed)
    metrics.json          dice / iou (binary tasks), miou and per-class IoU, object metrics, per group
    block_selection.json / .png   (seg.blocks or seg.timesteps auto) the probes' validation losses and the choice
    per_image.csv         one row per test image
    predictions/  overlays/  uncertainty/     PNGs per test image
    segmenter/            what ``load_segmenter`` reads back to segment new images
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..common import faults
from ..common.config import Config, DataConfig, SegConfig
from ..common.config_io import dump
from ..common.devices import tune_for_fixed_shapes
from ..common.errors import ConfigError, DataError
from ..common.io import atomic_dir
from ..common.labels import IGNORE_INDEX
from ..common.pictures import PictureIndex, picture, warn_if_trained_on
from ..nn.unet import num_decoder_blocks
from ..pretrain.export import Export
from ..stage2.run_folder import check_replaceable, finish, save_label_subset, save_selection
from .datasets import LabeledDataset, LabeledImage, load_split
from .evaluate import evaluate
from .features import build_extractor
from .filterbank import fit_forest
from .finetune import NETWORKS, build_network, train_supervised
from .pixel_heads import PIXEL_HEADS
from .pixel_stream import PixelStream
from .segmenter import FilterbankSegmenter, PixelSegmenter, SupervisedSegmenter
from .select import candidates, select_parts
from .splits import label_subset, validation_roles


@dataclass
class SegData:
    """The splits of a segmentation run: the labeled subset (loaded) and the lazy test split."""

    train_images: list[LabeledImage]
    test: LabeledDataset
    class_names: list[str]
    num_classes: int
    label_indices: list[int]  # into the train split, sorted
    label_names: list[str]
    roles: dict[str, str]  # each labeled image's part in early stopping (splits.validation_roles)


@dataclass
class Fitted:
    """What a stage-2 path trained: the segmenter, each member's early-stopping record
    (``{"best_epoch", "best_val_loss", "epochs"}``) and, where blocks or timesteps were chosen on
    validation, the choice."""

    segmenter: PixelSegmenter | SupervisedSegmenter
    members: list[dict]
    selection: dict | None = None


def open_split(data: DataConfig, split: str) -> LabeledDataset:
    """One split (``train`` / ``test``) of ``data``'s labeled source of masks."""
    kw = dict(synthetic_seed=data.synthetic_seed, synthetic_size=data.synthetic_image_size)
    if data.num_classes:
        kw["num_classes"] = data.num_classes
    return load_split(data.source, data.root[0] if data.root else None, split, **kw)


def open_splits(data: DataConfig) -> SegData:
    """Open the splits, draw the labeled subset (``data.label_fraction``, ``data.seed``) and read
    every image once, so that a bad file stops the run before anything is written."""
    train_ds, test_ds = open_split(data, "train"), open_split(data, "test")
    chosen = label_subset(len(train_ds), data.label_fraction, data.seed)
    subset = train_ds.subset(chosen)
    train_images = [subset[i] for i in range(len(subset))]
    check_classes_occur(train_images, train_ds.num_classes, train_ds.class_names)
    check_test_split(test_ds, train_images)
    roles = validation_roles(train_images, data.val_fraction, data.seed, data.val_split)
    return SegData(train_images, test_ds, train_ds.class_names, train_ds.num_classes, chosen,
                   subset.names, roles)


def check_test_split(test_ds: LabeledDataset, train_images: list[LabeledImage]) -> None:
    """Read every test image once (a bad file stops the run before anything is written); stop when
    the masks hold no class but the first while some pixels are ignored (binary masks saved as 0/255
    would score 0), and warn about a test image that is the same picture as a labeled training image
    (``common.pictures``: it would be scored on what the classifiers saw)."""
    trained = PictureIndex((im.name, im.image) for im in train_images)
    foreground = ignored = total = 0
    for i in range(len(test_ds)):
        item = test_ds[i]
        label = item.label
        warn_if_trained_on(trained, item.name, picture(item.image), "segmentation")
        ignored += int((label == IGNORE_INDEX).sum())
        foreground += int(((label != IGNORE_INDEX) & (label > 0)).sum())
        total += label.numel()
    if ignored and not foreground:
        raise DataError(f"the {len(test_ds)} test mask(s) hold no pixel of any class but {test_ds.class_names[0]!r}, "
                        f"and {ignored / total:.0%} of their pixels are {IGNORE_INDEX} (= ignore): were the masks "
                        f"saved as 0/255 instead of class ids 0/1? Every score would be 0")


def check_classes_occur(images: list[LabeledImage], num_classes: int,
                        class_names: list[str]) -> None:
    """Stop with a ``DataError`` when the labeled images have no usable pixel or fewer than two
    classes, and warn about classes they never show; masks saved as 0/255 (255 = ignore) are called
    out."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    ignored = total = 0
    for im in images:
        label = im.label.flatten()
        keep = label != IGNORE_INDEX
        counts += torch.bincount(label[keep], minlength=num_classes)
        ignored, total = ignored + int((~keep).sum()), total + label.numel()
    which = f"the {len(images)} labeled image(s) ({', '.join(im.name for im in images[:4])}" + \
        (", ...)" if len(images) > 4 else ")")
    hint = (f"; {ignored / total:.0%} of their pixels are {IGNORE_INDEX} (= ignore): were the masks saved as 0/255 "
            f"instead of class ids 0/1?" if ignored > 0.2 * total else "")
    present = [class_names[c] for c in range(num_classes) if counts[c] > 0]
    if not present:
        raise DataError(f"{which} have no usable pixel: every pixel is {IGNORE_INDEX} (= ignore)")
    if len(present) < 2:
        raise DataError(
            f"only class {present[0]!r} occurs in {which}: there is nothing to tell apart{hint}")
    missing = [class_names[c] for c in range(num_classes) if counts[c] == 0]
    if missing:
        warnings.warn(f"class(es) {', '.join(map(repr, missing))} never occur in {which}: the segmenter cannot learn "
                      f"them{hint}", stacklevel=2)


def _frozen(seg: SegConfig, data: DataConfig, export: Export, splits: SegData, tile: int,
            cfg: Config, device):
    """Load the U-Net for features (every candidate block and timestep when they are chosen on
    validation; the chosen ones are then taken from the same U-Net, loaded once); returns
    ``fit(progress) -> Fitted``."""
    auto = seg.blocks == "auto" or seg.timesteps == "auto"
    if auto:
        m = export.config.model
        blocks, timesteps = candidates(seg, num_decoder_blocks(m.channel_mult, m.num_res_blocks))
        offered = "seg.sweep_blocks" if seg.blocks == "auto" and seg.sweep_blocks else "seg.blocks"
        extractor = build_extractor(replace(seg, blocks=blocks, timesteps=timesteps), export,
                                    device, offered)
    else:
        extractor = build_extractor(seg, export, device)
    extractor.model.check_input_size(tile, tile)

    def fit(progress: bool):
        stream = PixelStream(extractor, splits.train_images, tile, seg.overlap, data.val_fraction,
                             seg.seed, seg.min_class_pixels, seg.batch_pixels, seg.pixels_per_tile,
                             splits.roles,
                             seg.mask_draws if seg.extract_masks == "per_epoch" else None,
                             seg.balanced_pixels)
        stream.prefetch(progress)
        selection, chosen_cfg = None, cfg
        if auto:
            selection = select_parts(stream, splits.num_classes, seg, progress)
            t, blocks = selection["timestep"], selection["blocks"]
            stream = stream.restricted([(t, b) for b in blocks])
            # saved with the segmenter
            chosen_cfg = replace(cfg, seg=replace(seg, blocks=blocks, timesteps=[t]))
        head = PIXEL_HEADS[seg.head]
        ensemble = head.build(stream.feature_dim, splits.num_classes, seg.ensemble_size, seg.seed)
        if seg.normalize == "zscore":
            ensemble.mean, ensemble.std = stream.feature_stats()
        ensemble.to(extractor.device)
        bar = tqdm(total=seg.max_epochs, desc=f"{seg.head} ensemble",
                   disable=None if progress else True, leave=False)

        def tick(epoch, val, active):
            bar.update(1)
            bar.set_postfix(val_loss=f"{min(val):.4f}", active=sum(active))

        history = head.fit(ensemble, stream.train_batches, stream.val_batches, seg.max_epochs,
                           seg.patience, seg.lr, progress=tick, min_epochs=seg.min_epochs)
        bar.close()
        final = extractor.narrowed(chosen_cfg.seg.blocks,
                                   chosen_cfg.seg.timesteps) if auto else extractor
        return Fitted(PixelSegmenter(chosen_cfg, final, ensemble.eval(), tile), history, selection)

    return fit


def _finetune(seg: SegConfig, data: DataConfig, export: Export | None, splits: SegData, tile: int,
              cfg: Config, device):
    """Build the network to fine-tune; returns ``fit(progress) -> Fitted``."""
    model = build_network(seg, splits.num_classes, export).to(device)
    NETWORKS[seg.arch].check_tile(model, tile)

    def fit(progress: bool):
        history = train_supervised(model, splits.train_images, seg, data.val_fraction, tile,
                                   splits.roles, progress)
        return Fitted(SupervisedSegmenter(cfg, model, splits.num_classes, tile), [history])

    return fit


def _classical(seg: SegConfig, data: DataConfig, export: Export | None, splits: SegData, tile: int,
               cfg: Config, device):
    """The filterbank baseline on every labeled image (a forest has no epochs to stop); returns
    ``fit(progress)``."""
    def fit(progress: bool):
        forest = fit_forest(splits.train_images, splits.num_classes, seg.filter_sigma_max,
                            seg.forest_trees, seg.forest_pixels, seg.seed,
                            threads=torch.get_num_threads())
        return Fitted(FilterbankSegmenter(cfg, forest, splits.num_classes, tile), [])

    return fit


PATHS = {"frozen": _frozen, "finetune": _finetune, "classical": _classical}  # seg.mode -> its path


def needs_export(seg: SegConfig) -> bool:
    """Whether ``seg`` reads a pretraining export (frozen features, or a fine-tuned network built on
    its U-Net)."""
    return seg.mode == "frozen" or (seg.mode == "finetune" and NETWORKS[seg.arch].needs_export)


def run_segmentation(seg: SegConfig, data: DataConfig, export: Export | None, out: str | Path, *,
                     device: torch.device, progress: bool = True) -> dict:
    """Train, evaluate and save one segmentation run into ``out``; returns the metrics (also in
    ``metrics.json``).

    ``export``: the pretraining export (its U-Net gives the features, or is fine-tuned); ``None``
    only for ``seg.mode: finetune`` with a network that needs none (``seg.arch: smp``). ``device``:
    where the networks run.
    """
    if export is None and needs_export(seg):
        raise ConfigError(
            f"--checkpoint is required (a pretraining export folder) for seg.mode={seg.mode}"
            + (f" with seg.arch={seg.arch}" if seg.mode == "finetune" else ""))
    started = time.perf_counter()
    tune_for_fixed_shapes(device)
    out = Path(out)
    tile = seg.tile_size or (export.config.data.crop_size if export is not None else data.crop_size)
    seg = replace(seg, tile_size=tile, out_dir=str(out))
    cfg = replace(export.config if export is not None else Config(), data=data, seg=seg)
    check_replaceable(out, RUN_FILES, "a segmentation run")
    splits = open_splits(data)
    fit = PATHS[seg.mode](seg, data, export, splits, tile, cfg, device)
    # the whole run becomes visible at once; a killed run leaves the old one as it was
    with atomic_dir(out) as tmp:
        save_label_subset(tmp, {
            "label_fraction": data.label_fraction, "seed": data.seed,
            "indices": splits.label_indices,
            "names": splits.label_names, "validation_split": data.val_split,
            "validation": sorted(n for n, r in splits.roles.items() if r == "validation"),
            "validation_pixels_of": sorted(n for n, r in splits.roles.items() if r == "pixels")})
        fitted = fit(progress)
        segmenter = fitted.segmenter
        # what it decided: the tile size, blocks chosen on validation
        dump(segmenter.cfg, tmp / "config.yaml")
        if fitted.selection is not None:
            save_selection(tmp, fitted.selection)
        result = evaluate(segmenter, splits.test, tmp, splits.class_names, progress)
        result.update(members=fitted.members,
                      labeled_images=len(splits.train_images), tile_size=tile)
        if fitted.selection is not None:
            result["selection"] = fitted.selection
        segmenter.save(tmp / "segmenter", export)  # (a classical segmenter needs no export)
        faults.reached("segmenter saved")
        return finish(tmp, result, started)


RUN_FILES = {"config.yaml", "label_subset.json", "metrics.json", "per_image.csv", "predictions",
             "overlays", "uncertainty", "segmenter", "block_selection.json", "block_selection.png"}


