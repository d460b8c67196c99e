"""CoLoRA: contribution-based low-rank adaptation (Park, Kim, Chun, ECCV 2024, arXiv 2408.01099) on ``zoo.layers.lora``.

``adapter.name=colora`` (:class:`CoLoRAMethod`, config :class:`CoLoRAConfig`). For a new task: (1) fine-tune the
pre-trained model briefly (all parameters: the *probe*); (2) measure how much each layer's change contributes to
the task with **FAIG** (Xie et al., NeurIPS 2021; TencentARC/FAIG ``analysis/tools/srresnet/faig.py``); (3) give
each target layer a LoRA rank according to its contribution under a total trainable-parameter budget; (4) train
only those adapters from the *pre-trained* weights; (5) merge them for inference (``merge_and_unload``). Steps
(1)-(2) are :meth:`CoLoRAMethod.calibrate` (``needs_calibration``), (3)-(4) :meth:`CoLoRAMethod.apply`.

Targets are patterns, not a model's names: ``target_modules`` (module names, suffixes, fnmatch patterns or a
regular expression, :func:`zoo.adapters.model.match_module_name`; default: every layer) among the layers of
``layer_types`` (default ``[Conv2d]``: every convolution of a NAFNet; ``[Conv2d, Linear]`` for a diffusion UNet).

**The uniform-LoRA baseline at the same budget** is this method with ``rank_rule: uniform`` (no probe, no FAIG):
``uniform_mode: ratio`` gives every layer the same fraction of its parameters, filled to the budget like CoLoRA's
ranks; ``uniform_mode: rank`` one rank everywhere (the largest that fits). Its deltas are named ``"lora"`` (CoLoRA's
``"colora"``): the names the restore recipe's checkpoints have always used, so old checkpoints load.

FAIG (:func:`faig`), as the official code computes it: the straight path ``θ(α) = α·θ̄ + (1 - α)·θ`` from the
fine-tuned ``θ`` (α = 0) to the baseline ``θ̄`` (α = 1), ``α = s / M`` for ``s = 0..M-1``; at each point the gradient
of the attribution loss (the official: ``Σ ||F(x; θ(α)) - gt||²``, MSE with reduction sum) w.r.t. every target
weight; the score of a filter is ``Σ_kernel |(θ̄ - θ) ⊙ Σ_s ∇L / M|`` (the paper's Eq. 6; for a linear layer, one
score per weight). Biases are not scored. **Aggregation over images** (``aggregate``): ``"per_example"`` (the
default, as the official ``faig.py``: each image's path gradient gets its own ``|·|`` filter score, and the scores
are averaged over the images -- ``faig_average += faig(img)`` over a folder); ``"batch"`` (what this module did
before: the path gradients of all batches are summed first and ``|·|`` is taken once, so images whose gradients
point opposite ways cancel). Gradients come from the caller's
``backward`` (in a run: the accelerator's, so AMP loss scaling applies; a constant factor on every gradient -- a loss
scale, gradient-accumulation division -- scales every contribution alike and leaves the ranks unchanged). Our layer
contribution is the sum of its filter scores (the layer's share of the integrated-gradients attribution, whose
total approximates the loss change along the path; a mean would favour small layers); the discriminative variant
(Eq. 7, a second degradation subtracted) is ``faig(..., contrast=other_batches)``.

Rank rule (:func:`colora_ranks`): CoLoRA's code is not public and the paper's formula for the per-layer ratio δ_i
with its α/β hyper-parameters could not be verified, so this is our rule, stated: normalised contributions
``c̃_i = c_i^α / Σ_j c_j^α``; each layer's share of the budget ``w_i = β·u_i + (1 - β)·c̃_i`` where ``u_i`` is the
layer's share under a uniform ratio (its parameter count over the total); continuous ranks ``w_i·B / cost_i``
(``cost_i`` = LoRA parameters per unit of rank), capped at the layer's full rank with the excess re-distributed;
then integer ranks: floors, and +1 rank greedily to the layer with the largest remaining fraction while it fits.
The total never exceeds the budget ``B`` and what is left is smaller than every affordable increment (the budget
is used as exactly as integer ranks allow).

**Controls** (``rank_rule``), each at the same budget, to tell what FAIG adds to the rule: ``faig`` (CoLoRA);
``faig_shuffled`` (the same probe and FAIG, then the layer contributions randomly permuted across the layers with
``shuffle_seed`` before the rule: the same distribution of contributions, none of their placement); ``equal`` (the
rule with every contribution equal: no probe; the share of a layer is ``β·u_i + (1 - β) / L``, so cheap layers get
high ranks); ``uniform`` (the LoRA baseline: the same fraction of every layer, or one rank everywhere).

Reference: Park, Kim, Chun, "Contribution-based Low-Rank Adaptation with Pre-training Model for Real Image
Restoration", ECCV 2024; Xie et al., "Finding Discriminative Filters for Specific Degradations in Blind
Super-Resolution" (FAIG), NeurIPS 2021, github.com/TencentARC/FAIG.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.adapters.base import AdapterConfig, AdapterMethod, register_adapter
from zoo.adapters.model import add_lora, match_module_name
from zoo.errors import ConfigError, DataError
from zoo.layers.lora import LOWRANK_TYPES, LoRALayer

__all__ = ["LAYER_TYPES", "RANK_RULES", "FAIG_AGGREGATES", "CoLoRAConfig", "CoLoRAMethod", "target_layers",
           "lora_cost_per_rank", "max_lora_rank", "lora_param_count", "resolve_budget", "pair_mse_sum",
           "split_examples", "faig", "layer_contributions", "shuffle_contributions", "allocate_ranks", "colora_ranks",
           "uniform_ranks", "add_colora", "ALLOCATION_FILE"]

#: where a run keeps :attr:`CoLoRAMethod.allocation` (its run directory, beside the checkpoints)
ALLOCATION_FILE = "colora_allocation.json"

#: the layer types ``layer_types`` may name (what :class:`~zoo.layers.lora.LowRankDelta` adapts)
LAYER_TYPES: dict[str, type[nn.Module]] = {t.__name__: t for t in LOWRANK_TYPES}

#: ``rank_rule`` values: CoLoRA, its two controls, the uniform-LoRA baseline (see the module doc)
RANK_RULES = ("faig", "faig_shuffled", "equal", "uniform")
#: ``faig(aggregate=...)``: |·| per image then averaged (the official code), or once over the summed gradients
FAIG_AGGREGATES = ("per_example", "batch")

LossFn = Callable[[nn.Module, Any], torch.Tensor]
Backward = Callable[[torch.Tensor], Any]


def target_layers(model: nn.Module, targets: Any = None,
                  layer_types: Sequence[type[nn.Module]] = (nn.Conv2d,)) -> dict[str, nn.Module]:
    """``{name: layer}`` of every layer of ``layer_types`` in ``model`` selected by ``targets``
    (:func:`~zoo.adapters.model.match_module_name`: None = all, names / suffixes / fnmatch patterns, a regular
    expression or ``fn(name, module)``), in module order. A layer already wrapped in a
    :class:`~zoo.layers.lora.LoRALayer` is returned as its base under the wrapper's name."""
    out = {}
    types = tuple(layer_types)
    for name, m in model.named_modules():
        if isinstance(m, LoRALayer) or not isinstance(m, types):
            continue
        name = name[:-len(".base")] if name.endswith(".base") else name
        if match_module_name(name, m, list(targets) if isinstance(targets, tuple) else targets):
            out[name] = m
    return out


