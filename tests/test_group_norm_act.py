"""The fused CPU GroupNorm + scale/shift + SiLU kernel against a float64 reference, and the U-Net wired to it."""

import shutil
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdm.nn import group_norm_act as gna
from mdm.nn import unet, unet_blocks
from mdm.nn.unet import UNetModel
from mdm.nn.unet_blocks import GroupNorm32, ResBlock

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernel")


@contextmanager
def unfused(monkeypatch):
    """Within the block, group_norm_act takes the unfused path."""
    monkeypatch.setenv("MDM_FUSED_NORM", "0")
    gna._extension.cache_clear()
    try:
        yield
    finally:
        monkeypatch.delenv("MDM_FUSED_NORM")
        gna._extension.cache_clear()


def _inputs(shape, dtype, scale_shift, seed=0, loc=0.0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    norm = GroupNorm32(8, c)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(c, generator=g))
        norm.bias.copy_(0.5 * torch.randn(c, generator=g))
    x = (loc + spread * torch.randn(shape, generator=g)).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x.transpose(1, 2).contiguous().mT
    ss = [0.3 * torch.randn(n, c, *[1] * (len(shape) - 2), generator=g).to(dtype) for _ in range(2)]
    grad = torch.randn(shape, generator=g).to(dtype)
    return norm, x, (ss if scale_shift else [None, None]), grad


def _run(fn, norm, x, ss, grad):
    """Output and gradients of x, weight, bias, scale, shift (float64), for fn(norm, x, scale, shift)."""
    leaves = [x, norm.weight, norm.bias] + [t for t in ss if t is not None]
    leaves = [t.detach().requires_grad_() for t in leaves]
    norm = GroupNorm32(norm.num_groups, norm.num_channels)
    norm.weight, norm.bias = torch.nn.Parameter(leaves[1]), torch.nn.Parameter(leaves[2])
    scale, shift = (leaves[3], leaves[4]) if len(leaves) == 5 else (None, None)
    out = fn(norm, leaves[0], scale, shift)
    out.backward(grad.to(out.dtype))
    grads = [norm.weight.grad if i == 1 else norm.bias.grad if i == 2 else t.grad for i, t in enumerate(leaves)]
    return out.detach().double(), [g.double() for g in grads]


def _reference(act):
    def fn(norm, x, scale, shift):
        h = F.group_norm(x.double(), norm.num_groups, norm.weight.double(), norm.bias.double(), norm.eps)
        if scale is not None:
            h = h * (1 + scale.double()) + shift.double()
        return F.silu(h) if act else h
    return fn


def _fused(act):
    return lambda norm, x, scale, shift: gna.group_norm_act(norm, x, scale, shift, act=act)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


CASES = [((4, 32, 8, 12), True, True), ((4, 32, 8, 12), True, False), ((3, 64, 40), False, False),
         ((1, 32, 8, 12), True, True)]  # one sample: fewer samples than threads takes the two-pass schedule


@pytest.mark.parametrize("shape,act,scale_shift", CASES,
                         ids=["silu+scale_shift", "silu", "attention-norm-3d", "one-sample"])
@needs_compiler
def test_fp32_kernel_matches_float64_reference(shape, act, scale_shift):
    assert gna.fused_kernel_available(), "the kernel did not build on this machine"
    norm, x, ss, grad = _inputs(shape, torch.float32, scale_shift)
    out, grads = _run(_fused(act), norm, x, ss, grad)
    ref_out, ref_grads = _run(_reference(act), norm, x, ss, grad)
    assert _rel(out, ref_out) < 1e-6
    for g, r in zip(grads, ref_grads):
        assert _rel(g, r) < 1e-5


@needs_compiler
@pytest.mark.parametrize("shape,act,scale_shift", CASES[:2], ids=["silu+scale_shift", "silu"])
def test_bf16_kernel_is_at_least_as_accurate_as_the_unfused_path(shape, act, scale_shift, monkeypatch):
    """bf16 storage, fp32 arithmetic: no further from the float64 result than GroupNorm32 + SiLU under autocast."""
    assert gna.fused_kernel_available(), "the kernel did not build on this machine"
    norm, x, ss, grad = _inputs(shape, torch.bfloat16, scale_shift)
    ref_out, ref_grads = _run(_reference(act), norm, x, ss, grad)
    out, grads = _run(_fused(act), norm, x, ss, grad)
    with unfused(monkeypatch):
        unf_out, unf_grads = _run(_fused(act), norm, x, ss, grad)
    assert out.dtype == ref_out.dtype and _rel(out, ref_out) < 5e-3  # bf16 rounding of the output: ~2e-3
    assert _rel(out, ref_out) <= 1.05 * _rel(unf_out, ref_out)
    for g, r, u in zip(grads, ref_grads, unf_grads):
        assert _rel(g, r) < 1e-2
        assert _rel(g, r) <= 1.05 * _rel(u, r) + 1e-4


