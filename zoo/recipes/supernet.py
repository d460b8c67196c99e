"""BigNAS: sandwich-rule supernet training with in-place distillation, and coarse-to-fine child search.

Two recipes (``zoo/models/bignas.py`` for the supernet):

* ``supernet`` trains a supernet. Every step runs the **sandwich rule**: the largest child, the smallest child
  and ``supernet.num_random`` random children, each with its own forward and ``ctx.backward`` (gradients add up,
  one graph alive at a time, one optimiser step). The largest child learns from the labels (label smoothing,
  dropout and the L2 weight decay of ``supernet.*`` apply to it only); the others learn from its detached soft
  predictions on the same batch (**in-place distillation**, soft cross-entropy at T=1, as AttentiveNAS'
  ``KLLossSoft``). The last BN of each residual block starts at gamma = 0 (the model does it).
  BigNAS's learning rate ("exponential decay with a constant ending") is the engine's ``schedule.name:
  exponential`` (``schedule.decay_rate`` per epoch, ``schedule.min_lr`` the constant ending). Evaluation: the largest and the
  smallest child, each after BN recalibration on training batches (``top1`` = largest, ``top1_min``).
* ``supernet_search`` owns its run: loads a trained supernet, and for each budget (MFLOPs, or milliseconds
  measured on this machine through a cached per-layer latency table) runs a **coarse-to-fine search** -- a grid of
  stage-uniform skeletons, the ``coarse_top`` largest ones inside the budget scored, then rounds of random
  per-stage mutations around the best -- each candidate scored on ``data.search_split`` after BN recalibration.
  The winner is evaluated on ``data.eval_split`` without retraining, exported (``children/<budget>/``) and, with
  ``scratch.enabled``, trained from scratch with this config's trainer/optim/schedule sections (nested runs).
  Writes ``search.csv``, ``results.json``, ``pareto.png`` and ``metrics.json``.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.engine.batchnorm import recalibrate_batchnorm
from zoo.engine.data import build_loader
from zoo.errors import ConfigError
from zoo.models._contract import unwrap_model
from zoo.models.bignas import BigNASNet, arch_key, resize_input
from zoo.recipes.base import RecipeConfig, register_recipe
from zoo.recipes.classify import ClassifyConfig, ClassifyDataConfig, ClassifyRecipe, EvalConfig, LossConfig

__all__ = ["SupernetConfig", "SupernetRecipe", "SearchConfig", "SupernetSearchRecipe", "soft_cross_entropy",
           "sandwich_archs", "LatencyTable", "coarse_skeletons", "mutate_arch"]

_logger = logging.getLogger("zoo")


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """``mean_b -sum_c p_teacher[b, c] log_softmax(logits)[b, c]`` for ``logits, soft_targets (B, C)`` (T = 1)."""
    return -(soft_targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def sandwich_archs(model: BigNASNet, num_random: int, rng: random.Random) -> list[dict[str, Any]]:
    """The children of one sandwich step: largest first (the teacher), then ``num_random`` random, smallest last."""
    return [model.max_subnet(), *(model.sample_subnet(rng) for _ in range(num_random)), model.min_subnet()]


def _l2(model: nn.Module) -> torch.Tensor:
    """``0.5 * sum ||w||^2`` over the weights with ``ndim > 1`` (no biases / norm weights)."""
    return 0.5 * sum((p.float() ** 2).sum() for p in model.parameters() if p.requires_grad and p.ndim > 1)


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


def _supernet(model: nn.Module) -> BigNASNet:
    net = unwrap_model(model)
    if not isinstance(net, BigNASNet):
        raise TypeError(f"the supernet recipes need a BigNASNet model (e.g. model.name: bignas_mnist), got "
                        f"{type(net).__name__}")
    return net


class _ResizingMixin:
    """Classification on inputs resized to the model's active resolution (a supernet's active child)."""

    def predict(self, model, inputs, generator=None):
        net = unwrap_model(model)
        res = (getattr(net, "active_arch", None) or getattr(net, "arch", None) or {}).get("resolution")
        return super().predict(model, resize_input(inputs, res), generator)


@register_recipe("supernet")
class SupernetRecipe(_ResizingMixin, ClassifyRecipe):
    """BigNAS supernet training (sandwich rule + in-place distillation); see the module docstring."""

    Config = SupernetConfig
    main_metric = "top1"

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

    def calibration_batches(self, accelerator: Any, resolution: int, num_batches: int) -> list[torch.Tensor]:
        """The same ``num_batches`` un-augmented training batches every time, resized to ``resolution``."""
        d = self.cfg.data
        loader = build_loader(self.calibration_dataset, d.eval_batch_size or d.batch_size, shuffle=True,
                              seed=self.cfg.seed)
        out = []
        for inputs, _ in itertools.islice(loader, num_batches):
            out.append(resize_input(inputs.to(accelerator.device), resolution))
        return out

    def evaluate(self, model, loader, accelerator, output_dir=None) -> dict[str, float]:
        """``top1`` etc. of the largest child and ``*_min`` of the smallest, each after BN recalibration."""
        net = _supernet(model)
        out: dict[str, float] = {}
        for tag, arch in (("", net.max_subnet()), ("_min", net.min_subnet())):
            net.set_subnet(arch)
            n = self.cfg.supernet.bn_calibration_batches
            if n:
                recalibrate_batchnorm(net, self.calibration_batches(accelerator, arch["resolution"], n))
            net.eval()
            metrics = super().evaluate(model, loader, accelerator, output_dir if not tag else None)
            out.update({f"{k}{tag}": v for k, v in metrics.items()})
            out[f"mflops{tag}"] = net.subnet_flops(arch) / 1e6
        net.set_subnet(net.max_subnet())
        return out


# ================================================================================================ latency
class LatencyTable:
    """Measured latency of network parts on this machine, cached in a JSON file.

    A child's latency is predicted as the sum over its top-level parts (stem, each block, head conv, pool +
    classifier) of their measured time at their input shape; each part is timed once (median of ``repeats`` runs
    after a warm-up, current thread count) and stored under ``sha1(repr(module) + input shape)``, so children that
    share a block configuration share its entry.
    """

    def __init__(self, path: str | os.PathLike | None, repeats: int = 20, batch_size: int = 1):
        self.path = Path(path) if path else None
        self.repeats, self.batch_size = int(repeats), int(batch_size)
        self.table: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            self.table = json.loads(self.path.read_text())
        self.measured = 0

    @staticmethod
    def _parts(child: nn.Module) -> list[nn.Module]:
        parts = [child.stem, *[b for stage in child.stages for b in stage], child.conv_head]
        return parts + [nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), child.head.fc)]

    def _time(self, module: nn.Module, x: torch.Tensor) -> float:
        with torch.no_grad():
            for _ in range(3):
                module(x)
            times = []
            for _ in range(self.repeats):
                t = time.perf_counter()
                module(x)
                times.append(time.perf_counter() - t)
        times.sort()
        return 1e3 * times[len(times) // 2]

    @torch.no_grad()
    def predict(self, child: nn.Module, resolution: int) -> float:
        """Predicted latency (ms, batch ``batch_size``) of a static child at ``resolution``."""
        child = child.eval()
        x = torch.zeros(self.batch_size, child.in_chans, resolution, resolution)
        total, new = 0.0, False
        for part in self._parts(child):
            key = hashlib.sha1(f"{part!r}|{tuple(x.shape)}".encode()).hexdigest()[:16]
            if key not in self.table:
                self.table[key] = self._time(part, x)
                self.measured += 1
                new = True
            total += self.table[key]
            x = part(x)
        if new:
            self.save()
        return total

    def save(self) -> None:
        """Write the table (atomically)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.table, indent=1))
        os.replace(tmp, self.path)


