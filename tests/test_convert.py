"""``python -m mdm.convert``: published-style state dicts -> export folders that ``load_export`` reads back."""

import os

import pytest
import torch

from mdm.cli import convert_main as main
from mdm.common.config_io import load
from mdm.common.errors import CheckpointError
from mdm.nn.unet import build_unet
from mdm.pretrain.convert import ConvertError, convert
from mdm.pretrain.export import load_export

SMALL = ["model.image_size=16", "model.channel_mult=[1,1]", "model.attention_resolutions=[8]"]


class NotATensor:
    """Saved with ``torch.save``: ``weights_only=True`` must refuse to unpickle it."""

    def __init__(self):
        self.value = 3


@pytest.fixture
def tiny_yaml(configs_dir):
    return os.path.join(configs_dir, "tiny.yaml")


def small_cfg(tiny_yaml, *extra):
    return load(tiny_yaml, SMALL + list(extra))


def random_state(cfg, seed=0):
    """A state dict of the configured U-Net with every tensor random (zero-initialised convs included)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in build_unet(cfg.model).state_dict().items()}


def assert_export_equal(out, state):
    for weights in ("ema", "raw"):
        model, _ = load_export(out, weights)
        got = model.state_dict()
        assert set(got) == set(state)
        for k, v in state.items():
            assert torch.equal(got[k], v.float()), k


@pytest.mark.parametrize("shape", ["plain", "state_dict", "model_state_dict", "module_prefix", "fp16"])
def test_convert_round_trip(tmp_path, tiny_yaml, shape):
    cfg = small_cfg(tiny_yaml)
    state = random_state(cfg)
    expected = state
    if shape == "plain":
        saved = state
    elif shape in ("state_dict", "model_state_dict"):
        saved = {shape: state, "epoch": 7, "optimizer": {"lr": 1e-4}}
    elif shape == "module_prefix":
        saved = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    else:
        saved = {k: v.half() for k, v in state.items()}
        expected = {k: v.float() for k, v in saved.items()}
    ckpt = tmp_path / "model.pt"
    torch.save(saved, ckpt)

    out = convert(ckpt, cfg, tmp_path / "exports" / "mdm")
    assert out == tmp_path / "exports" / "mdm"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "unet.safetensors", "unet_raw.safetensors"]
    assert_export_equal(out, expected)
    _, exported_cfg = load_export(out)
    assert exported_cfg == cfg


def test_main_summary_and_reconvert(tmp_path, tiny_yaml, capsys):
    state = random_state(small_cfg(tiny_yaml))
    ckpt = tmp_path / "model.pth"
    torch.save(state, ckpt)
    out = tmp_path / "export"
    args = ["--checkpoint", str(ckpt), "--config", tiny_yaml, "--out", str(out)]
    args += sum((["--set", s] for s in SMALL), [])
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    n = sum(v.numel() for v in state.values())
    assert len(lines) == 1 and f"{n:,} parameters" in lines[0] and str(out) in lines[0]
    # an existing export is replaced atomically
    state2 = random_state(small_cfg(tiny_yaml), seed=1)
    torch.save(state2, ckpt)
    assert main(args) == 0
    assert_export_equal(out, state2)


def test_out_channels_mismatch_asks_for_override(tmp_path, tiny_yaml, capsys):
    state = random_state(small_cfg(tiny_yaml, "model.out_channels=6"))  # learn_sigma=True
    ckpt = tmp_path / "sigma.pt"
    torch.save(state, ckpt)
    with pytest.raises(ConvertError, match=r"add --set model\.out_channels=6$"):
        convert(ckpt, small_cfg(tiny_yaml), tmp_path / "out")
    assert not (tmp_path / "out").exists()

    base = ["--checkpoint", str(ckpt), "--config", tiny_yaml, "--out", str(tmp_path / "out")]
    base += sum((["--set", s] for s in SMALL), [])
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--set model.out_channels=6" in err and len(err.strip().splitlines()) == 1

    assert main(base + ["--set", "model.out_channels=6"]) == 0
    model, cfg = load_export(tmp_path / "out")
    assert cfg.model.out_channels == 6 and model.out[2].weight.shape[0] == 6
    assert_export_equal(tmp_path / "out", state)


def test_in_channels_mismatch_asks_for_override(tmp_path, tiny_yaml):
    ckpt = tmp_path / "gray.pt"
    torch.save(random_state(small_cfg(tiny_yaml, "model.in_channels=1")), ckpt)
    with pytest.raises(ConvertError, match=r"--set model\.in_channels=1"):
        convert(ckpt, small_cfg(tiny_yaml), tmp_path / "out")
    convert(ckpt, small_cfg(tiny_yaml, "model.in_channels=1"), tmp_path / "out")


def test_missing_key_is_named(tmp_path, tiny_yaml, capsys):
    state = random_state(small_cfg(tiny_yaml))
    del state["middle_block.1.qkv.weight"]
    ckpt = tmp_path / "partial.pt"
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match=r"missing keys: middle_block\.1\.qkv\.weight"):
        convert(ckpt, small_cfg(tiny_yaml), tmp_path / "out")
    args = ["--checkpoint", str(ckpt), "--config", tiny_yaml, "--out", str(tmp_path / "out")]
    assert main(args + sum((["--set", s] for s in SMALL), [])) == 2
    assert "middle_block.1.qkv.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_is_named(tmp_path, tiny_yaml):
    ckpt = tmp_path / "wide.pt"
    torch.save(random_state(small_cfg(tiny_yaml, "model.channel_mult=[1,2]")), ckpt)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        convert(ckpt, small_cfg(tiny_yaml), tmp_path / "out")


def run_main(tmp_path, tiny_yaml, ckpt, capsys, *extra):
    code = main(["--checkpoint", str(ckpt), "--config", tiny_yaml, "--out", str(tmp_path / "out"), *extra])
    return code, capsys.readouterr().err


def test_not_a_dict_fails(tmp_path, tiny_yaml, capsys):
    ckpt = tmp_path / "list.pt"
    torch.save([torch.zeros(2), 3], ckpt)
    code, err = run_main(tmp_path, tiny_yaml, ckpt, capsys)
    assert code == 2 and err.startswith("error: ") and str(ckpt) in err and "not a state dict" in err


def test_dict_without_state_dict_fails(tmp_path, tiny_yaml, capsys):
    ckpt = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "model": {"lr": 0.1}}, ckpt)
    code, err = run_main(tmp_path, tiny_yaml, ckpt, capsys)
    assert code == 2 and "not a state dict" in err and "'epoch'" in err


def test_pickled_object_is_refused(tmp_path, tiny_yaml, capsys):
    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": NotATensor()}, ckpt)
    code, err = run_main(tmp_path, tiny_yaml, ckpt, capsys)
    assert code == 2 and str(ckpt) in err and "weights_only" in err and "NotATensor" in err
    assert len(err.strip().splitlines()) == 1


def test_garbage_and_missing_files_fail(tmp_path, tiny_yaml, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    code, err = run_main(tmp_path, tiny_yaml, junk, capsys)
    assert code == 2 and str(junk) in err and "not a PyTorch checkpoint" in err
    code, err = run_main(tmp_path, tiny_yaml, tmp_path / "nope.pt", capsys)
    assert code == 2 and "nope.pt: checkpoint not found" in err


def test_config_error_fails(tmp_path, tiny_yaml, capsys):
    ckpt = tmp_path / "model.pt"
    torch.save(random_state(small_cfg(tiny_yaml)), ckpt)
    code, err = run_main(tmp_path, tiny_yaml, ckpt, capsys, "--set", "model.bogus=1")
    assert code == 2 and "model.bogus" in err
    code, err = run_main(tmp_path, str(tmp_path / "missing.yaml"), ckpt, capsys)
    assert code == 2 and "missing.yaml" in err


def test_several_wrapped_state_dicts_need_key(tmp_path, tiny_yaml):
    cfg = small_cfg(tiny_yaml)
    raw, ema = random_state(cfg, 0), random_state(cfg, 1)
    ckpt = tmp_path / "train.pt"
    torch.save({"model": raw, "ema": ema, "step": 10}, ckpt)
    with pytest.raises(ConvertError, match="--key"):
        convert(ckpt, cfg, tmp_path / "out")
    assert_export_equal(convert(ckpt, cfg, tmp_path / "out", key="ema"), ema)
    with pytest.raises(ConvertError, match="'step' is not a state dict"):
        convert(ckpt, cfg, tmp_path / "out", key="step")


def test_refuses_to_replace_a_non_export_folder(tmp_path, tiny_yaml):
    cfg = small_cfg(tiny_yaml)
    ckpt = tmp_path / "data" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(random_state(cfg), ckpt)
    with pytest.raises(ConvertError, match="holds the checkpoint"):
        convert(ckpt, cfg, tmp_path / "data")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ConvertError, match="not an export folder"):
        convert(ckpt, cfg, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    assert ckpt.is_file()


RELEASE_FLAGS = ('MODEL_FLAGS="--image_size 16 --num_channels 64 --num_res_blocks 1 --channel_mult 1,1 '
                 '--attention_resolutions 8 --num_heads 4 --num_head_channels -1 --resblock_updown True '
                 '--use_new_attention_order True --learn_sigma False"\n'
                 'DIFFUSION_FLAGS="--diffusion_steps 1000 --noise_schedule linear"\n')


def test_release_flags_give_what_the_weights_cannot_tell(tmp_path, tiny_yaml, capsys):
    """A model trained with 4 heads and the new attention order: its flags file converts it to the same outputs;
    without them it converts too (same shapes) but computes something else, and a warning says so."""
    cfg = small_cfg(tiny_yaml, "model.model_channels=64", "model.num_heads=4", "model.num_head_channels=-1",
                    "model.use_new_attention_order=true")
    state = random_state(cfg)
    ckpt = tmp_path / "model.pt"
    torch.save(state, ckpt)
    model = build_unet(cfg.model)
    model.load_state_dict(state)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])
    with torch.no_grad():
        expected = model(x, t)
    (tmp_path / "flags.txt").write_text(RELEASE_FLAGS)
    base = ["--checkpoint", str(ckpt), "--config", tiny_yaml]
    assert main(base + ["--flags", str(tmp_path / "flags.txt"), "--out", str(tmp_path / "with")]) == 0
    assert "cannot tell" not in capsys.readouterr().err
    with torch.no_grad():
        torch.testing.assert_close(load_export(tmp_path / "with")[0](x, t), expected)
    sets = sum((["--set", s] for s in SMALL + ["model.model_channels=64"]), [])
    assert main(base + sets + ["--out", str(tmp_path / "without")]) == 0
    assert "warning: the weights cannot tell the attention head layout or order" in capsys.readouterr().err
    with torch.no_grad():
        assert (load_export(tmp_path / "without")[0](x, t) - expected).abs().max() > 1e-3
    all_three = sets + ["--set", "model.num_heads=4", "--set", "model.num_head_channels=-1",
                        "--set", "model.use_new_attention_order=true"]
    assert main(base + all_three + ["--out", str(tmp_path / "set")]) == 0
    assert "cannot tell" not in capsys.readouterr().err
    with torch.no_grad():
        torch.testing.assert_close(load_export(tmp_path / "set")[0](x, t), expected)


def test_args_json_lists_read_like_flag_strings(tmp_path):
    """args.json may store channel_mult / attention_resolutions as lists: same overrides as the "1,1" strings."""
    import json

    from mdm.pretrain.convert import flags_to_overrides, read_flags

    (tmp_path / "flags.txt").write_text(RELEASE_FLAGS)
    strings = read_flags(tmp_path / "flags.txt")
    (tmp_path / "args.json").write_text(json.dumps({**strings, "channel_mult": [1, 1], "attention_resolutions": [8]}))
    assert flags_to_overrides(read_flags(tmp_path / "args.json"), "args.json") == \
        flags_to_overrides(strings, "flags.txt")
