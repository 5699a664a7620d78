import os

import pytest

from mdm.cli import train_main
from mdm.common.config_io import ConfigError, dump, load


def test_dump_and_reload_is_identical(tmp_path, configs_dir):
    for name in ("paper", "cpu-small", "tiny"):
        cfg = load(os.path.join(configs_dir, f"{name}.yaml"), ["train.lr=3e-4", "model.channel_mult=[1,2]"])
        dump(cfg, tmp_path / "c.yaml")
        assert load(tmp_path / "c.yaml") == cfg
        assert cfg.train.lr == 3e-4 and cfg.model.channel_mult == [1, 2]


def test_every_shipped_config_and_its_variants_pass_the_checks(configs_dir):
    from mdm.study.variants import arms

    names = sorted(n for n in os.listdir(configs_dir) if n.endswith(".yaml"))
    assert len(names) > 20
    for name in names:
        for _, cfg in arms(load(os.path.join(configs_dir, name))):
            assert cfg.bench.variants == []


@pytest.mark.parametrize("override,message", [
    ("train.bogus=1", "unknown config key train.bogus"),
    ("nosection.x=1", "unknown config key nosection"),
    ("train.max_steps=abc", "train.max_steps: expected int"),
    ("train.max_steps=1.5", "train.max_steps: expected int"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("model.channel_mult=[1,x]", r"model.channel_mult\[1\]: expected int"),
    ("train.lr", "expected KEY=VALUE"),
])
def test_config_errors_name_the_key(configs_dir, override, message):
    with pytest.raises(ConfigError, match=message):
        load(os.path.join(configs_dir, "tiny.yaml"), [override])


def test_int_is_accepted_where_a_float_is_expected(configs_dir):
    assert load(os.path.join(configs_dir, "tiny.yaml"), ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize("override,message", [
    ("train.bogus=1", "error: unknown config key train.bogus"),
    ("data.crop_size=30", "error: data.crop_size: 30 is not divisible by diffusion.patch_size=4"),
    ("data.crop_size=36", "error: image height 36 is not divisible by 8"),
])
def test_train_cli_bad_input_is_one_line_and_nonzero(configs_dir, capsys, override, message):
    args = ["--config", os.path.join(configs_dir, "tiny.yaml"), "--dry-run", "--set", override]
    if "36" in override:
        args += ["--set", "model.channel_mult=[1,1,1,1]", "--set", "diffusion.patch_size=4"]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_dry_run_prints_parameters_and_blocks(configs_dir, capsys):
    assert train_main(["--config", os.path.join(configs_dir, "paper.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 311.0M" in out
    assert "  d8:  384 @ 64x64" in out and " d17:  192 @ 256x256" in out and " mid:  " in out and "  e0:" in out


def test_seg_blocks_take_decoder_numbers_and_block_names(configs_dir):
    tiny = os.path.join(configs_dir, "tiny.yaml")
    assert load(tiny, ["seg.blocks=[mid,-1,d2,e3]"]).seg.blocks == ["mid", -1, "d2", "e3"]
    assert load(tiny, ["seg.blocks=mid"]).seg.blocks == ["mid"] and load(tiny, ["seg.blocks=4"]).seg.blocks == [4]
    assert load(tiny, ["seg.sweep_blocks=[mid,-2]"]).seg.sweep_blocks == ["mid", -2]
    assert load(tiny, []).seg.blocks == [-3, -2, -1] and load(tiny, ["seg.blocks=auto"]).seg.blocks == "auto"
    with pytest.raises(ConfigError, match="seg.sweep_blocks: 'middle' is not a decoder block number or a block name"):
        load(tiny, ["seg.sweep_blocks=[middle]"])
    with pytest.raises(ConfigError, match="seg.blocks: '--1' is not a decoder block number"):
        load(tiny, ["seg.blocks=[--1]"])


def test_every_key_is_documented_and_the_readme_table_is_current():
    from pathlib import Path

    from mdm import config_docs

    assert all(help_text for _, _, help_text in config_docs.keys())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert config_docs.replace_in(readme) == readme, "run: python -m mdm.config_docs --write"


def test_whole_patches_are_asked_of_masked_objectives_only():
    """A DDPM run's crops need not hold whole patches, whatever the study section lists; an MDM run's must."""
    assert load(None, ["diffusion.objective=ddpm", "data.crop_size=36", "diffusion.patch_size=8"]).data.crop_size == 36
    with pytest.raises(ConfigError, match="data.crop_size: 36 is not divisible by diffusion.patch_size=8"):
        load(None, ["diffusion.objective=mdm", "data.crop_size=36", "diffusion.patch_size=8"])
