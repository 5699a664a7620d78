"""What a study read, by content: every file of its labeled source (training and test images and
masks) and of its pretraining pools, with a hash of each (``data.json`` in the study folder). A
study folder is resumed only on the same data: its finished runs are skipped on resume, so a run on
changed files would be mixed with runs on the old ones in one table. The built-in synthetic source
reads no files (its images follow from the config)."""

from __future__ import annotations

import json
from pathlib import Path

from ..common.config import Config
from ..common.errors import ConfigError
from ..common.io import file_digest, write_text_atomic
from ..pretrain.pools import POOLS
from .pool import labeled_split, pretraining_data


def study_files(cfg: Config) -> dict[str, str]:
    """``{file: content hash}`` of the files the study of ``cfg`` reads: the labeled source's
    splits, then the pretraining pool's images, slides or shards (their hashes from the pool's
    manifest or shard index)."""
    files: dict[str, str] = {}
    if cfg.data.source != "synthetic":
        files |= {str(f): file_digest(f) for split in ("train", "test") for f in labeled_split(cfg, split).files}
    pool = pretraining_data(cfg)
    digests = POOLS[pool.source].digests
    return files | digests(pool) if digests else files


def data_manifest(studies: list[tuple[str, Config]]) -> dict[str, dict[str, str]]:
    """``{variant: {file: content hash}}`` of what each variant's study (``(name, config)``) reads
    (``file_digest`` hashes a file once however many variants read it)."""
    return {name: study_files(cfg) for name, cfg in studies}


def read_manifest(out: Path) -> dict[str, dict[str, str]]:
    """``data.json`` of the study in ``out`` (``{}`` when there is none); a damaged one is a
    one-line error."""
    saved = out / "data.json"
    if not saved.is_file():
        return {}
    try:
        recorded = json.loads(saved.read_text())
        if not all(isinstance(files, dict) and all(isinstance(h, str) for h in files.values())
                   for files in recorded.values()):
            raise ValueError("expected {variant: {file: hash}}")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(
            f"{saved}: cannot read it ({e}); it records the data of the study in this folder: "
            f"use another bench.out_dir or remove the folder") from None
    return recorded


def check_same_data(out: Path, manifest: dict[str, dict[str, str]]) -> None:
    """Refuse to resume the study in ``out`` when a file it read changed since (in any variant:
    variants share pretraining runs), or when a variant that ran before now reads files added or
    removed (variants added to or dropped from the study since are not compared: their runs are new
    or left alone)."""
    recorded = read_manifest(out)
    hashes = {f: h for files in recorded.values() for f, h in files.items()}
    changes = sorted({f"changed {f}" for files in manifest.values() for f, h in files.items()
                      if f in hashes and hashes[f] != h})
    for variant in sorted(set(manifest) & set(recorded)):
        now, before = manifest[variant], recorded[variant]
        changes += ([f"added {f}" for f in sorted(set(now) - set(before))]
                    + [f"removed {f}" for f in sorted(set(before) - set(now))])
    if changes:
        more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
        raise ConfigError(f"{out / 'data.json'}: this folder holds a study of other data ({changes[0]}{more}); its "
                          f"finished runs would be mixed with runs on the new data: use another bench.out_dir or "
                          f"remove it")


def write_manifest(out: Path, manifest: dict[str, dict[str, str]]) -> None:
    """``data.json``: the variants recorded before (dropped from this call) kept beside this
    call's."""
    write_text_atomic(out / "data.json", json.dumps({**read_manifest(out), **manifest}, indent=1))
