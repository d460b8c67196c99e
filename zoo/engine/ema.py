"""Exponential moving average of model weights."""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma(nn.Module):
    """Keeps ``ema = decay * ema + (1 - decay) * model`` for parameters and float buffers (other buffers copied).

    ``warmup=True`` uses ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, as in timm's ModelEmaV3, so early
    averages are not dominated by the random initialisation. The EMA copy lives on the model's device and
    is saved/restored through ``state_dict``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True):
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (same architecture, unwrapped) into the average."""
        d = self.current_decay()
        ema_sd = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema_sd[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.to(target.dtype), 1.0 - d)
            else:
                target.copy_(value)
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
