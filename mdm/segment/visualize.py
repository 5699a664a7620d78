"""Pictures of a segmentation a person can read.

Per image, ``save_prediction_images`` writes ``predictions/<name>.png`` (class ids, the image's own
size; 16-bit where there are more classes than 8 bits hold beside the ignore id 255),
``uncertainty/<name>.png`` (entropy of the mean probabilities, 0 black .. log(C) white, the image's
own size) and ``overlays/<name>.png``: a panel of image | ground truth (where known) | prediction |
uncertainty side by side, enlarged with nearest neighbour so that the shorter side is at least 256
px, titled, with a legend of the classes that appear.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..common.errors import DataError
from ..common.io import check_out, refuse_foreign, write_atomic
from ..common.labels import IGNORE_INDEX

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60],
                    [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40],
                    [255, 250, 200], [128, 0, 0]], dtype=np.uint8)
IGNORE_COLOR = np.array([128, 128, 128], dtype=np.uint8)
MIN_SIDE = 256  # panels are enlarged until the image's shorter side reaches this
GAP, TITLE, SWATCH, LEGEND_ENTRY = 6, 14, 12, 150  # layout of the panel, in px


def colorize(labels: np.ndarray) -> np.ndarray:
    """``[H, W]`` class ids -> ``[H, W, 3]`` uint8 colours (a fixed palette, cycled; ignore =
    grey)."""
    rgb = PALETTE[labels % len(PALETTE)]
    rgb[labels == IGNORE_INDEX] = IGNORE_COLOR
    return rgb


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` in [-1, 1] -> ``[H, W, 3]`` uint8."""
    arr = ((image.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]


def overlay(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Class colours blended over the image where the class is not 0 (background stays as it is)."""
    return np.where(labels[..., None] > 0,
                    (0.55 * rgb + 0.45 * colorize(labels)).astype(np.uint8), rgb)


def panel(image: torch.Tensor, prediction: np.ndarray, uncertainty: np.ndarray,
          ground_truth: np.ndarray | None, class_names: list[str]) -> Image.Image:
    """image | ground truth | prediction | uncertainty, enlarged, with titles and a legend (uint8
    RGB)."""
    rgb = to_rgb(image)
    h, w = prediction.shape
    scale = min(16, max(1, math.ceil(MIN_SIDE / min(h, w))))
    grey = (uncertainty * 255).clip(0, 255).astype(np.uint8)
    columns = [("image", rgb)]
    if ground_truth is not None:
        columns.append(("ground truth", overlay(rgb, ground_truth)))
    columns += [("prediction", overlay(rgb, prediction)),
                ("uncertainty", np.repeat(grey[..., None], 3, axis=2))]
    shown = sorted(set(np.unique(prediction).tolist())
                   | (set(np.unique(ground_truth).tolist()) if ground_truth is not None else set()))
    cw, ch = w * scale, h * scale
    width = len(columns) * (cw + GAP) + GAP
    per_row = max(1, (width - GAP) // LEGEND_ENTRY)
    legend_height = math.ceil(len(shown) / per_row) * (SWATCH + 4)
    canvas = Image.new("RGB", (width, TITLE + ch + GAP + legend_height + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k, (title, arr) in enumerate(columns):
        x = GAP + k * (cw + GAP)
        draw.text((x, 1), title, fill="black", font=font)
        canvas.paste(Image.fromarray(arr).resize((cw, ch), Image.NEAREST), (x, TITLE))
    for i, c in enumerate(shown):
        x, y = GAP + (i % per_row) * LEGEND_ENTRY, TITLE + ch + GAP + (i // per_row) * (SWATCH + 4)
        colour = tuple(int(v) for v in colorize(np.array([c]))[0])
        draw.rectangle([x, y, x + SWATCH, y + SWATCH], fill=colour, outline="black")
        name = "ignore" if c == IGNORE_INDEX else class_names[c] if c < len(class_names) else f"class {c}"
        draw.text((x + SWATCH + 4, y), name, fill="black", font=font)
    return canvas


def save_prediction_images(out: Path, name: str, image: torch.Tensor, labels: torch.Tensor,
                           uncertainty: torch.Tensor, num_classes: int,
                           ground_truth: torch.Tensor | None = None,
                           class_names: list[str] | None = None) -> None:
    """``predictions/<name>.png``, ``uncertainty/<name>.png`` and the ``overlays/<name>.png`` panel
    under ``out``; ``name`` may hold sub-folders (``a/x``)."""
    lab = labels.cpu().numpy().astype(np.int64)
    # 16-bit PNG where 8 bits would wrap
    ids = lab.astype(np.uint8 if num_classes <= IGNORE_INDEX else np.uint16)
    unc = (uncertainty.cpu() / math.log(max(num_classes, 2))).clamp(0, 1).numpy()
    gt = ground_truth.cpu().numpy() if ground_truth is not None else None
    names = class_names or [f"class {k}" for k in range(num_classes)]
    pictures = {"predictions": Image.fromarray(ids),
                "uncertainty": Image.fromarray((unc * 255).astype(np.uint8)),
                "overlays": panel(image.cpu(), lab, unc, gt, names)}
    for sub, picture in pictures.items():
        path = out / sub / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # explicit format: a name
        write_atomic(path, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        # like '..' has no extension PIL can read, nor has the temporary file


PREDICT_FOLDERS = {"predictions", "uncertainty", "overlays"}  # what save_prediction_images writes


def check_predict_out(out: Path, images: Path, model: Path) -> None:
    """``predict --out`` must be a folder of its own: not inside ``--images`` (the next predict
    would segment its own outputs) and not inside the run folder (a rerun replaces it, and its test
    predictions live there)."""
    check_out(out)
    refuse_foreign(out, PREDICT_FOLDERS, "predict",
                   "give a new or empty --out folder (predict writes "
                   "predictions/, uncertainty/ and overlays/ there, replacing same-named files)")
    o, images, model = out.resolve(), images.resolve(), model.resolve()
    run = model.parent if model.name == "segmenter" else model
    if images.is_dir() and (o == images or images in o.parents):
        raise DataError(f"--out {out}: is inside --images {images}; a later predict would segment these outputs too: "
                        f"give a folder outside it")
    if o == run or run in o.parents:
        raise DataError(f"--out {out}: is inside the run folder {run}, which holds the run's own test predictions and "
                        f"is replaced as a whole by a rerun: give a folder outside it")


def output_names(files: list[Path], root: Path) -> list[str]:
    """Output names that keep the images' folders (``a/x.png`` -> ``a/x``), so equal file names in
    different folders never overwrite each other; files that would still collide (``x.png``,
    ``x.jpg``) keep their extension."""
    rel = [f.relative_to(root).as_posix() if root.is_dir() else f.name for f in files]
    stems = [r[: -len(Path(r).suffix)] if Path(r).suffix else r for r in rel]
    return [s if stems.count(s) == 1 else r for s, r in zip(stems, rel)]
