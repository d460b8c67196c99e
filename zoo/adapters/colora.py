"""CoLoRA: contribution-based low-rank adaptation (Park, Kim, Chun, ECCV 2024, arXiv 2408.01099) on ``zoo.layers.lora``.

For a new restoration task: (1) fine-tune the pre-trained model briefly (all parameters); (2) measure how much each
layer's change contributes to the task with **FAIG** (Xie et al., NeurIPS 2021; TencentARC/FAIG
``analysis/tools/srresnet/faig.py``); (3) give each conv layer a LoRA rank according to its contribution under a
total trainable-parameter budget; (4) train only those adapters from the *pre-trained* weights; (5) merge them for
inference (:func:`zoo.adapters.model.remove_adapters`). :func:`uniform_ranks` is the LoRA baseline at the same budget
behind the same interface.

FAIG (:func:`faig`), as the official code computes it: the straight path ``θ(α) = α·θ̄ + (1 - α)·θ`` from the
fine-tuned ``θ`` (α = 0) to the baseline ``θ̄`` (α = 1), ``α = s / M`` for ``s = 0..M-1``; at each point the gradient of
``L = Σ ||F(x; θ(α)) - gt||²`` (MSE, reduction sum) w.r.t. every conv weight is accumulated; the score of a filter is
``Σ_kernel |(θ̄ - θ) ⊙ Σ_s ∇L / M|`` (the paper's Eq. 6). Biases are not scored. Our layer contribution is the sum of
its filter scores (the layer's share of the integrated-gradients attribution, whose total approximates the loss
change along the path; a mean would favour small layers); the discriminative variant (Eq. 7, a second degradation
subtracted) is ``faig(..., contrast=other_batches)``.

Rank rule (:func:`colora_ranks`): CoLoRA's code is not public and the paper's formula for the per-layer ratio δ_i
with its α/β hyper-parameters could not be verified, so this is our rule, stated: normalised contributions
``c̃_i = c_i^α / Σ_j c_j^α``; each layer's share of the budget ``w_i = β·u_i + (1 - β)·c̃_i`` where ``u_i`` is the
layer's share under a uniform ratio (its parameter count over the total); continuous ranks ``w_i·B / cost_i``
(``cost_i`` = LoRA parameters per unit of rank), capped at the layer's full rank with the excess re-distributed;
then integer ranks: floors, and +1 rank greedily to the layer with the largest remaining fraction while it fits.
The total never exceeds the budget ``B`` and what is left is smaller than every affordable increment (the budget
is used as exactly as integer ranks allow).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from zoo.layers.lora import LoRALayer
from zoo.adapters.model import add_lora, iter_lora_layers, remove_adapters

__all__ = ["conv_layers", "lora_cost_per_rank", "max_lora_rank", "lora_param_count", "resolve_budget", "faig",
           "layer_contributions", "colora_ranks", "uniform_ranks", "allocate_ranks", "add_colora", "merge_colora"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def conv_layers(model: nn.Module, targets: Callable[[str, nn.Module], bool] | None = None) -> dict[str, nn.Conv2d]:
    """``{name: conv}`` of every ``nn.Conv2d`` of ``model`` (the base of a LoRA-wrapped one), in module order,
    filtered by ``targets(name, module)``."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALayer):
            continue
        if isinstance(m, nn.Conv2d):
            name = name[:-len(".base")] if name.endswith(".base") else name
            if targets is None or targets(name, m):
                out[name] = m
    return out


def lora_cost_per_rank(conv: nn.Conv2d) -> int:
    """Trainable parameters of one unit of LoRA rank on ``conv`` (``zoo.layers.lora.LowRankDelta``'s shapes:
    ``down (r, in/groups, kh, kw)`` + ``up (out, r)``)."""
    w = conv.weight
    return int(w[0].numel() + w.shape[0])


def max_lora_rank(conv: nn.Conv2d) -> int:
    """Largest useful rank: the rank of the ``(out, in/groups·kh·kw)`` weight matrix."""
    w = conv.weight
    return int(min(w.shape[0], w[0].numel()))


def lora_param_count(convs: Mapping[str, nn.Conv2d], ranks: Mapping[str, int]) -> int:
    """Trainable LoRA parameters of ``ranks`` on ``convs``."""
    return int(sum(lora_cost_per_rank(convs[n]) * int(r) for n, r in ranks.items()))


def resolve_budget(model: nn.Module, budget: float | int) -> int:
    """A budget in parameters: an int is taken as is; a float in (0, 1) is that fraction of ``model``'s parameters
    (adapters excluded)."""
    if isinstance(budget, float) and 0 < budget < 1:
        n = sum(p.numel() for name, p in model.named_parameters() if ".deltas." not in name)
        return int(math.floor(budget * n))
    if int(budget) != budget or budget < 1:
        raise ValueError(f"budget must be a parameter count >= 1 or a fraction in (0, 1), got {budget!r}")
    return int(budget)


