"""Restoration figures a reader understands without the README: the degraded input, the restored output and the
ground truth side by side, each column named, with the PSNR of input and output against the ground truth.

* :func:`triptych_figure` -- one image: input | output | ground truth (several images: one row each);
* :func:`save_triptych` -- write it as a PNG (:func:`zoo.plotting.save_figure`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["triptych_figure", "save_triptych"]


def _psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    from zoo.metrics.image import psnr

    return float(psnr(image.clamp(0, 1), target.clamp(0, 1), quantize=True))


def triptych_figure(rows: Sequence[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], *, method: str = "model",
                    title: str = "") -> Any:
    """A figure with one row per ``(name, input, output, target)`` (``(C, H, W)`` tensors in [0, 1], one size per
    row) and three named columns: "degraded input", "restored: ``method``", "ground truth"; each row is labelled with
    the image's name and the PSNR (dB, 8-bit, as the metrics) of input and output against the ground truth. Title:
    ``title`` or "Restoration: input | ``method`` | ground truth". Returns the matplotlib figure."""
    from zoo.plotting import image_grid

    if not rows:
        raise ValueError("triptych_figure: no images")
    images, labels = [], []
    for name, lq, out, gt in rows:
        images.append([lq, out, gt])
        labels.append(f"{name}\nPSNR: input {_psnr(lq, gt):.2f} dB,\noutput {_psnr(out, gt):.2f} dB")
    height, width = rows[0][1].shape[-2:]
    cell = min(3.2, max(1.6, max(height, width) / 100))
    return image_grid(images, row_labels=labels, col_labels=["degraded input", f"restored: {method}", "ground truth"],
                      title=title or f"Restoration: input | {method} | ground truth", cell_inches=cell,
                      label_width=22)


def save_triptych(rows: Sequence[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], path: str | os.PathLike, *,
                  method: str = "model", title: str = "") -> Path:
    """Write :func:`triptych_figure` to ``path`` (PNG, 100 dpi). Returns ``path``."""
    from zoo.plotting import save_figure

    return save_figure(triptych_figure(rows, method=method, title=title), path, dpi=100)
