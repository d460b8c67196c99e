"""Recompute BatchNorm running statistics for the current weights ("BN recalibration", "precise BN").

A BatchNorm layer trains on batch statistics but evaluates with running averages (momentum 0.1: roughly the
last ten batches). When a layer's input distribution moves faster than that average follows, or differs
between train and eval mode upstream, the evaluated network is not the trained one. Two cases in this zoo:

* PoinTramba pools the Mamba outputs with a *sum* weighted by importance scores that themselves go through a
  BatchNorm, so the head's BatchNorm input shifts with every update of the score predictor; evaluating with
  the running averages gave near-chance accuracy early in training while train-mode accuracy was fine.
* BigNAS-style supernets: every sampled child needs its own statistics (BigNAS §3.3).

:func:`recalibrate_batchnorm` resets the statistics and accumulates exact averages (``momentum=None``) over a
few batches, with every other module in eval mode (no dropout / drop-path), so each BatchNorm sees the inputs
it sees at evaluation.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["batchnorm_layers", "recalibrate_batchnorm"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers (1d/2d/3d, SyncBatchNorm) of ``model`` that track running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> int:
    """Replace the running mean/var of every BatchNorm in ``model`` by their exact average over ``batches``.

    Args:
        model: the network; its train/eval flags and BN momenta are restored afterwards.
        batches: model inputs (or whatever ``forward`` takes), e.g. un-augmented training batches.
        num_batches: use at most this many (all when None).
        forward: ``forward(model, batch)``; default ``model(batch)``.

    Returns the number of batches used (0: ``model`` has no BatchNorm, or ``batches`` was empty — the statistics
    are then left as they were).
    """
    layers = batchnorm_layers(model)
    if not layers or num_batches == 0:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in layers}
    saved = {bn: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in layers}
    forward = forward or (lambda m, b: m(b))
    used = 0
    try:
        model.eval()
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: exact mean of the per-batch statistics
            bn.train()
        for batch in batches:
            if num_batches is not None and used >= num_batches:
                break
            forward(model, batch)
            used += 1
    finally:
        for m, training in modes.items():
            m.training = training
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        if used == 0:  # nothing seen: keep the old statistics rather than the reset ones
            for bn, (mean, var, n) in saved.items():
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(n)
    return used