# ================================================================================================ search space walks
def coarse_skeletons(model: BigNASNet, levels: Sequence[float] = (0.0, 0.5, 1.0)) -> list[dict[str, Any]]:
    """Stage-uniform skeletons: every resolution x a relative level (0 = smallest, 1 = largest choice of each stage)
    for width (stem and head too), depth, kernel and expand ratio; duplicates removed."""
    sp = model.space

    def pick(choices: Sequence, level: float):
        return choices[int(round(level * (len(choices) - 1)))]

    out, seen = [], set()
    for res, lw, ld, lk, le in itertools.product(sp.resolutions, levels, levels, levels, levels):
        arch = {"resolution": res, "stem": pick(sp.stem_widths, lw),
                "widths": [pick(s.widths, lw) for s in sp.stages], "depths": [pick(s.depths, ld) for s in sp.stages],
                "kernels": [pick(s.kernels, lk) for s in sp.stages],
                "expands": [pick(s.expands, le) for s in sp.stages],
                "head": pick(sp.head_widths, lw)}
        key = arch_key(arch)
        if key not in seen:
            seen.add(key)
            out.append(arch)
    return out


def mutate_arch(model: BigNASNet, arch: Mapping[str, Any], prob: float, rng: random.Random) -> dict[str, Any]:
    """A copy of ``arch`` with each per-stage choice (and resolution, stem, head) redrawn with probability ``prob``."""
    sp = model.space
    new = {k: (list(v) if isinstance(v, list) else v) for k, v in arch.items()}
    for key, choices in (("resolution", sp.resolutions), ("stem", sp.stem_widths), ("head", sp.head_widths)):
        if rng.random() < prob:
            new[key] = rng.choice(list(choices))
    for i, st in enumerate(sp.stages):
        for key, attr in (("widths", "widths"), ("depths", "depths"), ("kernels", "kernels"), ("expands", "expands")):
            if rng.random() < prob:
                new[key][i] = rng.choice(list(getattr(st, attr)))
    return new


