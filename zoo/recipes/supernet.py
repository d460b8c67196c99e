"""BigNAS on ``zoo/models/bignas.py``: the algorithms are :mod:`zoo.nas.supernet` (the sandwich step, the search of
every budget, their settings); these recipes wire them to data, evaluation and nested trainings.

* ``supernet`` trains a supernet, one :func:`~zoo.nas.supernet.sandwich_step` a batch (BigNAS's learning rate,
  "exponential decay with a constant ending", is ``schedule.name: exponential``). Evaluation: the largest and the
  smallest child, each after BN recalibration on training batches (``top1`` = largest, ``top1_min``).
* ``supernet_search`` is a study (owns its run) on the supernet of ``model.checkpoint_path``: candidates scored on
  ``data.search_split``, each budget's winner evaluated on ``data.eval_split`` without retraining, exported to
  ``children/<tag>/`` and, with ``scratch.enabled``, trained from scratch with this config's trainer / optim /
  schedule (nested runs). Writes ``search.csv``, ``per_example.npz``, ``results.json``, ``pareto.png`` and the
  metrics ``<tag>/top1_supernet``, ``<tag>/top1_scratch``, ``<tag>/gap`` (child − twin), ``<tag>/mflops``, ...

Splits (``configs/bignas``, zoo/data/splits.py): the supernet and the twins train on ``test[:7000]``, candidates are
scored on ``test[7000:8000]`` (held out from all training), and only ``test[8000:]`` is reported.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from zoo.engine.batchnorm import recalibrate_batchnorm
from zoo.data.loader import build_loader
from zoo.engine.evaluate import evaluate_model
from zoo.models._contract import unwrap_model
from zoo.models.bignas import BigNASNet, resize_input
from zoo.nas.supernet import (ScratchSection, SearchSection, SupernetSection, as_supernet, evaluate_extreme_children,
                              l2_penalty, sandwich_step, search_budgets, write_search_report)
from zoo.recipes.base import register_recipe
from zoo.recipes.classify import ClassifyConfig, ClassifyDataConfig, ClassifyRecipe, EvalConfig, LossConfig

__all__ = ["SupernetConfig", "SupernetRecipe", "SearchConfig", "SupernetSearchRecipe"]


class _SupernetMixin:
    """Classification on inputs resized to the active child's resolution, and BN recalibration batches."""

    def predict(self, model, inputs, generator=None):
        net = unwrap_model(model)
        res = (getattr(net, "active_arch", None) or getattr(net, "arch", None) or {}).get("resolution")
        return super().predict(model, resize_input(inputs, res), generator)

    def calibration_batches(self, resolution: int, num_batches: int, device: Any = None) -> list[torch.Tensor]:
        """The same ``num_batches`` un-augmented training batches every time (seeded shuffle), resized to
        ``resolution``, ``(B, C, r, r)`` each (on ``device`` when given)."""
        loader = self.cfg.data.eval_loader(self.calibration_dataset, shuffle=True, seed=self.cfg.seed)
        return [resize_input(x if device is None else x.to(device), resolution)
                for x, _ in itertools.islice(loader, num_batches)]


# ================================================================================================ training
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
        """Sandwich step (:func:`zoo.nas.supernet.sandwich_step`), children drawn from ``(seed, step, batch)``."""
        rng = random.Random(hash((self.cfg.seed, ctx.step, ctx.batch_index)) & 0xFFFFFFFF)
        return sandwich_step(model, *batch, self.cfg.supernet, rng, ctx.backward)

    def evaluate(self, model, loader, accelerator, output_dir=None) -> dict[str, float]:
        """``top1`` etc. of the largest child and ``*_min`` of the smallest, each after BN recalibration (the
        classification evaluation of each child, gathered across processes)."""
        net, n = as_supernet(model), self.cfg.supernet.bn_calibration_batches
        calibrate = lambda arch: recalibrate_batchnorm(  # noqa: E731
            net, self.calibration_batches(arch["resolution"], n, accelerator.device))
        evaluate = lambda largest: super(SupernetRecipe, self).evaluate(  # noqa: E731
            model, loader, accelerator, output_dir if largest else None)
        return evaluate_extreme_children(net, evaluate, calibrate if n else None)


# ================================================================================================ search
@dataclass
class SearchDataConfig(ClassifyDataConfig):
    """Config section ``data`` of ``supernet_search``: as ``classify`` (``train_split`` feeds BN recalibration and
    the from-scratch runs, ``eval_split`` the final report) plus ``search_split`` (scores candidates)."""

    search_split: str = "train"


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
            losses = {**losses, "loss": losses["loss"] + self.l2 * l2_penalty(unwrap_model(model))}
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
        net = as_supernet(self._create_model(kwargs))
        if path:
            load_checkpoint(net, path, what="model.checkpoint_path (the supernet's weights)")
        return net.eval()

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
        return evaluate_model(self, net, output_dir, cpu=True, loader=loader)["top1"]  # in this process, on the CPU

    # ------------------------------------------------------------------ the search
    def run(self, ctx: Any) -> dict[str, Any]:
        """Search every budget (:func:`zoo.nas.supernet.search_budgets`, see the module docstring)."""
        torch.manual_seed(self.cfg.seed)
        net = self.build_model()
        datasets = {"search": lambda: self.search_dataset, "eval": lambda: self.eval_dataset}

        def score(arch: dict, split: str, max_batches: int | None = None, output_dir: Any = None) -> float:
            return self.accuracy(net, arch, datasets[split](), max_batches, output_dir)

        def calibrate(arch: dict) -> None:
            recalibrate_batchnorm(net, self.calibration_batches(arch["resolution"], self.cfg.search.calib_batches))

        def train_twin(arch: dict, name: str) -> float:
            return float(ctx.train(self.scratch_recipe(net, arch), name)["final"]["top1"])

        return search_budgets(net, self.cfg.search, self.cfg.seed, ctx, score, calibrate,
                              train_twin if self.cfg.scratch.enabled else None, self.cfg.model["name"])

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
        """``results.json`` and ``pareto.png`` (:func:`zoo.nas.supernet.write_search_report`)."""
        write_search_report(summary["final"]["results"], run_dir)
