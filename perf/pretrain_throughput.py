#!/usr/bin/env python
"""Pretraining throughput at the ``cpu-small`` preset (batch 16, 64 px): the full training step (masking, forward,
SSIM loss, backward, AdamW, EMA) in fp32 and under bf16 autocast, against the matmul peak of the same process.

    python perf/pretrain_throughput.py [--steps 8] [--batch 16] [--json] [--no-fused-norm] [--profile]
    python perf/pretrain_throughput.py --device cuda --config configs/paper.yaml [--batch 16] [--variants ...]

On CUDA it times the step as the trainer runs it at the paper preset under bf16 (NCHW, the ResBlocks and attention
blocks compiled, cuDNN's algorithm search on), then other settings (``--variants``, see ``CUDA_VARIANTS``):
channels-last instead of NCHW, no compilation with and without the cuDNN search, every block compiled (the
default compiles one shared ResBlock function for at most 8 shapes), the whole model compiled, and that replayed as
CUDA graphs. Each variant starts from cleared in-memory compile caches (inductor's on-disk cache is kept: a
variant that compiles graphs an earlier one compiled warms up faster; give each process its own
``TORCHINDUCTOR_CACHE_DIR`` for comparable warm-ups). cuDNN remembers the algorithm it chose per convolution shape
for the whole process, whatever the search setting, so compare ``none`` with ``none-no-cudnn-benchmark`` in two
processes (``perf/gpu_checks.sh`` does). All are timed against an 8192^3 bf16 matmul measured in the same process.

Model FLOPs per image = 3 x the forward FLOPs counted by ``torch.utils.flop_counter`` (forward + 2x backward).
The achieved fraction = model FLOP/s / the 2048x2048 matmul FLOP/s of the matching dtype. It also times the model's
convolutions alone in each dtype (the same shapes, forward + backward): on CPUs where torch's fp32 matmul (MKL) is
slower than oneDNN's convolutions, that rate is the more honest ceiling. All numbers come from one run (medians over
``--steps`` timed steps), since the machine is shared and noisy. GroupNorm + SiLU run as the fused CPU kernel of
``mdm/group_norm_act.py``, as in training; ``--no-fused-norm`` times the unfused path it replaced.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch
from timm.utils import ModelEmaV3
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mdm.common import rng  # noqa: E402
from mdm.common.config_io import load  # noqa: E402
from mdm.common.devices import native_bf16  # noqa: E402
from mdm.nn.group_norm_act import fused_kernel_available  # noqa: E402
from mdm.nn.unet import (
    build_unet,  # noqa: E402
    compile_unet,  # noqa: E402
)
from mdm.pretrain.cpu_memory import keep_freed_memory  # noqa: E402
from mdm.pretrain.objectives import build_objective  # noqa: E402
from mdm.pretrain.run_setup import make_optimizer  # noqa: E402


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def train_step_rate(cfg, batch: int, steps: int, bf16: bool, channels_last: bool = True,
                    compile_model: bool = False, profile: bool = False) -> float:
    """Images/s of the full training step (median over ``steps`` after two warm-up steps); with ``profile``, also
    print where the time of 3 more steps goes (torch.profiler, by operator)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_unet(cfg.model).to(memory_format=fmt)  # channels_last by default, as the trainer does
    objective = build_objective(cfg.diffusion)
    opt = make_optimizer(model, lr=1e-4, weight_decay=0.0, device="cpu")  # as the trainer builds it
    ema = ModelEmaV3(model, decay=0.9999, use_warmup=True)
    net = torch.compile(model) if compile_model else model
    size = cfg.model.image_size
    x = (torch.rand(batch, 3, size, size) * 2 - 1).contiguous(memory_format=fmt)

    def train_step(step: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = objective.loss(net, x, rng.sample_keys(0, step, 0, batch)).loss.mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model, step=step + 1)

    times = []
    for step in range(steps + 2):  # two warm-up steps
        t = time.perf_counter()
        train_step(step)
        times.append(time.perf_counter() - t)
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for step in range(steps + 2, steps + 5):
                train_step(step)
        print(f"{'bf16' if bf16 else 'fp32'} step, by operator (3 steps):")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
    return batch / statistics.median(times[2:])


