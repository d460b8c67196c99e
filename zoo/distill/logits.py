"""Batched, eval-mode logits of a frozen network (the teacher scoring candidate crops, relabelling views)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["batched_logits"]


@torch.no_grad()
def batched_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``model(images)`` in eval mode over chunks: ``(N, C, H, W) -> (N, K)`` float32 on the images' device. The
    model's train / eval mode is restored afterwards."""
    was = model.training
    model.eval()
    out = [model(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)]
    model.train(was)
    return torch.cat(out)
