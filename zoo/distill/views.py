"""Augmented views for dataset distillation: random-resized-crop boxes that are a pure function of
``(seed, epoch, sample)``, and the crop-and-resize that applies them.

Every party that looks at a distilled image (stored-label generation, the students, the projector, the image
optimisation) asks :func:`view_params` for the same boxes, so all of them see the same views; the boxes are rounded
to fp16, the dtype they are stored in, so stored views replay bit for bit.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["view_params", "apply_views", "random_views"]


def view_params(n: int, epoch: int, seed: int, scale: Sequence[float] = (0.5, 1.0),
                ratio: Sequence[float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random-resized-crop boxes ``(n, 4)`` = ``(w, h, cx, cy)`` in ``affine_grid`` units (image = [-1, 1]^2) for
    ``n`` samples at ``epoch``; a pure function of ``(n, epoch, seed)``: the views of sample ``i`` at epoch ``e`` are
    the same whoever asks (stored-label generation, the student, the projector). Values are rounded to fp16, the
    dtype the stored views are written in."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2**63))
    u = torch.rand(n, 4, generator=g, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)
    cy = (1 - h) * (2 * u[:, 3] - 1)
    return torch.stack([w, h, cx, cy], 1).half().float()  # fp16-exact: stored views (fp16) replay bit for bit


def apply_views(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Crop-and-resize ``images (N, C, H, W)`` to the boxes ``params (N, 4)`` (:func:`view_params`), bilinear, output
    ``(N, C, H, W)``."""
    if params.shape != (images.shape[0], 4):
        raise ValueError(f"apply_views: params must be (N, 4) = ({images.shape[0]}, 4), got {tuple(params.shape)}")
    p = params.to(images.device, torch.float32)
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_views(images: torch.Tensor, scale: Sequence[float],
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One fresh random view of each image: ``images (N, C, H, W) -> (N, C, H, W)``, the boxes of
    :func:`view_params` under a seed drawn from ``generator`` (the global generator when ``None``)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return apply_views(images, view_params(images.shape[0], 0, seed, scale))
