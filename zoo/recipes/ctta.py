"""Continual test-time adaptation (CTTA): a source model meets a stream of corrupted domains and adapts online.
Wiring only: the algorithms are :mod:`zoo.tta` (``tta:`` section, ``tta.name``: ``source``, ``bn_adapt``, ``tent``,
``cotta``, ``vida``), the stream and its protocols :mod:`zoo.tta.stream`, the ViDA adapters :mod:`zoo.adapters.vida`.

* ``ctta`` — the stream (``protocol``: ``continual``, ``reset_each_shift`` or ``mixed_domains``). Every batch is
  scored before the update it causes (gathered across processes into :class:`zoo.metrics.stream.OnlineErrorMetric`,
  also ``error_<name>`` of an algorithm's other predictions, e.g. CoTTA's plain teacher); error per domain and mean go
  to ``metrics.json`` and ``stream.csv``, then :meth:`CTTARecipe.report` writes ``errors.csv`` / ``errors.png`` and
  ``per_example.npz`` (each example's error, for a study's paired bootstrap).
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
from torch import nn

from zoo.data.images.cifar_c import ArrayImageDataset, images_as_uint8_rgb
from zoo.config import refuse_replaced_keys
from zoo.errors import ConfigError
from zoo.metrics.stream import OnlineErrorMetric
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.recipes.classify import ClassifyConfig, ClassifyRecipe
from zoo.registry import create_model
from zoo.tta.base import TTAAlgorithm, build_tta, load_source_model, read_start_weights
from zoo.tta.stream import PROTOCOLS, CTTADataConfig, StreamAdaptation, build_stream, stream_summary

__all__ = ["CTTAConfig", "CTTARecipe", "CTTASourceConfig", "CTTASourceRecipe"]


# ============================================================================================ the stream
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
        refuse_replaced_keys(self, {
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
        self.stream = StreamAdaptation(self.algorithm, cfg.protocol, cfg.data.input_size)

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

    def build_stream(self) -> list[tuple[str, torch.utils.data.DataLoader]]:
        return build_stream(self.cfg.data, self.cfg.protocol, self.cfg.seed)

    def configure_optimizer(self, model, cfg):
        return None  # the algorithm owns its optimiser (module doc)

    # ---------------------------------------------------------------- stream
    def on_domain_start(self, model: nn.Module, name: str, index: int) -> None:
        self.stream.start_domain(model, name, index)

    def train_step(self, model: nn.Module, batch: Any, ctx: Any) -> dict[str, Any]:
        """Score the batch, then adapt on it (:meth:`zoo.tta.stream.StreamAdaptation.step`)."""
        self.stream.step(ctx.accelerator.unwrap_model(model), batch, ctx)
        return {}

    def build_metrics(self, kind: str = "stream") -> Any:
        """The online error of a domain (:class:`~zoo.metrics.stream.OnlineErrorMetric`; per corruption when the
        domains are mixed; ``error_<name>`` of the algorithm's extra predictions), keeping each domain's per-example
        outputs."""
        mixed = self.cfg.protocol == "mixed_domains"
        return [OnlineErrorMetric(self.cfg.data.corruptions if mixed else None,
                                  extra=self.algorithm.extra_prediction_names, keep=self.stream.keep)]

    def stream_metrics(self, per_domain: dict[str, dict[str, float]]) -> dict[str, Any]:
        """The stream's errors over corruptions, per corruption and family (:func:`zoo.tta.stream.stream_summary`)."""
        return stream_summary(per_domain, self.cfg.data.corruptions, self.algorithm.extra_prediction_names)

    def recipe_state(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)

    # ---------------------------------------------------------------- report
    def report(self, summary: dict[str, Any], run_dir: Any) -> None:
        """``errors.csv``, ``errors.png``, ``per_example.npz``: :meth:`zoo.tta.stream.StreamAdaptation.write_report`."""
        self.stream.write_report(summary.get("final", {}), self.cfg.data.corruptions, run_dir)


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
        refuse_replaced_keys(self, {
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
    adapter_checkpoints = False  # the whole model (class doc)

    def _rgb(self, split: str):
        images, labels = images_as_uint8_rgb(self.cfg.data.build(split), self.cfg.rgb_size)
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

    def training_step(self, model, batch):
        if self.cfg.augment.tta:
            from zoo.tta.augment import tta_augment

            batch = (tta_augment(batch[0], flip=self.cfg.augment.flip), *batch[1:])
        return super().training_step(model, batch)
