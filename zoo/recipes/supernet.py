"""BigNAS: sandwich-rule supernet training with in-place distillation, and coarse-to-fine child search.

Two recipes (``zoo/models/bignas.py`` for the supernet, :mod:`zoo.nas` for the search-space walks, the latency
table and the search itself):

* ``supernet`` trains a supernet. Every step runs the **sandwich rule**: the largest child, the smallest child
  and ``supernet.num_random`` random children (:func:`zoo.nas.sandwich_archs`), each with its own forward and
  ``ctx.backward`` (gradients add up, one graph alive at a time, one optimiser step). The largest child learns from
  the labels (label smoothing, dropout and the L2 weight decay of ``supernet.*`` apply to it only); the others learn
  from its detached soft predictions on the same batch (**in-place distillation**,
  :func:`zoo.losses.soft_cross_entropy` at T=1, as AttentiveNAS' ``KLLossSoft``). The last BN of each residual
  block starts at gamma = 0 (the model does it). BigNAS's learning rate ("exponential decay with a constant
  ending") is the engine's ``schedule.name: exponential``. Evaluation: the largest and the smallest child, each after
  BN recalibration on training batches (``top1`` = largest, ``top1_min``).
* ``supernet_search`` is a study (owns its run): the supernet's weights come from ``model.checkpoint_path``, and
  for each budget (MFLOPs, or milliseconds measured on this machine through a cached per-layer latency table) it
  runs :func:`zoo.nas.coarse_to_fine_search`, each candidate scored on ``data.search_split`` after BN
  recalibration (the classification evaluation: the one evaluation loop over metric objects). The winner is
  evaluated on ``data.eval_split`` without retraining, exported (``children/<budget>/``) and, with
  ``scratch.enabled``, trained from scratch with this config's trainer/optim/schedule sections (nested runs).
  Writes ``search.csv``, ``latency_table.json`` (latency budgets), then (:meth:`SupernetSearchRecipe.report`)
  ``results.json`` and ``pareto.png``. The final metrics hold, per budget tag (``mflops_0p8``: the budget with
  ``.`` written ``p``, so a study's summary can name it), ``<tag>/top1_supernet``, ``<tag>/top1_scratch`` and
  ``<tag>/gap`` (child − twin, points of top-1 on ``data.eval_split``), ``<tag>/mflops``, ``<tag>/params``; with one
  budget also without the prefix. ``per_example.npz`` holds the same accuracies per evaluation example (100 /
  0, and their difference for the gap) for a study's paired bootstrap.

Splits (``configs/bignas``, zoo/data/splits.py): the supernet and the twins train on ``test[:7000]``, candidates are
scored on ``test[7000:8000]`` (held out from all training), and only ``test[8000:]`` is reported.
"""
from __future__ import annotations

import itertools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.engine.batchnorm import recalibrate_batchnorm
from zoo.engine.data import build_loader
from zoo.errors import ConfigError
from zoo.losses import soft_cross_entropy
from zoo.models._contract import unwrap_model
from zoo.models.bignas import BigNASNet, resize_input, save_child
from zoo.nas import (CandidateMemo, LatencyTable, coarse_skeletons, coarse_to_fine_search, mutate_arch, plot_pareto,
                     sandwich_archs)
from zoo.nas.report import read_candidates_csv, write_candidates_csv
from zoo.recipes.base import register_recipe
from zoo.recipes.classify import ClassifyConfig, ClassifyDataConfig, ClassifyRecipe, EvalConfig, LossConfig
from zoo.studies.per_example import load_per_example, save_per_example

__all__ = ["SupernetConfig", "SupernetRecipe", "SearchConfig", "SupernetSearchRecipe", "budget_tag"]


def budget_tag(kind: str, budget: float) -> str:
    """The name of a budget's results and folders: ``("mflops", 0.8) -> "mflops_0p8"`` (no ``.``, so that a study's
    summary, which reads dotted names as nested keys, can name ``mflops_0p8/gap``)."""
    return f"{kind}_{budget:g}".replace(".", "p")

