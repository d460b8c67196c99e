"""Evaluating a restoration model on whole images: its settings (config section ``eval``), one batch restored and
scored per image, and the pixel-exact (input | output | ground truth) PNGs of the first images.

Reference: BasicSR's conventions for PSNR / SSIM (:mod:`zoo.metrics.image`: outputs clamped to [0, 1] and rounded to
8 bits, as saved PNGs are; ``crop_border``, ``test_y_channel``); tiled inference as the BasicSR / KAIR test
scripts' ``tile`` / ``tile_overlap`` (:mod:`zoo.restoration.tiling`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.metrics.image import image_quality
from zoo.restoration.tiling import tiled_forward

__all__ = ["RestoreEvalConfig", "restore_and_score", "save_triplets"]


@dataclass
class RestoreEvalConfig:
    """Config section ``eval``: tiled inference and metric conventions."""

    tile: int = 0  # 0: whole images
    tile_overlap: int = 32
    crop_border: int = 0
    test_y_channel: bool = False
    save_images: int = 0  # write the first N (input | output | gt) triplets of the main process as PNG

    def __post_init__(self) -> None:
        if self.tile and self.tile_overlap >= self.tile:
            raise ConfigError(f"eval.tile_overlap ({self.tile_overlap}) must be smaller than eval.tile ({self.tile})")
        if self.tile < 0 or self.tile_overlap < 0 or self.crop_border < 0:
            raise ConfigError("eval.tile, eval.tile_overlap and eval.crop_border must be >= 0")


def restore_and_score(model: nn.Module, batch: dict[str, Any], ev: RestoreEvalConfig,
                      saved: list[tuple] | None = None) -> dict[str, torch.Tensor]:
    """Restore each image of ``batch`` (lists ``lq`` / ``gt`` of ``(C, H, W)`` images and ``name``; tiled when
    ``ev.tile``, output clamped to [0, 1]) and score it: ``psnr``, ``ssim`` and the degraded input's
    ``input_psnr`` / ``input_ssim``, ``(B,)`` each. ``saved``: (name, lq, output, gt) of the images are appended
    to it (on the CPU) while it holds fewer than ``ev.save_images``."""
    kw = dict(crop_border=ev.crop_border, test_y_channel=ev.test_y_channel, quantize=True)
    device = next(model.parameters()).device
    rows = []
    for name, lq, gt in zip(batch["name"], batch["lq"], batch["gt"]):
        lq, gt = lq[None].to(device), gt[None].to(device)
        out = tiled_forward(model, lq, ev.tile, ev.tile_overlap).clamp(0, 1)
        if saved is not None and len(saved) < ev.save_images:
            saved.append((name, lq[0].cpu(), out[0].cpu(), gt[0].cpu()))
        rows.append({**image_quality(out, gt, **kw), **image_quality(lq, gt, prefix="input_", **kw)})
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def save_triplets(saved: list[tuple], folder: str | Path) -> None:
    """``<name>.png`` in ``folder`` for each ``(name, lq, output, gt)`` of ``(C, H, W)`` images in [0, 1]: input |
    output | ground truth side by side (8-bit, pixel-exact)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, *imgs in saved:
        row = torch.cat(imgs, dim=2).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(row).save(folder / f"{str(name).replace('/', '_').replace(':', '_')}.png")
