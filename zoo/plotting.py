"""Figures the zoo writes (confusion matrices, sample grids, part-segmentation views, Pareto fronts): one way to
make and save them, so every figure is readable on its own -- a title, labelled axes or rows / columns, a legend
for colours, a size at which the text can be read.

* :func:`pyplot` -- matplotlib's pyplot on the non-interactive Agg backend (no display needed);
* :func:`image_grid` -- images ``(R, C)`` in a grid with row and column labels (long labels wrapped, never cut),
  a title and an optional caption: sample grids (prompt x method), style comparisons, restoration triptychs;
* :func:`save_figure` -- lay out, write atomically (a temporary file renamed over the target) and close;
* :func:`figure_to_image` -- a figure as a PIL image (for functions that return images, e.g. sample grids);
* :func:`figure_texts` -- every text a figure shows (titles, labels, tick labels, legend entries), for tests;
* :func:`clipped_texts` -- the texts cut at the figure's edge (a test asserts there are none).

matplotlib is a core dependency of the zoo; importing this module does not import it.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["pyplot", "image_grid", "save_figure", "figure_to_image", "figure_texts", "clipped_texts",
           "wrap_label"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only; safe on a machine without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def wrap_label(text: str, width: int = 18) -> str:
    """``text`` wrapped onto lines of at most ``width`` characters (words are kept whole; nothing is cut; line
    breaks in ``text`` are kept)."""
    return "\n".join(line for part in str(text).split("\n")
                     for line in textwrap.wrap(part, width=width, break_long_words=False, break_on_hyphens=False))


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
               col_groups: Sequence[tuple[str, int]] = (), title: str = "", caption: str = "",
               cell_inches: float = 1.3, label_width: int = 18, fontsize: float = 9) -> Any:
    """A figure of ``images[r][c]`` (each CHW / HWC, tensor or array, [0, 1] or uint8; ``None`` leaves a cell
    blank; cells take the first image's aspect ratio) with ``row_labels`` on the left, ``col_labels`` on top (both
    wrapped at ``label_width`` characters, never cut: the margins grow to hold them), ``col_groups`` as headings
    over consecutive columns (``(label, n_columns)`` pairs covering every column, e.g. ``[("style prompt", 10),
    ("plain prompt", 10)]``, separated by a gap), a ``title`` and a ``caption`` below. Cells are ``cell_inches``
    wide. Returns the matplotlib figure (see :func:`save_figure`, :func:`figure_to_image`)."""
    plt = pyplot()
    rows = len(images)
    cols = max((len(r) for r in images), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("image_grid: no images")
    for what, labels, n in (("row_labels", row_labels, rows), ("col_labels", col_labels, cols)):
        if labels and len(labels) != n:
            raise ValueError(f"image_grid: {len(labels)} {what} for {n} {what.split('_')[0]}s")
    if col_groups and sum(n for _, n in col_groups) != cols:
        raise ValueError(f"image_grid: col_groups cover {sum(n for _, n in col_groups)} columns, the grid has {cols}")
    char_in, line_in = 0.62 * fontsize / 72, 1.45 * fontsize / 72  # average character width, line height (inches)
    wrapped_rows = [wrap_label(r, label_width) for r in row_labels]
    wrapped_cols = [wrap_label(c, label_width) for c in col_labels]
    longest = max((len(line) for r in wrapped_rows for line in r.split("\n")), default=0)
    left = 0.25 + longest * char_in + (0.1 if row_labels else 0)
    col_lines = max((c.count("\n") + 1 for c in wrapped_cols), default=0)
    widest_col = max((len(line) for c in wrapped_cols for line in c.split("\n")), default=0)
    row_lines = max((r.count("\n") + 1 for r in wrapped_rows), default=0)
    # a column label never runs into its neighbour, a row label never into the next row's
    cell_inches = max(cell_inches, widest_col * char_in + 0.05)
    first = next((_as_hwc(im) for row in images for im in row if im is not None), None)
    aspect = first.shape[0] / first.shape[1] if first is not None else 1.0  # height / width of a cell
    cell_h = max(cell_inches * aspect, row_lines * line_in + 0.1)
    group_gap = 0.25 * cell_inches if col_groups else 0.0
    top = 0.15 + col_lines * line_in + (line_in + 0.1 if col_groups else 0) + (0.35 if title else 0)
    width = left + cols * cell_inches + max(len(col_groups) - 1, 0) * group_gap + 0.15
    width = max(width, len(title) * char_in * (fontsize + 2) / fontsize + 0.3)  # the title is never cut either
    caption_lines = textwrap.wrap(caption, max(20, int((width - 0.3) / (char_in * (fontsize - 1) / fontsize))))
    bottom = 0.15 + (len(caption_lines) * line_in + 0.1 if caption else 0)
    height = top + rows * (cell_h + 0.04 * cell_inches) + bottom
    fig = plt.figure(figsize=(width, height))
    starts, x = [], left  # the left edge (inches) of every column, groups separated by a gap
    bounds = np.cumsum([n for _, n in col_groups]) if col_groups else []
    for c in range(cols):
        if c and c in bounds:
            x += group_gap
        starts.append(x)
        x += cell_inches
    for r in range(rows):
        y = height - top - (r + 1) * (cell_h + 0.04 * cell_inches) + 0.04 * cell_inches
        for c in range(cols):
            ax = fig.add_axes((starts[c] / width, y / height, cell_inches * 0.96 / width, cell_h / height))
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = images[r][c] if c < len(images[r]) else None
            if image is not None:
                a = _as_hwc(image)
                ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest",
                          aspect="equal")
            if c == 0 and row_labels:
                ax.set_ylabel(wrapped_rows[r], rotation=0, ha="right", va="center", fontsize=fontsize, labelpad=6)
            if r == 0 and col_labels:
                ax.set_title(wrapped_cols[c], fontsize=fontsize, pad=3)
    heading_y = (height - 0.15 - (0.35 if title else 0)) / height
    group_start = 0
    for label, n in col_groups:
        x0, x1 = starts[group_start], starts[group_start + n - 1] + cell_inches * 0.96
        fig.text((x0 + x1) / 2 / width, heading_y, label, ha="center", va="top", fontsize=fontsize + 1,
                 fontweight="bold")
        fig.add_artist(plt.Line2D([x0 / width, x1 / width], [heading_y - line_in / height] * 2, color="0.4", lw=0.8))
        group_start += n
    if title:
        fig.suptitle(title, fontsize=fontsize + 2, y=1 - 0.12 / height, va="top")
    if caption:
        fig.text(0.5, 0.1 / height, "\n".join(caption_lines), ha="center", va="bottom",
                 fontsize=fontsize - 1)
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


def figure_to_image(fig: Any, *, dpi: int = 100) -> Any:
    """``fig`` rendered to an RGB PIL image at ``dpi`` (for code that returns or pastes images, e.g. sample grids),
    then closed."""
    import io

    from PIL import Image

    plt = pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as im:
        return im.convert("RGB")


def clipped_texts(fig: Any, *, dpi: int = 100) -> list[str]:
    """The texts of ``fig`` (as :func:`figure_texts`) that do not fit inside the figure when drawn at ``dpi``: a
    label cut at the image's edge. Empty for a figure a reader can read entirely (tests assert that)."""
    fig.set_dpi(dpi)
    canvas = fig.canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    undrawn = set()  # tick labels outside the axis limits exist as objects but are not drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            ticks = axis.get_major_ticks() + axis.get_minor_ticks()
            drawn = {id(t) for t in axis._update_ticks()} if ax.axison and axis.get_visible() else set()
            undrawn |= {id(label) for t in ticks if id(t) not in drawn for label in (t.label1, t.label2)}
    out = []
    for artist in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_position")):
        text = artist.get_text()
        if not text or not text.strip() or not artist.get_visible() or id(artist) in undrawn:
            continue
        box = artist.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            out.append(text)
    return out
