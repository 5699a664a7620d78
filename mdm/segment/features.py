"""Frozen U-Net features for pixel classifiers: the pixel readout of blocks (decoder blocks by
number, the middle and encoder blocks by name: ``stage2.taps``) of the shared frozen U-Net
(``stage2.frozen``: hooks, keyed corruption, autocast) and an on-disk fp16 cache.

Conventions: an image is ``[3, H, W]`` in [-1, 1] of any size, cut into tiles
(``mdm.common.tiling``). For each tile and each extraction timestep, the tile is corrupted by the
pretraining objective (MDM: mask ratio t / T; DDPM: noise level t) with a **seeded** mask or noise
(the key is a function of seed, image name, tile position and t, so the same image always gives the
same features), the U-Net runs once, and the outputs of the chosen blocks are kept at their native
resolution in fp16. Pixel features are only formed for the pixels needed, when needed:
each block sampled bilinearly at those pixels (as if upsampled to the tile size) and concatenated,
giving ``[N, D]`` with ``D = len(timesteps) * sum(block channels)``. Nothing holds the features of
all pixels of all images at once.

Mask draws: draw 0 is the tile's one fixed mask; ``seg.extract_masks: per_epoch`` gives training
tiles another keyed draw each epoch (``draw`` > 0), the reference's fresh mask per step made
repeatable. Normalisation ``seg.normalize: l2_image`` (the reference's) divides a tile's features by
the L2 norm of its whole feature tensor (every pixel of the upsampled parts): each block's squared
norm at tile size is kept beside its output (``sq_...``), so the norm of any set of parts is known
without forming every pixel's features. ``rms_image`` divides by the tile's root mean square
instead: the same direction, entries of unit scale (``l2_image`` leaves them about
``1 / sqrt(S^2 D)``, which the MLP's N(0, 0.02) weights and BatchNorm's eps learn from far more
slowly).
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from ..common import rng
from ..common.config import SegConfig
from ..common.devices import autocast_dtype
from ..common.rng import Tag
from ..common.tensor_cache import TensorCache
from ..common.tiling import Tile, pad_to_tile
from ..pretrain.export import Export
from ..pretrain.objectives import build_objective
from ..stage2.frozen import FrozenUNet
from ..stage2.taps import resolve_seg_blocks, tap_name

EXTRACT_BATCH = 8  # tiles per U-Net forward pass
CACHE_FORMAT = 2  # in every cache key: entries of format 1 lack the squared norms


class FeatureExtractor:
    """Block features of a frozen U-Net (decoder blocks by number, others by name).

    Args:
        model: a ``UNetModel`` (frozen here: eval mode, no gradients).
        objective: the pretraining objective, used to corrupt the input (``corrupt(x0, t, keys)``).
        blocks: decoder block numbers (negatives count from the end) or tap names (``mid``, ``e<i>``,
            ``d<i>``; ``stage2.taps``).
        timesteps: extraction timesteps (MDM: mask ratio t / T; DDPM: noise level).
        seed: seeds the extraction masks / noise.
        cache_dir: where per-tile block outputs are cached as fp16 safetensors (None: in memory, for this object).
        fingerprint: identifies the weights in cache keys (e.g. ``Export.fingerprint()``).
        device: where the U-Net runs (default: where its weights are).
        dtype: autocast precision of the U-Net (None: fp32).
        tile_norm: ``l2_image`` divides each tile's pixel features by the L2 norm of the tile's whole feature tensor,
            ``rms_image`` by its root mean square; anything else leaves them as they are.
        blocks_key: the config key a block that does not exist is reported under.
    """

    def __init__(self, model, objective, blocks: list[int | str], timesteps: list[int],
                 seed: int = 0,
                 cache_dir: str | Path | None = None, fingerprint: str = "",
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 tile_norm: str = "none", context: str = "none", blocks_key: str = "seg.blocks"):
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.seed, self.device, self.dtype, self.tile_norm, self.context = seed, device, dtype, tile_norm, context
        self.blocks = resolve_seg_blocks(list(blocks), model, blocks_key)
        self.timesteps = list(timesteps)
        self.unet = FrozenUNet(model, objective, [tap_name(b) for b in self.blocks], device, dtype)
        self.model = self.unet.model
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.fingerprint = fingerprint
        self.cache = TensorCache(self.cache_dir)  # in memory when there is no cache folder
        self._settings = dict(seed=seed, cache_dir=cache_dir, fingerprint=fingerprint,
                              device=device, dtype=dtype, tile_norm=tile_norm, context=context)

    def narrowed(self, blocks: list[int | str], timesteps: list[int]) -> FeatureExtractor:
        """An extractor of ``blocks`` at ``timesteps`` on the same U-Net (no second load from the
        export), with this one's seed, cache, precision and normalisation; this one's hooks are
        removed, so use it no more."""
        return FeatureExtractor(self.unet.release(), self.unet.objective, blocks, timesteps,
                                **self._settings)

    @property
    def parts(self) -> list[tuple[int, int | str]]:
        """``(timestep, block)`` of every feature part, in the order they are concatenated."""
        return [(t, i) for t in self.timesteps for i in self.blocks]

    def parts_dim(self, parts: list[tuple[int, int | str]] | None = None) -> int:
        """The width of the pixel features of ``parts`` (twice the channels with
        ``context: tile``)."""
        info = self.model.tap_blocks()
        width = sum(info[tap_name(i)].channels for _, i in (parts or self.parts))
        return width * (2 if self.context == "tile" else 1)

    @property
    def feature_dim(self) -> int:
        return self.parts_dim()

    def _cache_key(self, name: str, content: str, tile: Tile, size: int, draw: int) -> str:
        key = (f"{CACHE_FORMAT}|{self.fingerprint}|{name}|{content}|{tile.top},{tile.left},{size}|{self.timesteps}|"
               f"{self.seed}|{draw}|{self.blocks}|{self.dtype}")
        return hashlib.sha1(key.encode()).hexdigest()

    def _lookup(self, key: str, size: int) -> dict[str, torch.Tensor] | None:
        """A cached tile's block outputs; ``None`` when absent, or when the file is damaged or holds
        other shapes or types than a ``size`` tile gives (fp16 outputs, fp32 scalar squared norms):
        it is then computed again."""
        entry = self.cache.get(key)
        if entry is None or self.cache_dir is None:
            return entry
        taps = self.model.tap_blocks(size, size)
        info = {b: taps[tap_name(b)] for b in self.blocks}
        for t, i in self.parts:
            block, square = entry.get(f"t{t}_b{i}"), entry.get(f"sq_t{t}_b{i}")
            if (block is None or square is None or block.dtype != torch.float16 or square.dtype != torch.float32
                    or square.dim() != 0 or tuple(block.shape) != (info[i].channels,
                                                                   *info[i].resolution)):
                return None
        return entry

    @torch.no_grad()
    def _run(self, tiles: torch.Tensor, keys: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """``tiles [B, 3, S, S]`` -> per tile ``{f"t{t}_b{i}": [C_i, h_i, w_i] fp16,
        f"sq_t{t}_b{i}": [] fp32}``, the second the squared L2 norm of the block's fp16 output
        upsampled to ``S x S`` (for ``tile_norm``)."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(tiles.shape[0])]
        x0 = tiles.to(self.device)
        for t in self.timesteps:
            outputs = self.unet.outputs(x0, keys, t)
            for i in self.blocks:
                o = outputs[tap_name(i)].to(torch.float16)
                up = F.interpolate(o.float(), size=tiles.shape[-2:], mode="bilinear",
                                   align_corners=False)
                sq = up.pow(2).sum((1, 2, 3)).cpu()
                o = o.cpu()
                for j in range(x0.shape[0]):
                    out[j][f"t{t}_b{i}"] = o[j].contiguous()
                    out[j][f"sq_t{t}_b{i}"] = sq[j].clone()
        return out

    def tile_blocks(self, name: str, image: torch.Tensor, tile_size: int, tiles: list[Tile],
                    remember: bool = True, draw: int = 0,
                    cache: bool = True) -> list[dict[str, torch.Tensor]]:
        """Native-resolution fp16 block outputs for ``tiles`` of ``image [3, H, W]`` (from the cache
        when there), extracted through mask (or noise) draw ``draw`` of each tile.

        The cache key holds the export's fingerprint, the image name and a hash of its pixels, the
        tile, the timesteps, the seed, the draw, the blocks and the precision; without a cache
        folder they are kept in memory, except with ``remember=False`` (inference), so that
        segmenting many images needs no more memory than one. ``cache=False`` neither looks up nor
        stores anything (a draw that is never used again)."""
        padded = pad_to_tile(image, tile_size)
        content = hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()[:16]
        keys = [self._cache_key(name, content, tile, tile_size, draw) for tile in tiles]
        result = [self._lookup(key, tile_size) if cache else None for key in keys]
        todo = [k for k, r in enumerate(result) if r is None]
        name_key = zlib.crc32(name.encode())
        # bounded memory: a few tiles through the U-Net at once
        for first in range(0, len(todo), EXTRACT_BATCH):
            batch = todo[first:first + EXTRACT_BATCH]
            crops = torch.stack([padded[:, tiles[k].top:tiles[k].top + tile_size,
                                        tiles[k].left:tiles[k].left + tile_size] for k in batch])
            seeds = torch.tensor([rng.make_key(self.seed, name_key, tiles[k].top, tiles[k].left,
                                               *((Tag.MASK_DRAW, draw) if draw else ())) for k in batch])
            for k, blocks in zip(batch, self._run(crops, seeds)):
                result[k] = blocks
                if cache and (remember or self.cache_dir is not None):
                    self.cache.put(keys[k], blocks)
        return result  # type: ignore[return-value]

    def on_device(self, blocks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One tile's block outputs as float32 on the extractor's device: convert once before
        forming the features of many pixel chunks of the same tile (``pixel_features`` would
        otherwise copy and convert them per chunk)."""
        return {k: v.to(self.device, torch.float32, non_blocking=True) for k, v in blocks.items()}

    def pixel_features(self, blocks: dict[str, torch.Tensor], size: int,
                       index: torch.Tensor | None = None,
                       parts: list[tuple[int, int | str]] | None = None) -> torch.Tensor:
        """Features ``[N, D]`` float32, on the extractor's device, of the pixels ``index`` (flat,
        row-major, of a ``size x size`` tile; default: all pixels) from one tile's block outputs:
        each block sampled bilinearly (exactly what upsampling the block to ``size x size`` with
        ``align_corners=False`` would give at those pixels), then concatenated. Only the requested
        pixels are formed, so memory is ``N x D``, not ``size^2 x D``. ``parts`` (default: all, see
        ``parts``) picks ``(timestep, block)`` parts to form. ``blocks`` may be fp16 on the CPU (as
        extracted or cached) or already ``on_device``. With ``tile_norm`` every row is divided by
        the L2 norm (``l2_image``) or the root mean square (``rms_image``) of the tile's whole
        feature tensor of those parts. With ``context: tile`` each row is followed by the tile's
        mean of every part (the same for every pixel of the tile: what the image probe's average
        pooling sees), normalised alike."""
        dev = self.device
        parts = parts or self.parts
        index = torch.arange(size * size, device=dev) if index is None else index.to(dev)
        ys, xs = torch.div(index, size, rounding_mode="floor"), index % size
        # [N, 2] as (x, y)
        grid = torch.stack([(2 * xs + 1) / size - 1, (2 * ys + 1) / size - 1], dim=-1).float()
        grid = grid.reshape(1, 1, -1, 2)
        outputs = [blocks[f"t{t}_b{i}"].to(dev, torch.float32, non_blocking=True) for t, i in parts]
        feats = torch.cat([F.grid_sample(o[None], grid, mode="bilinear", padding_mode="border",
                                         align_corners=False)[0, :, 0].T for o in outputs], dim=1)
        if self.tile_norm in ("l2_image", "rms_image"):
            squares = sum(float(blocks[f"sq_t{t}_b{i}"]) for t, i in parts)
            if self.tile_norm == "rms_image":
                squares /= size * size * feats.shape[1]
            scale = max(squares ** 0.5, 1e-12)
        else:
            scale = 1.0
        if self.context == "tile":
            pooled = torch.cat([o.mean((1, 2)) for o in outputs])
            feats = torch.cat([feats, pooled.expand(feats.shape[0], -1)], dim=1)
        return feats / scale if scale != 1.0 else feats


def build_extractor(seg: SegConfig, export: Export, device: torch.device,
                    blocks_key: str = "seg.blocks") -> FeatureExtractor:
    """The export's U-Net (weights ``seg.weights``, loaded strictly) wrapped in a
    ``FeatureExtractor`` for ``seg.blocks`` at ``seg.timesteps``, corrupting tiles with the export's
    own objective, on ``device`` under the autocast of ``seg.mixed_precision``, normalising per tile
    when ``seg.normalize`` is ``l2_image`` or ``rms_image``, with each part's tile mean beside the
    pixel's features when ``seg.context`` is ``tile``."""
    return FeatureExtractor(export.load_model(), build_objective(export.config.diffusion),
                            seg.blocks, seg.timesteps, seed=seg.seed,
                            cache_dir=seg.cache_dir or None, fingerprint=export.fingerprint(),
                            device=device, dtype=autocast_dtype(seg.mixed_precision, device),
                            tile_norm=seg.normalize, context=seg.context, blocks_key=blocks_key)
