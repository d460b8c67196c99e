"""Tiny HeLlO pieces shared by the distillation tests (import as ``from distill.hello_toys import ...``)."""
from __future__ import annotations

import torch

from zoo.adapters.hello import FeatureEncoder, HelloProjector, add_projector_adapters, init_head
from zoo.models.convnet import ConvNet


def tiny_projector(seed: int = 0) -> HelloProjector:
    """A 10-class projector on a 2-stage ConvNet encoder (16 features), random head, adapters of rank 1 / 2; eval mode."""
    torch.manual_seed(seed)
    p = HelloProjector(FeatureEncoder(ConvNet(num_classes=0, widths=(8, 16), convs_per_stage=1)), 16, 10,
                       logit_scale=10.0)
    init_head(p, torch.randn(10, 16))
    add_projector_adapters(p, 1, 2)
    return p.eval()
