"""Faults and bad input, round 2: no silent mixing of runs, no lost user files, one-line errors for the rest."""

import os
import shutil

import pytest
import torch
from PIL import Image

from helpers import half_mask, make_generic, read_log, tiny_config
from mdm.cli import bench_main, seg_main, train_main
from mdm.common.config_io import load
from mdm.common.errors import ConfigError, DataError
from mdm.common.io import atomic_dir, load_image
from mdm.pretrain.trainer import train
from mdm.study.sweep import check_study_folder


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def seg_args(configs_dir, root, out, *extra):
    sets = ["data.num_classes=2", f"data.root=[{root}]", "seg.ensemble_size=1", "seg.max_epochs=2",
            "seg.blocks=[-2,-1]", 'seg.cache_dir=""', "seg.device=cpu", *extra]
    return ["--config", os.path.join(configs_dir, "seg_generic.yaml"), "--out", str(out),
            *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory, configs_dir, pretrained_export):
    """One finished frozen run on a generic dataset: ``(data root, run folder)``."""
    base = tmp_path_factory.mktemp("seg_run")
    root = make_generic(base / "data", mask_of=lambda k: half_mask(32))
    assert seg_main(seg_args(configs_dir, root, base / "run") + ["--checkpoint", str(pretrained_export)]) == 0
    return root, base / "run"


def test_a_resume_with_another_objective_or_lr_is_refused(tmp_path, configs_dir, capsys):
    cfg = tiny_config(configs_dir, tmp_path / "run", "train.max_steps=2", "train.checkpoint_every=2")
    train(cfg)
    base = ["--config", os.path.join(configs_dir, "tiny.yaml"), "--out", str(tmp_path / "run"), "--resume", "latest",
            "--device", "cpu", *[a for s in ["train.max_steps=4", "train.checkpoint_every=2", "data.crop_size=16",
                                             "model.image_size=16", "model.channel_mult=[1,1]",
                                             "data.synthetic_images=16", "data.synthetic_image_size=32",
                                             "train.batch_size=4", "train.image_every=0"] for a in ("--set", s)]]
    for change, key in (("diffusion.objective=ddpm", "diffusion.objective = 'mdm'"), ("train.lr=0.5", "train.lr")):
        assert train_main(base + ["--set", change]) == 2
        assert key in one_line_error(capsys)
    fresh = [a for a in base if a not in ("--resume", "latest")]
    assert train_main(fresh) == 2  # a new run over the old one's checkpoints: a later resume would mix them
    assert "holds checkpoints of an earlier run" in one_line_error(capsys)
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2]  # nothing trained, the log as it was
    # longer, logged more often, with gradient checkpointing: the same weights, fine
    assert train_main(base + ["--set", "train.log_every=1", "--set", "train.lr=1e-3",
                              "--set", "model.use_checkpoint=true"]) == 0


def test_a_log_row_cut_by_a_kill_is_dropped_on_resume(tmp_path, configs_dir):
    cfg = tiny_config(configs_dir, tmp_path, "train.max_steps=2", "train.checkpoint_every=2")
    train(cfg)
    log = tmp_path / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "loss": 0.1')
    from dataclasses import replace

    train(replace(cfg, train=replace(cfg.train, max_steps=3)), resume="latest")
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("what", ["file", "symlink"])
def test_out_naming_a_file_or_a_link_is_refused_before_any_work(tmp_path, configs_dir, pretrained_export, capsys,
                                                                 what):
    mine = tmp_path / "notes.txt"
    mine.write_text("precious")
    out = mine
    if what == "symlink":
        (tmp_path / "target").mkdir()
        out = tmp_path / "link"
        out.symlink_to(tmp_path / "target")
    root = make_generic(tmp_path / "data", mask_of=lambda k: half_mask(32))
    assert seg_main(seg_args(configs_dir, root, out) + ["--checkpoint", str(pretrained_export)]) == 2
    assert ("is a file" if what == "file" else "is a symbolic link") in one_line_error(capsys)
    assert train_main(["--config", os.path.join(configs_dir, "tiny.yaml"), "--out", str(out), "--dry-run"]) == 2
    one_line_error(capsys)
    assert mine.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    if what == "symlink":
        assert out.is_symlink() and not any((tmp_path / "target").iterdir())


