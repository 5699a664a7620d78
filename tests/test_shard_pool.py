"""The tar-shard pretraining pool (``pretrain/shards.py``) on shards written by webdataset's own ``TarWriter``: an
index read once, test images excluded by content, each process and loader worker streaming its own shards, and a
resumed stream (or run) seeing the very same images."""

import io
import json
import os

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from helpers import read_log, tiny_config
from mdm.common.errors import DataError
from mdm.pretrain.shards import ShardPool
from mdm.pretrain.trainer import train


def png(seed, size=24):
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """4 shards of 6 samples each (``<key>.png`` + ``<key>.cls``), one more sample with only a ``.json``, and a held
    out test image that is sample 7's bytes."""
    root = tmp_path_factory.mktemp("shards")
    for s in range(4):
        with wds.TarWriter(str(root / f"pool-{s:06d}.tar")) as sink:
            for i in range(6):
                sink.write({"__key__": f"img/{s * 6 + i:05d}", "png": png(s * 6 + i), "cls": s})
            if s == 3:
                sink.write({"__key__": "meta", "json": {"note": "no image"}})
    (root.parent / "test_image.png").write_bytes(png(7))
    return root


def test_the_index_is_read_once_and_test_images_are_left_out(shards):
    pool = ShardPool([str(shards)], 16, exclude=[str(shards.parent / "test_image.png")])
    assert (pool.record["shards"], pool.record["images"], pool.record["excluded"]) == (4, 23, 1)
    assert pool.record["excluded_files"] == [f"{shards / 'pool-000001.tar'}:img/00007.png"]
    assert pool.record["samples_without_image"] == 1
    again = ShardPool([str(shards)], 16)
    assert again.record["shards_scanned"] == 0 and len(again) == 24
    image, key = again[(7, 5)]
    assert image.shape == (3, 16, 16) and key == 5


def batches(pool, start, stop, workers=0, world=1, rank=0, micro=2):
    stream = pool.stream(seed=0, start_step=start, max_steps=stop, micro=micro, accum=1, world=world, rank=rank)
    return list(torch.utils.data.DataLoader(stream, batch_size=micro, num_workers=workers))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_gives_the_same_images_and_keys(shards, workers):
    """Steps 3..8 of a stream that starts at step 3 equal those of one that starts at 0 (an odd start: the loader's
    first worker then serves the run's second worker slot); 9 steps of 2 cross the epoch of a slot."""
    pool = ShardPool([str(shards)], 16, shuffle_buffer=3)
    whole, resumed = batches(pool, 0, 9, workers), batches(pool, 3, 9, workers)
    assert len(whole) == 9 and len(resumed) == 6
    for (a, ka, _), (b, kb, _) in zip(whole[3:], resumed):
        assert torch.equal(a, b) and torch.equal(ka, kb)


def test_two_processes_read_their_own_shards_and_split_each_step(shards):
    pool = ShardPool([str(shards)], 16, crop="resize", hflip=False, shuffle_buffer=1)
    ranks = [batches(pool, 0, 3, world=2, rank=r) for r in range(2)]
    one = batches(pool, 0, 3, micro=4)
    for step in range(3):  # the two halves of a step hold the keys of a 1-process step, in order
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), one[step][1])
    seen = [{tuple(im.flatten()[:8].tolist()) for images, _, _ in r for im in images} for r in ranks]
    assert not seen[0] & seen[1]  # epoch 0: each rank its own 2 shards


def test_a_sample_that_does_not_decode_is_named_or_skipped_and_counted_in_the_log(tmp_path, configs_dir):
    with wds.TarWriter(str(tmp_path / "bad.tar")) as sink:
        sink.write({"__key__": "a", "png": png(1)})
        sink.write({"__key__": "b", "png": b"not a png"})
        sink.write({"__key__": "c", "png": png(2)})
    pool = ShardPool([str(tmp_path)], 16, shuffle_buffer=1)
    with pytest.raises(DataError, match=r"bad\.tar:b\.png: cannot read image"):
        batches(pool, 0, 2, micro=1)
    pool.skip_unreadable = True
    with pytest.warns(UserWarning, match="skipping unreadable sample"):
        got = batches(pool, 0, 3, micro=1)
    assert [int(skipped) for _, _, skipped in got] == [0, 1, 0]  # b stood in for by c, counted for the log
    run = tmp_path / "run"  # a, b, c, a | b, c, a, b: b skipped once in step 1, twice in step 2
    with pytest.warns(UserWarning, match="skipping unreadable sample"):
        train(tiny_config(configs_dir, run, "data.source=shards", f"data.root=[{tmp_path / 'bad.tar'}]",
                          "data.shuffle_buffer=1", "data.skip_unreadable=true", "train.max_steps=2"))
    assert [r["unreadable_skipped"] for r in read_log(run)] == [1, 2]
    (tmp_path / "cut.tar").write_bytes((tmp_path / "bad.tar").read_bytes()[:700])
    with pytest.raises(DataError, match=r"cut\.tar: not a readable tar shard"):
        ShardPool([str(tmp_path / "cut.tar")], 16)