_logger = logging.getLogger("zoo")


def _l2(model: nn.Module) -> torch.Tensor:
    """``0.5 * sum ||w||^2`` over the weights with ``ndim > 1`` (no biases / norm weights)."""
    return 0.5 * sum((p.float() ** 2).sum() for p in model.parameters() if p.requires_grad and p.ndim > 1)


def _supernet(model: nn.Module) -> BigNASNet:
    net = unwrap_model(model)
    if not isinstance(net, BigNASNet):
        raise ConfigError(f"the supernet recipes need a BigNASNet model (e.g. model.name: bignas_mnist), got "
                          f"{type(net).__name__}")
    return net


class _SupernetMixin:
    """Classification on inputs resized to the active child's resolution, and BN recalibration batches."""

    def predict(self, model, inputs, generator=None):
        net = unwrap_model(model)
        res = (getattr(net, "active_arch", None) or getattr(net, "arch", None) or {}).get("resolution")
        return super().predict(model, resize_input(inputs, res), generator)

    def calibration_batches(self, resolution: int, num_batches: int, device: Any = None) -> list[torch.Tensor]:
        """The same ``num_batches`` un-augmented training batches every time (seeded shuffle), resized to
        ``resolution``, ``(B, C, r, r)`` each (on ``device`` when given)."""
        d = self.cfg.data
        loader = build_loader(self.calibration_dataset, d.eval_batch_size or d.batch_size, shuffle=True,
                              seed=self.cfg.seed)
        return [resize_input(x if device is None else x.to(device), resolution)
                for x, _ in itertools.islice(loader, num_batches)]


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


@dataclass
class SupernetConfig(ClassifyConfig):
    """Config of the ``supernet`` recipe: the ``classify`` sections plus ``supernet``."""

    recipe: str = "supernet"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "bignas_mnist"})
    supernet: SupernetSection = field(default_factory=SupernetSection)


@register_recipe("supernet")
class SupernetRecipe(_SupernetMixin, ClassifyRecipe):
    """BigNAS supernet training (sandwich rule + in-place distillation); see the module docstring."""

    Config = SupernetConfig
    main_metric = "top1"
    unread_keys = {"adapter": "a supernet trains all its shared weights (sandwich rule); it takes no adaptation method"}

    def train_step(self, model: nn.Module, batch: Any, ctx: Any) -> dict[str, torch.Tensor]:
        """Sandwich step: one forward + ``ctx.backward`` per child (largest first); returns the summed loss and
        the largest / smallest child's losses."""
        s = self.cfg.supernet
        net = _supernet(model)
        inputs, target = batch
        rng = random.Random(hash((self.cfg.seed, ctx.step, ctx.batch_index)) & 0xFFFFFFFF)
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
                        loss = loss + s.weight_decay * _l2(net)
                    if s.distill:
                        soft = logits.detach().softmax(-1)
                else:
                    loss = soft_cross_entropy(logits, soft) if s.distill else F.cross_entropy(logits, target)
                ctx.backward(loss)  # frees this child's graph before the next forward
                losses.append(loss.detach())
                del logits, loss
        finally:
            net.set_subnet(net.max_subnet())
            net.set_drop_rate(0.0)
        return {"loss": torch.stack(losses).sum(), "loss_max": losses[0], "loss_min": losses[-1]}

    def evaluate(self, model, loader, accelerator, output_dir=None) -> dict[str, float]:
        """``top1`` etc. of the largest child and ``*_min`` of the smallest, each after BN recalibration (the
        classification evaluation of each child, gathered across processes)."""
        net = _supernet(model)
        out: dict[str, float] = {}
        for tag, arch in (("", net.max_subnet()), ("_min", net.min_subnet())):
            net.set_subnet(arch)
            n = self.cfg.supernet.bn_calibration_batches
            if n:
                recalibrate_batchnorm(net, self.calibration_batches(arch["resolution"], n, accelerator.device))
            net.eval()
            metrics = super().evaluate(model, loader, accelerator, output_dir if not tag else None)
            out.update({f"{k}{tag}": v for k, v in metrics.items()})
            out[f"mflops{tag}"] = net.subnet_flops(arch) / 1e6
        net.set_subnet(net.max_subnet())
        return out


