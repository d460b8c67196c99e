"""Optimisers with weight-decay-free bias/norm groups, and per-step warmup + cosine schedules."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

__all__ = ["OptimConfig", "ScheduleConfig", "param_groups_weight_decay", "build_optimizer", "build_scheduler", "lr_factor"]


@dataclass
class OptimConfig:
    """Optimiser settings (config section ``optim``)."""

    name: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    no_decay_bias_norm: bool = True  # no weight decay on biases, norm weights and params flagged _no_weight_decay


@dataclass
class ScheduleConfig:
    """Learning-rate schedule settings (config section ``schedule``), applied per optimiser step."""

    name: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0  # lr at step 0 = lr * warmup_start_factor, linear to lr
    min_lr: float = 0.0  # cosine floor


def _no_decay_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    if hasattr(model, "no_weight_decay"):
        names |= set(model.no_weight_decay())
    return names


def param_groups_weight_decay(model: nn.Module, weight_decay: float, no_decay_bias_norm: bool = True) -> list[dict]:
    """Two parameter groups: with ``weight_decay``, and without it for biases/norm weights (any param with
    ``ndim <= 1``), params carrying ``_no_weight_decay = True`` and names listed by ``model.no_weight_decay()``.
    Frozen parameters (``requires_grad=False``) are left out."""
    skip = _no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if no_decay_bias_norm and (p.ndim <= 1 or getattr(p, "_no_weight_decay", False) or name in skip):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: nn.Module | Iterable, cfg: OptimConfig) -> torch.optim.Optimizer:
    """An optimiser for a model (grouped by :func:`param_groups_weight_decay`) or an explicit param list/groups."""
    if isinstance(params, nn.Module):
        params = param_groups_weight_decay(params, cfg.weight_decay, cfg.no_decay_bias_norm)
    name = cfg.name.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    raise ValueError(f"Unknown optimizer '{cfg.name}' (optim.name); choose adamw, adam or sgd")


def lr_factor(step: int, total_steps: int, warmup_steps: int, cfg: ScheduleConfig, base_lr: float) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): linear warmup, then cosine or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * step / warmup_steps
    if cfg.name == "constant":
        return 1.0
    if cfg.name != "cosine":
        raise ValueError(f"Unknown schedule '{cfg.name}' (schedule.name); choose cosine or constant")
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` for ``epochs`` × ``steps_per_epoch`` optimiser steps following ``cfg``."""
    total = max(1, steps_per_epoch * epochs)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    lambdas = [
        (lambda step, base=g["lr"]: lr_factor(step, total, warmup, cfg, base)) for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
