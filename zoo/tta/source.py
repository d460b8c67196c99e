"""``source``: no adaptation, the source model in eval mode (the lower bound every CTTA table starts from)."""
from __future__ import annotations

import torch

from zoo.tta.base import TTAAlgorithm, TTAConfig, register_tta

__all__ = ["SourceAlgorithm"]


@register_tta("source", config=TTAConfig)
class SourceAlgorithm(TTAAlgorithm):
    """No adaptation: every batch is scored by the frozen source model in eval mode."""

    def prepare_model(self, model):
        model.requires_grad_(False)
        return model.eval()

    @torch.no_grad()
    def adapt(self, model, x, ctx):
        model.eval()
        return model(x)