# ================================================================================================ search recipe
@dataclass
class SearchDataConfig(ClassifyDataConfig):
    """Config section ``data`` of ``supernet_search``: as ``classify`` (``train_split`` feeds BN recalibration and
    the from-scratch runs, ``eval_split`` the final report) plus ``search_split`` (scores candidates)."""

    search_split: str = "train"


@dataclass
class SearchSection:
    """Config section ``search``."""

    supernet_checkpoint: str = ""  # last.pt / best.pt of a ``supernet`` run (or a plain state dict file)
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
    """Config section ``scratch``: train each searched child from scratch (this config's trainer/optim/schedule)."""

    enabled: bool = False
    label_smoothing: float = 0.0


@dataclass
class SearchConfig(RecipeConfig):
    """Config of ``supernet_search``."""

    recipe: str = "supernet_search"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "bignas_mnist"})
    data: SearchDataConfig = field(default_factory=SearchDataConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(topk=[1]))
    search: SearchSection = field(default_factory=lambda: SearchSection(budgets_mflops=[1.0]))
    scratch: ScratchSection = field(default_factory=ScratchSection)


class _ChildClassifyRecipe(_ResizingMixin, ClassifyRecipe):
    """``classify`` for a static BigNAS child: inputs resized to the child's resolution (train and eval)."""

    def training_step(self, model, batch):
        inputs, target = batch
        res = unwrap_model(model).arch["resolution"]
        return super().training_step(model, (resize_input(inputs, res), target))


def load_supernet_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a ``supernet`` run's ``last.pt`` / ``best.pt`` (``{"model": state}``) or a plain state-dict file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search.supernet_checkpoint: no file {path}; give the last.pt of a supernet run "
                                "(e.g. ${stage:supernet}/last.pt in a pipeline)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
    model.load_state_dict(state)