def test_a_run_on_shards_resumes_with_the_same_losses(shards, tmp_path, configs_dir):
    over = ["data.source=shards", f"data.root=[{shards}]", "data.shuffle_buffer=4", "train.checkpoint_every=2"]
    train(tiny_config(configs_dir, tmp_path / "full", *over, "train.max_steps=4"))
    train(tiny_config(configs_dir, tmp_path / "half", *over, "train.max_steps=2"))
    train(tiny_config(configs_dir, tmp_path / "half", *over, "train.max_steps=4"), resume="latest")
    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "half")
    assert [r["step"] for r in b] == [1, 2, 3, 4] and [r["loss"] for r in a] == [r["loss"] for r in b]
    assert os.path.isfile(tmp_path / "full" / "pool.json")


def test_a_study_pretrains_on_slides_or_shards_without_its_test_images(shards, tmp_path, configs_dir):
    """``bench.pretrain_data.source: slides | shards``: the pool keeps its kind, the labeled source's test images
    and masks join its ``exclude`` (a test image saved into a shard is left out by content), and the study's data
    record hashes each slide or shard."""
    from helpers import make_generic, write_slide
    from mdm.common.config_io import load
    from mdm.common.io import file_digest
    from mdm.study.manifest import study_files
    from mdm.study.pool import pretraining_data

    root = make_generic(tmp_path / "data", size=40)
    (tmp_path / "slides").mkdir()
    write_slide(tmp_path / "slides" / "s.tif", seed=4)
    with wds.TarWriter(str(tmp_path / "leak.tar")) as sink:
        sink.write({"__key__": "t", "png": (root / "test" / "images" / "1.png").read_bytes()})
        sink.write({"__key__": "u", "png": png(99, 40)})
    for source, where in (("slides", tmp_path / "slides"), ("shards", tmp_path / "leak.tar")):
        cfg = load(os.path.join(configs_dir, "bench_demo.yaml"),
                   ["data.source=generic", f"data.root=[{root}]", "data.num_classes=2",
                    f"bench.pretrain_data.source={source}", f"bench.pretrain_data.root=[{where}]",
                    "bench.pretrain_data.slide_level=1", f"bench.pretrain_data.manifest={tmp_path / 'm.csv'}"])
        pool = pretraining_data(cfg)
        assert pool.source == source and str(root / "test" / "images" / "1.png") in pool.exclude
        recorded = study_files(cfg)
        assert str(root / "test" / "masks" / "1.png") in recorded
        if source == "slides":
            assert recorded[str(where / "s.tif")] == file_digest(where / "s.tif")
        else:
            assert str(where) in recorded
            assert ShardPool(pool.root, 32, exclude=pool.exclude).record["excluded_files"] == [f"{where}:t.png"]


def test_the_image_of_a_sample_is_its_plain_image_member_and_a_changed_layout_is_warned_about(tmp_path):
    from mdm.common.config import DataConfig
    from mdm.pretrain.shards import stream_layout

    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:  # members in name order: mask.png would come first
        sink.write({"__key__": "a", "mask.png": png(1), "png": png(2)})
        sink.write({"__key__": "b", "input.jpg": png(3), "json": {"k": 1}})
        sink.write({"__key__": "c", "txt": "no image"})
    pool = ShardPool([str(tmp_path / "s.tar")], 16)
    assert list(pool.shards[0].names) == ["a.png", "b.input.jpg"] and pool.record["samples_without_image"] == 1
    record = tmp_path / "pool.json"
    record.write_text('{"streams": ' + json.dumps(stream_layout(record, 0, DataConfig(), 2, 1)) + "}")
    assert stream_layout(record, 5, DataConfig(), 2, 1) == {"processes": 2, "num_workers": 0, "grad_accum_steps": 1}
    with pytest.warns(UserWarning, match="the shard streams are cut otherwise"):
        stream_layout(record, 5, DataConfig(num_workers=2), 2, 1)


def test_open_files_are_kept_to_a_limit():
    from mdm.common.io import OpenHandles

    closed = []

    class Handle:
        def __init__(self, path):
            self.path = path

        def close(self):
            closed.append(self.path)

    handles = OpenHandles(Handle, limit=2)
    first = handles("a")
    handles("b"), handles("a"), handles("c")  # "b" is the least recently used when "c" opens
    assert closed == ["b"] and handles("a") is first
