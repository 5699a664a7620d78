"""Trained segmenters: segment images of any size, save themselves atomically, load back by kind.

Both kinds answer ``predict(name, image [3, H, W]) -> (labels [H, W] int64, uncertainty [H, W]
entropy, member_probs [M, C, H, W])`` and carry ``num_classes`` and ``num_members``. A saved
segmenter is a folder::

    segmenter.yaml        kind, the resolved run config, sizes
    ensemble.safetensors  (pixel_ensemble) the pixel MLPs + feature normalisation
    network.safetensors   (supervised) the fine-tuned network
    forest.safetensors    (filterbank) the random forest's trees as arrays (``filterbank.Forest``)
    export/               the U-Net it needs (config.yaml + weights), absent for an smp network
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from torch import nn

from ..common.config import Config
from ..common.config_io import from_dict, to_dict
from ..common.devices import autocast_dtype, tune_for_fixed_shapes
from ..common.errors import CheckpointError
from ..common.io import atomic_dir, load_tensors, save_tensors
from ..common.tiling import blend_tiles, tile_grid
from ..pretrain.export import WEIGHTS, Export, open_export, write_export
from .features import FeatureExtractor, build_extractor
from .filterbank import Forest, segment_probs
from .finetune import NETWORKS, build_network, predict_probs
from .pixel_heads import PIXEL_HEADS
from .pixel_mlp import PixelEnsemble, combine, entropy

PREDICT_CHUNK = 8192  # pixels whose features are formed at once at inference


class PixelSegmenter:
    """A frozen U-Net, its feature extractor and a trained pixel ensemble (``seg.mode: frozen``)."""

    kind = "pixel_ensemble"

    def __init__(self, cfg: Config, extractor: FeatureExtractor,
                 ensemble: PixelEnsemble, tile_size: int):
        self.cfg, self.extractor, self.ensemble, self.tile_size = cfg, extractor, ensemble, tile_size
        self.num_classes, self.num_members = ensemble.num_classes, ensemble.num_members

    @torch.no_grad()
    def member_probs(self, name: str, image: torch.Tensor) -> torch.Tensor:
        """``image [3, H, W]`` -> ``[M, C, H, W]`` member probabilities, tiles blended with Gaussian
        weights."""
        _, h, w = image.shape
        s, c, m = self.tile_size, self.num_classes, self.num_members
        tiles = tile_grid(h, w, s, self.cfg.seg.overlap)

        def per_tile():
            for tile, blocks in zip(tiles, self.extractor.tile_blocks(name, image, s,
                                                                      tiles, remember=False)):
                blocks = self.extractor.on_device(blocks)
                probs = torch.cat(
                    [self.ensemble.member_probs(self.extractor.pixel_features(blocks, s, chunk))
                     for chunk in torch.arange(s * s, device=self.extractor.device)
                     .split(PREDICT_CHUNK)], dim=1)
                yield tile, probs.reshape(m, s, s, c).permute(0, 3, 1, 2)

        return blend_tiles(h, w, s, per_tile())

    def predict(self, name: str, image: torch.Tensor):
        probs = self.member_probs(name, image)
        how = "mean_prob" if self.cfg.seg.combine == "individual" else self.cfg.seg.combine
        scores = combine(probs.permute(0, 2, 3, 1), how)  # [H, W, C]
        return scores.argmax(-1).cpu(), entropy(probs.mean(0).permute(1, 2, 0)).cpu(), probs.cpu()

    def save(self, folder: Path, export: Export) -> None:
        """Write ``folder`` atomically; the export's files are hard-linked (copied where links are
        impossible)."""
        with atomic_dir(folder) as tmp:
            save_tensors({k: v.contiguous() for k, v in self.ensemble.state_dict().items()},
                      str(tmp / "ensemble.safetensors"))
            _write_meta(tmp, self, feature_dim=self.ensemble.dim, members=self.ensemble.num_members,
                        export_fingerprint=export.fingerprint(), fingerprint_of="whole file")
            (tmp / "export").mkdir()
            for f in ("config.yaml", *WEIGHTS.values()):
                try:
                    os.link(export.folder / f, tmp / "export" / f)
                except OSError:
                    shutil.copy2(export.folder / f, tmp / "export" / f)

    @classmethod
    def load(cls, folder: Path, meta: dict, device: torch.device) -> PixelSegmenter:
        cfg = from_dict(meta["config"])
        export = open_export(folder / "export", cfg.seg.weights)
        recorded = meta.get("export_fingerprint")  # absent in saves from before it was recorded
        # older saves: head and tail
        found = export.fingerprint(whole=meta.get("fingerprint_of") == "whole file")
        if recorded is not None and recorded != found:
            raise CheckpointError(
                f"{folder / 'export'}: holds other U-Net weights than the pixel classifiers were "
                f"trained on (fingerprint {found}, recorded {recorded}); save the segmenter again "
                f"from its run")
        # new images: nothing to reuse, so no cache folder is written where predict happens to run
        extractor = build_extractor(replace(cfg.seg, cache_dir=""), export, device)
        ensemble = PIXEL_HEADS[cfg.seg.head].build(_count(meta, "feature_dim", folder),
                                                   meta["num_classes"],
                                                   _count(meta, "members", folder), 0)
        _load_strict(ensemble, folder / "ensemble.safetensors")
        return cls(cfg, extractor, ensemble.to(extractor.device).eval(), meta["tile_size"])


class SupervisedSegmenter:
    """A network trained end to end (``seg.mode: finetune``); one member."""

    kind = "supervised"
    num_members = 1

    def __init__(self, cfg: Config, model: nn.Module, num_classes: int, tile_size: int):
        self.cfg, self.model, self.num_classes, self.tile_size = cfg, model.eval(), num_classes, tile_size

    def predict(self, name: str, image: torch.Tensor):
        device = next(self.model.parameters()).device
        probs = predict_probs(self.model, image, self.tile_size, self.cfg.seg.overlap,
                              autocast_dtype(self.cfg.seg.mixed_precision, device))
        return probs[0].argmax(0), entropy(probs[0].permute(1, 2, 0)), probs

    def save(self, folder: Path, export: Export | None = None) -> None:
        """Write ``folder`` atomically; a U-Net network also gets ``export/`` (its architecture for
        reloading)."""
        with atomic_dir(folder) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            save_tensors(state, str(tmp / "network.safetensors"))
            _write_meta(tmp, self)
            unet = NETWORKS[self.cfg.seg.arch].unet
            if unet is not None:
                (tmp / "export").mkdir()
                write_export(tmp / "export", self.cfg, unet(self.model), unet(self.model))

    @classmethod
    def load(cls, folder: Path, meta: dict, device: torch.device) -> SupervisedSegmenter:
        cfg = from_dict(meta["config"])
        export = open_export(folder / "export") if NETWORKS[cfg.seg.arch].needs_export else None
        model = build_network(cfg.seg, meta["num_classes"], export)
        _load_strict(model, folder / "network.safetensors")
        return cls(cfg, model.to(device), meta["num_classes"], meta["tile_size"])


class FilterbankSegmenter:
    """Multi-scale filter features + a random forest (``seg.mode: classical``); one member, no
    network."""

    kind = "filterbank"
    num_members = 1

    def __init__(self, cfg: Config, forest: Forest, num_classes: int, tile_size: int):
        self.cfg, self.forest, self.num_classes, self.tile_size = cfg, forest, num_classes, tile_size

    def predict(self, name: str, image: torch.Tensor):
        probs = segment_probs(self.forest, image, self.cfg.seg.filter_sigma_max)
        return probs.argmax(0), entropy(probs.permute(1, 2, 0)), probs[None]

    def save(self, folder: Path, export: Export | None = None) -> None:
        with atomic_dir(folder) as tmp:
            save_tensors(self.forest.tensors(), str(tmp / "forest.safetensors"))
            _write_meta(tmp, self)

    @classmethod
    def load(cls, folder: Path, meta: dict, device: torch.device) -> FilterbankSegmenter:
        path = folder / "forest.safetensors"
        try:
            forest = Forest.from_tensors(load_tensors(path))
        except KeyError as e:
            raise CheckpointError(f"{path}: lacks the forest's {e.args[0]!r} table") from None
        if forest.value.shape[1:] != (meta["num_classes"],):
            raise CheckpointError(
                f"{path}: its leaves hold {forest.value.shape[1:]} class probabilities, "
                f"segmenter.yaml says {meta['num_classes']} classes")
        return cls(from_dict(meta["config"]), forest, meta["num_classes"], meta["tile_size"])


KINDS = {k.kind: k for k in (PixelSegmenter, SupervisedSegmenter, FilterbankSegmenter)}


# segmenter.yaml's layout; a reader refuses a newer one by name instead of misreading it
SEGMENTER_FORMAT = 1


def _write_meta(folder: Path, segmenter, **extra) -> None:
    meta = {"format": SEGMENTER_FORMAT, "kind": segmenter.kind, "config": to_dict(segmenter.cfg),
            **extra, "num_classes": segmenter.num_classes, "tile_size": segmenter.tile_size}
    (folder / "segmenter.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def _count(meta: dict, key: str, folder: Path) -> int:
    """A positive whole number of ``segmenter.yaml``."""
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(
            f"{folder / 'segmenter.yaml'}: {key} must be a positive whole number, got {value!r}")
    return value


def _load_strict(module: nn.Module, path: Path) -> None:
    try:
        module.load_state_dict(load_tensors(path), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: {str(e).splitlines()[0]}") from None


def load_segmenter(run_or_folder: str | Path, device: torch.device):
    """A saved segmenter, from a segmentation run folder or its ``segmenter/``; ``device`` for its
    networks."""
    folder = Path(run_or_folder)
    if (folder / "segmenter").is_dir():
        folder = folder / "segmenter"
    meta_path = folder / "segmenter.yaml"
    if not meta_path.is_file():
        raise CheckpointError(
            f"{meta_path}: not found (pass a segmentation run folder or its segmenter/)")
    try:
        meta = yaml.safe_load(meta_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not readable as the YAML a segmenter writes "
                              f"({getattr(e, 'problem', None) or type(e).__name__})") from None
    # saves without the key are format 1
    if isinstance(meta, dict) and meta.get("format", 1) != SEGMENTER_FORMAT:
        raise CheckpointError(
            f"{meta_path}: segmenter format {meta.get('format')!r}, written by another version of "
            f"mdm; this one reads format {SEGMENTER_FORMAT}")
    kind = KINDS.get(meta.get("kind") if isinstance(meta, dict) else None)
    if kind is None:
        raise CheckpointError(f"{meta_path}: unknown segmenter kind (known: {', '.join(KINDS)})")
    for key in ("num_classes", "tile_size"):
        _count(meta, key, folder)
    tune_for_fixed_shapes(device)  # its tiles all have one size
    return kind.load(folder, meta, device)
