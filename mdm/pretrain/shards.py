"""Tar shards in the webdataset layout as a pretraining pool (``data.source: shards``), each process
streaming its own shards.

A shard is a ``.tar`` file (under the folders or among the files of ``data.root``) whose members are
grouped into samples by key, as webdataset does: the member's path up to the first dot of its file
name (``train/0001.jpg`` and ``train/0001.json`` are sample ``train/0001``). A sample's image is its
first member with an image extension (``IMAGE_SUFFIXES``); samples without one are counted and left
out.

**Index**: every shard is scanned once (tar headers read, image bytes hashed: no decoding), with a
progress bar, into an index beside the pool manifests (``$XDG_CACHE_HOME/mdm/shards/``, one ``.npz``
a shard, reused while the shard's size and modification time are unchanged): each image's byte
offset and size and its content hash, so a sample with the content of a file ``data.exclude`` names
is left out (as test images are from folder pools).

**Streams**: the stream of a process (or, with ``data.num_workers``, of each of its loader workers:
``slots`` = processes x max(1, workers)) is, epoch after epoch, the samples of its shards read front
to back (an epoch's shard order is a permutation of every shard keyed by ``(train.seed, epoch)``,
slot ``k`` taking shards ``k, k + slots, ...``), through a shuffle buffer of ``data.shuffle_buffer``
samples (which one leaves next: keyed by the stream's position). Micro-batch ``B`` of the run
(``step * accum + accumulation index``) goes to worker ``B mod workers``, so each slot's stream and
the sample keys (``sampler.micro_batch_keys``) are functions of the step.

**Resume**: a slot has read ``micro`` samples for each of its micro-batches before the resumed step;
the resumed stream skips that many (the shuffle buffer replayed on indices, nothing read), so a
resume with the same number of processes and ``data.num_workers`` sees the very same images as an
uninterrupted run. With other counts the slots, and so the images each step sees, differ (each slot
still starts at the same place of the epoch order); a shard added or removed changes the epoch
order. A sample that does not decode stops the run, naming the shard and member, or is skipped with
a warning (``data.skip_unreadable``; the stream's next sample stands in, the same at every resume).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..common.config import DataConfig
from ..common.errors import DataError
from ..common.io import IMAGE_EXTENSIONS, OpenHandles, cache_root, file_digest, list_images, load_image, write_atomic
from ..common.rng import Tag, make_key
from .crops import crop_or_resize
from .folder_manifest import locked
from .pools import POOLS, Pool, first_readable, list_pool
from .sampler import micro_batch_keys

SHARD_EXTENSIONS = frozenset({".tar"})
IMAGE_SUFFIXES = {e[1:] for e in IMAGE_EXTENSIONS} | {"webp", "ppm"}
BUFFER_BLOCK = 4096  # the shuffle buffer's draws are made this many at a time


@dataclass
class ShardIndex:
    """The images of one shard: ``offsets``, ``sizes`` (bytes, ``[n]`` int64), ``names`` (member
    paths, ``[n]`` str), ``digests`` (sha1, ``[n, 20]`` uint8); ``without_image``: samples that hold
    no image."""

    path: str
    offsets: np.ndarray
    sizes: np.ndarray
    names: np.ndarray
    digests: np.ndarray
    without_image: int

    def __len__(self) -> int:
        return len(self.offsets)


def sample_key(member: str) -> tuple[str, str]:
    """``"dir/0001.seg.png"`` -> (``"dir/0001"``, ``"seg.png"``): webdataset's key and suffix of a
    member."""
    folder, _, name = member.rpartition("/")
    stem, _, suffix = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def image_member(members: list[tarfile.TarInfo]) -> tarfile.TarInfo | None:
    """The image of one sample's members: the first whose whole suffix is an image extension
    (``0001.png``), else the first whose last extension is one (``0001.input.jpg``); ``None`` when
    none is."""
    suffixes = [sample_key(m.name)[1] for m in members]
    for whole in (True, False):
        for member, suffix in zip(members, suffixes):
            if (suffix if whole else suffix.rpartition(".")[2]) in IMAGE_SUFFIXES:
                return member
    return None


def scan_shard(path: Path) -> ShardIndex:
    """Read the tar headers of ``path``, group its members into samples by key and hash each
    sample's image bytes (``DataError`` naming the shard when it is not a tar file or is cut
    short)."""
    offsets, sizes, names, digests = [], [], [], []
    samples: dict[str, list[tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, "r:") as tar, open(path, "rb") as raw:
            for member in tar:
                if member.isfile():
                    samples.setdefault(sample_key(member.name)[0], []).append(member)
            for members in samples.values():
                member = image_member(members)
                if member is None:
                    continue
                raw.seek(member.offset_data)
                data = raw.read(member.size)
                if len(data) != member.size:
                    raise tarfile.ReadError(f"{member.name} is cut short")
                offsets.append(member.offset_data)
                sizes.append(member.size)
                names.append(member.name)
                digests.append(np.frombuffer(hashlib.sha1(data).digest(), np.uint8))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable tar shard ({type(e).__name__}: {e})") from None
    return ShardIndex(str(path), np.array(offsets, np.int64), np.array(sizes, np.int64),
                      np.array(names, dtype=str), np.array(digests, np.uint8).reshape(-1, 20),
                      len(samples) - len(names))


def index_cache(path: Path) -> Path:
    """Where the index of the shard ``path`` is kept: ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/mdm/shards/``."""
    return cache_root() / "shards" / f"{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:20]}.npz"


def load_index(path: Path) -> tuple[ShardIndex, bool]:
    """The index of the shard ``path``, from its cache when the shard's size and modification time
    are those it was scanned at, else scanned and cached (under a file lock: the processes of a run
    scan a shard once); and whether it was scanned."""
    stat = os.stat(path)
    where = index_cache(path)
    stamp = np.array([stat.st_size, stat.st_mtime_ns], np.int64)

    def cached() -> ShardIndex | None:
        try:
            with np.load(where) as saved:
                if np.array_equal(saved["stamp"], stamp):
                    return ShardIndex(str(path), saved["offsets"], saved["sizes"], saved["names"],
                                      saved["digests"], int(saved["without_image"]))
        # no cache yet, or a damaged one (a cut zip, an empty file): scanned again
        except Exception:
            return None
        return None

    index = cached()
    if index is not None:
        return index, False
    with locked(where):
        index = cached()  # another process may have scanned it while this one waited
        if index is not None:
            return index, False
        index = scan_shard(path)
        write_atomic(where, lambda tmp: tmp.write_bytes(_npz(index, stamp)))
    return index, True


def _npz(index: ShardIndex, stamp: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, stamp=stamp, offsets=index.offsets, sizes=index.sizes, names=index.names,
             digests=index.digests, without_image=index.without_image)
    return out.getvalue()


def shuffled(order, size: int, seed: int, slot: int):
    """``order`` (an iterable of items) through a shuffle buffer of ``size``: once full, the item at
    buffer place ``j`` (drawn from ``(seed, slot, position)``) leaves and the next item takes its
    place. Deterministic, and the same for any items, so a resume can replay it on indices."""
    if size <= 1:
        yield from order
        return
    buffer, draws = [], None
    for position, item in enumerate(order):
        if len(buffer) < size:
            buffer.append(item)
            continue
        block, place = divmod(position, BUFFER_BLOCK)
        if place == 0 or draws is None:
            draws = np.random.default_rng([seed, slot, block,
                                           Tag.SHARD_BUFFER]).integers(0, size, BUFFER_BLOCK)
        j = int(draws[place])
        yield buffer[j]
        buffer[j] = item


def shard_digests(pool: DataConfig) -> dict[str, str]:
    """``{shard: hash of its images' hashes}`` of the shard pool ``pool`` (from the shard indexes; a
    shard whose images change changes its hash, its other members do not)."""
    files = list_pool(pool.root, SHARD_EXTENSIONS)
    bar = tqdm(files, desc=f"indexing {len(files)} shards", disable=None, leave=False)
    return {str(f): hashlib.sha1(load_index(f)[0].digests.tobytes()).hexdigest() for f in bar}


class ShardPool:
    """The images of tar shards (see the module); ``pool[(index, key)]`` reads one at random (the
    previews), ``stream(...)`` gives the ``IterableDataset`` a process trains on."""

    def __init__(self, roots: list[str], crop_size: int, crop: str = "random", hflip: bool = True,
                 color_mode: str = "RGB", exclude: list[str] = (), skip_unreadable: bool = False,
                 shuffle_buffer: int = 1000):
        self.crop_size, self.crop, self.hflip, self.color_mode = crop_size, crop, hflip, color_mode
        self.skip_unreadable, self.shuffle_buffer = skip_unreadable, shuffle_buffer
        self.unreadable_in_training: dict[int, set] = {}  # per shard: the samples warned about
        files = list_pool(roots, SHARD_EXTENSIONS)
        banned = {bytes.fromhex(file_digest(p)) for e in exclude for p in list_images(e)}
        self.shards, scanned, excluded, bare = [], 0, [], 0
        for f in tqdm(files, desc=f"indexing {len(files)} shards", disable=None, leave=False):
            index, fresh = load_index(f)
            scanned += fresh
            bare += index.without_image
            if banned and len(index):
                out = np.array([bytes(d) in banned for d in index.digests])
                excluded += [f"{f}:{n}" for n in index.names[out]]
                index = ShardIndex(index.path, index.offsets[~out], index.sizes[~out],
                                   index.names[~out], index.digests[~out], index.without_image)
            self.shards.append(index)
        self.ends = np.cumsum([len(s) for s in self.shards])
        if not self.ends[-1]:
            raise DataError(f"{', '.join(map(str, roots[:3]))}: no images in the shards"
                            + (" that data.exclude does not exclude" if excluded else ""))
        self._file = OpenHandles(lambda path: open(path, "rb"), limit=4)
        self.record = {"shards": len(files), "images": int(self.ends[-1]),
                       "excluded": len(excluded), "samples_without_image": bare,
                       "shards_scanned": scanned,
                       "per_shard": {s.path: len(s) for s in self.shards},
                       "excluded_files": excluded}

    def __len__(self) -> int:
        return int(self.ends[-1])

    def read(self, shard: int, sample: int, key: int) -> torch.Tensor:
        """Sample ``sample`` of shard ``shard``, cropped and flipped by ``key``: ``[C, S, S]``."""
        index = self.shards[shard]
        name = f"{index.path}:{index.names[sample]}"
        try:
            handle = self._file(index.path)
            handle.seek(int(index.offsets[sample]))
            data = handle.read(int(index.sizes[sample]))
        except OSError as e:
            raise DataError(f"{name}: cannot read it ({e.strerror or e})") from None
        image = load_image(io.BytesIO(data), self.color_mode, name=name)
        return crop_or_resize(image, key, self.crop_size, self.crop, self.hflip, name=name)

    def take(self, shard: int, sample: int, key: int) -> tuple[torch.Tensor, int]:
        """``read``, and how many samples were skipped for it: a sample that does not decode stops
        the run or (``skip_unreadable``) is replaced by the next sample of its shard that does."""
        size = len(self.shards[shard])
        return first_readable(((sample + shift) % size for shift in range(size)),
                              lambda s: self.read(shard, s, key), self.skip_unreadable, "sample",
                              self.unreadable_in_training.setdefault(shard, set()),
                              f"{self.shards[shard].path}: no image of the shard decodes")

    def __getitem__(self, item: tuple[int, int]):
        index, key = item
        shard = int(np.searchsorted(self.ends, index % len(self), side="right"))
        return self.take(
            shard, int(index % len(self) - (self.ends[shard - 1] if shard else 0)), key)[0], key

    def order(self, seed: int, slot: int, slots: int):
        """The (shard, sample) pairs of slot ``slot`` of ``slots``, epoch after epoch, before the
        shuffle buffer."""
        if slots > len(self.shards):
            raise DataError(f"{len(self.shards)} shard(s) for {slots} streams (processes x data.num_workers): give "
                            f"each stream a shard at least (more, smaller shards, or fewer workers)")
        for epoch in itertools.count():
            g = torch.Generator().manual_seed(make_key(seed, epoch, Tag.SHARD_ORDER))
            for shard in torch.randperm(len(self.shards), generator=g).tolist()[slot::slots]:
                yield from ((shard, i) for i in range(len(self.shards[shard])))

    def stream(self, seed: int, start_step: int, max_steps: int, micro: int, accum: int, world: int,
               rank: int) -> ShardStream:
        return ShardStream(self, seed, start_step, max_steps, micro, accum, world, rank)


def stream_layout(pool_json: Path, step: int, data: DataConfig, processes: int, accum: int) -> dict:
    """What cuts a shard run's streams (processes, ``data.num_workers``,
    ``train.grad_accum_steps``), for its ``pool.json``; a resume (``step`` > 0) whose layout differs
    from the one ``pool_json`` recorded is warned about: its steps then see other images than the
    run would have (see the module)."""
    layout = {"processes": processes, "num_workers": data.num_workers, "grad_accum_steps": accum}
    try:
        before = json.loads(
            pool_json.read_text()).get("streams") if step and pool_json.is_file() else None
    except (ValueError, OSError):
        before = None
    if before and before != layout:
        warnings.warn(f"{pool_json.parent}: resumed at step {step} with {layout}, the run had {before}: the shard "
                      f"streams are cut otherwise, so from here the steps see other images than an uninterrupted "
                      f"run would (the losses will not replay)", stacklevel=2)
    return layout


class ShardStream(torch.utils.data.IterableDataset):
    """The ``(image [C, S, S], key, samples skipped for it)`` items of one process for steps
    ``start_step .. max_steps - 1`` (micro-batches of ``micro``, in order; each loader worker gives
    its own micro-batches, see the module)."""

    def __init__(self, pool: ShardPool, seed: int, start_step: int, max_steps: int, micro: int,
                 accum: int, world: int, rank: int):
        self.pool, self.seed, self.start_step, self.max_steps = pool, seed, start_step, max_steps
        self.micro, self.accum, self.world, self.rank = micro, accum, world, rank

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        first, last = self.start_step * self.accum, self.max_steps * self.accum
        workers = info.num_workers if info else 1
        # the loader takes its i-th micro-batch from worker i mod workers: that is micro-batch first
        # + i of the run
        worker = ((info.id if info else 0) + first) % workers
        slot, slots = self.rank * workers + worker, self.world * workers
        # micro-batches B with B % workers == worker
        mine = range(first + (worker - first) % workers, last, workers)
        # those before the resumed step
        done = math.ceil((first - worker) / workers) if first > worker else 0
        stream = shuffled(self.pool.order(self.seed, slot, slots), self.pool.shuffle_buffer,
                          self.seed, slot)
        for _ in range(done * self.micro):
            next(stream)
        for b in mine:
            step, a = divmod(b, self.accum)
            for key in micro_batch_keys(self.seed, step, a, self.world, self.rank, self.micro):
                # a stand-in is read out of turn
                image, skipped = self.pool.take(*next(stream), key)
                yield image, key, skipped



POOLS.register("shards", Pool(lambda d: ShardPool(d.root, d.crop_size, d.crop, d.hflip,
                                                  d.color_mode, d.exclude, d.skip_unreadable,
                                                  d.shuffle_buffer),
                               shard_digests, containers=True))
