"""Continual test-time adaptation (CTTA): a source model meets a stream of corrupted domains and adapts online.

Recipes (wiring only: the algorithms are :mod:`zoo.tta`, the ViDA adapters :mod:`zoo.adapters.vida`):

* ``ctta`` — the stream: domains one after the other (``protocol: continual``, no reset: the CoTTA / ViDA
  protocol), ``reset_each_shift`` (back to the source model at every domain: episodic per domain) or
  ``mixed_domains`` (all domains shuffled into one stream, errors still counted per corruption). Every batch is
  **scored before the update it causes** (``ctx.record``, gathered across processes into
  :class:`StreamErrorMetric`); error per domain and mean go to ``metrics.json`` and ``stream.csv``, then
  :meth:`CTTARecipe.report` writes ``errors.csv`` / ``errors.png`` and ``per_example.npz`` (each example's error,
  for a study's paired bootstrap). An algorithm's other predictions of a batch (CoTTA's plain teacher beside its
  augmentation average) are scored too: ``error_<name>``. The algorithm is the
  ``tta:`` section (``tta.name``: ``source``, ``bn_adapt``, ``tent``, ``cotta``, ``vida``; see
  :mod:`zoo.tta.base`); ``vida`` adapts the ``adapter:`` section's ViDA adapters.
* ``ctta_source`` — trains the source model (the ``classify`` recipe on images made uint8 RGB ``rgb_size``², the
  format of the corrupted stream; MNIST 28×28 grey is padded to 32×32 RGB). With ``adapter: {name: vida, ...}``
  and ``augment.tta: true`` it is ViDA's adapter warm-up ("source ViDA model", the official repo's issues #7/#8;
  script not released): adapters trained on source data with the backbone frozen, on augmented source images.

Starting weights: ``model.checkpoint_path`` (:func:`zoo.tta.base.load_source_model`): a source model, or, for
``tta.name=vida``, a whole ViDA model (a warm-up run of ours, or the official checkpoint layout).

Each algorithm owns its optimiser (Adam, built once the model is on its device, saved in ``last.pt`` through
``recipe_state``): CoTTA and ViDA update the EMA teacher and restore weights *after* the optimiser step of the same
batch. So ``ctta`` declares ``automatic_optimization = False`` (the algorithms back-propagate with
``ctx.manual_backward`` and step with ``ctx.optimizer_step``: AMP and DDP apply) and does not read the ``optim`` /
``schedule`` sections (``tta.lr`` and the algorithm's own settings replace them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.data import build_dataset
from zoo.data.images.cifar_c import ArrayImageDataset, images_as_uint8_rgb
from zoo.data.images.corruptions import CORRUPTIONS
from zoo.engine.data import build_loader
from zoo.errors import ConfigError
from zoo.metrics.stream import OnlineErrorMetric
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.recipes.classify import ClassifyConfig, ClassifyRecipe
from zoo.registry import create_model
from zoo.tta.base import TTAAlgorithm, build_tta, load_source_model, read_start_weights

__all__ = ["CTTADataConfig", "CTTAConfig", "CTTARecipe", "CTTASourceConfig", "CTTASourceRecipe", "PROTOCOLS",
           "CORRUPTION_FAMILIES",
           "StreamErrorMetric", "per_example_errors"]

PROTOCOLS = ("continual", "reset_each_shift", "mixed_domains")
#: the four corruption categories of Hendrycks & Dietterich (ICLR 2019); a stream reports each category's mean error
#: (``family/<name>``) when it holds all of its corruptions
CORRUPTION_FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
MIXED = "mixed"  # the one stream domain of the mixed_domains protocol


def _refuse_moved_keys(cfg: Any, moved: dict[str, str]) -> None:
    """A key of an older config (still a field so that the message can name its replacement) is an error."""
    for key, instead in moved.items():
        if getattr(cfg, key) is not None:
            raise ConfigError(f"config key '{key}' of recipe '{cfg.recipe}' was replaced: {instead}")


# ============================================================================================ scores
class StreamErrorMetric(OnlineErrorMetric):
    """The online error of one stream domain (:class:`~zoo.metrics.stream.OnlineErrorMetric`: ``error``,
    ``correct``, ``count``, per group when domains are mixed), plus ``error_<name>`` of each extra prediction
    ``name`` (per-example output ``correct_<name>``), and it hands the domain's per-example outputs to ``keep``
    (``keep(outputs)``, called by :meth:`compute`; the recipe stores them for ``per_example.npz``)."""

    def __init__(self, group_names: Any = None, extra: tuple[str, ...] = (), keep: Any = None):
        self.extra = tuple(extra)
        self.keep = keep
        super().__init__(group_names)
        self.keys = (*self.keys, *(f"correct_{n}" for n in self.extra))

    def compute_from(self, correct: torch.Tensor, group: torch.Tensor | None = None,
                     **extra: torch.Tensor) -> dict[str, Any]:
        out = super().compute_from(correct, group)
        for name in self.extra:
            other = extra[f"correct_{name}"]
            out[f"error_{name}"] = 100.0 * (1 - int(other.sum()) / int(other.numel()))
            for i, g in enumerate(self.group_names or ()):
                selected = group == i
                if int(selected.sum()):
                    out[f"error_{name}/{g}"] = 100.0 * (1 - int(other[selected].sum()) / int(selected.sum()))
        if self.keep is not None:
            self.keep({"correct": correct, **({"group": group} if group is not None else {}), **extra})
        return out


def per_example_errors(domains: dict[str, dict[str, torch.Tensor]],
                       extra: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-example errors whose plain mean is the stream's mean error over corruptions: ``({"error": (N,),
    "error_<name>": (N,)}, example_id (N,))`` from each domain's per-example outputs ``{"correct": (n_d,),
    "correct_<name>": ..., "group": ...}`` (domains in stream order; a mixed stream is one domain whose examples'
    corruption is ``group``).

    An example of corruption ``c`` (``n_c`` examples, ``C`` corruptions, ``N`` in all) counts
    ``100 · wrong · N / (C · n_c)``, so equal domain sizes give plain 0 / 100 scores. ``example_id`` is
    ``corruption index · 10^6 + position in its corruption`` (the order the examples were scored)."""
    parts: dict[str, list[torch.Tensor]] = {"error": [], **{f"error_{n}": [] for n in extra}}
    ids, labels = [], []
    for d, (name, out) in enumerate(domains.items()):
        n = int(out["correct"].numel())
        label = out["group"].long() if "group" in out else torch.full((n,), d, dtype=torch.long)
        labels.append(label)
        for key in parts:
            parts[key].append(1 - out["correct" if key == "error" else f"correct_{key[len('error_'):]}"].double())
        position = torch.zeros(n, dtype=torch.long)
        for g in label.unique():
            sel = label == g
            position[sel] = torch.arange(int(sel.sum()))
        ids.append(label * 1_000_000 + position)
    label = torch.cat(labels)
    counts = torch.bincount(label).double()
    present = counts > 0
    weight = label.numel() / (int(present.sum()) * counts[label])
    return {k: 100.0 * torch.cat(v) * weight for k, v in parts.items()}, torch.cat(ids)