def conv_ceiling(cfg, batch: int, reps: int = 3, channels_last: bool = True,
                 dtype: torch.dtype = torch.float32) -> dict:
    """The model's convolutions alone: every ``Conv2d`` call of one forward pass (same shapes, layout and batch),
    timed standalone in ``dtype`` for forward + backward (input and weight gradients, like training). Their GFLOP/s
    bound what the whole step can reach on this CPU, since convolutions carry nearly all of the model's FLOPs."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_unet(cfg.model).to(memory_format=fmt)
    shapes = []
    hooks = [m.register_forward_hook(lambda m, inp, out: shapes.append((m, inp[0].shape)))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    size = cfg.model.image_size
    with torch.no_grad():
        model(torch.zeros(batch, 3, size, size).contiguous(memory_format=fmt), torch.ones(batch))
    for h in hooks:
        h.remove()
    total_time, total_flops = 0.0, 0.0
    for conv, shape in shapes:
        conv.to(dtype)
        x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(shape[1] != 3)  # image: none
        with torch.no_grad():
            grad = torch.randn_like(conv(x))  # same layout as the output, like the gradient in training
        with FlopCounterMode(display=False) as counter:
            conv(x).backward(grad)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            conv(x).backward(grad)
            times.append(time.perf_counter() - t)
        total_time += statistics.median(times)
        total_flops += counter.get_total_flops()
    return {"conv_calls": len(shapes), "conv_gflop_per_image": total_flops / batch / 1e9,
            "conv_gflop_s": total_flops / total_time / 1e9}


def forward_flops_per_image(cfg) -> float:
    """Counted under bf16 autocast, where the attention products run as plain matmuls that the counter sees
    (torch's flop counter does not count its fused CPU attention kernel)."""
    model = build_unet(cfg.model)
    size = cfg.model.image_size
    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.zeros(1, 3, size, size), torch.ones(1))
    return float(counter.get_total_flops())


DEFAULT_RECOMPILE_LIMIT = torch._dynamo.config.recompile_limit
# name -> (what it is, channels-last, compile mode, cuDNN algorithm search, recompile limit or None for torch's)
CUDA_VARIANTS = {
    "default": ("default: NCHW, compile regional", False, "regional", True, None),
    "channels-last": ("channels-last", True, "regional", True, None),
    "none": ("no compile", False, "none", True, None),
    "none-no-cudnn-benchmark": ("no compile, no cuDNN search", False, "none", False, None),
    "all-blocks": ("compile regional, every block", False, "regional", True, 64),
    "full": ("compile full", False, "full", True, None),
    "full-cudagraphs": ("compile full, CUDA graphs", False, "reduce-overhead", True, None),
}


def cuda_step_rate(cfg, batch: int, steps: int, channels_last: bool, compile_mode: str, cudnn_benchmark: bool = True,
                   recompile_limit: int | None = None) -> dict:
    """Images/s of the full training step on the GPU under bf16 autocast (median of ``steps`` timed steps after
    warm-up), with gradient clipping, fused AdamW and the EMA as the trainer runs them, and the peak memory.
    Compiled code is cached per function, not per model, so the cache is cleared first: otherwise a variant would
    inherit the previous one's compiled shapes and its recompile budget."""
    device = torch.device("cuda")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = recompile_limit or DEFAULT_RECOMPILE_LIMIT
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.manual_seed(0)
    model = build_unet(cfg.model).to(device, memory_format=fmt)
    ema = ModelEmaV3(model, decay=0.9999, use_warmup=True)  # before compiling, as the trainer does
    if compile_mode == "reduce-overhead":  # the whole model compiled and replayed as CUDA graphs
        model.compile(mode="reduce-overhead")
    else:
        compile_unet(model, compile_mode)
    objective = build_objective(cfg.diffusion)
    opt = make_optimizer(model, lr=1e-4, weight_decay=0.0, device=device)
    size = cfg.model.image_size
    x = (torch.rand(batch, 3, size, size, device=device) * 2 - 1).contiguous(memory_format=fmt)
    torch.cuda.reset_peak_memory_stats()

    def train_step(step: int) -> None:
        if compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be overwritten
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = objective.loss(model, x, rng.sample_keys(0, step, 0, batch, device=device)).loss.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model, step=step + 1)

    t = time.perf_counter()
    for step in range(3):  # warm-up (and compilation)
        train_step(step)
    torch.cuda.synchronize()
    warmup = time.perf_counter() - t
    times = []
    for step in range(3, steps + 3):
        t = time.perf_counter()
        train_step(step)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"img_s": batch / statistics.median(times), "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
            "warmup_s": warmup}


