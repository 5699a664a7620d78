"""The segmentation stage: frozen U-Net features -> pixel MLP ensemble -> predictions, metrics and a saved segmenter.

``run_segmentation(cfg, export_dir)`` trains on the labeled subset and evaluates on the test split;
``Segmenter.load(run_dir).predict(image)`` segments new images of any size.

Run folder (``seg.out_dir``)::

    config.yaml           the resolved config (architecture taken from the export)
    label_subset.json     the labeled training images drawn for (label_fraction, data.seed)
    metrics.json          dice / iou (binary tasks), miou and per-class IoU, object metrics, per group
    per_image.csv         one row per test image
    predictions/  overlays/  uncertainty/     PNGs per test image
    segmenter/            ensemble.safetensors + segmenter.yaml + export/ (the U-Net it needs)
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import metrics, rng
from .checkpoint import WEIGHTS, CheckpointError, load_export, replace_dir
from .config import Config, dump, from_dict, to_dict
from .data.labeled import IGNORE_INDEX, LabeledImage, label_subset, load_split
from .diffusion import build_objective
from .features import FeatureExtractor, Tile, blend_tiles, file_fingerprint, pad_to_tile, tile_grid
from .pixel_classifier import PixelEnsemble, combine, entropy, fit_ensemble

STREAM_VAL = 21
PREDICT_CHUNK = 8192  # pixels whose features are formed at once at inference


def validation_mask(name: str, height: int, width: int, fraction: float, seed: int, block: int = 8) -> torch.Tensor:
    """``[H, W]`` bool: held-out validation pixels of a labeled image, as whole ``block x block`` squares drawn with
    probability ``fraction`` (seeded by image name), so that validation pixels are not all next to training ones."""
    if fraction <= 0:
        return torch.zeros(height, width, dtype=torch.bool)
    gh, gw = math.ceil(height / block), math.ceil(width / block)
    key = torch.tensor([rng.make_key(seed, zlib.crc32(name.encode()))], dtype=torch.int64)
    grid = rng.uniform(key, STREAM_VAL, gh * gw).reshape(gh, gw) < fraction
    return grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[:height, :width]


def drop_small_classes(label: torch.Tensor, min_pixels: int) -> torch.Tensor:
    """Set the pixels of classes with fewer than ``min_pixels`` pixels in this image to the ignore label."""
    if min_pixels <= 0:
        return label
    ids, counts = label.unique(return_counts=True)
    label = label.clone()
    for i, c in zip(ids.tolist(), counts.tolist()):
        if i != IGNORE_INDEX and c < min_pixels:
            label[label == i] = IGNORE_INDEX
    return label


def split_labels(im: LabeledImage, tile: int, val_fraction: float, seed: int,
                 min_class_pixels: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation labels ``[H', W']`` of a labeled image, padded like the image to at least ``tile``
    (padding is ignored): validation pixels (``validation_mask``) are ignored in the first, all others in the
    second."""
    h, w = im.label.shape
    lab = drop_small_classes(im.label, min_class_pixels)
    val = validation_mask(im.name, h, w, val_fraction, seed)
    out = []
    for labels in (torch.where(val, IGNORE_INDEX, lab), torch.where(val, lab, IGNORE_INDEX)):
        padded = pad_to_tile(labels.float(), tile).long()
        padded[h:, :] = IGNORE_INDEX
        padded[:, w:] = IGNORE_INDEX
        out.append(padded)
    return out[0], out[1]


@dataclass
class TrainTile:
    image_index: int
    tile: Tile


