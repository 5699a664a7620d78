"""The classical baseline a user with few labels would pick instead of deep pretraining (ilastik's
pixel classifier): per-pixel multi-scale filter features (Gaussian-smoothed intensity, edges and
texture of each channel at sigmas from 0.5 to ``sigma_max``: ``stage2.filters``) and a random forest
(scikit-learn) trained on the labeled pixels.

The fitted forest is kept as plain arrays (``Forest``: every tree's nodes in one table), so a saved
segmenter is tensors and YAML like every other (no pickle), and prediction is a vectorised walk down
all trees at once that gives scikit-learn's ``predict_proba`` (tests/test_verdicts.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier

from ..common.labels import IGNORE_INDEX
from ..common.rng import Tag, make_key
from ..stage2.filters import filter_features

PREDICT_CHUNK = 65536  # pixels walked down the trees at once


@dataclass
class Forest:
    """A fitted forest as arrays; nodes of all trees in one table, indices absolute (``left == -1``:
    a leaf).

    ``roots [T]``, ``left`` / ``right`` / ``feature [nodes]`` int64, ``threshold [nodes]`` float64
    (a sample goes left where ``x[feature] <= threshold``, on float32 features as scikit-learn
    compares), ``value [nodes, C]`` the class probabilities of each leaf."""

    roots: np.ndarray
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, forest: RandomForestClassifier, num_classes: int) -> Forest:
        parts, offset, roots = [], 0, []
        for tree in (e.tree_ for e in forest.estimators_):
            value = np.zeros((tree.node_count, num_classes))
            value[:, forest.classes_] = tree.value[:, 0, :]
            value /= np.maximum(value.sum(1, keepdims=True), 1e-12)
            left, right = (np.where(a >= 0, a + offset, -1) for a in (tree.children_left,
                                                                      tree.children_right))
            parts.append((left, right, tree.feature, tree.threshold, value))
            roots.append(offset)
            offset += tree.node_count
        left, right, feature, threshold, value = (np.concatenate(a) for a in zip(*parts))
        return cls(np.array(roots), left.astype(np.int64), right.astype(np.int64),
                   np.maximum(feature, 0)
                   .astype(np.int64), threshold.astype(np.float64), value.astype(np.float32))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``x [N, F]`` -> ``[N, C]``: the trees' leaf probabilities averaged (scikit-learn's
        ``predict_proba``)."""
        x = np.asarray(x, dtype=np.float32)
        out = []
        for start in range(0, len(x), PREDICT_CHUNK):
            chunk = x[start:start + PREDICT_CHUNK]
            rows = np.arange(len(chunk))[None, :]
            node = np.repeat(self.roots[:, None], len(chunk), axis=1)  # [T, N]
            left = self.left[node]
            while (left >= 0).any():
                go_left = chunk[rows, self.feature[node]] <= self.threshold[node]
                node = np.where(left >= 0, np.where(go_left, left, self.right[node]), node)
                left = self.left[node]
            out.append(self.value[node].mean(0))
        return np.concatenate(out) if out else np.zeros((0, self.value.shape[1]), np.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in self.__dataclass_fields__}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Forest:
        return cls(**{k: tensors[k].numpy() for k in cls.__dataclass_fields__})


def fit_forest(images: list, num_classes: int, sigma_max: float, trees: int, pixels_per_image: int,
               seed: int, threads: int = 1) -> Forest:
    """Train the forest on ``images`` (``LabeledImage``: ``image [3, H, W]``, ``label [H, W]``): up
    to ``pixels_per_image`` labeled pixels of each, drawn with a keyed generator (``seed``, the
    image's place)."""
    xs, ys = [], []
    for i, im in enumerate(images):
        label = im.label.numpy().reshape(-1)
        where = np.flatnonzero(label != IGNORE_INDEX)
        rng = np.random.default_rng(make_key(seed, Tag.FOREST_PIXELS, i))
        if len(where) > pixels_per_image:
            where = np.sort(rng.choice(where, pixels_per_image, replace=False))
        xs.append(filter_features(im.image, sigma_max).reshape(len(label), -1)[where])
        ys.append(label[where])
    forest = RandomForestClassifier(n_estimators=trees, random_state=seed % 2**32, n_jobs=threads)
    forest.fit(np.concatenate(xs), np.concatenate(ys))
    return Forest.of(forest, num_classes)


def segment_probs(forest: Forest, image: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """``image [3, H, W]`` -> class probabilities ``[C, H, W]``."""
    feats = filter_features(image, sigma_max)
    h, w, f = feats.shape
    return torch.from_numpy(
        forest.predict_proba(feats.reshape(h * w, f))).reshape(h, w, -1).permute(2, 0, 1)
