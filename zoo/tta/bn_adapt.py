"""``bn_adapt``: BatchNorm layers normalise with each test batch's statistics; nothing is trained.

Reference: Schneider et al., "Improving robustness against common corruptions by covariate shift adaptation",
NeurIPS 2020; the ``norm`` baseline of DequanWang/tent and qinenergy/cotta (``norm.py``).
"""
from __future__ import annotations

import logging

import torch

from zoo.tta.base import TTAAlgorithm, TTAConfig, register_tta
from zoo.tta.norm import use_batch_statistics

__all__ = ["BNAdaptAlgorithm"]

_logger = logging.getLogger("zoo")


@register_tta("bn_adapt", config=TTAConfig)
class BNAdaptAlgorithm(TTAAlgorithm):
    """The source model with test-batch BatchNorm statistics. A model without BatchNorm (a ViT) behaves as
    ``source`` (a warning says so)."""

    def prepare_model(self, model):
        model.requires_grad_(False)
        model.eval()
        if use_batch_statistics(model) == 0:
            _logger.warning("bn_adapt: %s has no BatchNorm layer; bn_adapt equals source", type(model).__name__)
        return model

    @torch.no_grad()
    def adapt(self, model, x, ctx):
        return model(x)
