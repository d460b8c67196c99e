"""Training and searching a BigNAS supernet: the settings (config sections ``supernet``, ``search``, ``scratch``), one
sandwich-rule step, and the search of every budget with its report (the ``supernet`` and ``supernet_search`` recipes
wire these to data, evaluation and nested trainings).

* :func:`sandwich_step` — the largest child, the smallest child and ``supernet.num_random`` random children
  (:func:`zoo.nas.sandwich_archs`), each with its own forward and backward (gradients add up, one graph alive at a
  time, one optimiser step). The largest child learns from the labels (label smoothing, dropout and the L2 weight
  decay of ``supernet.*`` apply to it only); the others learn from its detached soft predictions on the same batch
  (**in-place distillation**, :func:`zoo.losses.soft_cross_entropy` at T=1, as AttentiveNAS' ``KLLossSoft``).
* :func:`search_budgets` — per budget (MFLOPs, or milliseconds through a cached per-layer latency table),
  :func:`zoo.nas.coarse_to_fine_search` over children scored after BN recalibration, the winner evaluated without
  retraining, exported and optionally trained from scratch; :func:`budget_tag` names a budget's results.

Reference: Yu et al., "BigNAS: Scaling Up Neural Architecture Search with Big Single-Stage Models", ECCV 2020
(sandwich rule, in-place distillation, coarse-to-fine search); AttentiveNAS (Wang et al., CVPR 2021) for the
soft-label loss of the official PyTorch code.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.losses import soft_cross_entropy
from zoo.models._contract import unwrap_model
from zoo.models.bignas import BigNASNet, resize_input, save_child
from zoo.nas.latency import LatencyTable
from zoo.nas.report import read_candidates_csv, plot_pareto, write_candidates_csv
from zoo.nas.search import CandidateMemo, coarse_to_fine_search
from zoo.nas.space import coarse_skeletons, mutate_arch, sandwich_archs
from zoo.studies.per_example import load_per_example, save_per_example

__all__ = ["SupernetSection", "SearchSection", "ScratchSection", "budget_tag", "l2_penalty", "as_supernet",
           "sandwich_step", "evaluate_extreme_children", "search_budgets", "write_search_report"]

_logger = logging.getLogger("zoo")


def budget_tag(kind: str, budget: float) -> str:
    """The name of a budget's results and folders: ``("mflops", 0.8) -> "mflops_0p8"`` (no ``.``, so that a study's
    summary, which reads dotted names as nested keys, can name ``mflops_0p8/gap``)."""
    return f"{kind}_{budget:g}".replace(".", "p")


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """``0.5 * sum ||w||^2`` over the trainable weights with ``ndim > 1`` (no biases / norm weights); a scalar."""
    return 0.5 * sum((p.float() ** 2).sum() for p in model.parameters() if p.requires_grad and p.ndim > 1)


def as_supernet(model: nn.Module) -> BigNASNet:
    """The :class:`~zoo.models.bignas.BigNASNet` inside ``model`` (DDP / compile wrappers removed); a
    ``ConfigError`` naming the model otherwise."""
    net = unwrap_model(model)
    if not isinstance(net, BigNASNet):
        raise ConfigError(f"the supernet recipes need a BigNASNet model (e.g. model.name: bignas_mnist), got "
                          f"{type(net).__name__}")
    return net


# ================================================================================================ training
@dataclass
class SupernetSection:
    """Config section ``supernet`` of the ``supernet`` recipe."""

    num_random: int = 2  # random children per step besides the largest and the smallest (BigNAS: 2)
    distill: bool = True  # children learn from the largest child's soft predictions (else from the labels)
    label_smoothing: float = 0.1  # largest child only
    drop_rate: float = 0.0  # dropout before the classifier, largest child only
    weight_decay: float = 0.0  # L2 penalty (0.5 * wd * ||w||^2) in the largest child's loss only
    bn_calibration_batches: int = 8  # per evaluated child, before each evaluation

    def __post_init__(self) -> None:
        if self.num_random < 0:
            raise ConfigError(f"supernet.num_random must be >= 0, got {self.num_random!r}")
        if self.bn_calibration_batches < 0:
            raise ConfigError("supernet.bn_calibration_batches must be >= 0")


def sandwich_step(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, s: SupernetSection,
                  rng: random.Random, backward: Callable[[torch.Tensor], None]) -> dict[str, torch.Tensor]:
    """One sandwich-rule step on ``inputs (B, C, H, W)`` / ``target (B,)`` (see the module doc): one forward and
    ``backward(loss)`` per child, largest first, children drawn with ``rng``; the supernet is back at its largest
    child with no dropout afterwards. Returns the summed loss and the largest / smallest child's losses."""
    net = as_supernet(model)
    archs = sandwich_archs(net, s.num_random, rng)
    soft, losses = None, []
    try:
        for i, arch in enumerate(archs):
            net.set_subnet(arch)
            net.set_drop_rate(s.drop_rate if i == 0 else 0.0)
            logits = model(resize_input(inputs, arch["resolution"])).float()
            if i == 0:
                loss = F.cross_entropy(logits, target, label_smoothing=s.label_smoothing)
                if s.weight_decay:
                    loss = loss + s.weight_decay * l2_penalty(net)
                if s.distill:
                    soft = logits.detach().softmax(-1)
            else:
                loss = soft_cross_entropy(logits, soft) if s.distill else F.cross_entropy(logits, target)
            backward(loss)  # frees this child's graph before the next forward
            losses.append(loss.detach())
            del logits, loss
    finally:
        net.set_subnet(net.max_subnet())
        net.set_drop_rate(0.0)
    return {"loss": torch.stack(losses).sum(), "loss_max": losses[0], "loss_min": losses[-1]}


