"""One classification run: train on the labeled subset, evaluate on the test split, save everything.

``run_classification(probe, data, export, out)`` reads the image-label source of ``data``
(``datasets``), draws the labeled subset (``data.label_fraction``, ``data.seed``) and its validation
images (``data.val_fraction``), then, by ``probe.mode``: ``frozen``: features of the export's frozen
U-Net (``features``), the block x timestep sweep when ``probe.blocks`` / ``probe.timesteps`` is
``auto`` (``select``), and ``probe.head`` (``heads``); ``finetune``: a whole network (``finetune``);
``classical``: the filterbank baseline (pooled filter responses + logistic regression on every
labeled image: nothing to stop early). Every input is read before anything is written; the run
folder is built under a temporary name and renamed into place (``metrics.json``, written last, marks
a finished run). Run folder::

    config.yaml            the resolved config: the export's model and diffusion, this run's data and probe
    label_subset.json      the labeled training images and the validation ones
    metrics.json           accuracy, balanced_accuracy, roc_auc, per-class recall, the selection, the history
    predictions.csv        one row per test image: its label, the prediction and each class's probability
    loss_curves.png        trained heads and networks: each member's training and validation loss per epoch
    block_selection.json / .png   (auto) the sweep's validation losses and accuracies, and the choice
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..common.config import Config, DataConfig, ProbeConfig
from ..common.config_io import dump
from ..common.errors import ConfigError
from ..common.io import atomic_dir
from ..common.pictures import PictureIndex, file_picture, warn_if_trained_on
from ..pretrain.export import Export
from ..stage2.filters import filter_features
from ..stage2.plots import save_loss_curves
from ..stage2.run_folder import check_replaceable, finish, save_label_subset, save_selection
from .datasets import ClassDataset, open_class_split
from .features import ImageFeatures, features_of, resize
from .finetune import CLASS_NETWORKS, train_classifier
from .heads import HEADS, fit_head
from .metrics import classification_metrics
from .select import candidates, select_part
from .splits import class_subset, validation_images

# the sweeps of the latest few (export, labeled subset, probe settings), each with its feature
# table: the linear, attention and kNN runs of a study share one (see ``_frozen``); bounded, a
# study's memory stays flat
_SELECTIONS: OrderedDict[str, tuple[dict, object]] = OrderedDict()
SELECTIONS_KEPT = 4
RUN_FILES = {"config.yaml", "label_subset.json", "metrics.json", "predictions.csv",
             "block_selection.json", "block_selection.png", "loss_curves.png"}


def _frozen(probe: ProbeConfig, data: DataConfig, export: Export, labeled: ClassDataset,
            test: ClassDataset,
            fit: list[int], val: list[int],
            device: torch.device, progress: bool) -> tuple[torch.Tensor, dict]:
    """Test-set probabilities ``[M, K]`` of ``probe.head`` on frozen features, and what it
    decided."""
    y, k = torch.tensor(labeled.labels), len(labeled.class_names)
    spec = HEADS[probe.head]
    kind = "tok" if spec.tokens else probe.pooling
    # sweep: the features of the sweep when it ran here (its U-Net serves the head too)
    selection = x = sweep = None
    if probe.blocks == "auto":
        # heads of one export, labeled subset and seed share their sweep (it probes with linear
        # heads whatever the head): remembered for the process with the labeled images' features, so
        # a study's linear, attention and kNN runs probe once, and a pooled head reads its features
        # from the sweep's table
        key = repr((export.fingerprint(), str(device), data, labeled.names, labeled.labels, val,
                    replace(probe, head="linear", ensemble=1, network="", out_dir="",
                            cache_dir="", device="")))
        if key not in _SELECTIONS:
            blocks, timesteps = candidates(probe, export.config.model)
            sweep = ImageFeatures.of_probe(probe, export, blocks, timesteps, device)
            table = sweep.extract(labeled, progress=progress)
            _SELECTIONS[key] = select_part(table, blocks, timesteps, y, fit, val, k, probe), table
            while len(_SELECTIONS) > SELECTIONS_KEPT:
                _SELECTIONS.popitem(last=False)
        _SELECTIONS.move_to_end(key)
        selection, table = _SELECTIONS[key]
        blocks, timesteps = selection["blocks"], [selection["timestep"]]
        if not spec.tokens:
            x = features_of(table, [(selection["timestep"], selection["blocks"][0])], kind)
    else:
        blocks, timesteps = list(probe.blocks), list(probe.timesteps)
    final = (sweep.narrowed(blocks, timesteps) if sweep
             else ImageFeatures.of_probe(probe, export, blocks, timesteps, device))
    parts = [(t, b) for t in final.timesteps for b in final.blocks]
    tokens = final.blocks if spec.tokens else []
    if x is None:
        x = features_of(final.extract(labeled, tokens, progress), parts, kind)
    x_test = features_of(final.extract(test, tokens, progress), parts, kind)
    predict, members = fit_head(probe.head, x[fit], y[fit], x[val], y[val], k, probe)
    decided = {"members": members, "parts": [[t, b] for t, b in parts],
               "feature_shape": list(x.shape[1:])}
    if selection is not None:
        decided["selection"] = selection
    return predict(x_test), decided


def _finetune(probe: ProbeConfig, data: DataConfig, export: Export | None, labeled: ClassDataset,
              test: ClassDataset,
              fit: list[int], val: list[int],
              device: torch.device, progress: bool) -> tuple[torch.Tensor, dict]:
    size = probe.image_size
    x = torch.stack([resize(labeled.image(i), size) for i in range(len(labeled))])
    y = torch.tensor(labeled.labels)
    predict, history = train_classifier(x[fit], y[fit], x[val], y[val], len(labeled.class_names),
                                        probe, export, device)
    x_test = torch.stack([resize(test.image(i), size) for i in range(len(test))])
    return predict(x_test), {"members": [history]}


def filter_summary(image: torch.Tensor, size: int, sigma_max: float) -> np.ndarray:
    """``image [3, H, W]`` -> ``[2F]``: the mean and standard deviation over the image (resized to
    ``size``) of each multi-scale filter response (``stage2.filters.filter_features``)."""
    feats = filter_features(resize(image, size), sigma_max)
    return np.concatenate([feats.mean((0, 1)), feats.std((0, 1))])


def _classical(probe: ProbeConfig, data: DataConfig, export: Export | None, labeled: ClassDataset,
               test: ClassDataset, fit: list[int], val: list[int], device: torch.device,
               progress: bool) -> tuple[torch.Tensor, dict]:
    """The filterbank baseline: standardised filter summaries + multinomial logistic regression
    (scikit-learn)."""
    sigma_max = min(16.0, probe.image_size / 4)

    def table(ds: ClassDataset) -> np.ndarray:
        return np.stack([filter_summary(ds.image(i),
                                        probe.image_size, sigma_max) for i in range(len(ds))])

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(table(labeled), np.array(labeled.labels))
    probs = np.zeros((len(test), len(labeled.class_names)))
    probs[:, model.classes_] = model.predict_proba(table(test))
    return torch.from_numpy(probs).float(), {"members": [],
                                             "feature_shape": [int(model[0].n_features_in_)]}


# probe.mode -> its path
PATHS = {"frozen": _frozen, "finetune": _finetune, "classical": _classical}


def open_split(data: DataConfig, split: str) -> ClassDataset:
    """One split (``train`` / ``test``) of ``data``'s source of image labels."""
    return open_class_split(data.source, data.root[0] if data.root else None, split,
                            synthetic_seed=data.synthetic_seed,
                            synthetic_size=data.synthetic_image_size, window=data.crop_size,
                            num_classes=data.num_classes)