def cuda_main(args) -> None:
    """The GPU numbers: the step in the trainer's default setting and with each speed-up switched off in turn,
    against the bf16 matmul rate (an 8192^3 product) measured in the same process."""
    cfg = load(args.config)
    device = torch.device("cuda")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    peak = 10 * 2 * 8192 ** 3 / (time.perf_counter() - t)
    del a, b
    model = build_unet(cfg.model).to(device)
    size = cfg.model.image_size
    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(torch.zeros(1, 3, size, size, device=device), torch.ones(1, device=device))
    flops = 3 * counter.get_total_flops()
    del model
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch,
              "model_tflop_per_image": flops / 1e12, "bf16_matmul_tflop_s": peak / 1e12, "variants": {}}
    for key in args.variants.split(","):
        name, *setting = CUDA_VARIANTS[key]
        r = cuda_step_rate(cfg, args.batch, args.steps, *setting)
        r["model_tflop_s"] = r["img_s"] * flops / 1e12
        r["matmul_fraction"] = r["img_s"] * flops / peak
        result["variants"][name] = r
        gc.collect()  # a compiled module refers to itself: free the variant's model before the next one
        torch.cuda.empty_cache()
        print(f"{name}: {r['img_s']:.1f} img/s, {r['model_tflop_s']:.0f} TFLOP/s = {r['matmul_fraction']:.3f} of "
              f"the bf16 matmul rate ({peak / 1e12:.0f} TFLOP/s), peak {r['peak_gb']:.1f} GB, warm-up "
              f"{r['warmup_s']:.0f} s", flush=True)
    if args.json:
        print(json.dumps(result))