# ================================================================================================ search
@dataclass
class SearchDataConfig(ClassifyDataConfig):
    """Config section ``data`` of ``supernet_search``: as ``classify`` (``train_split`` feeds BN recalibration and
    the from-scratch runs, ``eval_split`` the final report) plus ``search_split`` (scores candidates)."""

    search_split: str = "train"


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


@dataclass
class SearchConfig(ClassifyConfig):
    """Config of ``supernet_search``: the ``classify`` sections (``data`` with ``search_split``; ``loss`` and
    ``adapter`` are not read) plus ``search`` and ``scratch``."""

    recipe: str = "supernet_search"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "bignas_mnist"})
    data: SearchDataConfig = field(default_factory=SearchDataConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(topk=[1]))
    search: SearchSection = field(default_factory=lambda: SearchSection(budgets_mflops=[1.0]))
    scratch: ScratchSection = field(default_factory=ScratchSection)


class _ChildClassifyRecipe(_SupernetMixin, ClassifyRecipe):
    """``classify`` for a static BigNAS child: inputs resized to the child's resolution (train and eval), plus the L2
    penalty ``0.5 * weight_decay * ||w||^2`` in the loss (the supernet's largest-child regularisation)."""

    def __init__(self, cfg: ClassifyConfig, weight_decay: float = 0.0):
        super().__init__(cfg)
        self.l2 = float(weight_decay)

    def training_step(self, model, batch):
        inputs, target = batch
        res = unwrap_model(model).arch["resolution"]
        losses = super().training_step(model, (resize_input(inputs, res), target))
        if self.l2:
            losses = {**losses, "loss": losses["loss"] + self.l2 * _l2(unwrap_model(model))}
        return losses


