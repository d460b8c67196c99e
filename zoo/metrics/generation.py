"""Metrics of generated digit images: prompt fidelity, a Fréchet feature distance and a style distance.

* **Prompt fidelity** — a digit classifier's top-1 accuracy on images generated for prompted digits
  (``prompt_fidelity(classifier, images, digits)``); the shipped classifier is ``convnet_small`` trained on
  MNIST t10k[:7000] padded to 32×32 RGB, its checkpoint chosen on t10k[7000:8000] (:func:`load_digit_classifier`;
  ``configs/t2i/classifier.yaml``). It only knows white digits on black:
  styled images (textured strokes, coloured background) are classified through :func:`stroke_mask` (100 % on
  the brick style set, 10 % without).
* **Fréchet distance** (FID-style, on the classifier's penultimate features — its globally pooled 64-d
  features — instead of Inception's): for feature sets with means ``μ₁, μ₂`` and covariances ``Σ₁, Σ₂``,
  ``FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})``, computed in float64 with symmetric
  eigen-decompositions (no scipy): the square root of a PSD matrix is ``V diag(√λ) Vᵀ``.
* **Style distance** (lower = closer to the style images), two statistics of the pixels, no learned network:
  ``gram`` — the Frobenius distance between the mean Gram matrices of the two sets' local 3×3 RGB patches
  (27-d patch vectors ``p`` of an image, ``G = mean_p p pᵀ``: the texture's second-order statistics, Gatys et
  al.'s style representation on pixel patches), and ``colour`` — the L2 distance between the sets' mean
  per-image colour statistics (per-channel mean and std, 6 values in [0, 1]). Both see the whole image, so a
  different shape or stroke area (a new subject) moves them as much as a different style does.
* **Stroke style distance** (:func:`stroke_style_distance`, lower = closer): the L2 distance between the sets'
  mean per-image statistics *of the strokes only* — the :func:`stroke_mask`-weighted mean and standard deviation
  of each RGB channel (the strokes' colour and texture, 6 values) — independent of the shape and area of the
  strokes: the style measure for a new subject drawn in a style learnt from other subjects.

Images are ``(N, 3, H, W)`` float tensors in [0, 1].
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["load_digit_classifier", "classifier_logits_features", "prompt_fidelity", "stroke_mask",
           "frechet_distance", "feature_stats", "patch_gram", "colour_stats", "style_distance", "stroke_style_stats",
           "stroke_style_distance"]



def load_digit_classifier(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The shipped digit classifier ``convnet_small_mnist32`` (32×32 RGB in [0, 1]) in eval mode; ``path``: another
    weights file of that architecture (e.g. a run's ``best.pt``)."""
    import zoo

    if path is None:
        model = zoo.create_model("convnet_small_mnist32", pretrained=True)
    else:
        model = zoo.create_model("convnet_small_mnist32", checkpoint_path=str(path))
    return model.to(device).eval()


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 3):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be (N, 3, H, W) floats in [0, 1], got {got} (zoo/metrics/generation.py)")


@torch.no_grad()
def classifier_logits_features(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, 10), penultimate features (N, D))`` of ``images`` ``(N, 3, H, W)`` (eval mode, no grad)."""
    _check_images(images)
    classifier.eval()
    device = next(classifier.parameters()).device
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float()
        pooled = classifier.forward_features(x)
        feats.append(classifier.forward_head(pooled, pre_logits=True).flatten(1).double().cpu())
        logits.append(classifier.forward_head(pooled).cpu())
    return torch.cat(logits), torch.cat(feats)


def stroke_mask(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` -> ``(N, 3, H, W)`` white-on-black stroke masks for classifying *styled* digits: the
    background colour is the per-channel median of the border pixels, the mask is each pixel's RGB distance
    to it divided by the image's largest distance (grey replicated). A plain digit (black background) maps to
    itself up to scale; a textured digit on a coloured background becomes a plain digit."""
    _check_images(images)
    x = images.float()
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], 2)  # (N, 3, 2H + 2W)
    bg = border.median(2).values[:, :, None, None]
    d = (x - bg).norm(dim=1, keepdim=True)
    d = d / d.flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None]
    return d.expand(-1, 3, -1, -1).contiguous()


def prompt_fidelity(classifier: nn.Module, images: torch.Tensor, digits: Sequence[int] | torch.Tensor
                    ) -> dict[str, Any]:
    """Top-1 accuracy (%) of ``classifier`` on ``images`` against the prompted ``digits`` (N,):
    ``{"fidelity": float, "per_digit": {d: %}, "predictions": (N,) tensor}``."""
    digits = torch.as_tensor(digits).long()
    if len(digits) != len(images):
        raise ValueError(f"prompt_fidelity: {len(images)} images but {len(digits)} digits")
    pred = classifier_logits_features(classifier, images)[0].argmax(1)
    correct = (pred == digits).float()
    per = {int(d): 100.0 * correct[digits == d].mean().item() for d in digits.unique()}
    return {"fidelity": 100.0 * correct.mean().item(), "per_digit": per, "predictions": pred}


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (D,), covariance (D, D))`` of ``(N, D)`` features in float64 (unbiased, N >= 2)."""
    f = features.double()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N >= 2, D) features, got {tuple(f.shape)}")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features ``a (N, D)`` and ``b (M, D)`` (module doc formula)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs (N, D) and (M, D) features, got {tuple(a.shape)} and {tuple(b.shape)}")
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    r1 = _sqrtm_psd(s1)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross
    return max(float(fd), 0.0)


def patch_gram(images: torch.Tensor, patch: int = 3) -> torch.Tensor:
    """Mean Gram matrix ``(3·patch², 3·patch²)`` of the ``patch × patch`` RGB patches of ``images (N, 3, H, W)``
    (float64): ``mean over images and positions of p pᵀ``."""
    _check_images(images)
    p = F.unfold(images.double(), patch)  # (N, 3·k², L)
    return torch.einsum("ndl,nel->de", p, p) / (p.shape[0] * p.shape[2])


def colour_stats(images: torch.Tensor) -> torch.Tensor:
    """``(N, 6)``: per-image channel means then channel standard deviations."""
    _check_images(images)
    x = images.double().flatten(2)
    return torch.cat([x.mean(2), x.std(2, unbiased=False)], 1)


def style_distance(images: torch.Tensor, style_images: torch.Tensor) -> dict[str, float]:
    """``{"gram": ‖G(images) − G(style)‖_F, "colour": ‖mean colour_stats(images) − mean colour_stats(style)‖₂}``
    (both 0 for identical sets; see the module doc)."""
    gram = torch.linalg.matrix_norm(patch_gram(images) - patch_gram(style_images)).item()
    colour = (colour_stats(images).mean(0) - colour_stats(style_images).mean(0)).norm().item()
    return {"gram": gram, "colour": colour}


def stroke_style_stats(images: torch.Tensor) -> torch.Tensor:
    """``(N, 6)`` float64: per image, the stroke-weighted mean then standard deviation of each RGB channel, the
    weights being :func:`stroke_mask` (1 on the strokes, 0 on the background): ``μ_c = Σ m x_c / Σ m``,
    ``σ_c = √(Σ m (x_c − μ_c)² / Σ m)``."""
    _check_images(images)
    x = images.double().flatten(2)  # (N, 3, HW)
    m = stroke_mask(images)[:, :1].double().flatten(2)  # (N, 1, HW)
    total = m.sum(2).clamp_min(1e-12)
    mean = (m * x).sum(2) / total
    std = ((m * (x - mean[..., None]) ** 2).sum(2) / total).sqrt()
    return torch.cat([mean, std], 1)


def stroke_style_distance(images: torch.Tensor, style_images: torch.Tensor) -> float:
    """``‖mean stroke_style_stats(images) − mean stroke_style_stats(style_images)‖₂`` (0 for identical sets;
    unchanged by the strokes' shape and area, see the module doc)."""
    return (stroke_style_stats(images).mean(0) - stroke_style_stats(style_images).mean(0)).norm().item()
