"""Frozen U-Net features of whole images for image-level heads: the pooling readout of the shared
frozen U-Net (``stage2.frozen``: hooks, keyed corruption, autocast), pooled per block and cached.

Blocks are named ``e<i>`` (encoder block i: ``input_blocks[i]``), ``mid`` (the middle block) and
``d<i>`` (decoder block i: ``output_blocks[i]``, guided-diffusion numbering as in ``seg.blocks``); a
negative index counts from the end. Each image is resized to ``image_size`` square
(``probe.image_size``), corrupted by the export's objective at each timestep with a seeded mask or
noise (``stage2.taps.corrupted``: the key is a function of the seed and the image name, so an image
always gives the same features), and the U-Net runs once per timestep with hooks on the blocks. Each
block's output is kept pooled (``gap`` ``[C]`` and ``grid`` ``[C * k * k]``), and as a token map
``[C, s, s]`` only where an attention head asks for it, in fp16, one entry per image (on disk under
``cache_dir`` when set, else in memory for this object), so a sweep over blocks and timesteps
extracts once and memory is bounded by one batch of U-Net activations plus the pooled vectors.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..common import rng
from ..common.config import ProbeConfig
from ..common.devices import autocast_dtype
from ..common.errors import ConfigError
from ..common.tensor_cache import TensorCache
from ..pretrain.export import Export
from ..pretrain.objectives import build_objective
from ..stage2.frozen import FrozenUNet
from ..stage2.taps import resolve_block_names
from .datasets import ClassDataset
from .pooling import pool, token_map

EXTRACT_BATCH = 16  # images per U-Net forward pass
CACHE_FORMAT = 1


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[3, H, W]`` -> ``[3, size, size]`` (bilinear, antialiased when shrinking)."""
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]


