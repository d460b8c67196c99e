"""Pre-norm Transformer blocks (ViT / Point-BERT style) with timm's parameter names.

``Block`` is ``x + DropPath(Attn(LN(x)))`` then ``x + DropPath(Mlp(LN(x)))``; ``TransformerEncoder`` stacks
them and re-adds a positional embedding before every block, as Point-BERT / Point-MAE / PoinTramba do.
Parameter names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) match timm's
``VisionTransformer`` blocks and the point-cloud code bases built on them, so their checkpoints load as they are.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.drop import DropPath

__all__ = ["Mlp", "Attention", "Block", "TransformerEncoder"]


class Mlp(nn.Module):
    """``fc1 -> act -> drop -> fc2 -> drop`` on the last dimension: ``(..., in) -> (..., out)``."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
    ):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention ``(B, N, C) -> (B, N, C)`` with a fused ``qkv`` projection.

    Uses :func:`torch.nn.functional.scaled_dot_product_attention` (the same softmax(q k^T * scale) v as the
    explicit form, with the fused CPU/GPU kernels). ``qk_scale`` overrides the default ``head_dim ** -0.5``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"Attention: dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm Transformer block ``(B, N, C) -> (B, N, C)``: attention then MLP, each with residual + DropPath."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """``depth`` pre-norm blocks; the positional embedding is added before *every* block (Point-BERT style).

    Args:
        drop_path_rate: one rate for all blocks, or a sequence of ``depth`` rates (stochastic depth schedule).

    ``forward(x (B, N, C), pos (B, N, C) | None) -> (B, N, C)``; no final norm (the caller owns it).
    """

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 4,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float | Sequence[float] = 0.0,
    ):
        super().__init__()
        if isinstance(drop_path_rate, (int, float)):
            rates = [float(drop_path_rate)] * depth
        else:
            rates = [float(r) for r in drop_path_rate]
            if len(rates) != depth:
                raise ValueError(f"TransformerEncoder: got {len(rates)} drop-path rates for depth {depth}.")
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, rates[i])
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x if pos is None else x + pos)
        return x
