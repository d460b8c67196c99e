"""Tiled inference of a same-size image-to-image model (large images in bounded memory).

:func:`tiled_forward` runs a model tile by tile (``tile`` pixels with at least ``overlap`` shared between
neighbours); every output pixel is taken from the tile in which it lies farthest from a tile edge (the overlaps
are split in the middle), so the result equals the whole-image output exactly for a model whose receptive-field
radius is at most ``overlap // 2`` (and approximately for NAFNet, whose channel attention is global).

Reference: the overlapping-tile inference of BasicSR / KAIR test scripts (``tile`` / ``tile_overlap``), here with
the overlaps split in the middle instead of averaged, so that a local model is reproduced exactly.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["tile_starts", "tiled_forward"]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` with at least ``overlap`` shared between
    neighbours; the last tile ends at ``size``. One tile at 0 when ``tile >= size``."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    if stride < 1:
        raise ValueError(f"tile_overlap ({overlap}) must be smaller than tile ({tile})")
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _regions(starts: list[int], tile: int, size: int) -> list[tuple[int, int]]:
    """The part ``[lo, hi)`` of the output each tile provides: overlaps split at their middle."""
    out = []
    for i, s in enumerate(starts):
        lo = 0 if i == 0 else (s + min(starts[i - 1] + tile, size)) // 2
        hi = size if i == len(starts) - 1 else (starts[i + 1] + min(s + tile, size)) // 2
        out.append((lo, hi))
    return out


@torch.no_grad()
def tiled_forward(model: nn.Module, x: torch.Tensor, tile: int, overlap: int = 32) -> torch.Tensor:
    """``model`` applied tile by tile, ``(B, C, H, W) -> (B, C', H, W)`` for a same-size image-to-image model.

    Tiles are ``tile x tile`` (clipped to the image), neighbours share at least ``overlap`` pixels, and each output
    pixel comes from the tile where it is farthest from an inner tile edge (at least ``overlap // 2`` pixels of
    context on every side). ``tile <= 0`` runs the whole image at once.
    """
    if tile <= 0:
        return model(x)
    if x.ndim != 4:
        raise ValueError(f"tiled_forward expects (B, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    ry, rx = _regions(ys, th, h), _regions(xs, tw, w)
    out = None
    for y, (y0, y1) in zip(ys, ry):
        for xx, (x0, x1) in zip(xs, rx):
            piece = model(x[:, :, y:y + th, xx:xx + tw])
            if out is None:
                out = piece.new_zeros(x.shape[0], piece.shape[1], h, w)
            out[:, :, y0:y1, x0:x1] = piece[:, :, y0 - y:y1 - y, x0 - xx:x1 - xx]
    return out