class PixelStream:
    """Streams ``(features [N, d], labels [N])`` pixel batches from the training tiles, tile by tile."""

    def __init__(self, extractor: FeatureExtractor, images: list[LabeledImage], tile_size: int, overlap: float,
                 val_fraction: float, seed: int, min_class_pixels: int, batch_pixels: int, pixels_per_tile: int):
        self.extractor, self.images, self.tile_size = extractor, images, tile_size
        self.batch_pixels, self.pixels_per_tile, self.seed = batch_pixels, pixels_per_tile, seed
        self.tiles: list[TrainTile] = []
        self.train_labels, self.val_labels = [], []
        for k, im in enumerate(images):
            train, val = split_labels(im, tile_size, val_fraction, seed, min_class_pixels)
            self.train_labels.append(train)
            self.val_labels.append(val)
            for tile in tile_grid(*im.label.shape, tile_size, overlap):
                self.tiles.append(TrainTile(k, tile))

    def tile_features(self, t: TrainTile, index: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` features of the tile's flat pixel indices ``index``."""
        im = self.images[t.image_index]
        blocks = self.extractor.tile_blocks(im.name, im.image, self.tile_size, [t.tile])[0]
        return self.extractor.pixel_features(blocks, self.tile_size, index)

    def _labels(self, t: TrainTile, which: list[torch.Tensor]) -> torch.Tensor:
        s = self.tile_size
        return which[t.image_index][t.tile.top:t.tile.top + s, t.tile.left:t.tile.left + s].reshape(-1)

    def prefetch(self, progress: bool = True) -> None:
        """Extract (and cache) every training tile once."""
        for t in tqdm(self.tiles, desc="features", disable=None if progress else True, leave=False):
            im = self.images[t.image_index]
            self.extractor.tile_blocks(im.name, im.image, self.tile_size, [t.tile])

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std over the labeled training pixels (accumulated tile by tile)."""
        d = self.extractor.feature_dim
        s1, s2, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0
        for t in self.tiles:
            keep = (self._labels(t, self.train_labels) != IGNORE_INDEX).nonzero().squeeze(1)
            if keep.numel() > self.pixels_per_tile > 0:
                keep = keep[torch.randperm(keep.numel(), generator=torch.Generator().manual_seed(0))][
                    :self.pixels_per_tile]
            x = self.tile_features(t, keep).double()
            s1 += x.sum(0)
            s2 += (x * x).sum(0)
            n += x.shape[0]
        mean = s1 / max(n, 1)
        std = (s2 / max(n, 1) - mean ** 2).clamp_min(0).sqrt()
        return mean.float(), std.float().clamp_min(1e-4)

    def _batches(self, which, order, cap, epoch):
        buf_x, buf_y, size = [], [], 0
        for i in order:
            t = self.tiles[i]
            y = self._labels(t, which)
            keep = (y != IGNORE_INDEX).nonzero().squeeze(1)
            if keep.numel() == 0:
                continue
            if cap and keep.numel() > cap:
                g = torch.Generator().manual_seed(rng.make_key(self.seed, epoch, i))
                keep = keep[torch.randperm(keep.numel(), generator=g)[:cap]]
            buf_x.append(self.tile_features(t, keep))
            buf_y.append(y[keep])
            size += keep.numel()
            if size >= self.batch_pixels:
                yield torch.cat(buf_x), torch.cat(buf_y)
                buf_x, buf_y, size = [], [], 0
        if buf_x:
            yield torch.cat(buf_x), torch.cat(buf_y)

    def train_batches(self, epoch: int):
        g = torch.Generator().manual_seed(rng.make_key(self.seed, epoch, 0x7A1))
        order = torch.randperm(len(self.tiles), generator=g).tolist()
        return self._batches(self.train_labels, order, self.pixels_per_tile, epoch)

    def val_batches(self):
        return self._batches(self.val_labels, range(len(self.tiles)), 0, 0)


class Segmenter:
    """A frozen U-Net, its feature extractor and a trained pixel ensemble: segments images of any size."""

    def __init__(self, cfg: Config, extractor: FeatureExtractor, ensemble: PixelEnsemble, tile_size: int):
        self.cfg, self.extractor, self.ensemble, self.tile_size = cfg, extractor, ensemble, tile_size
        self.num_classes, self.num_members = ensemble.num_classes, len(ensemble.members)

    @torch.no_grad()
    def member_probs(self, name: str, image: torch.Tensor) -> torch.Tensor:
        """``image [3, H, W]`` -> ``[M, C, H, W]`` member probabilities, tiles blended with Gaussian weights."""
        _, h, w = image.shape
        s, c, m = self.tile_size, self.num_classes, self.num_members
        tiles = tile_grid(h, w, s, self.cfg.seg.overlap)

        def per_tile():
            for tile, blocks in zip(tiles, self.extractor.tile_blocks(name, image, s, tiles)):
                probs = torch.cat([self.ensemble.member_probs(self.extractor.pixel_features(blocks, s, chunk))
                                   for chunk in torch.arange(s * s).split(PREDICT_CHUNK)], dim=1)
                yield tile, probs.reshape(m, s, s, c).permute(0, 3, 1, 2)

        return blend_tiles(h, w, s, per_tile())

    def predict(self, name: str, image: torch.Tensor):
        """``(labels [H, W] int64, uncertainty [H, W] entropy, member_probs [M, C, H, W])``."""
        probs = self.member_probs(name, image)
        how = "mean_prob" if self.cfg.seg.combine == "individual" else self.cfg.seg.combine
        scores = combine(probs.permute(0, 2, 3, 1), how)  # [H, W, C]
        return scores.argmax(-1), entropy(probs.mean(0).permute(1, 2, 0)), probs

    def save(self, folder: Path, export_dir: Path) -> None:
        tmp = folder.with_name(f".{folder.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in self.ensemble.state_dict().items()}, str(tmp / "ensemble.safetensors"))
        meta = {"kind": "pixel_ensemble", "config": to_dict(self.cfg), "feature_dim": self.ensemble.dim,
                "num_classes": self.ensemble.num_classes, "members": len(self.ensemble.members),
                "tile_size": self.tile_size}
        (tmp / "segmenter.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        (tmp / "export").mkdir()
        for f in ("config.yaml", *WEIGHTS.values()):
            src = export_dir / f
            try:
                os.link(src, tmp / "export" / f)
            except OSError:
                shutil.copy2(src, tmp / "export" / f)
        replace_dir(tmp, folder)

    @classmethod
    def load(cls, run_or_folder: str | Path, device: str = "cpu") -> Segmenter:
        folder = Path(run_or_folder)
        if (folder / "segmenter").is_dir():
            folder = folder / "segmenter"
        meta_path = folder / "segmenter.yaml"
        if not meta_path.is_file():
            raise CheckpointError(f"{meta_path}: not found (pass a segmentation run folder or its segmenter/)")
        meta = yaml.safe_load(meta_path.read_text())
        if meta.get("kind") == "supervised":
            from .finetune import SupervisedSegmenter

            return SupervisedSegmenter.load(folder, meta)
        cfg = from_dict(meta["config"])
        extractor, _ = build_extractor(cfg, folder / "export", device)
        ensemble = PixelEnsemble(meta["feature_dim"], meta["num_classes"], meta["members"])
        state = load_file(str(folder / "ensemble.safetensors"))
        try:
            ensemble.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{folder / 'ensemble.safetensors'}: {str(e).splitlines()[0]}") from None
        return cls(cfg, extractor, ensemble.eval(), meta["tile_size"])


def build_extractor(cfg: Config, export_dir: Path, device: str = "cpu"):
    """Load the export strictly and wrap it in a ``FeatureExtractor``; returns ``(extractor, export config)``."""
    model, pre_cfg = load_export(export_dir, weights=cfg.seg.weights)
    fingerprint = file_fingerprint(export_dir / WEIGHTS[cfg.seg.weights])
    extractor = FeatureExtractor(model, build_objective(pre_cfg.diffusion), cfg.seg.blocks, cfg.seg.timesteps,
                                 seed=cfg.seg.seed, cache_dir=cfg.seg.cache_dir or None, fingerprint=fingerprint,
                                 device=device)
    return extractor, pre_cfg


@dataclass
class SegData:
    """The splits of a segmentation run: the labeled subset (loaded) and the lazy test split."""

    train_images: list[LabeledImage]
    test: object
    class_names: list[str]
    num_classes: int


def prepare_run(cfg: Config) -> SegData:
    """Open the splits, draw the labeled subset (``data.label_fraction``, ``data.seed``), read every image once (a
    bad file stops the run before anything is written), then write ``config.yaml`` and ``label_subset.json``."""
    dc = cfg.data
    kw = dict(synthetic_seed=dc.synthetic_seed, synthetic_size=dc.synthetic_image_size)
    if dc.num_classes:
        kw["num_classes"] = dc.num_classes
    root = dc.root[0] if dc.root else None
    train_ds, test_ds = load_split(dc.source, root, "train", **kw), load_split(dc.source, root, "test", **kw)
    chosen = label_subset(len(train_ds), dc.label_fraction, dc.seed)
    subset = train_ds.subset(chosen)
    train_images = [subset[i] for i in range(len(subset))]
    for i in range(len(test_ds)):
        test_ds[i]
    out = Path(cfg.seg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")
    (out / "label_subset.json").write_text(json.dumps(
        {"label_fraction": dc.label_fraction, "seed": dc.seed, "indices": chosen,
         "names": [train_ds.names[i] for i in chosen]}, indent=1))
    return SegData(train_images, test_ds, train_ds.class_names, train_ds.num_classes)


def run_segmentation(cfg: Config, export_dir: str | Path, progress: bool = True) -> dict:
    """Train the pixel ensemble on the labeled subset, evaluate on the test split, save everything; returns the
    metrics dict (also written to ``metrics.json``)."""
    export_dir = Path(export_dir)
    out = Path(cfg.seg.out_dir)
    extractor, pre_cfg = build_extractor(cfg, export_dir)
    cfg.model, cfg.diffusion = pre_cfg.model, pre_cfg.diffusion  # the architecture comes from the export
    tile_size = cfg.seg.tile_size or pre_cfg.data.crop_size
    extractor.model.check_input_size(tile_size, tile_size)
    data = prepare_run(cfg)
    train_images, dc = data.train_images, cfg.data

    stream = PixelStream(extractor, train_images, tile_size, cfg.seg.overlap, dc.val_fraction, cfg.seg.seed,
                         cfg.seg.min_class_pixels, cfg.seg.batch_pixels, cfg.seg.pixels_per_tile)
    stream.prefetch(progress)
    ensemble = PixelEnsemble(extractor.feature_dim, data.num_classes, cfg.seg.ensemble_size, cfg.seg.seed)
    if cfg.seg.normalize:
        ensemble.mean, ensemble.std = stream.feature_stats()
    bar = tqdm(total=cfg.seg.max_epochs, desc="pixel MLPs", disable=None if progress else True, leave=False)

    def tick(epoch, val, active):
        bar.update(1)
        bar.set_postfix(val_loss=f"{min(val):.4f}", active=sum(active))

    history = fit_ensemble(ensemble, stream.train_batches, stream.val_batches, cfg.seg.max_epochs,
                           cfg.seg.patience, cfg.seg.lr, progress=tick)
    bar.close()
    segmenter = Segmenter(cfg, extractor, ensemble.eval(), tile_size)
    result = evaluate(segmenter, data.test, out, data.class_names, progress)
    result["members"] = history
    result["labeled_images"] = len(train_images)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    segmenter.save(out / "segmenter", export_dir)
    return result


def evaluate(segmenter: Segmenter, test_ds, out: Path, class_names: list[str], progress: bool = True) -> dict:
    """Segment every test image; write PNGs and ``per_image.csv``; return the pooled metrics."""
    c, m = segmenter.num_classes, segmenter.num_members
    binary = c == 2
    cm = np.zeros((c, c), dtype=np.int64)
    member_dice: list[list[float]] = [[] for _ in range(m)]
    rows = []
    for i in tqdm(range(len(test_ds)), desc="test", disable=None if progress else True, leave=False):
        item = test_ds[i]
        labels, unc, probs = segmenter.predict(item.name, item.image)
        cm += metrics.confusion_matrix(labels, item.label, c, IGNORE_INDEX)
        row = {"name": item.name, "group": item.group}
        if binary:
            valid = item.label != IGNORE_INDEX
            gt = (item.label == 1) & valid
            row["dice"], row["iou"] = metrics.binary_dice_iou(labels.eq(1) & valid, gt)
            for k in range(m):
                member_dice[k].append(metrics.binary_dice_iou(probs[k].argmax(0).eq(1) & valid, gt)[0])
            if item.instances is not None:
                pred_inst = metrics.connected_components(labels.eq(1).numpy())
                gt_inst = item.instances.numpy()
                row["object_f1"] = metrics.object_f1(pred_inst, gt_inst)["f1"]
                row["object_dice"] = metrics.object_dice(pred_inst, gt_inst)
                row["object_hausdorff"] = metrics.object_hausdorff(pred_inst, gt_inst)
                row["aji"] = metrics.aji(pred_inst, gt_inst)
        rows.append(row)
        save_prediction_images(out, item.name, item.image, labels, unc, c)
    miou, per_class = metrics.miou_from_confusion(cm)
    result: dict = {"num_test_images": len(rows), "miou": miou,
                    "per_class_iou": {n: (None if math.isnan(v) else float(v)) for n, v in zip(class_names, per_class)}}
    if binary:
        result.update(_pool(rows, ["dice", "iou", "object_f1", "object_dice", "object_hausdorff", "aji"]))
        per_member = [float(np.mean(d)) for d in member_dice]
        result["member_dice_mean"], result["member_dice_std"] = float(np.mean(per_member)), float(np.std(per_member))
        result["member_dice"] = per_member
        result["iou_from_dice"] = metrics.dice_to_iou(result["dice"])
        groups = sorted({r["group"] for r in rows if r["group"]})
        if groups:
            result["groups"] = {g: _pool([r for r in rows if r["group"] == g],
                                         ["dice", "iou", "object_f1", "object_dice", "object_hausdorff", "aji"])
                                for g in groups}
    with (out / "per_image.csv").open("w", newline="") as f:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return result


def _pool(rows: list[dict], keys: list[str]) -> dict:
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k] = float(np.mean(vals))
    return out


PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0]], dtype=np.uint8)


def colorize(labels: np.ndarray) -> np.ndarray:
    """``[H, W]`` class ids -> ``[H, W, 3]`` uint8 colours (a fixed palette, cycled)."""
    return PALETTE[labels % len(PALETTE)]


def save_prediction_images(out: Path, name: str, image: torch.Tensor, labels: torch.Tensor,
                           uncertainty: torch.Tensor, num_classes: int) -> None:
    """``predictions/<name>.png`` (class ids), ``overlays/<name>.png`` and ``uncertainty/<name>.png``."""
    for sub in ("predictions", "overlays", "uncertainty"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    lab = labels.numpy().astype(np.uint8)
    Image.fromarray(lab).save(out / "predictions" / f"{name}.png")
    rgb = ((image.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    overlay = np.where(lab[..., None] > 0, (0.55 * rgb + 0.45 * colorize(lab)).astype(np.uint8), rgb)
    Image.fromarray(overlay).save(out / "overlays" / f"{name}.png")
    unc = (uncertainty / math.log(max(num_classes, 2))).clamp(0, 1).numpy()
    Image.fromarray((unc * 255).astype(np.uint8)).save(out / "uncertainty" / f"{name}.png")