# ============================================================================================ the stream
@dataclass
class CTTADataConfig:
    """Config section ``data``: the corrupted domains (a dataset whose ``split`` is the corruption name)."""

    name: str = "cifar10_c"  # cifar10_c | cifar100_c (any directory in the released .npy layout)
    root: str | None = None
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))  # the stream order
    severity: int = 5
    num_examples: int | None = None  # per domain (None: all, 10,000 for CIFAR)
    batch_size: int = 40  # the official ViDA CIFAR batch (global: split across processes)
    shuffle: bool = False  # order within a domain (seeded); mixed_domains always shuffles
    num_workers: int = 0
    input_size: int | None = None  # bilinear resize on the device (the official ViT-B/16 runs CIFAR at 384)

    def __post_init__(self) -> None:
        if not 1 <= int(self.severity) <= 5:
            raise ConfigError(f"data.severity must be in 1..5, got {self.severity!r}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size!r}")
        if not self.corruptions:
            raise ConfigError("data.corruptions is empty; list at least one domain")
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise ConfigError(f"data.corruptions: unknown {unknown}; choose from {', '.join(CORRUPTIONS)}")


@dataclass
class CTTAConfig(RecipeConfig):
    """Config of the ``ctta`` recipe: ``model`` (``create_model`` arguments, ``name`` required; ``checkpoint_path``:
    the starting weights), ``adapter`` (``tta.name=vida``: the ViDA adapters, ``{name: vida, low_rank, high_rank,
    target_modules}``; empty: their defaults), ``data`` (the domains), ``protocol``, ``tta`` (the algorithm:
    ``name`` + its settings, validated against its config class in :mod:`zoo.tta`)."""

    recipe: str = "ctta"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "timm/vit_tiny_patch16_224"})
    adapter: dict[str, Any] = field(default_factory=dict)
    data: CTTADataConfig = field(default_factory=CTTADataConfig)
    protocol: str = "continual"  # continual | reset_each_shift | mixed_domains
    tta: dict[str, Any] = field(default_factory=lambda: {"name": "vida"})
    source_checkpoint: Any = None  # replaced by model.checkpoint_path (an error when set)
    method: Any = None  # replaced by tta / adapter / protocol (an error when set)

    def __post_init__(self) -> None:
        _refuse_moved_keys(self, {
            "source_checkpoint": "use model.checkpoint_path (a source model, or a whole ViDA model for tta.name=vida)",
            "method": "the section is now 'tta' (tta.name, tta.lr, ... the algorithm's settings); method.protocol -> "
                      "protocol; method.low_rank / high_rank / adapter_targets -> adapter.low_rank / high_rank / "
                      "target_modules; method.vida_checkpoint -> model.checkpoint_path",
        })
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if "name" not in self.model:
            raise ConfigError("config section 'model' needs a 'name' (a registered model or timm/<name>)")


