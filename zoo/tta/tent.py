"""``tent``: entropy minimisation of the normalisation layers' affine parameters.

Reference: Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021 (DequanWang/tent
``tent.py``: ``forward_and_adapt``, ``configure_model``, ``collect_params``; Adam lr 1e-3 as CoTTA's CIFAR config).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.losses import entropy
from zoo.tta.base import AdamTTAConfig, TTAAlgorithm, register_tta
from zoo.tta.norm import norm_affine_parameters, use_batch_statistics

__all__ = ["TentConfig", "TentAlgorithm"]


@dataclass
class TentConfig(AdamTTAConfig):
    """``tta:`` section of ``tent`` (Adam on the norm layers' affine parameters)."""

    lr: float = 1e-3


@register_tta("tent", config=TentConfig)
class TentAlgorithm(TTAAlgorithm):
    """Tent: BatchNorm on test-batch statistics; the affine weights / biases of BatchNorm, LayerNorm and GroupNorm
    layers (LayerNorm for a ViT, as ViDA's ViT Tent baseline) minimise the mean prediction entropy, one Adam step
    per batch. The logits scored are those of the forward the update is computed from (official Tent), i.e. before
    the update."""

    def prepare_model(self, model):
        model.requires_grad_(False)
        model.train()
        use_batch_statistics(model)
        for _, p in norm_affine_parameters(model):
            p.requires_grad_(True)
        return model

    def param_groups(self, model):
        return [{"params": [p for _, p in norm_affine_parameters(model) if p.requires_grad]}]

    def adapt(self, model, x, ctx):
        with torch.enable_grad():
            logits = ctx.model(x)
            self.update(entropy(logits, reduction="mean"), ctx)
        return logits.detach()
