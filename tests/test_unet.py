import os

import pytest
import torch

from mdm.checkpoint import build_unet
from mdm.config import load
from mdm.unet import UNetModel


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


def test_decoder_block_shapes_match_a_real_forward():
    model = UNetModel(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(16,), num_head_channels=32)
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:]))) for b in model.output_blocks]
    out = model(torch.randn(2, 3, 32, 48), torch.tensor([1, 500]))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 3, 32, 48)
    assert seen == [(b.channels, *b.resolution) for b in model.decoder_blocks(32, 48)]


def test_non_divisible_size_says_which_sizes_work():
    model = UNetModel(image_size=32, model_channels=32, channel_mult=(1, 1, 1), num_res_blocks=1,
                      attention_resolutions=(), num_head_channels=32)
    with pytest.raises(ValueError, match=r"height 30 is not divisible by 4.*28 or 32"):
        model(torch.randn(1, 3, 30, 32), torch.tensor([1]))