@register_recipe("supernet_search")
class SupernetSearchRecipe(_ResizingMixin, ClassifyRecipe):
    """Coarse-to-fine search of a trained supernet under FLOPs / latency budgets (owns its run)."""

    Config = SearchConfig
    main_metric = "top1"

    def __init__(self, cfg: SearchConfig):
        cfg.loss = LossConfig()  # the classify pieces read it
        super().__init__(cfg)

    @cached_property
    def search_dataset(self):
        d = self.cfg.data
        return self._dataset(d.search_split, d.eval_kwargs, d.eval_transforms)

    def build_model(self) -> BigNASNet:
        model = super().build_model()
        _supernet(model)
        if self.cfg.search.supernet_checkpoint:
            load_supernet_weights(model, self.cfg.search.supernet_checkpoint)
        return model.eval()

    # ------------------------------------------------------------------ scoring
    def _calibration(self, resolution: int) -> list[torch.Tensor]:
        d = self.cfg.data
        loader = build_loader(self.calibration_dataset, d.eval_batch_size or d.batch_size, shuffle=True,
                              seed=self.cfg.seed)
        return [resize_input(x, resolution) for x, _ in itertools.islice(loader, self.cfg.search.calib_batches)]

    @torch.no_grad()
    def accuracy(self, net: BigNASNet, arch: Mapping[str, Any], dataset: Any, max_batches: int | None = None) -> float:
        """Top-1 (percent) of ``arch`` on ``dataset`` without retraining, after BN recalibration."""
        net.set_subnet(arch)
        recalibrate_batchnorm(net, self._calibration(arch["resolution"]))
        net.eval()
        d = self.cfg.data
        loader = build_loader(dataset, d.eval_batch_size or d.batch_size, shuffle=False)
        correct = total = 0
        for inputs, target in itertools.islice(loader, max_batches):
            pred = net(resize_input(inputs, arch["resolution"])).argmax(1)
            correct += int((pred == target).sum())
            total += len(target)
        return 100.0 * correct / max(total, 1)

    # ------------------------------------------------------------------ the search
    def search_budget(self, net: BigNASNet, cost: Callable[[dict], float], budget: float,
                      skeletons: list[dict], score: Callable[[dict], float], rng: random.Random) -> dict[str, Any]:
        """Coarse-to-fine search for the best child with ``cost(arch) <= budget``; returns the winner's record."""
        s = self.cfg.search
        inside = sorted((a for a in skeletons if cost(a) <= budget), key=cost, reverse=True)
        if not inside:
            smallest = net.min_subnet()
            raise ValueError(f"supernet_search: no skeleton fits the budget {budget}; the smallest child costs "
                             f"{cost(smallest):.3f} -- raise the budget")
        best = max(inside[:s.coarse_top], key=score)
        for _ in range(s.rounds):
            cands = [mutate_arch(net, best, s.mutation_prob, rng) for _ in range(s.mutations)]
            cands = [c for c in cands if cost(c) <= budget]
            if cands:
                top = max(cands, key=score)
                if score(top) > score(best):
                    best = top
        return best

    def run(self, ctx: Any) -> dict[str, Any]:
        s, out_dir = self.cfg.search, Path(ctx.output_dir)
        torch.manual_seed(self.cfg.seed)
        net = self.build_model()
        rng = random.Random(self.cfg.seed)
        cache: dict[str, dict[str, float]] = {}
        table = LatencyTable(s.latency_table or out_dir / "latency_table.json", s.latency_repeats,
                             s.latency_batch_size) if s.budgets_ms else None

        def info(arch: dict) -> dict[str, float]:
            key = arch_key(arch)
            if key not in cache:
                cache[key] = {"mflops": net.subnet_flops(arch) / 1e6}
            return cache[key]

        def mflops(arch: dict) -> float:
            return info(arch)["mflops"]

        def latency(arch: dict) -> float:
            rec = info(arch)
            if "ms" not in rec:
                rec["ms"] = table.predict(net.export_subnet(arch), arch["resolution"])
            return rec["ms"]

        def score(arch: dict) -> float:
            rec = info(arch)
            if "search_top1" not in rec:
                rec["search_top1"] = self.accuracy(net, arch, self.search_dataset, s.max_search_batches)
                rec["arch"] = json.dumps(arch)
            return rec["search_top1"]

        skeletons = coarse_skeletons(net, s.coarse_levels)
        jobs = [("mflops", b, mflops) for b in s.budgets_mflops] + [("ms", b, latency) for b in s.budgets_ms]
        results = []
        for kind, budget, cost in jobs:
            t0 = time.perf_counter()
            arch = self.search_budget(net, cost, budget, skeletons, score, rng)
            tag = f"{kind}_{budget:g}"
            rec = {"budget": f"{budget:g} {'MFLOPs' if kind == 'mflops' else 'ms'}", "tag": tag, "arch": arch,
                   "mflops": mflops(arch), "params": net.subnet_params(arch),
                   "search_top1": score(arch),
                   "top1_supernet": self.accuracy(net, arch, self.eval_dataset),
                   "search_seconds": time.perf_counter() - t0}
            if kind == "ms":
                rec["latency_ms"] = latency(arch)
            net.set_subnet(arch)
            recalibrate_batchnorm(net, self._calibration(arch["resolution"]))
            from zoo.models.bignas import save_child

            save_child(net.export_subnet(arch), ctx.subdir(f"children/{tag}"), self.cfg.model["name"],
                       metrics={"top1": rec["top1_supernet"]})
            if self.cfg.scratch.enabled:
                summary = ctx.train(self.scratch_recipe(net, arch), f"scratch/{tag}")
                rec["top1_scratch"] = float(summary["final"]["top1"])
            results.append(rec)
            _logger.info("budget %s: %s", rec["budget"], {k: v for k, v in rec.items() if k != "arch"})
        self._write(out_dir, results, cache)
        metrics = {"results": results}
        for r in results:
            metrics[f"{r['tag']}/top1_supernet"] = r["top1_supernet"]
            if "top1_scratch" in r:
                metrics[f"{r['tag']}/top1_scratch"] = r["top1_scratch"]
        ctx.write_metrics(metrics)
        return metrics

    def scratch_recipe(self, net: BigNASNet, arch: dict) -> ClassifyRecipe:
        """A ``classify`` recipe training ``arch`` from scratch (same data, this config's trainer/optim/schedule)."""
        model = {"name": "bignas_child", "space": net.space.to_dict(), "arch": arch, "in_chans": net.in_chans,
                 "num_classes": net.num_classes}
        d = self.cfg.data
        data = ClassifyDataConfig(**{k: getattr(d, k) for k in ClassifyDataConfig.__dataclass_fields__})
        cfg = ClassifyConfig(recipe="classify", seed=self.cfg.seed, trainer=self.cfg.trainer, optim=self.cfg.optim,
                             schedule=self.cfg.schedule, model=model, data=data,
                             loss=LossConfig(label_smoothing=self.cfg.scratch.label_smoothing),
                             eval=EvalConfig(topk=[1]))
        return _ChildClassifyRecipe(cfg)

    def _write(self, out_dir: Path, results: list[dict], cache: dict[str, dict]) -> None:
        with open(out_dir / "search.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["arch", "mflops", "ms", "search_top1"])
            for rec in cache.values():
                if "search_top1" in rec:
                    w.writerow([rec["arch"], f"{rec['mflops']:.4f}", rec.get("ms", ""), f"{rec['search_top1']:.2f}"])
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        try:
            plot_pareto(results, [r for r in cache.values() if "search_top1" in r], out_dir / "pareto.png")
        except ImportError:
            _logger.warning("matplotlib is not installed: no pareto.png")


def plot_pareto(results: list[dict], candidates: list[dict], path: Path) -> None:
    """Accuracy vs MFLOPs: searched children without retraining, their from-scratch twins, candidates scored on
    the search split (faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if candidates:
        ax.scatter([c["mflops"] for c in candidates], [c["search_top1"] for c in candidates], s=8, c="0.8",
                   label="candidates (search split)")
    xs = [r["mflops"] for r in results]
    ax.plot(xs, [r["top1_supernet"] for r in results], "o-", label="searched child, no retraining")
    if all("top1_scratch" in r for r in results) and results:
        ax.plot(xs, [r["top1_scratch"] for r in results], "s--", label="same arch from scratch")
    ax.set_xlabel("MFLOPs (multiply-adds)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
