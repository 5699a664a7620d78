"""The pretraining run's log: ``log.jsonl`` (one JSON object per logged step) and TensorBoard where
it is installed.

Between two log steps the per-sample losses and timesteps of every micro-batch are kept (``add``);
at a log step they become one row (``row``): the step, the mean loss and the loss by mask-ratio
(timestep) quartile, the learning rate and the images per second since the last row, and
``unreadable_skipped``: how many unreadable files the pool skipped (``data.skip_unreadable``) in all
processes since the last row. Only the main process writes; the others still gather.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..common.io import write_text_atomic


class RunLog:
    def __init__(self, run_dir: Path, timesteps: int, main: bool):
        self.path, self.timesteps, self.main = Path(run_dir) / "log.jsonl", timesteps, main
        self._file = self.path.open("a") if main else None
        self._writer = _tensorboard(run_dir) if main else None
        self._start_window()

    def _start_window(self) -> None:
        self._losses, self._timesteps, self._images, self._started = [], [], 0, time.perf_counter()
        self._skipped = 0

    def add(self, losses: torch.Tensor, timesteps: torch.Tensor, images: int,
            skipped: int = 0) -> None:
        """One micro-batch: per-sample ``losses [B]`` and ``timesteps [B]``; ``images`` seen over
        all processes; ``skipped``: unreadable files this process skipped for it."""
        self._losses.append(losses.detach())
        self._timesteps.append(timesteps.detach())
        self._images += images
        self._skipped += skipped

    def row(self, step: int, lr: float, gather: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """The row of ``step`` from the window since the last row (``gather`` joins the processes'
        samples); starts a new window."""
        losses, ts = gather(torch.cat(self._losses)), gather(torch.cat(self._timesteps))
        skipped = gather(losses.new_tensor([self._skipped], dtype=torch.int64))
        record = {"step": step, "loss": float(losses.mean()), "lr": lr,
                  "img_per_s": self._images / (time.perf_counter() - self._started),
                  "unreadable_skipped": int(skipped.sum())}
        quartile = (ts.float() / self.timesteps * 4).clamp(max=3.999).long()
        for q in range(4):
            chosen = losses[quartile == q]
            if chosen.numel():
                record[f"loss_q{q + 1}"] = float(chosen.mean())
        self._start_window()
        return record

    def write(self, record: dict) -> None:
        """Append ``record`` (main process only) and flush it."""
        if not self.main:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer:
            for k, v in record.items():
                if k != "step":
                    self._writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        for handle in (self._file, self._writer):
            if handle:
                handle.close()


def truncate_log(run_dir: Path, step: int) -> None:
    """Drop the rows of ``log.jsonl`` after ``step`` (a resume replays them) and a row a kill cut
    short."""
    log = Path(run_dir) / "log.jsonl"
    if log.is_file():
        rows = [r for r in log.read_text(errors="replace").splitlines()
                if (s := _row_step(r)) is not None and s <= step]
        write_text_atomic(log, "".join(r + "\n" for r in rows))


def _row_step(row: str) -> int | None:
    """The step of a ``log.jsonl`` row, or ``None`` for a row that is not whole (cut by a kill while
    written)."""
    try:
        return int(json.loads(row)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # deferred: optional, and slow to import
    except ImportError:
        return None
    return SummaryWriter(str(Path(run_dir) / "tb"))
