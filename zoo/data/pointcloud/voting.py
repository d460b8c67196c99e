"""Test-time voting: average a classifier's logits over several augmented views of each cloud.

Mirrors PointMamba / Point-BERT ``validate_vote`` (``tools/runner_finetune.py``, ``times=10``): FPS the raw clouds
once to ``round(num_points * 1200 / 1024)`` points, then for each vote take a random ``num_points`` of those,
apply ``PointcloudScaleAndTranslate`` (scale U[2/3, 3/2), shift U[-0.2, 0.2) per axis), run the model, and
average the logits (``mean`` over votes, then ``argmax``). Differences: the random subset is drawn per cloud
(upstream draws one column subset for the whole batch) and randomness comes from torch (``generator``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from zoo.data.pointcloud.transforms import Compose, PointTransform, ScaleTranslate, _random_subset

__all__ = ["predict_with_votes", "predict_parts_with_votes"]


@torch.no_grad()
def predict_with_votes(
    model: Callable[[torch.Tensor], torch.Tensor],
    points: torch.Tensor,
    num_votes: int = 10,
    transform: Callable | None = None,
    num_points: int | None = None,
    oversample: float = 1200 / 1024,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean logits over ``num_votes`` augmented views: ``points (B, N, C) -> logits (B, num_classes)`` float32.

    Args:
        model: maps ``(B, n, C)`` points to ``(B, num_classes)`` logits (put it in ``eval()`` mode first).
        points: the batch, on the model's device.
        num_votes: number of views (PointMamba: 10).
        transform: view augmentation (default ``ScaleTranslate()``, the official one); ``None`` views are
            only re-sampled. Pass ``lambda x: x`` for no augmentation.
        num_points: points per view; if smaller than N, views are random ``num_points``-subsets of the FPS
            of ``round(num_points * oversample)`` points (computed once). ``None``: all N points.
        oversample: FPS pool size factor (1200 / 1024 as upstream).
        generator: torch generator for the subsets and the transform (default: global RNG).
    """
    from zoo.ops.pointcloud import furthest_point_sample, gather_points

    if points.dim() != 3 or points.shape[-1] < 3:
        raise ValueError(f"points must have shape (B, N, C>=3), got {tuple(points.shape)}")
    if num_votes < 1:
        raise ValueError(f"num_votes must be >= 1, got {num_votes}")
    view_transform = ScaleTranslate() if transform is None else transform
    B, N, _ = points.shape
    pool = points
    subset = num_points is not None and num_points < N
    if subset:
        m = min(N, max(num_points, round(num_points * oversample)))
        pool = gather_points(points, furthest_point_sample(points[..., :3], m))
    total = None
    for _ in range(num_votes):
        view = pool
        if subset:
            view = gather_points(pool, _random_subset(B, pool.shape[1], num_points, generator, points.device))
        if isinstance(view_transform, (PointTransform, Compose)):
            view = view_transform(view, generator=generator)
        else:
            view = view_transform(view.clone())
        logits = model(view)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != B:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"model must return logits of shape (B={B}, num_classes), got {got}")
        total = logits.float() if total is None else total + logits.float()
    return total / num_votes


def predict_parts_with_votes(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], xyz: torch.Tensor,
                             category: torch.Tensor, num_votes: int, scale_low: float, scale_high: float,
                             generator: torch.Generator | None = None,
                             after_forward: Callable[[], Any] | None = None) -> torch.Tensor:
    """Part scores of ``xyz (B, N, 3)`` of objects ``category (B,)``: ``model(xyz, category)``'s ``(B, N, parts)``
    logits, or with ``num_votes > 1`` the mean softmax over that many copies each scaled by U[``scale_low``,
    ``scale_high``) per cloud (Point-BERT's part-segmentation voting; seeded by ``generator``).
    ``after_forward``: called after every forward (e.g. to drop the auxiliary losses the model kept)."""
    def forward(points: torch.Tensor) -> torch.Tensor:
        out = model(points, category).float()
        if after_forward is not None:
            after_forward()
        return out

    if num_votes == 1:
        return forward(xyz)
    total = 0.0
    for _ in range(num_votes):
        scale = torch.rand(xyz.shape[0], 1, 1, generator=generator, device=xyz.device)
        total = total + forward(xyz * (scale * (scale_high - scale_low) + scale_low)).softmax(-1)
    return total / num_votes
