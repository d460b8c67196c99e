"""Distilled images: RDED's selection and stitching, then pixel optimisation on the label gap.

:func:`rded_select` is RDED's initialisation -- ``num_crop`` random resized crops of each of ``mipc`` real
candidates per class, each scored by the teacher's cross-entropy, the best crop of each kept, the ``ipc * factor^2``
most confident patches stitched ``factor x factor`` (:func:`stitch_patches`) into ``ipc`` images. Then
:func:`optimise_images` takes Adam steps on the pixels that lower *the gap between teacher and projector labels* on
augmented views, :func:`image_objective` = ``T^2 KL(teacher || projector) + ce_weight * CE(teacher, y)`` (our reading
of HeLlO's "reduce the error between teacher and projector labels"; the paper's own update matches CLIP features of
a patch and of its down-up-sampled copy, which only matters for factor > 1 and is not implemented).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from zoo.distill.data import stack_images
from zoo.distill.logits import batched_logits
from zoo.distill.views import apply_views, view_params
from zoo.losses import distillation_kl

__all__ = ["stitch_patches", "rded_select", "rded_image_set", "random_image_set", "image_objective",
           "optimise_images"]


def stitch_patches(patches: torch.Tensor, factor: int, out_size: Sequence[int]) -> torch.Tensor:
    """RDED's stitching: ``(n * factor^2, C, h, w)`` patches, consecutive groups of ``factor^2`` tiled row-major into
    ``n`` images ``(n, C, H, W)`` (each patch resized to its ``H // factor x W // factor`` cell, the last cells take
    the remainder)."""
    H, W = int(out_size[0]), int(out_size[1])
    f2 = factor * factor
    if len(patches) % f2:
        raise ValueError(f"stitch_patches: {len(patches)} patches is not a multiple of factor^2 = {f2}")
    if factor == 1:
        return F.interpolate(patches, size=(H, W), mode="bilinear", align_corners=False) \
            if patches.shape[-2:] != (H, W) else patches.clone()
    n = len(patches) // f2
    out = patches.new_zeros(n, patches.shape[1], H, W)
    hs = [H // factor + (1 if i < H % factor else 0) for i in range(factor)]
    ws = [W // factor + (1 if j < W % factor else 0) for j in range(factor)]
    for k in range(n):
        y = 0
        for i in range(factor):
            x = 0
            for j in range(factor):
                p = patches[k * f2 + i * factor + j][None]
                out[k, :, y:y + hs[i], x:x + ws[j]] = F.interpolate(p, size=(hs[i], ws[j]), mode="bilinear",
                                                                    align_corners=False)[0]
                x += ws[j]
            y += hs[i]
    return out


@torch.no_grad()
def rded_select(teacher: nn.Module, images: torch.Tensor, label: int, ipc: int, *, num_crop: int = 5, factor: int = 1,
                scale: Sequence[float] = (0.5, 1.0), seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """RDED's selection for one class: ``images (M, C, H, W)`` real candidates of class ``label`` -> ``(ipc, C, H, W)``.

    Each candidate gets ``num_crop`` random resized crops (side ``1 / factor`` of the image, resized to the full size
    for scoring as RDED scores its patches at the network's input size); the crop with the lowest teacher
    cross-entropy is its representative; the ``ipc * factor^2`` lowest-CE representatives are stitched
    ``factor x factor`` (:func:`stitch_patches`). Raises ``ValueError`` if there are fewer candidates than patches.
    """
    need = ipc * factor * factor
    m = images.shape[0]
    if m < need:
        raise ValueError(f"rded_select: class {label} has {m} candidate images but ipc * factor^2 = {need} patches "
                         "are needed; raise images.mipc or lower the IPC")
    H, W = images.shape[-2:]
    best_ce = torch.full((m,), float("inf"), device=images.device)
    best = images.clone()
    for c in range(num_crop):
        views = apply_views(images, view_params(m, c, seed * 131 + label, scale).to(images.device))
        logits = batched_logits(teacher, views, batch_size)
        ce = F.cross_entropy(logits, torch.full((m,), label, device=images.device, dtype=torch.long), reduction="none")
        better = ce < best_ce
        best_ce = torch.where(better, ce, best_ce)
        best[better] = views[better]
    order = torch.argsort(best_ce)[:need]
    patches = best[order]
    if factor > 1:
        patches = F.interpolate(patches, size=(H // factor, W // factor), mode="bilinear", align_corners=False,
                                antialias=True)
    return stitch_patches(patches, factor, (H, W)).clamp(0, 1)


def rded_image_set(pool: Dataset, targets: torch.Tensor, teacher: nn.Module, num_classes: int, ipc: int, *,
                   mipc: int = 300, num_crop: int = 5, factor: int = 1, scale: Sequence[float] = (0.5, 1.0),
                   seed: int = 0, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """RDED's initial distilled set: for each class, ``mipc`` random real candidates of ``pool`` (labels
    ``targets (N,)``), :func:`rded_select` -ed down to ``ipc`` images. Returns ``(images (K * ipc, C, H, W),
    labels (K * ipc,))`` on the CPU, class by class; the candidates are a function of ``(seed, ipc)``."""
    g = torch.Generator().manual_seed(seed * 7 + ipc)
    teacher = teacher.to(device)
    imgs, labs = [], []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)[:mipc]]
        picked = rded_select(teacher, stack_images(pool, idx).to(device), c, ipc, num_crop=num_crop, factor=factor,
                             scale=scale, seed=seed)
        imgs.append(picked.cpu())
        labs.append(torch.full((ipc,), c, dtype=torch.long))
    return torch.cat(imgs), torch.cat(labs)


def random_image_set(pool: Dataset, targets: torch.Tensor, num_classes: int, ipc: int, *,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` random real images of each class of ``pool`` (DD-Ranking's random baseline for IOR):
    ``(images (K * ipc, C, H, W), labels (K * ipc,))``, a function of ``(seed, ipc)``."""
    g = torch.Generator().manual_seed(seed * 7919 + ipc)
    idx = torch.cat([torch.nonzero(targets == c).flatten()[torch.randperm(int((targets == c).sum()), generator=g)[:ipc]]
                     for c in range(num_classes)])
    return stack_images(pool, idx), targets[idx]