def lora_cost_per_rank(layer: nn.Module) -> int:
    """Trainable parameters of one unit of LoRA rank on ``layer`` (``zoo.layers.lora.LowRankDelta``'s shapes:
    ``down (r, in/groups, *kernel)`` + ``up (out, r)``; a linear layer: ``down (r, in)`` + ``up (out, r)``)."""
    w = layer.weight
    return int(w[0].numel() + w.shape[0])


def max_lora_rank(layer: nn.Module) -> int:
    """Largest useful rank: the rank of the ``(out, in/groups·prod(kernel))`` weight matrix."""
    w = layer.weight
    return int(min(w.shape[0], w[0].numel()))


def lora_param_count(layers: Mapping[str, nn.Module], ranks: Mapping[str, int]) -> int:
    """Trainable LoRA parameters of ``ranks`` on ``layers``."""
    return int(sum(lora_cost_per_rank(layers[n]) * int(r) for n, r in ranks.items()))


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
def pair_mse_sum(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """FAIG's attribution loss on an ``(input, target)`` pair: ``Σ (model(input) - target)²`` (MSE, reduction sum)."""
    x, gt = batch
    return F.mse_loss(model(x), gt, reduction="sum")


def _plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


def split_examples(batch: Any) -> list[Any]:
    """One batch -> a list of single-example batches of the same structure (each tensor sliced ``[i:i+1]``; a list
    of plain values such as names sliced to ``[value_i]``; tuples and dicts keep their fields). The batch size is
    the first dimension of its first tensor; ``ValueError`` when the batch holds no tensor."""
    n = _batch_size(batch)
    if n is None:
        raise ValueError(f"split_examples: the batch holds no tensor ({type(batch).__name__}); FAIG's per-example "
                         "aggregation needs tensors with the examples on dimension 0")
    return [_take(batch, i, n) for i in range(n)]


def _batch_size(x: Any) -> int | None:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.ndim else None
    values = x.values() if isinstance(x, Mapping) else x if isinstance(x, (list, tuple)) else ()
    for v in values:
        n = _batch_size(v)
        if n is not None:
            return n
    return None


def _take(x: Any, i: int, n: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[i:i + 1] if x.ndim else x
    if isinstance(x, Mapping):
        return {k: _take(v, i, n) for k, v in x.items()}
    if isinstance(x, list) and len(x) == n and not any(isinstance(v, (torch.Tensor, Mapping, list, tuple)) for v in x):
        return [x[i]]  # per-example plain values (names)
    if isinstance(x, (list, tuple)):
        return type(x)(_take(v, i, n) for v in x)
    return x


def _path_gradients(model: nn.Module, baseline: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                    names: Sequence[str], units: Sequence[Sequence[Any]], steps: int, loss_fn: LossFn,
                    backward: Backward) -> list[dict[str, torch.Tensor]]:
    """For each attribution unit (a list of batches), ``{weight: Σ_s Σ_batches ∇L(θ(s / steps))}``: a copy of
    ``model`` is moved along the path, ``backward`` fills the gradients of the ``names`` weights (only they require
    grad), each batch's added to its unit's total."""
    work = copy.deepcopy(model)
    params = dict(work.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in names)
        p.grad = None
    totals = [{n: torch.zeros_like(target[n]) for n in names} for _ in units]
    for s in range(steps):
        a = s / steps
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(a * baseline[n] + (1 - a) * target[n])
        for unit, total in zip(units, totals):
            for batch in unit:
                backward(loss_fn(work, batch))
                for n in names:
                    g = params[n].grad
                    if g is not None:
                        total[n] += g
                        params[n].grad = None
    bad = sorted({n for total in totals for n, g in total.items() if not torch.isfinite(g).all()})
    if bad:
        raise FloatingPointError(f"FAIG: the path gradients of {bad[:5]} are not finite (an fp16 overflow? "
                                 "calibrate in bf16 or fp32: trainer.mixed_precision)")
    return totals


def _attribution_units(batches: Sequence[Any], aggregate: str) -> list[list[Any]]:
    """``per_example``: one unit per example of every batch; ``batch``: one unit holding every batch."""
    if aggregate == "batch":
        return [list(batches)]
    return [[example] for batch in batches for example in split_examples(batch)]


def faig(model: nn.Module, baseline: Mapping[str, torch.Tensor] | nn.Module,
         target: Mapping[str, torch.Tensor] | nn.Module, batches: Iterable[Any], steps: int = 100,
         layers: Sequence[str] | None = None, contrast: Iterable[Any] | None = None,
         loss_fn: LossFn = pair_mse_sum, backward: Backward | None = None,
         aggregate: str = "per_example") -> dict[str, torch.Tensor]:
    """FAIG filter scores ``{layer: (out, in/groups)}`` (a linear layer: ``(out, in)``) of ``model``'s architecture.

    Args:
        model: a module of the architecture (copied; its own weights are not used; the copy keeps its train/eval
            mode -- use ``eval()``).
        baseline, target: state dicts (or modules) of the baseline ``θ̄`` (pre-trained) and target ``θ`` (briefly
            fine-tuned) models, on ``model``'s device.
        batches: batches of the new task; ``loss_fn(model, batch)`` scores one.
        steps: M, the points on the path.
        layers: layer names to score (default: every ``nn.Conv2d``, :func:`target_layers`).
        contrast: other batches whose scores are subtracted (FAIG's discriminative Eq. 7).
        loss_fn: ``(model, batch) -> scalar``; FAIG's is the summed squared error of an ``(input, target)`` pair
            (:func:`pair_mse_sum`).
        backward: back-propagates a loss (the run's accelerator's in a run); default ``loss.backward()``.
        aggregate: ``"per_example"`` (the official code: each example's score ``Σ_kernel |(θ̄ - θ) ⊙ G_e / M|`` from
            its own path gradient ``G_e``, averaged over the examples; the batches are split with
            :func:`split_examples`) or ``"batch"`` (``|·|`` once, of the gradients summed over every batch).
    """
    if aggregate not in FAIG_AGGREGATES:
        raise ValueError(f"faig: aggregate must be one of {FAIG_AGGREGATES}, got {aggregate!r}")
    baseline = baseline.state_dict() if isinstance(baseline, nn.Module) else baseline
    target = target.state_dict() if isinstance(target, nn.Module) else target
    names = [f"{n}.weight" for n in (layers if layers is not None else target_layers(model))]
    missing = [n for n in names if n not in baseline or n not in target]
    if missing:
        raise KeyError(f"faig: the baseline/target state dicts lack {missing[:5]} (layers must be plain layer names)")
    batches = list(batches)
    if not batches:
        raise ValueError("faig needs at least one batch of the new task")
    backward = backward or _plain_backward

    def per_filter(x: torch.Tensor) -> torch.Tensor:
        return x.abs().reshape(x.shape[0], x.shape[1], -1).sum(-1)

    def scores_of(batch_list: list[Any]) -> dict[str, torch.Tensor]:
        units = _attribution_units(batch_list, aggregate)
        totals = _path_gradients(model, baseline, target, names, units, steps, loss_fn, backward)
        out = {}
        for n in names:
            diff = baseline[n] - target[n]
            out[n] = sum(per_filter(diff * total[n] / steps) for total in totals) / len(totals)
        return out

    scores = scores_of(batches)
    if contrast:
        other = scores_of(list(contrast))
        scores = {n: scores[n] - other[n] for n in names}
    return {n[:-len(".weight")]: sc for n, sc in scores.items()}


def layer_contributions(filter_scores: Mapping[str, torch.Tensor], reduce: str = "sum") -> dict[str, float]:
    """Per-layer contribution from FAIG filter scores: their ``"sum"`` (default) or ``"mean"``."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    return {n: float(s.sum() if reduce == "sum" else s.mean()) for n, s in filter_scores.items()}


def shuffle_contributions(contributions: Mapping[str, float], seed: int) -> dict[str, float]:
    """The control of ``rank_rule: faig_shuffled``: the same contribution values randomly permuted across the layers
    (a seeded ``torch.randperm``), so the rule sees FAIG's distribution of values but none of their placement."""
    names = list(contributions)
    values = [contributions[n] for n in names]
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(int(seed))).tolist()
    return {n: float(values[j]) for n, j in zip(names, order)}


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


def _named_layers(model: nn.Module, names: Iterable[str], what: str) -> dict[str, nn.Module]:
    """``{name: layer}`` for the given layer names (any LoRA-able type), in the order given."""
    names = list(names)
    found = target_layers(model, lambda n, m: n in set(names), LOWRANK_TYPES)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise KeyError(f"{what}: {unknown[:5]} are not Linear / Conv layers of the model")
    return {n: found[n] for n in names}


def colora_ranks(model: nn.Module, contributions: Mapping[str, float], budget: float | int, alpha: float = 1.0,
                 beta: float = 0.0, min_rank: int = 0) -> dict[str, int]:
    """CoLoRA's per-layer ranks from layer contributions (see the module doc for the rule and its ``alpha`` /
    ``beta``): ``{layer: rank}`` for the layers named in ``contributions``; ``budget`` in parameters or as a
    fraction of ``model``'s parameters. Layers with rank 0 get no adapter."""
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    layers = _named_layers(model, contributions, "colora_ranks")
    c = {n: max(float(v), 0.0) ** alpha for n, v in contributions.items()}
    tot_c = sum(c.values())
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    tot_s = sum(sizes.values())
    shares = {n: beta * sizes[n] / tot_s + (1 - beta) * (c[n] / tot_c if tot_c > 0 else sizes[n] / tot_s)
              for n in layers}
    return allocate_ranks({n: lora_cost_per_rank(m) for n, m in layers.items()},
                          {n: max_lora_rank(m) for n, m in layers.items()}, shares, resolve_budget(model, budget),
                          min_rank)


def uniform_ranks(model: nn.Module, layers: Sequence[str] | None, budget: float | int,
                  mode: str = "ratio") -> dict[str, int]:
    """The uniform LoRA baseline at the same budget on ``layers`` (names; None: every ``nn.Conv2d``):
    ``mode="ratio"`` gives every layer the same fraction of its parameters (CoLoRA with all contributions equal,
    integer-filled to the budget like :func:`colora_ranks`); ``mode="rank"`` one rank for every layer (the largest
    that fits; capped per layer at its full rank)."""
    found = target_layers(model) if layers is None else _named_layers(model, layers, "uniform_ranks")
    b = resolve_budget(model, budget)
    if mode == "ratio":
        return colora_ranks(model, {n: 1.0 for n in found}, b, beta=1.0)
    if mode != "rank":
        raise ValueError(f"mode must be 'ratio' or 'rank', got {mode!r}")
    r = 0
    while any(r < max_lora_rank(m) for m in found.values()) and lora_param_count(
            found, {n: min(r + 1, max_lora_rank(m)) for n, m in found.items()}) <= b:
        r += 1
    if r == 0:
        raise ValueError(f"budget {b} is too small for rank 1 on every layer")
    return {n: min(r, max_lora_rank(m)) for n, m in found.items()}


def add_colora(model: nn.Module, ranks: Mapping[str, int], name: str = "colora", init: str = "lora",
               freeze: bool = True) -> dict[str, LoRALayer]:
    """Add a LoRA named ``name`` with per-layer ``ranks`` (0: no adapter) to ``model``'s layers (``alpha = rank``,
    i.e. ``ΔW = up @ down``; ``up`` starts at zero so the model starts as the pre-trained one); with ``freeze`` only
    the adapters train. Returns ``{layer: LoRALayer}``."""
    ranks = {n: int(r) for n, r in ranks.items() if r}
    if not ranks:
        raise ValueError("add_colora: every rank is 0; raise the budget")
    return add_lora(model, lambda n, m: n in ranks, rank=lambda n, m: ranks.get(n), name=name, init=init,
                    freeze=freeze)


# ================================================================================================ the method
@dataclass
class CoLoRAConfig(AdapterConfig):
    """``adapter:`` section of ``colora`` (defaults: the restore study's settings, configs/colora/README.md).

    ``budget``: trainable LoRA parameters, a count or a fraction of the model's parameters. ``rank_rule``:
    ``faig`` (CoLoRA: probe + FAIG contributions, ``alpha`` / ``beta`` of the rank rule), ``faig_shuffled`` (the
    same, contributions permuted across layers with ``shuffle_seed``), ``equal`` (the rule with equal
    contributions, no probe) or ``uniform`` (the LoRA baseline at the same budget, ``uniform_mode`` ratio | rank).
    ``probe_steps`` / ``probe_lr``: the probe's full fine-tuning (Adam); ``faig_steps``: M, points on the path
    (FAIG's default 100); ``faig_batches``: the probe's first batches FAIG attributes on; ``faig_aggregate``:
    ``per_example`` (the official code's: |·| per image, then the mean over images) or ``batch`` (ours before:
    |·| of the gradients summed over the batches). ``ranks``: known per-layer ranks (what
    :meth:`CoLoRAMethod.apply` found, saved in ``adapter_config.json``: a saved adapter loads without a probe).
    ``init``: of the LoRA factors.
    """

    name: str = "colora"
    target_modules: Any = None
    layer_types: list[str] = field(default_factory=lambda: ["Conv2d"])
    budget: float = 0.07
    rank_rule: str = "faig"
    uniform_mode: str = "ratio"
    alpha: float = 1.0  # contribution exponent
    beta: float = 0.2  # share of the budget spread uniformly (by layer size)
    probe_steps: int = 50
    probe_lr: float = 1e-4
    faig_steps: int = 20
    faig_batches: int = 2
    faig_aggregate: str = "per_example"
    shuffle_seed: int = 0  # rank_rule: faig_shuffled
    init: str = "lora"
    ranks: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.rank_rule not in RANK_RULES:
            raise ConfigError(f"adapter.rank_rule must be one of {', '.join(RANK_RULES)} (faig: CoLoRA; "
                              "faig_shuffled / equal: its controls; uniform: the LoRA baseline), "
                              f"got {self.rank_rule!r}")
        if self.faig_aggregate not in FAIG_AGGREGATES:
            raise ConfigError(f"adapter.faig_aggregate must be per_example (the official FAIG code) or batch, "
                              f"got {self.faig_aggregate!r}")
        if self.uniform_mode not in ("ratio", "rank"):
            raise ConfigError(f"adapter.uniform_mode must be ratio or rank, got {self.uniform_mode!r}")
        if not self.budget > 0:
            raise ConfigError(f"adapter.budget must be > 0 (parameters or a fraction), got {self.budget!r}")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"adapter.beta must be in [0, 1], got {self.beta!r}")
        for key in ("probe_steps", "faig_steps", "faig_batches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"adapter.{key} must be >= 1, got {getattr(self, key)!r}")
        unknown = [t for t in self.layer_types if t not in LAYER_TYPES]
        if unknown or not self.layer_types:
            raise ConfigError(f"adapter.layer_types: {unknown or 'empty'}; choose from {sorted(LAYER_TYPES)}")


@register_adapter("colora", config=CoLoRAConfig)
class CoLoRAMethod(AdapterMethod):
    """CoLoRA (see the module doc): :meth:`calibrate` runs the probe and FAIG, :meth:`apply` adds the per-layer
    ranks. After :meth:`apply`, ``allocation`` holds what was decided (budget, contributions, ranks, parameters)
    and ``config.ranks`` the ranks (so :meth:`save` / :meth:`load` need no probe)."""

    def __init__(self, config: CoLoRAConfig | None = None):
        super().__init__(config)
        self.contributions: dict[str, float] | None = None
        self.allocation: dict[str, Any] | None = None

    def save_allocation(self, directory: str | Path) -> Path | None:
        """Write :attr:`allocation` (what :meth:`apply` decided) to ``directory/colora_allocation.json``; ``None``
        when nothing was allocated yet."""
        if self.allocation is None:
            return None
        path = Path(directory) / ALLOCATION_FILE
        path.write_text(json.dumps(self.allocation, indent=2))
        return path

    def load_allocation(self, directory: str | Path | None) -> None:
        """The per-layer ranks of the run in ``directory`` (its ``colora_allocation.json``) into ``config.ranks``, so
        that the adapter of its checkpoints is rebuilt without a probe; a ``ConfigError`` naming the file and the fix
        when it is not there."""
        path = Path(directory) / ALLOCATION_FILE if directory is not None else None
        if path is None or not path.is_file():
            raise ConfigError(f"adapter.name={self.name}: the per-layer ranks of the checkpoint are not known (no "
                              f"{ALLOCATION_FILE} in {directory}); give adapter.ranks from the run's allocation")
        self.config.ranks = {k: int(v) for k, v in json.loads(path.read_text())["ranks"].items()}

    @property
    def delta_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """``("colora",)``, or ``("lora",)`` for the uniform baseline (the names of the restore checkpoints)."""
        return ("lora",) if self.config.rank_rule == "uniform" else ("colora",)

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        """FAIG ranks not known yet: :meth:`calibrate` must run before :meth:`apply`."""
        return self.config.rank_rule in ("faig", "faig_shuffled") and not self.config.ranks

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """``{name: layer}`` the method may adapt: ``layer_types`` selected by ``target_modules``."""
        found = target_layers(model, self.config.target_modules, [LAYER_TYPES[t] for t in self.config.layer_types])
        if not found:
            raise ConfigError(f"adapter.target_modules: no {'/'.join(self.config.layer_types)} layer of "
                              f"{type(model).__name__} matches {self.config.target_modules!r}")
        return found

    # ------------------------------------------------------------------ calibration: probe + FAIG
    def calibrate(self, model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, backward: Backward, *,
                  optimizer_step: Callable[[torch.optim.Optimizer], Any] | None = None,
                  attribution_loss_fn: LossFn | None = None) -> None:
        """CoLoRA's probe and FAIG: fine-tune a copy of ``model`` (every parameter; Adam at ``probe_lr``) for
        ``probe_steps`` batches of ``batches`` (re-iterated as needed) with the task loss ``loss_fn(model, batch)``,
        then FAIG from ``model`` (baseline) to the probe (target) on the first ``faig_batches`` batches with
        ``attribution_loss_fn`` (default ``loss_fn``; FAIG's own is the summed squared error, which the restore
        recipe passes). Every loss goes through ``backward`` (the run's accelerator); ``optimizer_step(opt)`` steps
        the probe's optimiser (default ``opt.step()``; pass the step context's ``optimizer_step`` under fp16 loss
        scaling). ``model`` is left unchanged; the contributions are kept for :meth:`apply`. The global random
        state (CPU and the model's GPUs) is the same after as before, so the adapter's initialisation does not
        depend on whether a probe ran. Nothing to do for ``rank_rule: uniform`` or known ``ranks``."""
        if not self.needs_calibration:
            return
        gpus = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=gpus):
            self.contributions = self._probe_and_faig(model, batches, loss_fn, backward, optimizer_step,
                                                      attribution_loss_fn or loss_fn)

    def _probe_and_faig(self, model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, backward: Backward,
                        optimizer_step: Callable[[torch.optim.Optimizer], Any] | None,
                        attribution_loss_fn: LossFn) -> dict[str, float]:
        """:meth:`calibrate`'s work: the probe's fine-tuning, then FAIG's layer contributions."""
        c = self.config
        layers = self.layers(model)
        probe = copy.deepcopy(model).train().requires_grad_(True)
        opt = torch.optim.Adam(probe.parameters(), lr=c.probe_lr)
        step_fn = optimizer_step or (lambda o: o.step())
        step, kept = 0, []
        while step < c.probe_steps:
            seen = 0
            for batch in batches:
                seen += 1
                if len(kept) < c.faig_batches:
                    kept.append(batch)
                opt.zero_grad(set_to_none=True)
                backward(loss_fn(probe, batch))
                step_fn(opt)
                step += 1
                if step >= c.probe_steps:
                    break
            if not seen:
                raise DataError("colora.calibrate: the calibration batches are empty (is the training set empty?)")
        probe.eval()
        was_training = model.training
        try:
            scores = faig(model.eval(), model.state_dict(), probe.state_dict(), kept, steps=c.faig_steps,
                          layers=list(layers), loss_fn=attribution_loss_fn, backward=backward,
                          aggregate=c.faig_aggregate)
        finally:
            model.train(was_training)
        return layer_contributions(scores)

    # ------------------------------------------------------------------ applying
    def ranks(self, model: nn.Module) -> dict[str, int]:
        """The per-layer ranks under ``budget``: ``config.ranks`` when known, else the uniform rule or CoLoRA's
        from the contributions :meth:`calibrate` measured."""
        c = self.config
        if c.ranks:
            return {n: int(r) for n, r in c.ranks.items()}
        layers = self.layers(model)
        budget = resolve_budget(model, c.budget)
        try:
            if c.rank_rule == "uniform":
                return uniform_ranks(model, list(layers), budget, mode=c.uniform_mode)
            return colora_ranks(model, self.rule_contributions(model), budget, alpha=c.alpha, beta=c.beta)
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"adapter.budget={c.budget!r} ({budget} parameters): {exc}") from None

    def rule_contributions(self, model: nn.Module) -> dict[str, float]:
        """The contributions the rank rule sees: FAIG's (``faig``), FAIG's permuted across layers
        (``faig_shuffled``, :func:`shuffle_contributions` with ``shuffle_seed``) or 1 for every layer (``equal``)."""
        c = self.config
        if c.rank_rule == "equal":
            return {n: 1.0 for n in self.layers(model)}
        if self.contributions is None:
            raise ConfigError("colora: the FAIG ranks are not known; call calibrate(model, batches, loss_fn, "
                              "backward) before apply, or give adapter.ranks")
        if c.rank_rule == "faig_shuffled":
            return shuffle_contributions(self.contributions, c.shuffle_seed)
        return dict(self.contributions)

    def apply(self, model: nn.Module) -> nn.Module:
        """Add the LoRA deltas with the per-layer :meth:`ranks` (``up`` = 0: the model starts as it was); only they
        train. Records ``allocation`` and ``config.ranks``."""
        c = self.config
        model_params = sum(p.numel() for p in model.parameters())
        rule = (self.rule_contributions(model) if c.rank_rule in ("faig_shuffled", "equal") and not c.ranks
                else None)
        ranks = self.ranks(model)
        try:
            layers = add_colora(model, ranks, name=self.delta_names[0], init=c.init)
        except ValueError as exc:
            raise ConfigError(f"adapter.budget={c.budget!r}: {exc}") from None
        info: dict[str, Any] = {"method": self.delta_names[0], "rank_rule": c.rank_rule,
                                "budget": resolve_budget(model, c.budget), "model_params": model_params}
        if self.contributions is not None:
            info["contributions"] = dict(self.contributions)
            info["faig_aggregate"] = c.faig_aggregate
        if rule is not None:
            info["rule_contributions"] = rule
        info["ranks"] = ranks
        info["lora_params"] = lora_param_count({n: layer.base for n, layer in layers.items()},
                                               {n: r for n, r in ranks.items() if r})
        self.allocation = info
        c.ranks = dict(ranks)
        return model
