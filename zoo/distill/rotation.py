"""Self-supervised 4-way rotation prediction (RotNet), the pretext task that pre-trains the HeLlO projector's
encoder on the images of the training split without their labels.

Reference: Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations",
ICLR 2018 (classes 0 / 90 / 180 / 270 degrees).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["NUM_ROTATIONS", "rotate", "random_rotations", "rotation_hits"]

NUM_ROTATIONS = 4


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate each image ``x[i] (C, H, W)`` by ``k[i] * 90`` degrees (square images): ``(B, C, H, W)`` -> same."""
    return torch.stack([torch.rot90(xi, int(ki), dims=(-2, -1)) for xi, ki in zip(x, k)])


def random_rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch of the pretext task: ``(rotated images (B, C, H, W), rotation classes k (B,))``, ``k``
    uniform in ``0..3`` from the global generator (on ``x``'s device)."""
    k = torch.randint(0, NUM_ROTATIONS, (len(x),), device=x.device)
    return rotate(x, k), k


@torch.no_grad()
def rotation_hits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of its 4 rotations whose class ``model`` predicts: ``(B, C, H, W) -> (B,)`` in
    ``{0, 0.25, 0.5, 0.75, 1}``; its mean over a split is the pretext task's accuracy."""
    hits = torch.zeros(len(x), device=x.device)
    for k in range(NUM_ROTATIONS):
        hits += (model(torch.rot90(x, k, dims=(-2, -1))).argmax(1) == k).float()
    return hits / NUM_ROTATIONS
