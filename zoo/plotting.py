"""Figures the zoo writes (confusion matrices, sample grids, part-segmentation views, Pareto fronts): one way to
make and save them, so every figure is readable on its own -- a title, labelled axes or rows / columns, a legend
for colours, a size at which the text can be read.

* :func:`pyplot` -- matplotlib's pyplot on the non-interactive Agg backend (no display needed);
* :func:`image_grid` -- images ``(R, C)`` in a grid with row and column labels (long labels wrapped, never cut),
  a title and an optional caption: sample grids (prompt x method), style comparisons, restoration triptychs;
* :func:`save_figure` -- lay out, write atomically (a temporary file renamed over the target) and close;
* :func:`figure_texts` -- every text a figure shows (titles, labels, tick labels, legend entries), for tests.

matplotlib is a core dependency of the zoo; importing this module does not import it.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["pyplot", "image_grid", "save_figure", "figure_texts", "wrap_label"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only; safe on a machine without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def wrap_label(text: str, width: int = 18) -> str:
    """``text`` wrapped onto lines of at most ``width`` characters (words are kept whole; nothing is cut)."""
    return "\n".join(textwrap.wrap(str(text), width=width, break_long_words=False, break_on_hyphens=False)) or ""


def _as_hwc(image: Any) -> np.ndarray:
    """An image as an ``(H, W)`` or ``(H, W, 3)`` float array in [0, 1] from a tensor / array in CHW or HWC,
    [0, 1] floats or uint8."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().float().numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    return np.clip(a.astype(np.float32), 0.0, 1.0)


def image_grid(images: Sequence[Sequence[Any]], *, row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
               title: str = "", caption: str = "", cell_inches: float = 1.3, label_width: int = 18) -> Any:
    """A figure of ``images[r][c]`` (each CHW / HWC, tensor or array, [0, 1] or uint8; ``None`` leaves a cell
    blank) with ``row_labels`` on the left, ``col_labels`` on top (wrapped at ``label_width`` characters), a
    ``title`` and a ``caption`` below. Returns the matplotlib figure (see :func:`save_figure`)."""
    plt = pyplot()
    rows = len(images)
    cols = max((len(r) for r in images), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("image_grid: no images")
    for what, labels, n in (("row_labels", row_labels, rows), ("col_labels", col_labels, cols)):
        if labels and len(labels) != n:
            raise ValueError(f"image_grid: {len(labels)} {what} for {n} {what.split('_')[0]}s")
    left = 1.2 if row_labels else 0.2
    top = 0.5 + (0.35 * max((wrap_label(c, label_width).count("\n") + 1 for c in col_labels), default=0))
    fig = plt.figure(figsize=(left + cols * cell_inches, top + rows * cell_inches + (0.5 if caption else 0.1)))
    grid = fig.add_gridspec(rows, cols, left=left / fig.get_figwidth(), right=0.98,
                            top=1 - top / fig.get_figheight(),
                            bottom=(0.5 if caption else 0.1) / fig.get_figheight(), wspace=0.05, hspace=0.05)
    for r in range(rows):
        for c in range(cols):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = images[r][c] if c < len(images[r]) else None
            if image is not None:
                a = _as_hwc(image)
                ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            if c == 0 and row_labels:
                ax.set_ylabel(wrap_label(row_labels[r], label_width), rotation=0, ha="right", va="center",
                              fontsize=9, labelpad=6)
            if r == 0 and col_labels:
                ax.set_title(wrap_label(col_labels[c], label_width), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.12 / fig.get_figheight())
    if caption:
        fig.text(0.5, 0.15 / fig.get_figheight(), caption, ha="center", va="bottom", fontsize=8)
    return fig


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 100, tight: bool = False) -> Path:
    """Write ``fig`` to ``path`` (PNG by its suffix) atomically, parent folders created, then close it. ``tight``:
    apply ``tight_layout`` first (for figures without their own layout). Returns ``path``."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


def figure_texts(fig: Any) -> list[str]:
    """Every non-empty text ``fig`` shows: suptitle, axes titles, axis labels, tick labels, legend entries, free
    texts (what a reader of the PNG can read)."""
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_position"))]
    return [t for t in texts if t and t.strip()]