def test_predict_into_its_images_or_its_run_is_refused(seg_run, capsys):
    root, run = seg_run
    images = root / "test" / "images"
    for out in (images / "predicted", run, run / "predictions"):
        assert seg_main(["predict", "--model", str(run), "--images", str(images), "--out", str(out),
                         "--device", "cpu"]) == 2
        assert "--out" in one_line_error(capsys)
    assert not (images / "predicted").exists()


def test_predict_refuses_an_out_folder_of_other_files_and_reruns_into_its_own(seg_run, tmp_path, capsys):
    root, run = seg_run
    images, out = root / "test" / "images", tmp_path / "mine"
    out.mkdir()
    (out / "0.png").write_bytes(b"the user's own file")
    args = ["predict", "--model", str(run), "--images", str(images), "--device", "cpu"]
    assert seg_main(args + ["--out", str(out)]) == 2
    assert "holds files predict does not write (0.png)" in one_line_error(capsys)
    assert (out / "0.png").read_bytes() == b"the user's own file"
    assert seg_main(args + ["--out", str(tmp_path / "p")]) == 0 and seg_main(args + ["--out", str(tmp_path / "p")]) == 0


def test_a_segmenter_with_swapped_weights_is_refused(seg_run, tmp_path, capsys):
    root, run = seg_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    from safetensors.torch import load_file, save_file

    weights = copy / "segmenter" / "export" / "unet.safetensors"
    state = load_file(weights)
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, str(weights))
    assert seg_main(["predict", "--model", str(copy), "--images", str(root / "test" / "images"),
                     "--out", str(tmp_path / "p"), "--device", "cpu"]) == 2
    assert "other U-Net weights" in one_line_error(capsys)


@pytest.mark.parametrize("edit,message", [
    (lambda meta: {**meta, "members": -1}, "members must be a positive whole number"),
    (lambda meta: "!!python/object/apply:os.system ['true']", "not readable as the YAML"),
])
def test_a_damaged_segmenter_yaml_is_one_line(seg_run, tmp_path, capsys, edit, message):
    import yaml

    root, run = seg_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta_path = copy / "segmenter" / "segmenter.yaml"
    changed = edit(yaml.safe_load(meta_path.read_text()))
    meta_path.write_text(changed if isinstance(changed, str) else yaml.safe_dump(changed))
    assert seg_main(["predict", "--model", str(copy), "--images", str(root / "test" / "images"),
                     "--out", str(tmp_path / "p"), "--device", "cpu"]) == 2
    assert message in one_line_error(capsys)


def test_test_masks_saved_as_0_255_and_a_test_copy_of_a_training_image(tmp_path, configs_dir, pretrained_export,
                                                                       capsys):
    root = make_generic(tmp_path / "data", mask_of=lambda k: half_mask(32))
    for f in (root / "test" / "masks").iterdir():
        Image.fromarray(half_mask(32, 255)).save(f)
    assert seg_main(seg_args(configs_dir, root, tmp_path / "out") + ["--checkpoint", str(pretrained_export)]) == 2
    assert "saved as 0/255" in one_line_error(capsys) and not (tmp_path / "out").exists()

    root = make_generic(tmp_path / "data2", mask_of=lambda k: half_mask(32))
    shutil.copy(root / "train" / "images" / "0.png", root / "test" / "images" / "0.png")
    with pytest.warns(UserWarning, match="test image .0. is the same picture as the labeled training image .0."):
        seg_main(seg_args(configs_dir, root, tmp_path / "out2") + ["--checkpoint", str(pretrained_export)])


