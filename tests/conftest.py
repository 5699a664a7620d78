import os
import tempfile

import pytest
import torch

import mdm.registries  # noqa: F401 - every registry filled, as through the entry points

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pool manifests (pretrain/folder_manifest.py) go to a folder of this session, not the user's ~/.cache
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="mdm_test_cache_")
torch.set_num_threads(min(2, torch.get_num_threads()))

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def configs_dir():
    return CONFIGS


@pytest.fixture(scope="session")
def pretrained_export(tmp_path_factory):
    """One tiny MDM pretraining run on the synthetic pool, shared by every test that needs an export."""
    from helpers import tiny_config
    from mdm.pretrain.trainer import train

    run = tmp_path_factory.mktemp("pretrained")
    cfg = tiny_config(CONFIGS, run, "model.image_size=32", "data.crop_size=32", "data.synthetic_images=64",
                      "data.synthetic_image_size=64", "train.max_steps=150", "train.batch_size=8",
                      "train.checkpoint_every=1000", "train.log_every=50", "train.ema_decay=0.99")
    train(cfg)
    return run / "export"
