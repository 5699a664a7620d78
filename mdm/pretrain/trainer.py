"""The pretraining loop on Hugging Face Accelerate (one process, several processes, several GPUs or
nodes).

Run folder layout (``train.out_dir``)::

    config.yaml                 the resolved config, written at start
    pool.json                   (image folders, slides) images or slides in the pool, excluded (test images),
                                unreadable ones skipped; slides: each one's level, tissue and tiles available
    tissue.png                  (slides) the tissue masks with the tiles of the first steps outlined
    log.jsonl                   one JSON object per logged step (rows of replayed steps are dropped on resume): the
                                loss, by mask-ratio quartile, lr, images/s, unreadable files skipped since the last
                                row, and the colour check of the EMA weights (``previews.colour_check``)
    samples/step_N.png          original | corrupted input | reconstruction (EMA weights)
    exports/step_N/             unet.safetensors (EMA), unet_raw.safetensors, config.yaml, for stage 2
    export/                     the latest export
    checkpoints/step_N/         weights, EMA, optimizer (see ``checkpoints``): no pickles
    tb/                         TensorBoard events, where it is installed

A folder that holds anything else (``RUN_FILES``, hidden locks and temporary files aside) is
refused: it is not a run's.

Every sample's crop, flip, timestep, mask and noise derive from ``(seed, step, position in the
global batch)``, and the images a step sees from ``(seed, step)``, so ``--resume latest`` replays
the very same losses. Exports and checkpoints are written into temporary folders and renamed; at a
step that has both, the export comes first, so a checkpoint always vouches for the export of its
step (a resume that finds it missing writes it). A kill at any moment leaves the previous checkpoint
usable. A non-finite loss, gradient or weight stops the run before anything of the diverged weights
is saved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from ..common import faults
from ..common.config import Config
from ..common.config_io import dump, load
from ..common.devices import memory_format, resolve_device, tune_for_fixed_shapes
from ..common.errors import ConfigError, TrainingError
from ..common.io import refuse_foreign, replace_dir, temp_sibling, write_text_atomic
from ..common.rng import Tag, seeded_init
from ..nn.group_norm_act import fused_kernel_available
from ..nn.unet import UNetModel, build_unet, compile_unet
from .checkpoints import find_resume, list_checkpoints, load_checkpoint, save_checkpoint
from .cpu_memory import keep_freed_memory
from .export import export_is_current, publish_export, save_export
from .identity import check_resume
from .objectives import build_objective
from .pools import CountingSkips, build_pretrain_dataset
from .previews import colour_check, save_reconstruction_grid
from .run_lock import run_lock
from .run_log import RunLog, truncate_log
from .run_setup import fresh_accelerator_state, lr_at, make_optimizer, resolve_compile, resolve_precision
from .sampler import StepBatchSampler, first_items
from .shards import stream_layout


class Trainer:
    """Owns Accelerate, the model, the EMA, the optimizer, checkpoints, exports and the run log of
    one run.

    Built from parts (``Trainer(cfg, model, objective, dataset)``: a U-Net with its initial weights,
    an objective of ``objectives``, a pool of ``pools``) or from a config (``Trainer.from_config``,
    what ``train`` does). ``cfg`` is the run's whole config: its ``train`` section drives the loop,
    and it is saved with the run and every export.
    """

    def __init__(self, cfg: Config, model: UNetModel, objective, dataset,
                 device: torch.device | None = None):
        self.cfg, self.objective, self.dataset = cfg, objective, dataset
        tc = cfg.train
        device = device or resolve_device(tc.device)
        if device.type == "cuda" and device.index not in (None, 0):
            raise ConfigError(f"device {device}: pretraining places each process on its GPU through Accelerate; choose "
                              f"the GPU with CUDA_VISIBLE_DEVICES={device.index} and device cuda")
        tune_for_fixed_shapes(device)
        self.precision = resolve_precision(tc.mixed_precision, device)
        fresh_accelerator_state()
        self.accelerator = acc = Accelerator(mixed_precision=self.precision,
                                             cpu=device.type != "cuda",
                                             gradient_accumulation_steps=tc.grad_accum_steps)
        self.run_dir = Path(tc.out_dir)
        model.check_input_size(cfg.data.crop_size, cfg.data.crop_size)
        self.num_params = sum(p.numel() for p in model.parameters())
        self.memory_format = memory_format(tc.channels_last, acc.device)
        if acc.device.type == "cpu":
            keep_freed_memory()
        model = model.to(acc.device, memory_format=self.memory_format)
        # before compiling: a plain copy
        self.ema = ModelEmaV3(model, decay=tc.ema_decay, use_warmup=tc.ema_warmup)
        self.compile = resolve_compile(tc.compile, acc.device)
        compile_unet(model, self.compile)
        optimizer = make_optimizer(model, tc.lr, tc.weight_decay, acc.device)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.step = 0
        self._watched: list[tuple[int, str, torch.Tensor]] = []
        self.micro = tc.batch_size // (tc.grad_accum_steps * acc.num_processes)
        if self.micro * tc.grad_accum_steps * acc.num_processes != tc.batch_size:
            raise ConfigError(
                f"train.batch_size={tc.batch_size} is not divisible by grad_accum_steps="
                             f"{tc.grad_accum_steps} x processes={acc.num_processes}")

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device | None = None) -> Trainer:
        """The U-Net of ``cfg.model`` (initial weights from ``train.seed``, identical on every
        process), the objective of ``cfg.diffusion`` and the pool of ``cfg.data``."""
        with seeded_init(cfg.train.seed):
            model = build_unet(cfg.model)
        return cls(cfg, model, build_objective(cfg.diffusion),
                   build_pretrain_dataset(cfg.data), device)

    # ---- state -----------------------------------------------------------------------------------
    def resume(self, resume: str) -> None:
        """Continue from the checkpoint ``resume`` names (``latest``: the newest of this run),
        refusing a config that would train other weights than the run's own
        (``identity.check_resume``)."""
        path = find_resume(self.run_dir, resume)
        saved = path.resolve().parent.parent / "config.yaml"  # the run folder of checkpoints/step_N
        if saved.is_file():
            check_resume(load(saved), self.cfg, str(saved))
        self.step = load_checkpoint(path, self.accelerator.unwrap_model(self.model),
                                    self.ema.module, self.optimizer)
        self.accelerator.print(f"resumed from {path} at step {self.step}")

    def save_checkpoint(self) -> Path:
        """``checkpoints/step_N`` (written by the main process into a temporary folder, then
        renamed); older ones beyond ``train.checkpoint_limit`` are removed. Refuses to save
        non-finite weights."""
        acc = self.accelerator
        raw = self._finite_weights()
        final = self.run_dir / "checkpoints" / f"step_{self.step}"
        if acc.is_main_process:
            tmp = temp_sibling(final)
            save_checkpoint(tmp, self.step, raw, self.ema.module, self.optimizer)
            faults.reached("checkpoint written")
            replace_dir(tmp, final)
            for _, old in list_checkpoints(self.run_dir)[:-self.cfg.train.checkpoint_limit]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def export(self) -> None:
        """``exports/step_N``, then ``export`` (a copy of it), both by rename (main process
        only)."""
        raw = self._finite_weights()
        if not self.accelerator.is_main_process:
            return
        save_export(self.run_dir / "exports" / f"step_{self.step}", self.cfg, self.ema.module, raw)
        faults.reached("export written")
        publish_export(self.run_dir, self.step)

    def _watch(self, what: str, value: torch.Tensor) -> None:
        """Remember whether ``value`` is finite without waiting for the GPU; ``_check_watched``
        looks at log steps and before anything is saved."""
        self._watched.append((self.step, what, torch.isfinite(value.detach()).all()))

    def _check_watched(self) -> None:
        for step, what, finite in self._watched:
            if not bool(finite):
                raise TrainingError(f"non-finite {what} at step {step}: the run diverged (lower train.lr?); stopping. "
                                    f"The last good checkpoint is in {self.run_dir / 'checkpoints'}")
        self._watched.clear()

    def _finite_weights(self) -> torch.nn.Module:
        """The raw model, after checking the watched losses and that the model and its EMA hold only
        finite weights (else ``TrainingError``)."""
        self._check_watched()
        raw = self.accelerator.unwrap_model(self.model)
        for p in [*raw.parameters(), *self.ema.module.parameters()]:
            if not torch.isfinite(p).all():
                raise TrainingError(
                    f"non-finite weights at step {self.step}: the run diverged (lower train.lr?); "
                    f"not saving them. The last good checkpoint is in {self.run_dir / 'checkpoints'}")
        return raw

    def export_is_current(self) -> bool:
        """Whether ``exports/step_N`` of the current step exists and ``export`` holds the same
        weights."""
        return export_is_current(self.run_dir, self.step)

    # ---- data ------------------------------------------------------------------------------------
    def loader(self):
        """The micro-batches ``(images, keys, unreadable files skipped for each)`` of steps
        ``self.step ..``: by index from the pool (``StepBatchSampler``), or, for a pool that streams
        (tar shards), from this process's stream."""
        tc, acc, workers = self.cfg.train, self.accelerator, self.cfg.data.num_workers
        if hasattr(self.dataset, "stream"):
            stream = self.dataset.stream(tc.seed, self.step, tc.max_steps, self.micro,
                                         tc.grad_accum_steps, acc.num_processes, acc.process_index)
            return torch.utils.data.DataLoader(stream, batch_size=self.micro, num_workers=workers,
                                               persistent_workers=workers > 0)
        sampler = StepBatchSampler(len(self.dataset), tc.batch_size, tc.grad_accum_steps,
                                   acc.num_processes,
                                   acc.process_index, tc.seed, self.step, tc.max_steps)
        return torch.utils.data.DataLoader(CountingSkips(self.dataset), batch_sampler=sampler,
                                           num_workers=workers, persistent_workers=workers > 0)

    def preview_batch(self, n: int = 8):
        """A fixed set of images and timesteps spread over the whole range, for the reconstruction
        grids."""
        items = [self.dataset[(i % len(self.dataset), Tag.PREVIEW + i)] for i in range(n)]
        images = torch.stack([im for im, _ in items])
        keys = torch.tensor([k for _, k in items], dtype=torch.int64)
        t = torch.linspace(0.1, 0.9, n).mul(self.cfg.diffusion.timesteps).long()
        return images, keys, t

    # ---- the loop --------------------------------------------------------------------------------
    def summary(self) -> str:
        acc, tc = self.accelerator, self.cfg.train
        layout = "channels-last" if self.memory_format == torch.channels_last else "NCHW"
        return (f"device: {acc.device} | processes: {acc.num_processes} | precision: {self.precision} | "
                f"layout: {layout} | compile: {self.compile} | "
                f"batch: {tc.batch_size} = {self.micro} x {acc.num_processes} processes x {tc.grad_accum_steps} "
                f"accumulation | parameters: {self.num_params / 1e6:.2f}M | data: {self.cfg.data.source}, "
                f"{len(self.dataset)} images, {self.cfg.data.crop_size} px | objective: "
                f"{self.cfg.diffusion.objective} | steps: {self.step} -> {tc.max_steps} | run: {self.run_dir}"
                + self._norm_kernel_note())

    def _norm_kernel_note(self) -> str:
        """On CPU: whether GroupNorm + SiLU run as the fused kernel (built here on first use) or
        unfused."""
        if self.accelerator.device.type != "cpu":
            return ""
        fused = self.memory_format == torch.channels_last and fused_kernel_available()
        return f" | norm kernel: {'fused' if fused else 'unfused'}"

    def fit(self) -> Path:
        """Train from ``self.step`` to ``train.max_steps``; returns the run folder."""
        acc, tc = self.accelerator, self.cfg.train
        main = acc.is_main_process
        if main:
            self._open_run_folder()
        acc.print(self.summary())
        # the grids' samples, and the colour check's
        preview = self.preview_batch() if main else None
        if self.step == 0:
            self.export()
            if main and tc.image_every:
                self._save_preview(preview)
        # its first window starts here
        log = RunLog(self.run_dir, self.cfg.diffusion.timesteps, main)
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=None if main else True,
                   desc="pretrain",
                   dynamic_ncols=True)  # disable=None: no bar when not on a terminal
        self.model.train()
        try:
            for images, keys, skipped in self.loader():
                out = self._train_step(images, keys)
                log.add(out.loss, out.t, images.shape[0] * acc.num_processes, int(skipped.sum()))
                if not acc.sync_gradients:
                    continue  # a micro-batch of an accumulated step
                self.step += 1
                self.ema.update(acc.unwrap_model(self.model), step=self.step)
                if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                    self._check_watched()
                    record = log.row(self.step, lr_at(self.step - 1, tc), acc.gather)
                    if main:
                        record.update(self._colour_check(preview))
                        log.write(record)
                        bar.set_postfix(loss=f"{record['loss']:.4f}",
                                        img_s=f"{record['img_per_s']:.1f}")
                bar.update(1)
                self._save_on_cadence(preview)
        finally:
            bar.close()
            log.close()
        acc.wait_for_everyone()
        acc.print(f"done: {self.step} steps; export in {self.run_dir / 'export'}")
        return self.run_dir

    def _open_run_folder(self) -> None:
        """The run folder with the resolved config, the pool's record (image folders: how many
        images, how many excluded and why) and the log without the steps after ``self.step`` (a
        start or a resume replays them)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump(self.cfg, self.run_dir / "config.yaml")
        tc, record = self.cfg.train, getattr(self.dataset, "record", None)
        # what a resume of a shard stream keeps (pretrain.shards)
        if hasattr(self.dataset, "stream"):
            record = {**record, "streams": stream_layout(self.run_dir / "pool.json", self.step,
                                                         self.cfg.data,
                                                         self.accelerator.num_processes,
                                                         tc.grad_accum_steps)}
        if record is not None:
            write_text_atomic(self.run_dir / "pool.json", json.dumps(record, indent=1))
        if hasattr(self.dataset, "save_preview"):
            self.dataset.save_preview(self.run_dir / "tissue.png",
                                      first_items(64, len(self.dataset), tc.batch_size,
                                                  tc.seed, tc.max_steps))
        truncate_log(self.run_dir, self.step)

    def _train_step(self, images: torch.Tensor, keys: torch.Tensor):
        """Forward, backward and (at the last micro-batch of a step) clip, learning rate and
        optimizer step; returns the objective's output. Losses and gradient norms are watched for
        non-finite values without a GPU sync."""
        acc, tc = self.accelerator, self.cfg.train
        images = images.to(acc.device,
                           non_blocking=True).contiguous(memory_format=self.memory_format)
        with acc.accumulate(self.model):
            out = self.objective.loss(self.model, images, keys.to(acc.device))
            loss = out.loss.mean()
            self._watch("loss", loss)
            acc.backward(loss)
            if acc.sync_gradients and tc.grad_clip > 0:
                norm = acc.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                # fp16: an overflow is the loss scaler's to skip, not an error
                if self.precision != "fp16":
                    self._watch("gradient norm", norm)
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step, tc)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return out

    def _save_on_cadence(self, preview) -> None:
        """The reconstruction grid, the export and the checkpoint due at ``self.step``; the export
        first, so a checkpoint of step N vouches for exports/step_N (a resume that finds it missing
        writes it)."""
        tc, last = self.cfg.train, self.step == self.cfg.train.max_steps
        if self.accelerator.is_main_process and tc.image_every and (self.step % tc.image_every == 0 or last):
            self._save_preview(preview)
        if (tc.export_every and self.step % tc.export_every == 0) or last or self.step in tc.export_at:
            self.export()
        if self.step % tc.checkpoint_every == 0 or last:
            self.save_checkpoint()

    @torch.no_grad()
    def _colour_check(self, preview) -> dict[str, float]:
        """``previews.colour_check`` of the EMA weights on the preview images."""
        images, keys, _ = preview
        model, dev = self.ema.module, self.accelerator.device
        was_training = model.training
        model.eval()
        with self.accelerator.autocast():
            out = colour_check(self.objective, model, images.to(dev), keys.to(dev))
        model.train(was_training)
        return out

    @torch.no_grad()
    def _save_preview(self, preview) -> None:
        images, keys, t = preview
        model = self.ema.module
        was_training = model.training
        model.eval()
        dev = self.accelerator.device
        with self.accelerator.autocast():
            out = self.objective.loss(model, images.to(dev), keys.to(dev), t=t.to(dev))
        model.train(was_training)
        save_reconstruction_grid(self.run_dir / "samples" / f"step_{self.step}.png", images,
                                 out.x_t.float().cpu(), out.x0_pred.float().cpu())


RUN_FILES = {"config.yaml", "pool.json", "tissue.png", "log.jsonl", "samples", "exports", "export",
             "checkpoints", "tb"}


def train(cfg: Config, resume: str | None = None, device: torch.device | None = None) -> Path:
    """Pretrain according to ``cfg``; returns the run folder. ``device`` (default:
    ``train.device``): ``cpu`` forces the CPU; with ``cuda`` Accelerate places each process on its
    own GPU."""
    refuse_foreign(Path(cfg.train.out_dir), RUN_FILES, "a pretraining run",
                   "give a new train.out_dir (--out): a run writes config.yaml, log.jsonl and export/ there")
    if not resume and list_checkpoints(Path(cfg.train.out_dir)):
        raise ConfigError(f"{cfg.train.out_dir}: holds checkpoints of an earlier run; --resume latest continues it, "
                          f"another train.out_dir starts a new one")
    trainer = Trainer.from_config(cfg, device)
    with run_lock(trainer.run_dir, trainer.accelerator):  # one writer per run folder
        if resume:
            trainer.resume(resume)
        if trainer.step >= cfg.train.max_steps:
            if trainer.step == cfg.train.max_steps and not trainer.export_is_current():
                trainer.export()  # killed after the last checkpoint but before its export
                trainer.accelerator.print(f"wrote the missing export of step {trainer.step}")
            trainer.accelerator.print(
                f"nothing to do: step {trainer.step} >= train.max_steps={cfg.train.max_steps}")
            return trainer.run_dir
        return trainer.fit()


__all__ = ["Trainer", "train", "list_checkpoints"]