_NO_OPTIM = "each TTA algorithm owns its optimiser: set tta.lr and the algorithm's settings"


@register_recipe("ctta")
class CTTARecipe(Recipe):
    """Continual test-time adaptation on a stream of corrupted domains (see the module doc)."""

    Config = CTTAConfig
    main_metric = "error"
    main_metric_mode = "min"
    run_shape = "stream"
    automatic_optimization = False
    unread_keys = {
        "optim": _NO_OPTIM,
        "schedule": _NO_OPTIM,
        "trainer.epochs": "a stream is one pass over its domains",
        "trainer.max_steps": "a stream is one pass over its domains",
        "trainer.grad_accum_steps": "each batch is scored, then adapted on once",
        "trainer.clip_grad_norm": "each TTA algorithm steps its own optimiser",
        "trainer.ema_decay": "CoTTA / ViDA keep their own EMA teacher (tta.ema)",
    }

    def __init__(self, cfg: CTTAConfig):
        super().__init__(cfg)
        self.algorithm: TTAAlgorithm = build_tta(cfg.tta, cfg.adapter)
        self._ready = False
        self._pending: dict[str, Any] | None = None
        self._domain: str | None = None
        self.examples: dict[str, dict[str, torch.Tensor]] = {}  # domain -> its per-example outputs

    # ---------------------------------------------------------------- model and data
    def build_model(self) -> nn.Module:
        kwargs = dict(self.cfg.model)
        name, path = kwargs.pop("name"), kwargs.pop("checkpoint_path", None)
        model = create_model(name, **kwargs)
        state = read_start_weights(path) if path else None
        model = load_source_model(model, state, self.algorithm.adapter)
        model = self.algorithm.prepare_model(model)
        self.algorithm.capture_source(model)
        return model

    def _domain_dataset(self, corruption: str):
        d = self.cfg.data
        return build_dataset(d.name, root=d.root, split=corruption, severity=d.severity, num_examples=d.num_examples)

    def build_stream(self) -> list[tuple[str, torch.utils.data.DataLoader]]:
        d = self.cfg.data
        if self.cfg.protocol == "mixed_domains":
            import numpy as np

            parts = [self._domain_dataset(c) for c in d.corruptions]
            data = ArrayImageDataset(np.concatenate([p.images for p in parts]),
                                     np.concatenate([p.labels for p in parts]),
                                     domains=np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]))
            loader = build_loader(data, d.batch_size, shuffle=True, seed=self.cfg.seed, num_workers=d.num_workers)
            return [(MIXED, loader)]
        return [(c, build_loader(self._domain_dataset(c), d.batch_size, shuffle=d.shuffle, seed=self.cfg.seed,
                                 num_workers=d.num_workers)) for c in d.corruptions]

    def configure_optimizer(self, model, cfg):
        return None  # the algorithm owns its optimiser (module doc)

    # ---------------------------------------------------------------- stream
    def _ensure_ready(self, model: nn.Module) -> None:
        if not self._ready:
            self.algorithm.setup(model)
            self._ready = True
            if self._pending is not None:
                self.algorithm.load_state_dict(self._pending)
                self._pending = None

    def on_domain_start(self, model: nn.Module, name: str, index: int) -> None:
        self._domain = name
        self._ensure_ready(model)
        if index > 0 and self.cfg.protocol == "reset_each_shift":
            self.algorithm.reset(model)

    def train_step(self, model: nn.Module, batch: Any, ctx: Any) -> dict[str, Any]:
        """Score the batch, then adapt on it (:meth:`TTAAlgorithm.adapt`); records ``correct`` (``correct_<name>`` for
        each of the algorithm's extra predictions; mixing domains, each example's corruption as ``group``) for the
        stream metrics, and logs the algorithm's scalars (:attr:`TTAAlgorithm.logs`)."""
        module = ctx.accelerator.unwrap_model(model)
        self._domain = getattr(ctx, "domain", None) or self._domain
        self._ensure_ready(module)
        x, y = batch[0], batch[1]
        if self.cfg.data.input_size and x.shape[-1] != self.cfg.data.input_size:
            s = self.cfg.data.input_size
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)  # as the official loop
        logits = self.algorithm.adapt(module, x, ctx)
        recorded = {"correct": (logits.argmax(1) == y).long()}
        for name in self.algorithm.extra_prediction_names:
            recorded[f"correct_{name}"] = (self.algorithm.extra_predictions[name].argmax(1) == y).long()
        if self.cfg.protocol == "mixed_domains":
            recorded["group"] = batch[2].long()
        ctx.record(**recorded)
        if self.algorithm.logs:
            ctx.log(**self.algorithm.logs)
        return {}

    def build_metrics(self, kind: str = "stream") -> Any:
        """The online error of a domain (:class:`StreamErrorMetric`; per corruption when the domains are mixed;
        ``error_<name>`` of the algorithm's extra predictions), keeping each domain's per-example outputs."""
        mixed = self.cfg.protocol == "mixed_domains"
        return [StreamErrorMetric(self.cfg.data.corruptions if mixed else None,
                                  extra=self.algorithm.extra_prediction_names, keep=self._keep_examples)]

    def _keep_examples(self, outputs: dict[str, torch.Tensor]) -> None:
        self.examples[self._domain or MIXED] = {k: v.detach().cpu().to(torch.int8) for k, v in outputs.items()}

    def stream_metrics(self, per_domain: dict[str, dict[str, float]]) -> dict[str, Any]:
        """``error`` (mean over corruptions, %) and ``error/<corruption>``; ``error_all`` over all examples; the same
        (``error_<name>``, ``error_<name>/<corruption>``) for each extra prediction of the algorithm; ``family/<f>``:
        the mean error of each corruption category whose corruptions the stream holds (:data:`CORRUPTION_FAMILIES`)."""
        out: dict[str, Any] = {}
        domains: dict[str, dict[str, float]] = {}
        for prefix in ("error", *(f"error_{n}" for n in self.algorithm.extra_prediction_names)):
            errors: dict[str, float] = {}
            for name, m in per_domain.items():
                if name == MIXED:
                    errors.update({c: m[f"{prefix}/{c}"] for c in self.cfg.data.corruptions if f"{prefix}/{c}" in m})
                else:
                    errors[name] = m[prefix]
            out[prefix] = sum(errors.values()) / max(len(errors), 1)
            out.update({f"{prefix}/{k}": v for k, v in errors.items()})
            if prefix == "error":
                out.update({f"family/{f}": sum(errors[c] for c in names) / len(names)
                            for f, names in CORRUPTION_FAMILIES.items() if all(c in errors for c in names)})
            for k, v in errors.items():
                domains.setdefault(k, {})[prefix] = v
        total = sum(m["count"] for m in per_domain.values())
        right = sum(m["correct"] for m in per_domain.values())
        out["error_all"] = 100.0 * (1 - right / max(total, 1))
        out["domains"] = domains
        return out

    def recipe_state(self) -> dict[str, Any]:
        return {"tta": self.algorithm.state_dict(), "examples": self.examples} if self._ready else {}

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        self.examples = dict(state.get("examples", {}))
        if "tta" in state:
            if self._ready:
                self.algorithm.load_state_dict(state["tta"])
            else:
                self._pending = state["tta"]

    # ---------------------------------------------------------------- report
    def report(self, summary: dict[str, Any], run_dir: Any) -> None:
        """``errors.csv`` (domain, error %) and ``errors.png`` in ``run_dir``
        (:func:`zoo.metrics.stream.save_domain_errors`), and ``per_example.npz`` (:func:`per_example_errors`: each
        example's ``error`` and ``error_<name>``, whose means are the run's; for a study's paired bootstrap)."""
        from zoo.metrics.stream import save_domain_errors
        from zoo.studies.per_example import save_per_example

        final = summary.get("final", {})
        order = [d for d in (*self.cfg.data.corruptions, MIXED) if d in self.examples]
        if order:
            arrays, ids = per_example_errors({d: self.examples[d] for d in order},
                                             self.algorithm.extra_prediction_names)
            save_per_example(run_dir, arrays, example_id=ids)
        errors = {d: final[f"error/{d}"] for d in self.cfg.data.corruptions if f"error/{d}" in final}
        save_domain_errors(errors, final.get("error", float("nan")), run_dir,
                           title=f"{self.algorithm.name} ({self.cfg.protocol})")


