"""How a pretraining run computes, decided before its first step: the precision (``auto`` resolved
per device), what is compiled, the optimizer (fused AdamW) and the learning-rate schedule; and a
fresh Accelerate state for each run of a process.
"""

from __future__ import annotations

import warnings

import torch
from accelerate.state import AcceleratorState, GradientState

from ..common.devices import native_bf16
from ..common.errors import ConfigError


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision actually used. ``auto``: bf16 where the device computes it natively, else fp16
    on a GPU and fp32 on a CPU; fp16 needs a GPU (Accelerate would silently run fp32 on a CPU)."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp16" if device.type == "cuda" else "no"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA GPU (on a CPU it would silently run in fp32); "
                          "use bf16, auto or no")
    if requested == "bf16" and not native_bf16(device):
        warnings.warn(f"this {device.type.upper()} has no native bf16: bf16 autocast will run much slower than fp32 "
                      f"here", stacklevel=2)
    return requested


def fresh_accelerator_state() -> None:
    """Accelerate keeps one state per process and refuses a second ``Accelerator`` with another
    precision or device; a process that trains more than once (the study pretrains both objectives;
    tests) starts each run afresh. A distributed setup (the process group) is kept."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    AcceleratorState._reset_state(reset_partial_state=not distributed)
    GradientState._reset_state()


def resolve_compile(requested: str, device: torch.device) -> str:
    """``auto``: the ResBlocks and attention blocks compiled on a GPU (``regional``), nothing on a
    CPU (where compiling took minutes and lost speed in fp32)."""
    if requested == "auto":
        return "regional" if device.type == "cuda" else "none"
    return requested


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    """AdamW, run as one fused kernel over all parameters on CPU and CUDA: the same update up to
    rounding, and about half the time of the per-parameter loop on this CPU
    (``perf/pretrain_throughput.py --profile`` shows ``aten::_fused_adamw_``)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                             fused=torch.device(device).type in ("cpu", "cuda"))


def lr_at(step: int, cfg) -> float:
    """Linear warm-up over ``warmup_steps``, then constant (the reference's schedule)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr
