"""Loss functions shared by several algorithms (distillation, test-time adaptation, supernets): written once here.

All take logits ``(B, C)`` and return a scalar unless ``reduction="none"`` (then ``(B,)``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_cross_entropy", "distillation_kl", "entropy"]


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against soft targets: ``-Σ_c q[b, c] · log_softmax(logits)[b, c]`` for ``logits, q (B, C)``.

    ``q`` are probabilities (e.g. a teacher's softmax); computed in fp32. Used by BigNAS's in-place distillation
    (T = 1) and, with ``q = softmax(teacher)``, by CoTTA / ViDA's teacher-student loss (their ``softmax_entropy``).
    """
    return _reduce(-(target_probs.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1), reduction)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                    reduction: str = "batchmean") -> torch.Tensor:
    """Hinton's temperature-scaled distillation loss ``T² · KL(softmax(t / T) ‖ softmax(s / T))``, logits ``(B, C)``.

    ``reduction="batchmean"`` (the sum over classes averaged over the batch, the KL's true mean) or ``"none"``
    (per example, ``(B,)``). The ``T²`` factor keeps gradient magnitudes independent of ``T``.

    Reference: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    t = float(temperature)
    log_p = F.log_softmax(student_logits.float() / t, dim=-1)
    q = F.softmax(teacher_logits.float() / t, dim=-1)
    per_example = F.kl_div(log_p, q, reduction="none").sum(-1)
    # T^2 after the reduction: the gradients are bit for bit those of F.kl_div(..., "batchmean") * T * T
    if reduction == "batchmean":
        return per_example.mean() * t * t
    return _reduce(per_example, reduction) * t * t


def entropy(logits: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Shannon entropy of ``softmax(logits)``: ``-Σ_c p_c log p_c`` per example ``(B,)`` (Tent's objective)."""
    return _reduce(-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1), reduction)