def count_block_graphs(cfg, limit: int, size: int = 64) -> dict:
    """How many graphs torch.compile makes of the ResBlocks and attention blocks in one forward pass, with dynamo's
    eager backend (no code generation, so it runs in seconds on a CPU) and ``limit`` recompiles per function."""
    from torch._dynamo.utils import counters

    from mdm.nn.unet_blocks import AttentionBlock, ResBlock

    torch._dynamo.reset()
    counters.clear()
    torch._dynamo.config.recompile_limit = limit
    model = build_unet(cfg.model)
    for block in model.modules():
        if isinstance(block, (ResBlock, AttentionBlock)):
            block.compile(backend="eager")
    with torch.no_grad():
        model(torch.randn(2, 3, size, size), torch.ones(2))
    return {"recompile_limit": limit, "graphs": counters["stats"]["unique_graphs"],
            "frames_over_the_limit": counters["frames"]["total"] - counters["frames"]["ok"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "cpu-small.yaml"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-channels-last", action="store_true",
                   help="time the NCHW layout instead (train.channels_last=false) for comparison")
    p.add_argument("--compile", action="store_true", help="experiment: time the step with torch.compile(model)")
    p.add_argument("--profile", action="store_true", help="also print where the step's time goes, by operator")
    p.add_argument("--no-fused-norm", action="store_true",
                   help="time the unfused GroupNorm + SiLU path (MDM_FUSED_NORM=0) for comparison")
    p.add_argument("--force-bf16", action="store_true",
                   help="time the bf16 step even where this CPU has no native bf16 (it is emulated, very slowly)")
    p.add_argument("--device", default="cpu", help="cpu (the cpu-small numbers) or cuda (--config paper.yaml)")
    p.add_argument("--variants", default="default,channels-last,none",
                   help=f"CUDA: which steps to time, of {', '.join(CUDA_VARIANTS)} (comma-separated)")
    p.add_argument("--count-graphs", action="store_true",
                   help="print how many block graphs one forward pass compiles at torch's recompile limit and at 64")
    args = p.parse_args()
    if args.count_graphs:
        cfg = load(args.config)
        print(json.dumps([count_block_graphs(cfg, limit) for limit in (DEFAULT_RECOMPILE_LIMIT, 64)]))
        return
    if args.device.startswith("cuda"):
        cuda_main(args)
        return
    if args.no_fused_norm:
        os.environ["MDM_FUSED_NORM"] = "0"
    keep_freed_memory()  # as the trainer does on CPU
    cfg = load(args.config)
    flops = 3 * forward_flops_per_image(cfg)
    result = {"threads": torch.get_num_threads(), "batch": args.batch, "channels_last": not args.no_channels_last,
              "compile": args.compile, "fused_norm": fused_kernel_available() and not args.no_channels_last,
              "native_bf16": native_bf16(torch.device("cpu")),
              "model_gflop_per_image": flops / 1e9}
    for name, dtype, bf16 in (("fp32", torch.float32, False), ("bf16", torch.bfloat16, True)):
        if bf16 and not (result["native_bf16"] or args.force_bf16):
            # emulated bf16 runs at well under 1% of fp32 here: time a small matmul only, skip the train step
            result.update({"bf16_img_s": None, "bf16_peak_gflop_s": matmul_peak(dtype, n=512, reps=2) / 1e9,
                           "bf16_peak_fraction": None})
            continue
        peak = matmul_peak(dtype)
        rate = train_step_rate(cfg, args.batch, args.steps, bf16, channels_last=not args.no_channels_last,
                               compile_model=args.compile, profile=args.profile)
        result.update({f"{name}_img_s": rate, f"{name}_peak_gflop_s": peak / 1e9,
                       f"{name}_peak_fraction": rate * flops / peak})
        ceiling = conv_ceiling(cfg, args.batch, channels_last=not args.no_channels_last, dtype=dtype)
        result.update({"conv_calls": ceiling["conv_calls"], "conv_gflop_per_image": ceiling["conv_gflop_per_image"],
                       f"{name}_conv_gflop_s": ceiling["conv_gflop_s"],
                       f"{name}_conv_peak_fraction": ceiling["conv_gflop_s"] * 1e9 / peak,
                       f"{name}_conv_fraction": rate * flops / (ceiling["conv_gflop_s"] * 1e9)})
    if args.json:
        print(json.dumps(result))
        return
    print(f"cpu-small, batch {args.batch}, {result['threads']} threads, model {flops / 1e9:.1f} GFLOP/image "
          f"(3 x forward), native bf16: {result['native_bf16']}, GroupNorm + SiLU: "
          f"{'fused kernel' if result['fused_norm'] else 'unfused'}")
    for name in ("fp32", "bf16"):
        if result[f"{name}_img_s"] is None:
            print(f"{name}: skipped, no native bf16 on this CPU (512x512 bf16 matmul: "
                  f"{result[f'{name}_peak_gflop_s']:.2f} GFLOP/s, emulated); --force-bf16 times it anyway")
            continue
        print(f"{name}: {result[f'{name}_img_s']:.2f} img/s, matmul peak {result[f'{name}_peak_gflop_s']:.1f} "
              f"GFLOP/s, achieved fraction {result[f'{name}_peak_fraction']:.2f}")
        print(f"  its {result['conv_calls']} convolutions alone in {name} (forward + backward, same shapes): "
              f"{result[f'{name}_conv_gflop_s']:.1f} GFLOP/s = {result[f'{name}_conv_peak_fraction']:.2f} of the "
              f"matmul peak; the step runs at {result[f'{name}_conv_fraction']:.2f} of that rate "
              f"(convolutions are {result['conv_gflop_per_image'] / flops * 1e9:.0%} of the model FLOPs)")


if __name__ == "__main__":
    main()