@needs_compiler
def test_statistics_stay_exact_when_the_mean_dwarfs_the_spread():
    """x = 1000 + 0.01 * noise: fp32 E[x^2] - E[x]^2 would lose the variance entirely (torch's own fp32
    channels-last GroupNorm is off by 190% on this input, torch 2.14). What remains is the fp32 rounding of the
    stored mean (ulp 6e-5 against a spread of 0.01)."""
    assert gna.fused_kernel_available(), "the kernel did not build on this machine"
    norm, x, ss, grad = _inputs((2, 32, 16, 16), torch.float32, False, loc=1000.0, spread=0.01)
    out, grads = _run(_fused(True), norm, x, ss, grad)
    ref_out, ref_grads = _run(_reference(True), norm, x, ss, grad)
    assert _rel(out, ref_out) < 5e-3
    assert _rel(grads[1], ref_grads[1]) < 5e-3  # the weight gradient depends on the normalised values


def _tiny_unet():
    torch.manual_seed(0)
    model = UNetModel(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(8,), num_head_channels=32)
    with torch.no_grad():  # zero-initialised output layers would hide wiring mistakes behind a zero output
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.to(memory_format=torch.channels_last)


def _unet_output_and_grads(model):
    model.zero_grad()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    out = model(x, torch.tensor([3, 700]))
    out.square().mean().backward()
    return out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@needs_compiler
def test_unet_gives_the_same_result_fused_and_unfused(monkeypatch):
    """Every norm of the U-Net (in/out layers with scale-shift, attention without SiLU, the output head) is wired
    to the kernel with the same meaning as the unfused modules."""
    assert gna.fused_kernel_available(), "the kernel did not build on this machine"
    model = _tiny_unet()
    out, grads = _unet_output_and_grads(model)
    with unfused(monkeypatch):
        ref_out, ref_grads = _unet_output_and_grads(model)
    assert _rel(out, ref_out) < 1e-5 and _rel(grads, ref_grads) < 1e-5
    # NCHW inputs take the unfused path inside the same call
    nchw = model.to(memory_format=torch.contiguous_format)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = nchw(x, torch.tensor([3, 700]))
        b = nchw.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last),
                                                     torch.tensor([3, 700]))
    assert _rel(a, b) < 1e-5


def test_every_norm_runs_once_with_the_activation_and_scale_shift_its_block_defines(monkeypatch):
    """The U-Net calls group_norm_act for each GroupNorm module exactly once per forward, with SiLU exactly where
    guided-diffusion's module lists put nn.SiLU after the norm, and scale/shift exactly on ResBlocks' second norm."""
    model = _tiny_unet()
    followed_by_silu = {}
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for first, second in zip(seq, list(seq)[1:]):
                if isinstance(first, nn.GroupNorm):
                    followed_by_silu[first] = isinstance(second, nn.SiLU)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    scale_shift_norms = {m.out_layers[0] for m in model.modules() if isinstance(m, ResBlock)}
    calls, real = [], unet.group_norm_act

    def spy(norm, x, scale=None, shift=None, act=True):
        calls.append((norm, act, scale is not None))
        return real(norm, x, scale, shift, act)

    for module in (unet, unet_blocks):  # the out layer; the blocks
        monkeypatch.setattr(module, "group_norm_act", spy)
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last), torch.tensor([3, 700]))
    assert sorted(id(n) for n, _, _ in calls) == sorted(id(n) for n in norms)
    assert any(not act for _, act, _ in calls)  # the attention norm
    for norm, act, scaled in calls:
        assert act == followed_by_silu.get(norm, False)
        assert scaled == (norm in scale_shift_norms)


def test_without_a_compiler_it_warns_once_and_runs_unfused(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    gna._extension.cache_clear()
    try:
        norm, x, ss, grad = _inputs((2, 32, 4, 4), torch.float32, True)
        with pytest.warns(UserWarning, match="kernel unavailable.*command not found"):
            out = gna.group_norm_act(norm, x, *ss)
        expected = F.silu(F.group_norm(x, 8, norm.weight, norm.bias) * (1 + ss[0]) + ss[1])
        torch.testing.assert_close(out, expected)
        assert not gna.fused_kernel_available()  # cached: no second build attempt, no second warning
    finally:
        gna._extension.cache_clear()


def test_a_stale_build_lock_is_removed_and_builds_are_keyed_by_torch_version(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = tmp_path / "k_stale" / "lock"
    stale.parent.mkdir()
    stale.touch()
    old = time.time() - gna.BUILD_TIMEOUT_S - 60
    os.utime(stale, (old, old))
    fresh = tmp_path / "k_fresh" / "lock"
    fresh.parent.mkdir()
    fresh.touch()
    assert gna._build_directory("k_stale") == str(stale.parent) and not stale.exists()
    gna._build_directory("k_fresh")
    assert fresh.exists()  # a build may be running right now
    tag = gna._build_tag()
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert gna._build_tag() != tag