# ============================================================================================ source / warm-up
@dataclass
class TTAAugmentSection:
    """Config section ``augment`` of ``ctta_source``: train on the test-time augmentation of each batch
    (:func:`zoo.tta.augment.tta_augment`, one draw per batch, as at test time: ViDA's warm-up)."""

    tta: bool = False
    flip: bool = True  # the augmentation's horizontal flip (false for digits)


@dataclass
class CTTASourceConfig(ClassifyConfig):
    """``ctta_source``: the ``classify`` config (its ``adapter`` section included, e.g. ``{name: vida, low_rank: 1,
    high_rank: 128}``: train only that adaptation method on the model of ``model.checkpoint_path``, the ViDA
    warm-up), images made uint8 RGB ``rgb_size``² (grey replicated, padded); ``augment``: see
    :class:`TTAAugmentSection`."""

    recipe: str = "ctta_source"
    rgb_size: int = 32
    augment: TTAAugmentSection = field(default_factory=TTAAugmentSection)
    vida: Any = None  # the old vida_warmup section (an error when set)

    def __post_init__(self) -> None:
        _refuse_moved_keys(self, {
            "vida": "recipe vida_warmup is now ctta_source with adapter: {name: vida, low_rank, high_rank, "
                    "target_modules}, augment: {tta: true, flip: ...} and model.checkpoint_path (was "
                    "vida.source_checkpoint)",
        })


