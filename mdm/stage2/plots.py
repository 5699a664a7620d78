"""Figures of stage 2 that both tasks draw: the block x timestep heatmap of a selection, the
training and validation loss curves of a supervised fit, and the atomic PNG writer every matplotlib
figure goes through."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.io import write_atomic


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Lay out the matplotlib figure ``fig``, write it to ``path`` as a PNG atomically
    (``write_atomic``) and close it."""
    import matplotlib.pyplot as plt  # deferred: slow to import, and only figures need it

    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


def draw_heatmap(ax, data: np.ndarray, rows: list[str], columns: list[str], fontsize: int = 8):
    """``data [len(rows), len(columns)]`` on the matplotlib axes ``ax`` as a heatmap, each cell's
    value written in (NaN cells left blank); returns the image, for a colour bar."""
    image = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    for (i, j), v in np.ndenumerate(data):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=fontsize, color="white")
    return image


def save_heatmap(path: Path, values: list[list[float | None]], rows: list[str], columns: list[str],
                 title: str) -> None:
    """A table of numbers as a heatmap PNG, each cell written in (lower is darker)."""
    import matplotlib  # deferred: a second to import, and only block selection draws one

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(columns), 1.2 + 0.45 * len(rows)))
    image = draw_heatmap(ax, data, rows, columns)
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax)
    save_figure(fig, path, dpi=110)


def save_loss_curves(path: Path, members: list[dict], title: str) -> None:
    """Each member's per-epoch ``train_loss`` (solid) and ``val_loss`` (dashed) as a PNG, the kept
    epoch marked."""
    import matplotlib  # deferred, as above

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, m in enumerate(members):
        colour = f"C{i % 10}"
        ax.plot(range(1, len(m["train_loss"]) + 1), m["train_loss"], color=colour,
                label=f"member {i}: training")
        if m["val_loss"]:
            ax.plot(range(1, len(m["val_loss"]) + 1), m["val_loss"], "--", color=colour,
                    label=f"member {i}: validation")
        ax.axvline(m["best_epoch"] + 1, color=colour, lw=0.6, alpha=0.6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)