def test_validation_never_takes_the_only_image_with_a_class():
    from mdm.segment.datasets import LabeledImage
    from mdm.segment.splits import validation_roles

    def image(name, classes):
        label = torch.zeros(8, 8, dtype=torch.int64)
        label[:4] = classes[-1]
        return LabeledImage(name, torch.zeros(3, 8, 8), label, None)

    images = [image("a", [0]), image("b", [0, 1]), image("c", [0])]
    for seed in range(12):
        roles = validation_roles(images, 0.34, seed)
        assert roles["b"] == "train" and list(roles.values()).count("validation") == 1
    assert set(validation_roles([image("x", [0, 1]), image("y", [0, 2])], 0.5, 0).values()) == {"pixels"}


def test_a_study_into_a_folder_of_other_files_is_refused(tmp_path, configs_dir, capsys):
    (tmp_path / "results.md").write_text("my own notes")
    assert bench_main(["--config", os.path.join(configs_dir, "bench_demo.yaml"), "--out", str(tmp_path)]) == 2
    assert "holds files a study does not write" in one_line_error(capsys)
    assert (tmp_path / "results.md").read_text() == "my own notes"
    # a file a study writes does not count as foreign: only a folder holding others is refused
    (tmp_path / "results.md").unlink()
    (tmp_path / "thesis.tex").write_text("x")
    assert bench_main(["--config", os.path.join(configs_dir, "bench_demo.yaml"), "--out", str(tmp_path)]) == 2
    (tmp_path / "thesis.tex").unlink()
    (tmp_path / "pretrain_mdm").mkdir()  # another study's pretraining, copied in to be reused, is not foreign
    check_study_folder(tmp_path)


def test_a_second_writer_of_a_folder_is_refused(tmp_path):
    lock = tmp_path / ".run.lock"
    lock.write_text("1")  # pid 1 lives: another writer holds the folder
    with pytest.raises(DataError, match="another process"):
        with atomic_dir(tmp_path / "run"):
            pass
    assert lock.read_text() == "1" and not (tmp_path / "run").exists()
    lock.write_text("999999999")  # a writer that is gone: taken over
    with atomic_dir(tmp_path / "run") as tmp:
        (tmp / "b").write_text("second")
    assert (tmp_path / "run" / "b").is_file() and not lock.exists()
    lock.write_text(str(os.getpid()))  # this pid, but not held by this process (an earlier one's): taken over
    with atomic_dir(tmp_path / "run"):
        pass
    lock.write_text("999999999@another-host")  # its liveness cannot be checked from here
    with pytest.raises(DataError, match=r"999999999@another-host\) is writing it.*delete .*\.run\.lock"):
        with atomic_dir(tmp_path / "run"):
            pass


@pytest.mark.parametrize("override,message", [
    ("seg.timesteps=[5000]", "seg.timesteps: 5000 is not a timestep"),
    ("seg.lr=.inf", "seg.lr: must be positive and finite"),
    ("train.lr=.nan", "train.lr: must be positive and finite"),
    ("data.synthetic_images=0", "data.synthetic_images: must be positive"),
    ("data.color_mode=L", "data.color_mode: L would pretrain a one-channel U-Net"),
    ("data.root=[a,b]", None),
])
def test_out_of_range_values_are_refused_by_key(configs_dir, override, message):
    if message is None:  # a labeled source reads one folder
        with pytest.raises(ConfigError, match="data.root: the generic source reads one folder, got 2"):
            load(os.path.join(configs_dir, "seg_generic.yaml"), [override])
        return
    with pytest.raises(ConfigError, match=message):
        load(os.path.join(configs_dir, "tiny.yaml"), [override])


def test_odd_config_files_are_one_line(tmp_path, configs_dir, capsys):
    binary = tmp_path / "c.yaml"
    binary.write_bytes(bytes(range(256)))
    listed = tmp_path / "l.yaml"
    listed.write_text("- 1\n- 2\n")
    broken = tmp_path / "b.yaml"
    broken.write_text("train:\n  lr: [1,\n  max_steps: 3\n")
    for path, message in ((binary, "not a text file"), (listed, "expected a mapping of sections"),
                          (broken, "not valid YAML at line")):
        assert train_main(["--config", str(path), "--set", "train.lr=1", "--dry-run"]) == 2
        assert message in one_line_error(capsys)


