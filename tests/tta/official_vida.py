"""The official ViDA layer (``cifar/inject_vida.py`` ``ViDAInjectedLinear``): its key layout and forward, written out
for the tests that load official checkpoints (no official file is read)."""
from __future__ import annotations

from torch import nn


class OfficialViDALinear(nn.Module):
    """``linear_vida`` (the original Linear) + ``vida_up(vida_down(x)) * scale1`` (rank r) +
    ``vida_up2(vida_down2(x)) * scale2`` (rank r2), weights drawn N(0, 0.3²) so that the adapters matter."""

    def __init__(self, linear: nn.Linear, r: int, r2: int):
        super().__init__()
        self.linear_vida = linear
        self.vida_down = nn.Linear(linear.in_features, r, bias=False)
        self.vida_up = nn.Linear(r, linear.out_features, bias=False)
        self.vida_down2 = nn.Linear(linear.in_features, r2, bias=False)
        self.vida_up2 = nn.Linear(r2, linear.out_features, bias=False)
        for m in (self.vida_down, self.vida_up, self.vida_down2, self.vida_up2):
            nn.init.normal_(m.weight, std=0.3)
        self.scale1, self.scale2 = 1.0, 1.0

    def forward(self, x):
        return (self.linear_vida(x) + self.vida_up(self.vida_down(x)) * self.scale1
                + self.vida_up2(self.vida_down2(x)) * self.scale2)


def official_vida_model(model: nn.Module, r: int, r2: int) -> nn.Module:
    """``model`` (a timm ViT) with every block's ``attn.qkv`` / ``attn.proj`` made an :class:`OfficialViDALinear`."""
    for block in model.blocks:
        block.attn.qkv = OfficialViDALinear(block.attn.qkv, r, r2)
        block.attn.proj = OfficialViDALinear(block.attn.proj, r, r2)
    return model
