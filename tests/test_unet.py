import os

import pytest
import torch

from mdm.common.config_io import load
from mdm.nn.unet import UNetModel, build_unet


def _meta_model(configs_dir, name):
    cfg = load(os.path.join(configs_dir, f"{name}.yaml"))
    with torch.device("meta"):
        return build_unet(cfg.model)


@pytest.mark.parametrize("name,expected", [("paper", 311.0e6), ("cpu-small", 21.06e6)])
def test_preset_parameter_counts(configs_dir, name, expected):
    model = _meta_model(configs_dir, name)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - expected) / expected < 0.005, n


def test_paper_decoder_blocks_match_the_paper(configs_dir):
    model = _meta_model(configs_dir, "paper")
    blocks = model.decoder_blocks()
    assert len(blocks) == 18
    assert sum(b.channels for b in blocks[8:13]) == 1728  # GlaS / MoNuSeg blocks 8-12
    assert sum(b.channels for b in blocks[5:13]) == 3264  # FFHQ-34 / CelebA-19 blocks 5-12
    assert blocks[0].resolution == (8, 8) and blocks[-1].resolution == (256, 256)
    # the upsample sits inside each level's last block
    assert [b.resolution[0] for b in blocks[:6]] == [8, 8, 16, 16, 16, 32]


def test_guided_diffusion_parameter_names(configs_dir):
    keys = set(_meta_model(configs_dir, "paper").state_dict())
    for k in ["time_embed.0.weight", "time_embed.2.weight", "input_blocks.0.0.weight",
              "input_blocks.1.0.in_layers.2.weight", "input_blocks.1.0.emb_layers.1.weight",
              "input_blocks.1.0.out_layers.3.weight", "middle_block.1.qkv.weight", "middle_block.1.proj_out.weight",
              "output_blocks.0.0.skip_connection.weight", "output_blocks.2.1.qkv.weight",
              "output_blocks.2.2.in_layers.0.weight",
              "output_blocks.8.2.emb_layers.1.weight", "out.2.weight"]:
        assert k in keys, k


def test_tap_shapes_match_a_real_forward():
    """Every tap (encoder, middle, decoder blocks), in the order the forward pass runs them."""
    model = UNetModel(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(16,), num_head_channels=32)
    seen = {}

    def hook(name):
        def record(module, inputs, output):
            seen[name] = tuple(output.shape[1:])
        return record

    hooks = [b.register_forward_hook(hook(name)) for name, b in model.taps().items()]
    out = model(torch.randn(2, 3, 32, 48), torch.tensor([1, 500]))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 3, 32, 48)
    taps = model.tap_blocks(32, 48)
    assert list(seen) == list(taps) == ["e0", "e1", "e2", "e3", "mid", "d0", "d1", "d2", "d3"]
    assert seen == {name: (b.channels, *b.resolution) for name, b in taps.items()}
    assert seen["e2"] == (32, 16, 24) and seen["mid"] == (64, 16, 24)  # e2 downsamples
    assert [(b.channels, *b.resolution) for b in model.decoder_blocks(32, 48)] == [
        seen[f"d{i}"] for i in range(4)]


def test_non_divisible_size_says_which_sizes_work():
    model = UNetModel(image_size=32, model_channels=32, channel_mult=(1, 1, 1), num_res_blocks=1,
                      attention_resolutions=(), num_head_channels=32)
    with pytest.raises(ValueError, match=r"height 30 is not divisible by 4.*28 or 32"):
        model(torch.randn(1, 3, 30, 32), torch.tensor([1]))


def test_attention_matches_guided_diffusion_legacy_qkv_attention():
    """AttentionBlock gives what guided-diffusion's Conv1d + QKVAttentionLegacy compute with the same weights, for
    channels-last and NCHW inputs (the published checkpoints rely on this channel order)."""
    from mdm.nn.unet_blocks import AttentionBlock

    torch.manual_seed(0)
    block = AttentionBlock(64, num_head_channels=16)
    with torch.no_grad():
        block.proj_out.weight.normal_(0, 0.1)
    x = torch.randn(2, 64, 6, 5)
    b, c, t, heads, ch = 2, 64, 30, 4, 16
    h = torch.nn.functional.group_norm(x.reshape(b, c, t), 32, block.norm.weight, block.norm.bias)
    qkv = torch.nn.functional.conv1d(h, block.qkv.weight, block.qkv.bias)  # [B, heads*3*ch, T]
    q, k, v = qkv.reshape(b * heads, 3 * ch, t).split(ch, dim=1)
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / ch ** 0.5, dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, t)
    expected = (x.reshape(b, c, t) + torch.nn.functional.conv1d(a, block.proj_out.weight, block.proj_out.bias))
    for layout in (torch.contiguous_format, torch.channels_last):
        out = block(x.contiguous(memory_format=layout)).reshape(b, c, t)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # bf16 autocast on CPU takes its own matmul + softmax path (q, k, v are bf16): same result up to bf16 rounding
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x.contiguous(memory_format=torch.channels_last)).reshape(b, c, t)
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=0.05)
    assert (out.float() - expected).abs().mean() < 5e-3


def test_new_attention_order_matches_guided_diffusion_qkv_attention():
    """With use_new_attention_order, the block computes guided-diffusion's QKVAttention: q, k, v split first (each
    [B, heads * ch, T]), then the heads; the same weights give another result than the legacy order."""
    from mdm.nn.unet_blocks import AttentionBlock

    torch.manual_seed(0)
    block = AttentionBlock(64, num_head_channels=16, use_new_attention_order=True)
    legacy = AttentionBlock(64, num_head_channels=16)
    with torch.no_grad():
        block.proj_out.weight.normal_(0, 0.1)
    legacy.load_state_dict(block.state_dict())
    x = torch.randn(2, 64, 6, 5)
    b, c, t, heads, ch = 2, 64, 30, 4, 16
    h = torch.nn.functional.group_norm(x.reshape(b, c, t), 32, block.norm.weight, block.norm.bias)
    q, k, v = torch.nn.functional.conv1d(h, block.qkv.weight, block.qkv.bias).chunk(3, dim=1)
    q, k, v = (z.reshape(b * heads, ch, t) for z in (q, k, v))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / ch ** 0.5, dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, t)
    expected = x.reshape(b, c, t) + torch.nn.functional.conv1d(a, block.proj_out.weight, block.proj_out.bias)
    torch.testing.assert_close(block(x).reshape(b, c, t), expected, rtol=1e-4, atol=1e-5)
    assert (legacy(x).reshape(b, c, t) - expected).abs().max() > 1e-2