# ================================================================================================ FAIG
def _loss_sum(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, gt, reduction="sum")


def _path_gradients(model: nn.Module, baseline: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                    names: Sequence[str], batches: Sequence[tuple[torch.Tensor, torch.Tensor]], steps: int,
                    loss_fn: Callable) -> dict[str, torch.Tensor]:
    total = {n: torch.zeros_like(target[n]) for n in names}
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for s in range(steps):
        a = s / steps
        point = {n: (a * baseline[n] + (1 - a) * target[n]).detach() for n in params}
        for n in names:
            point[n].requires_grad_(True)
        for lq, gt in batches:
            out = functional_call(model, {**buffers, **point}, (lq,))
            grads = torch.autograd.grad(loss_fn(out, gt), [point[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    total[n] += g
    return total


def faig(model: nn.Module, baseline: Mapping[str, torch.Tensor] | nn.Module,
         target: Mapping[str, torch.Tensor] | nn.Module, batches: Batches, steps: int = 100,
         layers: Sequence[str] | None = None, contrast: Batches | None = None,
         loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _loss_sum) -> dict[str, torch.Tensor]:
    """FAIG filter scores ``{layer: (out, in/groups)}`` for the conv layers of ``model``'s architecture.

    Args:
        model: a module of the architecture (its own weights are not used; run in its current train/eval mode --
            use ``eval()``).
        baseline, target: state dicts (or modules) of the baseline ``θ̄`` (pre-trained) and target ``θ`` (briefly
            fine-tuned) models.
        batches: ``(lq, gt)`` pairs of the new task, ``(B, C, H, W)`` each.
        steps: M, the points on the path.
        layers: conv layer names to score (default all ``nn.Conv2d``).
        contrast: other ``(lq, gt)`` batches whose scores are subtracted (FAIG's discriminative Eq. 7).
        loss_fn: ``(output, gt) -> scalar``; FAIG's is the summed squared error.
    """
    baseline = baseline.state_dict() if isinstance(baseline, nn.Module) else baseline
    target = target.state_dict() if isinstance(target, nn.Module) else target
    names = [f"{n}.weight" for n in (layers if layers is not None else conv_layers(model))]
    missing = [n for n in names if n not in baseline or n not in target]
    if missing:
        raise KeyError(f"faig: the baseline/target state dicts lack {missing[:5]} (layers must be plain conv names)")
    batches = list(batches)
    if not batches:
        raise ValueError("faig needs at least one (lq, gt) batch of the new task")
    scores = {}
    grads = _path_gradients(model, baseline, target, names, batches, steps, loss_fn)
    grads2 = _path_gradients(model, baseline, target, names, list(contrast), steps, loss_fn) if contrast else None
    for n in names:
        diff = baseline[n] - target[n]
        sc = (diff * grads[n] / steps).abs().flatten(2).sum(-1)
        if grads2 is not None:
            sc = sc - (diff * grads2[n] / steps).abs().flatten(2).sum(-1)
        scores[n[:-len(".weight")]] = sc
    return scores


def layer_contributions(filter_scores: Mapping[str, torch.Tensor], reduce: str = "sum") -> dict[str, float]:
    """Per-layer contribution from FAIG filter scores: their ``"sum"`` (default) or ``"mean"``."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    return {n: float(s.sum() if reduce == "sum" else s.mean()) for n, s in filter_scores.items()}


# ================================================================================================ ranks
def allocate_ranks(costs: Mapping[str, int], caps: Mapping[str, int], shares: Mapping[str, float], budget: int,
                   min_rank: int = 0) -> dict[str, int]:
    """Integer ranks ``{layer: r}`` with ``Σ costs·r <= budget`` following ``shares`` (non-negative, any scale).

    Continuous targets ``share_i / Σ share · budget / cost_i`` are capped at ``caps`` (the excess goes to the other
    layers, in proportion to their shares), floored (at least ``min_rank``), then ranks are added one at a time to
    the affordable, unsaturated layer with the largest remaining fraction until none fits. Raises ``ValueError``
    when ``min_rank`` everywhere already exceeds the budget.
    """
    names = list(costs)
    if any(shares.get(n, 0.0) < 0 for n in names):
        raise ValueError("rank shares must be non-negative")
    floor_cost = sum(costs[n] * min(min_rank, caps[n]) for n in names)
    if floor_cost > budget:
        raise ValueError(f"budget {budget} is smaller than min_rank={min_rank} on every layer "
                         f"({floor_cost} parameters)")
    want = {n: 0.0 for n in names}
    free = [n for n in names if shares.get(n, 0.0) > 0]
    left = float(budget)
    while free and left > 0:
        tot = sum(shares[n] for n in free)
        over = [n for n in free if shares[n] / tot * left / costs[n] >= caps[n]]
        if not over:
            for n in free:
                want[n] = shares[n] / tot * left / costs[n]
            break
        for n in over:
            want[n] = float(caps[n])
            left -= caps[n] * costs[n]
            free.remove(n)
    ranks = {n: max(min(min_rank, caps[n]), min(caps[n], int(math.floor(want[n] + 1e-9)))) for n in names}
    used = sum(costs[n] * r for n, r in ranks.items())
    if used > budget:  # the min_rank floors pushed it over: take back from the largest wants
        for n in sorted(names, key=lambda n: want[n] - ranks[n]):
            while used > budget and ranks[n] > min(min_rank, caps[n]):
                ranks[n] -= 1
                used -= costs[n]
    while True:
        options = [n for n in names if ranks[n] < caps[n] and costs[n] <= budget - used]
        if not options:
            break
        n = max(options, key=lambda n: (want[n] - ranks[n], shares.get(n, 0.0), -costs[n]))
        ranks[n] += 1
        used += costs[n]
    return ranks


def colora_ranks(model: nn.Module, contributions: Mapping[str, float], budget: float | int, alpha: float = 1.0,
                 beta: float = 0.0, min_rank: int = 0) -> dict[str, int]:
    """CoLoRA's per-layer ranks from layer contributions (see the module doc for the rule and its ``alpha`` /
    ``beta``): ``{layer: rank}`` for the conv layers named in ``contributions``; ``budget`` in parameters or as a
    fraction of ``model``'s parameters. Layers with rank 0 get no adapter."""
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    convs = conv_layers(model)
    unknown = [n for n in contributions if n not in convs]
    if unknown:
        raise KeyError(f"colora_ranks: {unknown[:5]} are not Conv2d layers of the model")
    convs = {n: convs[n] for n in contributions}
    c = {n: max(float(v), 0.0) ** alpha for n, v in contributions.items()}
    tot_c = sum(c.values())
    sizes = {n: m.weight.numel() for n, m in convs.items()}
    tot_s = sum(sizes.values())
    shares = {n: beta * sizes[n] / tot_s + (1 - beta) * (c[n] / tot_c if tot_c > 0 else sizes[n] / tot_s)
              for n in convs}
    return allocate_ranks({n: lora_cost_per_rank(m) for n, m in convs.items()},
                          {n: max_lora_rank(m) for n, m in convs.items()}, shares, resolve_budget(model, budget),
                          min_rank)


def uniform_ranks(model: nn.Module, layers: Sequence[str] | None, budget: float | int,
                  mode: str = "ratio") -> dict[str, int]:
    """The uniform LoRA baseline at the same budget: ``mode="ratio"`` gives every layer the same fraction of its
    parameters (CoLoRA with all contributions equal, integer-filled to the budget like :func:`colora_ranks`);
    ``mode="rank"`` one rank for every layer (the largest that fits; capped per layer at its full rank)."""
    convs = conv_layers(model)
    layers = list(layers) if layers is not None else list(convs)
    convs = {n: convs[n] for n in layers}
    b = resolve_budget(model, budget)
    if mode == "ratio":
        return colora_ranks(model, {n: 1.0 for n in layers}, b, beta=1.0)
    if mode != "rank":
        raise ValueError(f"mode must be 'ratio' or 'rank', got {mode!r}")
    r = 0
    while any(r < max_lora_rank(m) for m in convs.values()) and lora_param_count(
            convs, {n: min(r + 1, max_lora_rank(m)) for n, m in convs.items()}) <= b:
        r += 1
    if r == 0:
        raise ValueError(f"budget {b} is too small for rank 1 on every layer")
    return {n: min(r, max_lora_rank(m)) for n, m in convs.items()}


# ================================================================================================ adapters
def add_colora(model: nn.Module, ranks: Mapping[str, int], name: str = "colora", init: str = "lora",
               freeze: bool = True) -> dict[str, LoRALayer]:
    """Add a LoRA named ``name`` with per-layer ``ranks`` (0: no adapter) to ``model``'s convs (``alpha = rank``,
    i.e. ``ΔW = up @ down``; ``up`` starts at zero so the model starts as the pre-trained one); with ``freeze`` only
    the adapters train. Returns ``{layer: LoRALayer}``."""
    ranks = {n: int(r) for n, r in ranks.items() if r}
    if not ranks:
        raise ValueError("add_colora: every rank is 0; raise the budget")
    return add_lora(model, lambda n, m: n in ranks, rank=lambda n, m: ranks.get(n), name=name, init=init,
                    freeze=freeze, layer_types=(nn.Conv2d,))


def merge_colora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the conv weights and unwrap them (plain model for inference)."""
    return remove_adapters(model, merge=True)


def adapter_count(model: nn.Module) -> int:
    """Trainable adapter parameters now in ``model``."""
    return int(sum(p.numel() for _, layer in iter_lora_layers(model) for p in layer.deltas.parameters()
                   if p.requires_grad))


__all__.append("adapter_count")
