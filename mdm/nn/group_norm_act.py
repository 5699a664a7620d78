"""GroupNorm, an optional per-sample scale/shift and SiLU as one fused CPU kernel (fp32 or bf16
storage).

``group_norm_act(norm, x, scale, shift, act)`` returns ``act(norm(x) * (1 + scale) + shift)`` for
``x [N, C, *S]`` (``scale``/``shift``: ``[N, C, 1, ...]`` or None). The U-Net calls it wherever
guided-diffusion has GroupNorm32 followed by SiLU (and for the attention norm, without SiLU).

On CPU, for channels-last tensors, it runs ``mdm/nn/csrc/group_norm_act.cpp``: one read pass for the
statistics and one read/write pass for the output (two and one in backward), all arithmetic in fp32
and bf16 only as storage. The unfused path it replaces (GroupNorm upcast to fp32, cast back, SiLU)
spent about a third of a bf16 training step on this 2-core CPU; see ``perf/pretrain_throughput.py``.
The kernel is compiled on first use with the system's C++ compiler (about 20 s, cached under
``~/.cache/torch_extensions`` per CPU type and torch version). Elsewhere (CUDA, NCHW layouts, no
compiler, ``MDM_FUSED_NORM=0``) the unfused path runs, with the same results up to rounding.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "group_norm_act.cpp")


# a build takes about 20 s; a lock older than this was left by a build that died
BUILD_TIMEOUT_S = 600


def _build_tag() -> str:
    """A short hash of this CPU's model and flags and of the torch version: the kernel is built with
    -march=native against torch's headers, so a cache shared by machines or by environments must not
    hand one's build to another."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [
                ln for ln in f.read().splitlines() if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = [platform.processor(), platform.machine()]
    return hashlib.sha1("\n".join([*lines, torch.__version__]).encode()).hexdigest()[:10]


def _build_directory(name: str) -> str:
    """``$TORCH_EXTENSIONS_DIR/<name>`` (default ``~/.cache/torch_extensions/<name>``), created,
    with a build lock older than ``BUILD_TIMEOUT_S`` removed: torch before 2.10 waits forever on the
    lock file of a crashed build."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                     "torch_extensions")
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    lock = os.path.join(folder, "lock")
    try:
        if time.time() - os.path.getmtime(lock) > BUILD_TIMEOUT_S:
            os.remove(lock)
    except OSError:  # no lock, or another process removed it first
        pass
    return folder


@functools.cache
def _extension():
    """The compiled kernel module, or None (with one warning) where it cannot be built."""
    if os.environ.get("MDM_FUSED_NORM", "1") == "0":
        return None
    try:
        cpp_logger = logging.getLogger("torch.utils.cpp_extension")
        level = cpp_logger.level
        # its import warns about CUDA_HOME, irrelevant to a CPU kernel
        cpp_logger.setLevel(logging.ERROR)
        try:
            from torch.utils.cpp_extension import load
        finally:
            cpp_logger.setLevel(level)
        name = f"mdm_group_norm_act_{_build_tag()}"
        return load(name=name, sources=[SOURCE], build_directory=_build_directory(name),
                    extra_cflags=["-O3", "-march=native", "-fopenmp"],
                    extra_ldflags=["-fopenmp"], verbose=False)
    # no compiler, no ninja, unsupported platform: the unfused path still works
    except Exception as e:
        warnings.warn(f"fused GroupNorm+SiLU CPU kernel unavailable, using the unfused path "
                      f"({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''})",
                      stacklevel=3)
        return None


def fused_kernel_available() -> bool:
    """Whether CPU channels-last calls will use the fused kernel (builds it on first call)."""
    return _extension() is not None


class _GroupNormActFunction(torch.autograd.Function):
    """Autograd wrapper of the kernel. ``x [N, S, C]`` contiguous; ``a``, ``b`` ``[N, C]`` fp32 with
    ``z = xhat * a + b`` per sample and channel."""

    @staticmethod
    def forward(ctx, x, a, b, groups: int, eps: float, act: bool):
        y, mean, rstd = _extension().forward(x, a, b, groups, eps, act)
        ctx.save_for_backward(x, mean, rstd, a, b)
        ctx.act = act
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, rstd, a, b = ctx.saved_tensors
        dx, da, db = _extension().backward(dy.to(x.dtype).contiguous(), x, mean,
                                           rstd, a, b, ctx.act)
        return dx, da, db, None, None, None


def _use_kernel(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.dim() >= 3
            and x.movedim(1, -1).is_contiguous() and _extension() is not None)


def group_norm_act(norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None = None,
                   shift: torch.Tensor | None = None, act: bool = True) -> torch.Tensor:
    """``silu(norm(x) * (1 + scale) + shift)`` (without SiLU when ``act`` is False), in ``x``'s
    dtype.

    ``norm`` is the module holding the GroupNorm parameters (fp32, computed in fp32 whatever ``x``'s
    dtype); ``x`` is ``[N, C, *S]``; ``scale`` and ``shift`` broadcast as ``[N, C, 1, ...]`` or are
    both None.
    """
    if not _use_kernel(x):
        h = norm(x)
        if scale is not None:
            h = h * (1 + scale) + shift
        return F.silu(h) if act else h
    n, c = x.shape[:2]
    a = norm.weight.float().expand(n, c)
    b = norm.bias.float().expand(n, c)
    if scale is not None:
        factor = 1 + scale.float().reshape(n, c)
        a, b = a * factor, b * factor + shift.float().reshape(n, c)
    channels_last = x.movedim(1, -1)
    y = _GroupNormActFunction.apply(channels_last.reshape(n, -1, c), a.contiguous(), b.contiguous(),
                                    norm.num_groups, norm.eps, act)
    return y.view(channels_last.shape).movedim(-1, 1)