class ImageFeatures:
    """Pooled block outputs of a frozen export's U-Net for the images of ``ClassDataset``s.

    ``extract(dataset, tokens=[...])`` -> ``{f"t{t}_{block}_{kind}": [N, ...] fp16}`` for every
    timestep and block, ``kind`` in ``gap`` / ``grid`` (and ``tok`` for the blocks in ``tokens``).
    """

    def __init__(self, export: Export, blocks: list[str], timesteps: list[int],
                 device: torch.device, *, image_size: int, seed: int, grid_size: int, tokens: int,
                 cache_dir: str = "", dtype: torch.dtype | None = None, model=None):
        """``image_size``: the square every image is resized to; ``seed``: keys the corruption;
        ``grid_size`` / ``tokens``: the ``grid`` pooling's and token maps' sides; ``cache_dir``: the
        fp16 cache (empty: in memory); ``dtype``: the autocast precision; ``model``: the export's
        U-Net when already loaded."""
        self.export, self.device, self.dtype = export, device, dtype
        model = export.load_model() if model is None else model
        self.blocks, self.timesteps = resolve_block_names(blocks, model), list(timesteps)
        self.unet = FrozenUNet(model, build_objective(export.config.diffusion),
                               self.blocks, device, dtype)
        self.model = self.unet.model
        self.fingerprint = export.fingerprint()
        self.image_size, self.seed, self.grid_size, self.tokens = image_size, seed, grid_size, tokens
        self.cache_dir = cache_dir
        model.check_input_size(image_size, image_size)
        self.cache = TensorCache(cache_dir or None)

    @classmethod
    def of_probe(cls, probe: ProbeConfig, export: Export, blocks: list[str], timesteps: list[int],
                 device: torch.device) -> ImageFeatures:
        """The features ``probe`` (the classification section) asks for."""
        return cls(export, blocks, timesteps, device, image_size=probe.image_size, seed=probe.seed,
                   grid_size=probe.grid_size, tokens=probe.tokens, cache_dir=probe.cache_dir,
                   dtype=autocast_dtype(probe.mixed_precision, device))

    def narrowed(self, blocks: list[str], timesteps: list[int]) -> ImageFeatures:
        """Features of ``blocks`` at ``timesteps`` from the same U-Net (no second load from the
        export); this object's hooks are removed, so use it no more."""
        return ImageFeatures(self.export, blocks, timesteps, self.device,
                             image_size=self.image_size, seed=self.seed, grid_size=self.grid_size,
                             tokens=self.tokens, cache_dir=self.cache_dir, dtype=self.dtype,
                             model=self.unet.release())

    def _key(self, name: str, content: str, tokens: list[str]) -> str:
        text = (f"{CACHE_FORMAT}|{self.fingerprint}|{name}|{content}|{self.image_size}|{self.timesteps}|{self.seed}|"
                f"{self.blocks}|{self.grid_size}|{tokens}|{self.tokens}|{self.dtype}")
        return hashlib.sha1(text.encode()).hexdigest()

    @torch.no_grad()
    def _run(self, images: torch.Tensor, names: list[str],
             tokens: list[str]) -> list[dict[str, torch.Tensor]]:
        """``images [B, 3, S, S]`` -> one entry per image (see the class docstring), fp16 on the
        CPU."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in names]
        x0 = images.to(self.device)
        keys = torch.tensor([rng.make_key(self.seed, zlib.crc32(n.encode())) for n in names])
        for t in self.timesteps:
            outputs = self.unet.outputs(x0, keys, t)
            for b in self.blocks:
                o = outputs[b].float()
                parts = {"gap": pool(o, "gap"), "grid": pool(o, "grid", self.grid_size)}
                if b in tokens:
                    parts["tok"] = token_map(o, self.tokens)
                for kind, value in parts.items():
                    value = value.to(torch.float16).cpu()
                    for j in range(len(names)):
                        out[j][f"t{t}_{b}_{kind}"] = value[j].clone()
        return out

    def extract(self, dataset: ClassDataset, tokens: list[str] = (), progress: bool = False
                ) -> dict[str, torch.Tensor]:
        """Every image's pooled features, stacked in dataset order: ``{f"t{t}_{block}_{kind}": [N,
        ...] fp16}``."""
        tokens = resolve_block_names(list(tokens), self.model, "probe.blocks") if tokens else []
        entries: list[dict[str, torch.Tensor] | None] = [None] * len(dataset)
        todo: list[tuple[int, str, torch.Tensor]] = []
        bar = tqdm(total=len(dataset), desc=f"features ({dataset.split})",
                   disable=None if progress else True, leave=False)

        def flush():
            batch = torch.stack([img for _, _, img in todo])
            for (i, key, _), entry in zip(todo, self._run(batch, [dataset.names[i] for i, _, _ in todo], tokens)):
                entries[i] = entry
                self.cache.put(key, entry)
            bar.update(len(todo))
            todo.clear()

        names = {f"t{t}_{b}_{kind}" for t in self.timesteps for b in self.blocks
                 for kind in ("gap", "grid", *(("tok",) if b in tokens else ()))}
        cached: dict[int, str] = {}
        for i in range(len(dataset)):
            image = resize(dataset.image(i), self.image_size)
            content = hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()[:16]
            key = self._key(dataset.names[i], content, tokens)
            entries[i] = self.cache.get(key)
            if entries[i] is not None and (set(entries[i]) != names
                                           or any(v.dtype != torch.float16 for v in entries[i].values())):
                entries[i] = None  # another program's entry, or a damaged one: computed again
            if entries[i] is None:
                todo.append((i, key, image))
                if len(todo) == EXTRACT_BATCH:
                    flush()
            else:
                cached[i] = key
                bar.update(1)
        if todo:
            flush()
        shapes = {k: Counter(tuple(e[k].shape) for e in entries).most_common(1)[0][0] for k in names} if entries else {}
        # a cached entry of other shapes than the rest is computed again
        for i, key in cached.items():
            if any(tuple(entries[i][k].shape) != shapes[k] for k in names):
                todo.append((i, key, resize(dataset.image(i), self.image_size)))
        if todo:
            flush()
        bar.close()
        return {k: torch.stack([e[k] for e in entries]) for k in entries[0]} if entries else {}


def features_of(table: dict[str, torch.Tensor],
                parts: list[tuple[int, str]], kind: str) -> torch.Tensor:
    """The ``kind`` features (``gap`` / ``grid`` / ``tok``) of ``parts``
    ``[(timestep, block), ...]`` as float32: vectors concatenated ``[N, D]``; token maps (one part
    only) ``[N, C, s, s]``."""
    if kind == "tok":
        if len(parts) != 1:
            raise ConfigError(
                f"probe.head: attention pools the tokens of one block at one timestep, got {parts}")
        t, b = parts[0]
        return table[f"t{t}_{b}_tok"].float()
    return torch.cat([table[f"t{t}_{b}_{kind}"].float() for t, b in parts], dim=1)
