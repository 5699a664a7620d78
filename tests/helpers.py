"""Shared test helpers: a miniature pretraining config that runs a step in a few milliseconds."""

import json
import os

from mdm.common.config import load

TINY_OVERRIDES = [
    "model.image_size=16", "model.channel_mult=[1,1]", "model.attention_resolutions=[8]",
    "data.source=synthetic", "data.synthetic_images=16", "data.synthetic_image_size=32", "data.crop_size=16",
    "train.batch_size=4", "train.log_every=1", "train.image_every=0", "train.lr=1e-3", "train.device=cpu",
]


def tiny_config(configs_dir, out_dir, *extra):
    return load(os.path.join(configs_dir, "tiny.yaml"), TINY_OVERRIDES + [f"train.out_dir={out_dir}", *extra])


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]
