"""Training losses of image restoration: L1, MSE and NAFNet's PSNR loss, on ``(B, C, H, W)`` images.

Reference: NAFNet ``basicsr/models/losses/losses.py`` (``PSNRLoss``: ``10 / ln 10 · mean_b log(mse_b + 1e-8)``);
CoLoRA (FAIG on the summed squared error of restoration) for :func:`calibrate_on_pairs`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError

__all__ = ["LOSSES", "RestoreLossConfig", "psnr_loss", "restoration_loss", "calibrate_on_pairs"]

#: the names :func:`restoration_loss` takes (config key ``loss.type``)
LOSSES = ("l1", "mse", "psnr")


@dataclass
class RestoreLossConfig:
    """Config section ``loss``: ``type`` l1 | mse | psnr."""

    type: str = "l1"

    def __post_init__(self) -> None:
        if self.type not in LOSSES:
            raise ConfigError(f"loss.type must be one of {', '.join(LOSSES)}, got {self.type!r}")


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


def calibrate_on_pairs(method: Any, model: nn.Module, batches: Iterable[dict[str, Any]], kind: str,
                       accelerator: Any) -> nn.Module:
    """Calibrate a data-driven adapter ``method`` (CoLoRA: probe + FAIG) on restoration ``batches`` (``lq`` /
    ``gt`` ``(B, C, H, W)``) with the task loss ``kind`` (FAIG's attribution: the summed squared error),
    back-propagated through the run's ``accelerator`` (autocast, loss scaling; the probe's optimiser steps through
    its gradient scaler), then apply it (:meth:`zoo.adapters.base.AdapterMethod.calibrate_and_apply`)."""
    from zoo.engine.step import StepContext

    def forward(m: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return m(batch["lq"].to(accelerator.device)).float(), batch["gt"].to(accelerator.device).float()

    ctx = StepContext(accelerator, model, None, step=0, epoch=0, batch_index=0)
    return method.calibrate_and_apply(model, batches, lambda m, b: restoration_loss(kind, *forward(m, b)), accelerator,
                                      optimizer_step=ctx.optimizer_step,
                                      attribution_loss_fn=lambda m, b: F.mse_loss(*forward(m, b), reduction="sum"))
