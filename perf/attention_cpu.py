#!/usr/bin/env python
"""bf16 attention on CPU: the U-Net's matmul + softmax path against torch's fused CPU kernel and its math path.

    python perf/attention_cpu.py [--reps 10]

Forward + backward of softmax attention at the cpu-small preset's shapes (batch 16; 256 tokens x 4 heads and
64 tokens x 8 heads, 32 channels per head), q, k, v with unit channel stride as the U-Net makes them. Prints the
median milliseconds of each and the largest deviation from an fp32 reference. Like the trainer, it keeps freed
memory in the heap (``mdm/cpu_memory.py``); without that the [B, heads, T, T] weights pay page faults every call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mdm.nn.unet_blocks import _attention  # noqa: E402
from mdm.pretrain.cpu_memory import keep_freed_memory  # noqa: E402


def _sdpa(backend):
    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)
    return run


def _step(fn, qkv: torch.Tensor, grad: torch.Tensor, ch: int) -> torch.Tensor:
    """Forward + backward of ``fn(q, k, v)`` for ``qkv [B, T, heads, 3 * ch]``; returns the output in fp32."""
    x = qkv.detach().requires_grad_()
    out = fn(*x.transpose(1, 2).split(ch, dim=-1))
    out.backward(grad)
    return out.detach().float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    keep_freed_memory()  # as the trainer does on CPU
    paths = {"mdm (bf16 matmuls)": _attention, "torch fused kernel": _sdpa(SDPBackend.FLASH_ATTENTION),
             "torch math path": _sdpa(SDPBackend.MATH)}
    for batch, heads, tokens, ch in ((16, 4, 256, 32), (16, 8, 64, 32)):
        gen = torch.Generator().manual_seed(0)
        qkv = torch.randn(batch, tokens, heads, 3 * ch, generator=gen).bfloat16()  # [B, T, heads, 3ch] like the U-Net
        grad = torch.randn(batch, heads, tokens, ch, generator=gen).bfloat16()

        reference = _step(F.scaled_dot_product_attention, qkv.float(), grad.float(), ch)
        print(f"{tokens} tokens x {heads} heads of {ch}, batch {batch}, bf16, forward + backward:")
        for name, fn in paths.items():
            err = (_step(fn, qkv, grad, ch) - reference).abs().max().item()
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                _step(fn, qkv, grad, ch)
                times.append(time.perf_counter() - t)
            print(f"  {name:20s} {statistics.median(times) * 1e3:7.2f} ms   max |error| vs fp32 {err:.4f}")


if __name__ == "__main__":
    main()