def evaluate_extreme_children(net: BigNASNet, evaluate: Callable[[bool], dict[str, float]],
                              calibrate: Callable[[dict[str, Any]], None] | None = None) -> dict[str, float]:
    """The metrics of the largest child and, suffixed ``_min``, of the smallest, each with its ``mflops``: every
    child is made active, recalibrated (``calibrate(arch)``, BN statistics; None: not) and put in eval mode, then
    ``evaluate(largest)`` gives its metrics (``largest``: whether it is the largest child, whose evaluation writes
    the run's files). The supernet is left at its largest child."""
    out: dict[str, float] = {}
    for tag, arch in (("", net.max_subnet()), ("_min", net.min_subnet())):
        net.set_subnet(arch)
        if calibrate is not None:
            calibrate(arch)
        net.eval()
        out.update({f"{k}{tag}": v for k, v in evaluate(not tag).items()})
        out[f"mflops{tag}"] = net.subnet_flops(arch) / 1e6
    net.set_subnet(net.max_subnet())
    return out


# ================================================================================================ search
@dataclass
class SearchSection:
    """Config section ``search`` (the supernet's weights: ``model.checkpoint_path``)."""

    budgets_mflops: list[float] = field(default_factory=list)
    budgets_ms: list[float] = field(default_factory=list)  # measured latency budgets (batch latency_batch_size)
    latency_table: str | None = None  # default: <run dir>/latency_table.json (reuse it across runs)
    latency_batch_size: int = 1
    latency_repeats: int = 20
    coarse_levels: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    coarse_top: int = 6  # coarse candidates scored per budget (the largest ones inside it)
    rounds: int = 2  # fine rounds
    mutations: int = 8  # candidates per fine round
    mutation_prob: float = 0.3
    calib_batches: int = 8  # BN recalibration batches per candidate
    max_search_batches: int | None = None  # cap on search_split batches per candidate

    def __post_init__(self) -> None:
        if not self.budgets_mflops and not self.budgets_ms:
            raise ConfigError("search.budgets_mflops or search.budgets_ms must list at least one budget")
        if self.coarse_top < 1 or self.rounds < 0 or self.mutations < 0 or not 0 <= self.mutation_prob <= 1:
            raise ConfigError("search.coarse_top >= 1, search.rounds >= 0, search.mutations >= 0 and "
                              "0 <= search.mutation_prob <= 1 are required")


@dataclass
class ScratchSection:
    """Config section ``scratch``: train each searched child from scratch (this config's trainer/optim/schedule),
    with the regularisation the supernet's largest child gets (``drop_rate`` before the classifier, the L2 penalty
    ``0.5 * weight_decay * ||w||^2`` in the loss, ``label_smoothing``): a standalone network trained as BigNAS
    trains its biggest child."""

    enabled: bool = False
    label_smoothing: float = 0.0
    drop_rate: float = 0.0
    weight_decay: float = 0.0


