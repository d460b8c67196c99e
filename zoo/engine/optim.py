"""Optimisers with weight-decay-free bias/norm groups, and per-step warmup + cosine schedules."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from zoo.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant", "exponential")

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
    # per-parameter settings by name: {fnmatch pattern over parameter names: {lr: ..., weight_decay: ...}}; the first
    # matching pattern wins, e.g. {"*.vida_*": {lr: 1.0e-5}} trains adapters at another lr than the model
    param_groups: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name.lower() not in OPTIMIZERS:
            raise ConfigError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        if not self.lr >= 0:
            raise ConfigError(f"optim.lr must be >= 0, got {self.lr!r}")
        for pattern, settings in self.param_groups.items():
            bad = set(settings) - {"lr", "weight_decay"}
            if bad:
                raise ConfigError(f"optim.param_groups.{pattern}: unknown setting(s) {sorted(bad)}; use lr and weight_decay")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule settings (config section ``schedule``), applied per optimiser step."""

    name: str = "cosine"  # cosine | constant | exponential (BigNAS: decay_rate per epoch down to a constant min_lr)
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0  # lr at step 0 = lr * warmup_start_factor, linear to lr
    min_lr: float = 0.0  # cosine floor
    warmup_steps: int | None = None  # warm-up in optimiser steps (overrides warmup_epochs; iteration loops)
    decay_rate: float = 0.97  # exponential: lr factor per epoch after warm-up (BigNAS: 0.97)

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"schedule.name must be one of {', '.join(SCHEDULES)}, got {self.name!r}")
        if self.warmup_epochs < 0 or (self.warmup_steps is not None and self.warmup_steps < 0):
            raise ConfigError("schedule.warmup_epochs / schedule.warmup_steps must be >= 0")
        if not 0 < self.decay_rate <= 1:
            raise ConfigError(f"schedule.decay_rate must be in (0, 1], got {self.decay_rate!r}")


def _no_decay_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    if hasattr(model, "no_weight_decay"):
        names |= set(model.no_weight_decay())
    return names


def param_groups_weight_decay(model: nn.Module, weight_decay: float, no_decay_bias_norm: bool = True,
                              overrides: dict[str, dict[str, float]] | None = None) -> list[dict]:
    """Parameter groups: with ``weight_decay``, and without it for biases/norm weights (any param with
    ``ndim <= 1``), params carrying ``_no_weight_decay = True`` and names listed by ``model.no_weight_decay()``.
    ``overrides`` (``{fnmatch pattern: {"lr": ..., "weight_decay": ...}}``, first match wins) split off the
    parameters whose names match into groups with those settings (an explicit ``weight_decay`` applies to all of
    that group's parameters). Frozen parameters (``requires_grad=False``) are left out. A pattern that matches no
    trainable parameter is an error (a typo must not silently train at the default lr)."""
    skip = _no_decay_names(model)
    overrides = dict(overrides or {})
    groups: dict[tuple, dict] = {}
    used: set[str] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        pattern = next((pat for pat in overrides if fnmatch.fnmatchcase(name, pat)), None)
        settings = overrides.get(pattern, {})
        if pattern is not None:
            used.add(pattern)
        no_decay = no_decay_bias_norm and (p.ndim <= 1 or getattr(p, "_no_weight_decay", False) or name in skip)
        wd = settings.get("weight_decay", 0.0 if no_decay else weight_decay)
        key = (pattern, no_decay, wd)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": wd, **({"lr": settings["lr"]} if "lr" in settings else {})}
            if pattern is not None:
                groups[key]["name"] = pattern
        groups[key]["params"].append(p)
    unused = [pat for pat in overrides if pat not in used]
    if unused:
        raise ValueError(f"optim.param_groups pattern(s) {unused} match no trainable parameter of "
                         f"{type(model).__name__}; parameter names look like {[n for n, _ in model.named_parameters()][:3]}")
    order = [None, *overrides]  # the default groups first, decayed before not decayed (as before patterns existed)
    return [groups[k] for k in sorted(groups, key=lambda k: (order.index(k[0]), k[1]))]


def build_optimizer(params: nn.Module | Iterable, cfg: OptimConfig) -> torch.optim.Optimizer:
    """An optimiser for a model (grouped by :func:`param_groups_weight_decay`) or an explicit param list/groups."""
    if isinstance(params, nn.Module):
        params = param_groups_weight_decay(params, cfg.weight_decay, cfg.no_decay_bias_norm, cfg.param_groups)
    name = cfg.name.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    raise ValueError(f"Unknown optimizer '{cfg.name}' (optim.name); choose adamw, adam or sgd")


def lr_factor(step: int, total_steps: int, warmup_steps: int, cfg: ScheduleConfig, base_lr: float,
              steps_per_epoch: int | None = None) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): linear warmup, then cosine (to ``min_lr``),
    constant, or exponential (``max(min_lr / lr, decay_rate ** epochs_since_warmup)``: BigNAS's "exponential
    decay with a constant ending"; epochs are counted in optimiser steps / ``steps_per_epoch``)."""
    if warmup_steps > 0 and step < warmup_steps:
        return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * step / warmup_steps
    if cfg.name == "constant":
        return 1.0
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    if cfg.name == "exponential":
        if not steps_per_epoch:
            raise ValueError("schedule.name=exponential decays per epoch and needs a loader with a length")
        return max(floor, cfg.decay_rate ** ((step - warmup_steps) / steps_per_epoch))
    if cfg.name != "cosine":
        raise ValueError(f"Unknown schedule '{cfg.name}' (schedule.name); choose one of {', '.join(SCHEDULES)}")
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int | None,
                    epochs: int | None, total_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following ``cfg`` over ``total_steps`` optimiser steps (default: ``epochs`` ×
    ``steps_per_epoch``). Warm-up: ``cfg.warmup_steps``, else ``cfg.warmup_epochs`` × ``steps_per_epoch``."""
    if total_steps is None:
        if steps_per_epoch is None or epochs is None:
            raise ValueError("build_scheduler needs total_steps, or steps_per_epoch and epochs")
        total_steps = steps_per_epoch * epochs
    total = max(1, total_steps)
    if cfg.warmup_steps is not None:
        warmup = cfg.warmup_steps
    elif cfg.warmup_epochs and steps_per_epoch is None:
        raise ValueError("schedule.warmup_epochs needs a loader with a length; set schedule.warmup_steps instead")
    else:
        warmup = int(round(cfg.warmup_epochs * (steps_per_epoch or 0)))
    lambdas = [
        (lambda step, base=g["lr"]: lr_factor(step, total, warmup, cfg, base, steps_per_epoch))
        for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
