"""One device rule for every stage: choose the device once at the entry point, print it, pass it
down.

``resolve_device("auto")`` is ``cuda`` when a GPU is present, else ``cpu``. What follows from the
device is decided here too: the memory format (channels-last where it is faster: the CPU; NCHW on
CUDA, where channels-last ran the paper U-Net a third slower), the autocast precision (bf16 where
the device computes it natively) and cuDNN's algorithm search (``tune_for_fixed_shapes``).
"""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import ConfigError


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto``: ``cuda`` when a GPU is present, else ``cpu``; otherwise the device named
    (checked)."""
    if requested in ("auto", ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(
            f"device {requested!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested}: no CUDA device is available here (use cpu or auto)")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA from Ampere on; CPUs with avx512_bf16 or
    AMX). oneDNN's own check (``_is_mkldnn_bf16_supported``) also says yes on AVX-512 CPUs without
    either, where it emulates bf16 with fp32 instructions (an Ice Lake Xeon: see
    docs/throughput.md), so the CPU's instructions are asked for instead."""
    if device.type == "cuda":
        # emulated bf16 (pre-Ampere) is slow
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu" or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    instructions = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported",
                                                                "_is_amx_tile_supported")]
    return any(ask() for ask in instructions if ask is not None)


def memory_format(setting: bool | str, device: torch.device) -> torch.memory_format:
    """``auto``: channels-last on the CPU, NCHW elsewhere; ``True`` / ``False`` force one."""
    if setting == "auto":
        setting = device.type == "cpu"
    return torch.channels_last if setting else torch.contiguous_format


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``setting`` (``auto``: bf16 where native, else none; ``no``; ``bf16``;
    ``fp16``)."""
    if setting == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def autocast(dtype: torch.dtype | None, device: torch.device):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def tune_for_fixed_shapes(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms for each new input shape and keep the
    fastest (``torch.backends.cudnn.benchmark``, a process-wide switch): every stage here feeds
    fixed-size crops or tiles, so each shape is timed once and reused for the whole run. The choice
    rests on timings, so two runs may pick other algorithms and differ in the last bits (CUDA
    results are compared with tolerances anyway: tests/test_gpu.py). Nothing changes on the CPU.
    ``STAGES=cudnn bash perf/gpu_checks.sh`` measures what it gives (in two processes: cuDNN keeps
    its first choice per shape for the whole process, whatever the switch says later)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def machine_summary(device: torch.device) -> str:
    """One line naming where a result was computed: the GPU, or the CPU model, its cores and the
    instruction sets that decide its speed (amx_bf16, avx512_bf16, avx2); and torch's version."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model, flags = "unknown CPU", set()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo").read().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags |= set(value.split())
    isa = [f for f in ("amx_bf16", "avx512_bf16", "avx2") if f in flags]
    return f"{os.cpu_count()}-core {model} ({', '.join(isa) or 'no avx2'}), torch {torch.__version__}"