def search_budgets(net: BigNASNet, s: SearchSection, seed: int, ctx: Any, score: Callable[..., float],
                   calibrate: Callable[[dict[str, Any]], None],
                   train_twin: Callable[[dict[str, Any], str], float] | None = None,
                   model_name: str = "bignas") -> dict[str, Any]:
    """Search ``net`` under every budget of ``s`` (:func:`zoo.nas.coarse_to_fine_search`): each winner is scored on
    the evaluation split, exported to ``children/<tag>/`` (BN recalibrated) and, with ``train_twin``, trained from
    scratch. ``score(arch, split, max_batches=None, output_dir=None)``: top-1 (%) of a child on ``"search"`` or
    ``"eval"`` data (BN recalibrated, no retraining; with ``output_dir`` its ``per_example.npz`` goes there);
    ``calibrate(arch)``: BN recalibration of the active child; ``train_twin(arch, run_name)``: the twin's top-1 on
    the evaluation split (its run writes ``per_example.npz``). ``ctx``: the study's
    :class:`~zoo.engine.context.RunContext`. Writes ``search.csv`` and ``per_example.npz``; returns ``results`` (one
    record per budget) and ``<tag>/top1_supernet``, ``<tag>/top1_scratch``, ``<tag>/gap``, ``<tag>/mflops`` ...
    (with one budget also without the tag)."""
    out_dir = Path(ctx.output_dir)
    rng = random.Random(seed)
    table = LatencyTable(s.latency_table or out_dir / "latency_table.json", s.latency_repeats,
                         s.latency_batch_size) if s.budgets_ms else None
    memo = CandidateMemo({
        "mflops": lambda arch: net.subnet_flops(arch) / 1e6,
        "ms": lambda arch: table.predict(net.export_subnet(arch), arch["resolution"]),
        "search_top1": lambda arch: score(arch, "search", s.max_search_batches)})
    skeletons = coarse_skeletons(net, s.coarse_levels)
    jobs = [("mflops", b) for b in s.budgets_mflops] + [("ms", b) for b in s.budgets_ms]
    results = []
    per_example: dict[str, Any] = {}
    for kind, budget in jobs:
        t0 = time.perf_counter()
        arch = coarse_to_fine_search(skeletons, memo.fn(kind), memo.fn("search_top1"), budget,
                                     lambda a: mutate_arch(net, a, s.mutation_prob, rng), coarse_top=s.coarse_top,
                                     rounds=s.rounds, mutations=s.mutations)
        tag = budget_tag(kind, budget)
        rec = {"budget": f"{budget:g} {'MFLOPs' if kind == 'mflops' else 'ms'}", "tag": tag, "arch": arch,
               "mflops": memo.value("mflops", arch), "params": net.subnet_params(arch),
               "search_top1": memo.value("search_top1", arch),
               "top1_supernet": score(arch, "eval", output_dir=ctx.subdir(f"eval/{tag}")),
               "search_seconds": time.perf_counter() - t0}
        per_example[f"{tag}/top1_supernet"] = load_per_example(ctx.output_dir / "eval" / tag)["top1"]
        if kind == "ms":
            rec["latency_ms"] = memo.value("ms", arch)
        net.set_subnet(arch)
        calibrate(arch)
        save_child(net.export_subnet(arch), ctx.subdir(f"children/{tag}"), model_name,
                   metrics={"top1": rec["top1_supernet"]})
        if train_twin is not None:
            rec["top1_scratch"] = train_twin(arch, f"scratch/{tag}")
            rec["gap"] = rec["top1_supernet"] - rec["top1_scratch"]
            twin = load_per_example(ctx.output_dir / "scratch" / tag)["top1"]
            per_example[f"{tag}/top1_scratch"] = twin
            per_example[f"{tag}/gap"] = per_example[f"{tag}/top1_supernet"] - twin
        results.append(rec)
        _logger.info("budget %s: %s", rec["budget"], {k: v for k, v in rec.items() if k != "arch"})
    scored = memo.scored("search_top1")
    write_candidates_csv(out_dir / "search.csv", [{**r, "mflops": memo.value("mflops", r["arch"])} for r in scored])
    metrics: dict[str, Any] = {"results": results}
    for r in results:
        for key in ("top1_supernet", "top1_scratch", "gap", "mflops", "params", "search_top1"):
            if key in r:
                metrics[f"{r['tag']}/{key}"] = r[key]
    if len(results) == 1:  # one budget (a study cell per budget): the names without the tag, too
        metrics.update({k.split("/", 1)[1]: v for k, v in list(metrics.items()) if "/" in k})
        per_example.update({k.split("/", 1)[1]: v for k, v in list(per_example.items())})
    save_per_example(out_dir, per_example)
    return metrics


def write_search_report(results: list[dict[str, Any]], run_dir: str | Path) -> None:
    """``results.json`` (the winners' records) and ``pareto.png`` (winners, twins and the candidates of
    ``search.csv``) in ``run_dir``."""
    out = Path(run_dir)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    try:
        plot_pareto(results, read_candidates_csv(out / "search.csv"), out / "pareto.png")
    except ImportError:
        _logger.warning("matplotlib is not installed: no pareto.png")