@register_recipe("supernet_search")
class SupernetSearchRecipe(_SupernetMixin, ClassifyRecipe):
    """Coarse-to-fine search of a trained supernet under FLOPs / latency budgets (a study: owns its run)."""

    Config = SearchConfig
    main_metric = "top1"
    run_shape = "study"
    unread_keys = {"search.supernet_checkpoint": "renamed: give the supernet's weights (a supernet run's last.pt "
                                                 "or run directory) as model.checkpoint_path",
                   "loss": "the search trains nothing; the from-scratch twins use scratch.label_smoothing",
                   "adapter": "the search scores children of the supernet as they are"}

    @cached_property
    def search_dataset(self):
        d = self.cfg.data
        return self._dataset(d.search_split, d.eval_kwargs, d.eval_transforms)

    def build_model(self) -> BigNASNet:
        """The supernet with the weights of ``model.checkpoint_path`` (:func:`zoo.hub.load_checkpoint`), eval mode."""
        from zoo.hub import load_checkpoint

        kwargs = dict(self.cfg.model)
        path = kwargs.pop("checkpoint_path", None)
        net = _supernet(self._create_model(kwargs))
        if path:
            load_checkpoint(net, path, what="model.checkpoint_path (the supernet's weights)")
        return net.eval()

    # ------------------------------------------------------------------ scoring
    @cached_property
    def _accelerator(self):
        from zoo.engine.accel import RunAccelerator

        return RunAccelerator(cpu=True)  # the search runs in this process, on the CPU

    def accuracy(self, net: BigNASNet, arch: dict[str, Any], dataset: Any, max_batches: int | None = None,
                 output_dir: Any = None) -> float:
        """Top-1 (percent) of ``arch`` on ``dataset`` (its first ``max_batches`` batches) without retraining,
        after BN recalibration on ``search.calib_batches`` training batches (the classification evaluation: the one
        evaluation loop, inputs resized to the child's resolution). With ``output_dir``, the evaluation's files go
        there (confusion matrix, ``per_example.npz``)."""
        net.set_subnet(arch)
        recalibrate_batchnorm(net, self.calibration_batches(arch["resolution"], self.cfg.search.calib_batches))
        net.eval()
        d = self.cfg.data
        batch_size = d.eval_batch_size or d.batch_size
        if max_batches is not None:
            dataset = torch.utils.data.Subset(dataset, range(min(len(dataset), max_batches * batch_size)))
        loader = build_loader(dataset, batch_size, shuffle=False)
        with self._accelerator.active() as accelerator:
            return self.evaluate(net, loader, accelerator, output_dir)["top1"]

    # ------------------------------------------------------------------ the search
    def run(self, ctx: Any) -> dict[str, Any]:
        """Search every budget (see the module docstring); returns ``results`` (one record per budget) and
        ``<tag>/top1_supernet`` / ``<tag>/top1_scratch``."""
        s, out_dir = self.cfg.search, Path(ctx.output_dir)
        torch.manual_seed(self.cfg.seed)
        net = self.build_model()
        rng = random.Random(self.cfg.seed)
        table = LatencyTable(s.latency_table or out_dir / "latency_table.json", s.latency_repeats,
                             s.latency_batch_size) if s.budgets_ms else None
        memo = CandidateMemo({
            "mflops": lambda arch: net.subnet_flops(arch) / 1e6,
            "ms": lambda arch: table.predict(net.export_subnet(arch), arch["resolution"]),
            "search_top1": lambda arch: self.accuracy(net, arch, self.search_dataset, s.max_search_batches)})
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
                   "top1_supernet": self.accuracy(net, arch, self.eval_dataset, output_dir=ctx.subdir(f"eval/{tag}")),
                   "search_seconds": time.perf_counter() - t0}
            per_example[f"{tag}/top1_supernet"] = load_per_example(ctx.output_dir / "eval" / tag)["top1"]
            if kind == "ms":
                rec["latency_ms"] = memo.value("ms", arch)
            net.set_subnet(arch)
            recalibrate_batchnorm(net, self.calibration_batches(arch["resolution"], s.calib_batches))
            save_child(net.export_subnet(arch), ctx.subdir(f"children/{tag}"), self.cfg.model["name"],
                       metrics={"top1": rec["top1_supernet"]})
            if self.cfg.scratch.enabled:
                summary = ctx.train(self.scratch_recipe(net, arch), f"scratch/{tag}")
                rec["top1_scratch"] = float(summary["final"]["top1"])
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

    def scratch_recipe(self, net: BigNASNet, arch: dict) -> ClassifyRecipe:
        """A ``classify`` recipe training ``arch`` from scratch (same data, this config's trainer/optim/schedule,
        the ``scratch`` section's regularisation)."""
        sc = self.cfg.scratch
        model = {"name": "bignas_child", "space": net.space.to_dict(), "arch": arch, "in_chans": net.in_chans,
                 "num_classes": net.num_classes, "drop_rate": sc.drop_rate}
        d = self.cfg.data
        data = ClassifyDataConfig(**{k: getattr(d, k) for k in ClassifyDataConfig.__dataclass_fields__})
        cfg = ClassifyConfig(recipe="classify", seed=self.cfg.seed, trainer=self.cfg.trainer, optim=self.cfg.optim,
                             schedule=self.cfg.schedule, model=model, data=data,
                             loss=LossConfig(label_smoothing=sc.label_smoothing), eval=EvalConfig(topk=[1]))
        return _ChildClassifyRecipe(cfg, weight_decay=sc.weight_decay)

    def report(self, summary: dict[str, Any], run_dir: Any) -> None:
        """``results.json`` (the winners' records) and ``pareto.png`` (winners, twins and the candidates of
        ``search.csv``)."""
        out = Path(run_dir)
        results = summary["final"]["results"]
        (out / "results.json").write_text(json.dumps(results, indent=2))
        try:
            plot_pareto(results, read_candidates_csv(out / "search.csv"), out / "pareto.png")
        except ImportError:
            _logger.warning("matplotlib is not installed: no pareto.png")