def run_classification(probe: ProbeConfig, data: DataConfig, export: Export | None, out: str | Path,
                       *, device: torch.device, progress: bool = True) -> dict:
    """Train, evaluate and save one classification run into ``out``; returns the metrics (also in
    ``metrics.json``). ``export``: the pretraining export (frozen features, or the ``unet-encoder``
    to fine-tune); ``None`` only for a network that needs none (``probe.network: resnet18``)."""
    if export is None and (probe.mode == "frozen" or (probe.mode == "finetune"
                                                       and CLASS_NETWORKS[probe.network].needs_export)):
        raise ConfigError(
            f"--checkpoint is required (a pretraining export folder) for probe.mode={probe.mode}"
            + (f" with probe.network={probe.network}" if probe.mode == "finetune" else ""))
    started = time.perf_counter()
    out = Path(out)
    probe = replace(probe, out_dir=str(out))
    check_replaceable(out, RUN_FILES, "a classification run")
    train, test = open_split(data, "train"), open_split(data, "test")
    chosen = class_subset(train.labels, data.label_fraction, data.seed)
    labeled = train.subset(chosen)
    val = validation_images(labeled.labels, data.val_fraction, data.seed, labeled.groups)
    warn_same_pictures(labeled, test)
    if len(set(test.labels)) < 2:
        warnings.warn(f"every test image is of class {test.class_names[test.labels[0]]!r}: balanced accuracy is that "
                      f"class's recall and ROC AUC is undefined (nan)", stacklevel=2)
    fit = [i for i in range(len(labeled)) if i not in set(val)]
    path = PATHS[probe.mode]
    probs, decided = path(probe, data, export, labeled, test, fit, val, device, progress)
    result = classification_metrics(test.labels, probs.numpy())
    result.update(labeled_images=len(labeled), validation_images=len(val), test_images=len(test),
                  class_names=train.class_names, **decided)
    cfg = replace(export.config if export is not None else Config(), data=data, probe=probe)
    # the whole run becomes visible at once; a killed run leaves the old one as it was
    with atomic_dir(out) as tmp:
        dump(cfg, tmp / "config.yaml")
        save_label_subset(tmp, {"label_fraction": data.label_fraction, "seed": data.seed,
                                "indices": chosen, "names": labeled.names,
                                "validation": [labeled.names[i] for i in val]})
        if "selection" in decided:
            save_selection(tmp, decided["selection"])
        (tmp / "predictions.csv").write_text(_predictions(test, probs))
        curves = [m for m in decided["members"] if m.get("train_loss")]
        if curves:
            what = probe.network if probe.mode == "finetune" else f"{probe.head} head"
            save_loss_curves(tmp / "loss_curves.png", curves,
                             f"{what}, {data.label_fraction:g} labels, seed "
                             f"{data.seed}: balanced accuracy {result['balanced_accuracy']:.3f}, "
                             f"modal share {result['modal_share']:.2f}")
        return finish(tmp, result, started)


def warn_same_pictures(labeled: ClassDataset, test: ClassDataset) -> None:
    """Warn about each test image that is the same picture as a labeled training image (sources of
    files only: the built-in one renders its splits from other slides)."""
    if labeled.image_files and test.image_files:
        trained = PictureIndex()
        for name, f in zip(labeled.names, labeled.image_files):
            trained.add_picture(name, file_picture(f))
        for name, f in zip(test.names, test.image_files):
            warn_if_trained_on(trained, name, file_picture(f), "classification")


def _predictions(test: ClassDataset, probs: torch.Tensor) -> str:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    units = ["unit"] if test.units else []
    writer.writerow(["image", *units, "label", "prediction", *(f"p_{c}" for c in test.class_names)])
    for k, (name, label, p) in enumerate(zip(test.names, test.labels, probs.tolist())):
        writer.writerow([name, *([test.units[k]] if units else []), test.class_names[label],
                         test.class_names[max(range(len(p)), key=p.__getitem__)],
                         *(f"{v:.4f}" for v in p)])
    return text.getvalue()
