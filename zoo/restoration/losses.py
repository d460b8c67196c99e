"""Training losses of image restoration: L1, MSE and NAFNet's PSNR loss, on ``(B, C, H, W)`` images.

Reference: NAFNet ``basicsr/models/losses/losses.py`` (``PSNRLoss``: ``10 / ln 10 · mean_b log(mse_b + 1e-8)``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "psnr_loss", "restoration_loss"]

#: the names :func:`restoration_loss` takes (config key ``loss.type``)
LOSSES = ("l1", "mse", "psnr")


def psnr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NAFNet's PSNRLoss (loss weight 1): ``10 / ln 10 · mean_b log(mean_chw (pred - target)² + 1e-8)``, i.e. minus
    the mean PSNR (dB, peak 1) up to the 1e-8; ``(B, C, H, W)`` each."""
    mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
    return 10.0 / math.log(10.0) * torch.log(mse + 1e-8).mean()


def restoration_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``"l1"``, ``"mse"`` or ``"psnr"`` (:func:`psnr_loss`) between ``(B, C, H, W)`` tensors."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "psnr":
        return psnr_loss(pred, target)
    raise ValueError(f"unknown loss '{kind}'; choose {', '.join(LOSSES)}")