def test_a_checkpoint_holding_nan_is_not_converted(tmp_path, configs_dir, capsys):
    from mdm.cli import convert_main
    from mdm.nn.unet import build_unet

    cfg = load(os.path.join(configs_dir, "tiny.yaml"))
    state = build_unet(cfg.model).state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, tmp_path / "m.pt")
    args = ["--checkpoint", str(tmp_path / "m.pt"), "--config", os.path.join(configs_dir, "tiny.yaml"),
            "--out", str(tmp_path / "out")]
    assert convert_main(args) == 2
    assert "NaN or infinite" in one_line_error(capsys) and not (tmp_path / "out").exists()
    assert convert_main(args[:4] + ["--flags", str(_flags(tmp_path)), "--out", str(tmp_path / "o2")]) == 2
    assert "a flag that must be a number is not one" in one_line_error(capsys)


def _flags(tmp_path):
    path = tmp_path / "flags.txt"
    path.write_text("--image_size abc")
    return path


def test_an_image_over_the_pixel_limit_and_a_latin1_class_list_are_one_line(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="too many pixels to read safely"):
        load_image(tmp_path / "big.png")
    monkeypatch.undo()
    from mdm.segment.datasets import load_split

    root = make_generic(tmp_path / "data", mask_of=lambda k: half_mask(32))
    (root / "classes.txt").write_bytes("fond\nglande\nt\xe9moin\n".encode("latin-1"))
    with pytest.raises(DataError, match="classes.txt: not UTF-8"):
        load_split("generic", root, "train")


def test_a_cache_entry_of_the_wrong_shape_is_computed_again(tmp_path, pretrained_export):
    from mdm.common.tiling import Tile
    from mdm.pretrain.export import open_export
    from mdm.pretrain.objectives import build_objective
    from mdm.segment.features import FeatureExtractor

    export = open_export(pretrained_export)

    def extractor():
        return FeatureExtractor(export.load_model(), build_objective(export.config.diffusion), [-1], [50],
                                cache_dir=tmp_path / "cache", fingerprint=export.fingerprint(), device="cpu")

    image = torch.rand(3, 32, 32) * 2 - 1
    first = extractor().tile_blocks("x", image, 32, [Tile(0, 0)])[0]
    (entry,) = list((tmp_path / "cache").rglob("*.safetensors"))
    from safetensors.torch import save_file

    for damage in ({k: v[:1] if v.ndim else v for k, v in first.items()},  # one channel where 32 belong
                   {k: v.to(torch.int8) if v.ndim else v for k, v in first.items()},  # int8 outputs
                   {k: v if v.ndim else v.repeat(3) for k, v in first.items()}):  # squared norms of another shape
        save_file(damage, str(entry))
        again = extractor().tile_blocks("x", image, 32, [Tile(0, 0)])[0]
        assert all(torch.equal(first[k], again[k]) and first[k].dtype == again[k].dtype for k in first)


def test_a_classification_cache_entry_of_other_keys_types_or_shapes_is_computed_again(tmp_path, pretrained_export):
    from safetensors.torch import load_file, save_file

    from mdm.classify.datasets import open_class_split
    from mdm.classify.features import ImageFeatures
    from mdm.common.config import ProbeConfig
    from mdm.pretrain.export import open_export

    export = open_export(pretrained_export)
    probe = ProbeConfig(image_size=32, cache_dir=str(tmp_path / "cache"))
    data = open_class_split("synthetic", None, "train", synthetic_size=32).subset([0, 1, 2])

    def table():
        return ImageFeatures.of_probe(probe, export, ["mid"], [50], torch.device("cpu")).extract(data)

    first = table()
    entry = sorted((tmp_path / "cache").rglob("*.safetensors"))[1]
    good = load_file(str(entry))
    for damage in ({k: v for k, v in list(good.items())[1:]},  # a key missing
                   {k: v.to(torch.int8) for k, v in good.items()},  # int8 features
                   {k: v[:3] for k, v in good.items()}):  # another shape
        save_file(damage, str(entry))
        again = table()
        assert all(torch.equal(first[k], again[k]) for k in first)