def image_objective(teacher: nn.Module, projector: nn.Module, views: torch.Tensor, labels: torch.Tensor, *,
                    temperature: float = 1.0, ce_weight: float = 0.1) -> torch.Tensor:
    """The distilled images' objective on ``views (N, C, H, W)``: ``T^2 KL(softmax(teacher/T) || softmax(projector/T))
    + ce_weight * CE(teacher, labels)`` -- projector labels close to the teacher's, images still of their class."""
    t = teacher(views).float()
    p = projector(views).float()
    return distillation_kl(p, t, temperature) + ce_weight * F.cross_entropy(t, labels)


def optimise_images(images: torch.Tensor, labels: torch.Tensor, teacher: nn.Module, projector: nn.Module, *,
                    steps: int = 50, lr: float = 0.01, temperature: float = 1.0, ce_weight: float = 0.1,
                    scale: Sequence[float] = (0.5, 1.0), seed: int = 0, batch_size: int = 256) -> tuple[torch.Tensor, list[float]]:
    """Adam on the pixels of ``images (N, C, H, W)`` in [0, 1] (clamped after each step) for ``steps`` steps of
    :func:`image_objective` on one fresh augmented view per image per step (chunks of ``batch_size``); teacher and
    projector frozen, in eval mode. Returns ``(images, objective per step on the step's views)``."""
    for m in (teacher, projector):
        m.eval()
    frozen = [(q, q.requires_grad) for m in (teacher, projector) for q in m.parameters()]
    for q, _ in frozen:  # gradients reach the pixels only
        q.requires_grad_(False)
    try:
        return _optimise_pixels(images, labels, teacher, projector, steps, lr, temperature, ce_weight, scale, seed,
                                batch_size)
    finally:
        for q, flag in frozen:
            q.requires_grad_(flag)


def _optimise_pixels(images, labels, teacher, projector, steps, lr, temperature, ce_weight, scale, seed, batch_size):
    """The Adam loop of :func:`optimise_images` (networks already frozen): ``(N, C, H, W)`` -> (images, history)."""
    x = images.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    history: list[float] = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        params = view_params(len(x), step, seed + 99991, scale).to(x.device)
        total = 0.0
        for i in range(0, len(x), batch_size):
            sl = slice(i, i + batch_size)
            loss = image_objective(teacher, projector, apply_views(x[sl], params[sl]), labels[sl],
                                   temperature=temperature, ce_weight=ce_weight) * (min(len(x), i + batch_size) - i) / len(x)
            loss.backward()
            total += float(loss.detach())
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        history.append(total)
    return x.detach(), history