@register_recipe("ctta_source")
class CTTASourceRecipe(ClassifyRecipe):
    """Source training for CTTA: the ``classify`` recipe on ``images_as_uint8_rgb`` of the dataset (so the source
    model sees the stream's format: MNIST padded to 32×32 RGB). ``data.train_split`` / ``eval_split`` as usual.

    With an ``adapter`` section only the adapter trains (``classify``'s adapter support), on the model loaded from
    ``model.checkpoint_path``: ViDA's adapter warm-up. The official training script is not released; this follows
    the paper's description (frozen backbone, augmented source images; each sample of a batch gets the batch's draw,
    as at test time). Unlike ``classify``, ``last.pt`` / ``best.pt`` hold the **whole** model's state dict (backbone
    and adapters, as the official "source ViDA model" does), so that one file is the starting point of a stream
    (``ctta``'s ``model.checkpoint_path``, :func:`zoo.tta.base.load_source_model`)."""

    Config = CTTASourceConfig

    def _rgb(self, split: str):
        d = self.cfg.data
        dataset = build_dataset(d.name, root=d.root, split=split, **d.kwargs)
        images, labels = images_as_uint8_rgb(dataset, self.cfg.rgb_size)
        return ArrayImageDataset(images, labels)

    @cached_property
    def train_dataset(self):
        return self._rgb(self.cfg.data.train_split)

    @cached_property
    def eval_dataset(self):
        return self._rgb(self.cfg.data.eval_split)

    @cached_property
    def calibration_dataset(self):
        return self.train_dataset

    def build_model(self) -> nn.Module:
        return self._create_model(dict(self.cfg.model))  # the adapter is added there, in the order the weights need

    def _create_model(self, kwargs: dict[str, Any], **load: Any) -> nn.Module:
        """The model without weights, then ``checkpoint_path`` (of the config or of ``tools/eval.py``) loaded and the
        adapter added in the order the file needs (:func:`zoo.tta.base.load_source_model`)."""
        kwargs = dict(kwargs)
        path = load.pop("checkpoint_path", None) or kwargs.pop("checkpoint_path", None)
        kwargs.pop("checkpoint_path", None)
        model = super()._create_model(kwargs, **load)
        return load_source_model(model, read_start_weights(path) if path else None, self.adapter)

    def checkpoint_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()  # the whole model, adapters included (class doc)

    def load_checkpoint_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state)

    def training_step(self, model, batch):
        if self.cfg.augment.tta:
            from zoo.tta.augment import tta_augment

            batch = (tta_augment(batch[0], flip=self.cfg.augment.flip), *batch[1:])
        return super().training_step(model, batch)