def test_ctrl_c_is_one_word_and_exit_130(monkeypatch, capsys):
    from mdm import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    assert cli._run(interrupted, []) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    long = cli.one_line("x\n" * 5000)
    assert len(long) <= cli.MESSAGE_LIMIT and "\n" not in long and "characters in all)" in long


def test_a_study_resumed_on_changed_data_is_refused(tmp_path, configs_dir, capsys):
    root = make_generic(tmp_path / "data", size=32, mask_of=lambda k: half_mask(32))
    sets = ["model.image_size=32", "model.channel_mult=[1,1]", "model.attention_resolutions=[8]",
            "train.batch_size=4", "train.log_every=1", "train.image_every=0", "seg.ensemble_size=1",
            "seg.max_epochs=1", "data.num_classes=2", f"data.root=[{root}]", "bench.fractions=[1.0]",
            "bench.seeds=[0]", "bench.methods=[random]", "bench.pretrain_steps=1", "bench.budget_exports=1",
            "bench.budget_methods=[]", "train.device=cpu", "seg.device=cpu"]
    args = ["--config", os.path.join(configs_dir, "bench_generic_cpu.yaml"), "--out", str(tmp_path / "study"),
            *[a for s in sets for a in ("--set", s)]]
    assert bench_main(args) == 0
    capsys.readouterr()
    shutil.copy(root / "train" / "images" / "0.png", root / "train" / "images" / "9.png")
    shutil.copy(root / "train" / "masks" / "0.png", root / "train" / "masks" / "9.png")
    assert bench_main(args) == 2
    assert "holds a study of other data (added" in one_line_error(capsys)


def test_a_file_name_that_is_not_utf8_is_named_in_one_line(tmp_path):
    from mdm.common.io import list_images
    from mdm.segment.datasets.base import images_in

    Image.new("RGB", (8, 8)).save(tmp_path / "fine.png")
    (tmp_path / os.fsdecode(b"slide_\xff.png")).write_bytes((tmp_path / "fine.png").read_bytes())
    for lister in (list_images, images_in):
        with pytest.raises(DataError, match=r"slide_.*is not valid UTF-8; rename the file"):
            lister(tmp_path)


def test_data_json_sees_a_changed_file_through_any_variant(tmp_path):
    from mdm.study.manifest import check_same_data, write_manifest

    write_manifest(tmp_path, {"": {"a.png": "1", "b.png": "2"}})
    check_same_data(tmp_path, {"": {"a.png": "1", "b.png": "2"}, "new": {"a.png": "1", "c.png": "3"}})  # added: fine
    with pytest.raises(ConfigError, match="changed a.png"):  # variants share pretraining: a change anywhere counts
        check_same_data(tmp_path, {"new": {"a.png": "9"}})
    with pytest.raises(ConfigError, match="added c.png"):
        check_same_data(tmp_path, {"": {"a.png": "1", "b.png": "2", "c.png": "3"}})
    (tmp_path / "data.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="data.json: cannot read it"):
        check_same_data(tmp_path, {})


def test_a_second_pretraining_into_one_folder_is_refused(tmp_path, configs_dir):
    (tmp_path / ".run.lock").write_text("1")  # pid 1 lives: another train.py writes runs/run
    with pytest.raises(DataError, match="another process"):
        train(tiny_config(configs_dir, tmp_path / "run", "train.max_steps=1"))
    assert not (tmp_path / "run" / "log.jsonl").exists()
    (tmp_path / ".run.lock").unlink()
    train(tiny_config(configs_dir, tmp_path / "run", "train.max_steps=1"))
    assert not (tmp_path / ".run.lock").exists()  # released at the end
