"""Image restoration: pre-training (e.g. PROD) and adaptation by any adapter method, PSNR / SSIM evaluation.

Recipes:

* ``restore`` -- train a restoration model on ``(lq, gt)`` pairs with an L1, MSE or PSNR loss
  (:mod:`zoo.restoration.losses`), evaluate PSNR / SSIM per image with BasicSR's conventions
  (:mod:`zoo.metrics.image`; outputs clamped to [0, 1] and rounded to 8 bits, as saved PNGs are) on whole images,
  optionally tiled (``eval.tile`` / ``eval.tile_overlap``, :mod:`zoo.restoration.evaluate`); the scores are gathered
  across processes. ``model.checkpoint_path`` starts from weights (a run's checkpoint or directory, an official
  ``.pth``: :func:`zoo.hub.load_checkpoint`). The ``adapter:`` section says what trains (any registered method,
  :mod:`zoo.adapters`): ``full`` (every parameter, the default), ``colora`` (CoLoRA: a probe and FAIG set per-layer
  LoRA ranks under ``adapter.budget``; ``adapter.rank_rule: uniform`` is the uniform-LoRA baseline at the same
  budget), ``lora`` (one rank on ``adapter.target_modules``)... A method that ``needs_calibration`` is calibrated on
  training batches first (:meth:`RestoreRecipe.calibrate`: their own seeded order, the task loss, back-propagated
  through the run's accelerator); its allocation is written to ``colora_allocation.json`` in the run directory.
  Metrics include ``trainable_params`` and ``tuned_percent``.
* ``restore_eval`` -- evaluate ``model.checkpoint_path`` as it is (the "no adaptation" row of a study); owns its run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.adapters.base import adapter_config_from_dict, build_adapter
from zoo.data.images.paired import collate_listed, collate_pairs
from zoo.data.loader import build_loader
from zoo.data.registry import DatasetSpec, check_loader_settings
from zoo.errors import ConfigError
from zoo.metrics.image import ImageQualityMetric
from zoo.models._contract import loss_with_auxiliary
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.registry import create_model
from zoo.restoration.evaluate import RestoreEvalConfig, restore_and_score, save_triplets
from zoo.restoration.losses import RestoreLossConfig, calibrate_on_pairs, restoration_loss

__all__ = ["DatasetSpec", "RestoreDataConfig", "RestoreConfig", "RestoreRecipe", "RestoreEvalRecipe"]

# ================================================================================================ config
@dataclass
class RestoreDataConfig:
    """Config section ``data``: the training and evaluation datasets and loader settings."""

    train: DatasetSpec = field(default_factory=DatasetSpec)
    eval: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="degraded_images"))
    batch_size: int = 8
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_loader_settings(self)


@dataclass
class RestoreConfig(RecipeConfig):
    """Config of the ``restore`` / ``restore_eval`` recipes. ``model``: ``create_model`` keywords (``name``, and
    ``checkpoint_path``: the starting weights); ``adapter``: what trains (``{name: full}`` by default)."""

    recipe: str = "restore"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "nafnet_tiny"})
    data: RestoreDataConfig = field(default_factory=RestoreDataConfig)
    loss: RestoreLossConfig = field(default_factory=RestoreLossConfig)
    adapter: dict[str, Any] = field(default_factory=lambda: {"name": "full"})
    eval: RestoreEvalConfig = field(default_factory=RestoreEvalConfig)

    def __post_init__(self) -> None:
        if "name" not in self.model:
            raise ConfigError("config section 'model' needs a 'name' (a registered model, e.g. nafnet_tiny)")
        adapter_config_from_dict(self.adapter)  # a ConfigError naming adapter.<key>


_RENAMED = {
    "init_checkpoint": "renamed: the starting weights are model.checkpoint_path",
    "method": "moved: what trains is the adapter section: method.name=full | lora | colora is adapter.name=full | "
              "adapter.name=colora adapter.rank_rule=uniform | adapter.name=colora (CoLoRA's keys: adapter.budget...)",
}


# ================================================================================================ recipes
@register_recipe("restore")
class RestoreRecipe(Recipe):
    """Restoration training / adaptation and PSNR / SSIM evaluation (see the module doc)."""

    Config = RestoreConfig
    main_metric = "psnr"
    unread_keys = _RENAMED
    adapter_checkpoints = False  # checkpoints hold the whole model, deltas included (tools/eval.py loads them so)

    def __init__(self, cfg: RestoreConfig):
        super().__init__(cfg)
        self.adapter = build_adapter(cfg.adapter)
        self._saved: list[tuple] = []  # (name, lq, output, gt) of this evaluation's first images (eval.save_images)

    # ---------------------------------------------------------------- data
    @cached_property
    def train_dataset(self):
        return self.cfg.data.train.build("data.train")

    @cached_property
    def eval_dataset(self):
        return self.cfg.data.eval.build("data.eval")

    def _train_loader(self, seed: int):
        d = self.cfg.data
        return build_loader(self.train_dataset, d.batch_size, shuffle=True, seed=seed, num_workers=d.num_workers,
                            drop_last=len(self.train_dataset) > d.batch_size, collate_fn=collate_pairs)

    def build_dataloaders(self):
        return self._train_loader(self.cfg.seed), self.build_eval_loader()

    def build_eval_loader(self):
        """Whole images of any size, one per process per batch (listed, not stacked: sizes differ)."""
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return build_loader(self.eval_dataset, world, shuffle=False, num_workers=self.cfg.data.num_workers,
                            collate_fn=collate_listed)

    # ---------------------------------------------------------------- model
    def _model(self, name: str | None = None, pretrained: bool = False, start: bool = True) -> nn.Module:
        """``model`` built from the config (``name`` replaces ``model.name``), with ``model.checkpoint_path`` loaded
        when ``start``."""
        from zoo.hub import load_checkpoint

        kwargs = dict(self.cfg.model)
        name = name or kwargs.pop("name")
        kwargs.pop("name", None)
        checkpoint = kwargs.pop("checkpoint_path", None)
        model = create_model(name, pretrained=pretrained, **kwargs)
        if start and checkpoint:
            load_checkpoint(model, checkpoint, what="model.checkpoint_path")
        return model

    def build_model(self) -> nn.Module:
        model = self._model()
        return model if self.adapter.needs_calibration else self.adapter.apply(model)  # else applied by calibrate

    def calibrate(self, model: nn.Module, accelerator: Any) -> nn.Module:
        """A data-driven adapter (CoLoRA: probe + FAIG) measures on training batches in their own seeded order,
        with the task loss (FAIG: the summed squared error), back-propagated through the run's ``accelerator``
        (autocast, loss scaling; the probe's optimiser steps through its gradient scaler), then is applied."""
        if not self.adapter.needs_calibration:
            return model
        return calibrate_on_pairs(self.adapter, model, self._train_loader(self.cfg.seed + 1), self.cfg.loss.type,
                                  accelerator)

    def build_eval_model(self, model_name: str | None = None, pretrained: bool = False,
                         checkpoint_path: str | None = None) -> nn.Module:
        """The model with the adapter's structure, then ``checkpoint_path`` (strict). CoLoRA's ranks come from the
        run's ``colora_allocation.json`` beside the checkpoint (or ``adapter.ranks``)."""
        from zoo.hub import load_checkpoint, resolve_checkpoint

        if self.adapter.needs_calibration:  # CoLoRA: the ranks its run allocated
            self.adapter.load_allocation(resolve_checkpoint(checkpoint_path).parent if checkpoint_path else None)
        model = self.adapter.apply(self._model(model_name, pretrained, start=False))
        if checkpoint_path:
            load_checkpoint(model, checkpoint_path, what="checkpoint")
        return model

    def configure_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        """The adapter's own optimiser (SaRA's) if it has one, else the ``optim`` section's over what trains."""
        own = self.adapter.configure_optimizer(model, cfg, lambda: self.plan.total_steps)
        return own if own is not None else super().configure_optimizer(model, cfg)

    # ---------------------------------------------------------------- steps
    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        out = model(batch["lq"])
        loss = restoration_loss(self.cfg.loss.type, out.float(), batch["gt"].float())
        extra = self.adapter.extra_losses(model)
        return loss_with_auxiliary(loss, extra, name="task_loss") if extra else {"loss": loss}

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Per image: PSNR / SSIM of the output and of the degraded input, ``(B,)`` each
        (:func:`zoo.restoration.evaluate.restore_and_score`)."""
        return restore_and_score(model, batch, self.cfg.eval, self._saved)

    def build_metrics(self, kind: str = "eval") -> list[ImageQualityMetric]:
        return [ImageQualityMetric(("psnr", "ssim", "input_psnr", "input_ssim"), count="images")]

    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        """PSNR / SSIM (gathered), then ``trainable_params`` and ``tuned_percent`` (of the base parameters)."""
        self._saved = []
        metrics = super().evaluate(model, loader, accelerator, output_dir)
        trainable = self.adapter.num_trainable(model)
        base = sum(p.numel() for name, p in model.named_parameters() if ".deltas." not in name)
        metrics.update(trainable_params=trainable, tuned_percent=100.0 * trainable / max(base, 1))
        return metrics

    def after_evaluate(self, metrics: Any, values: dict[str, Any], output_dir: Any) -> None:
        """``per_example.npz`` (PSNR / SSIM per evaluation image, named: a study's paired bootstrap), the adapter's
        allocation (``colora_allocation.json``) and the first ``eval.save_images`` triplets."""
        from zoo.studies.per_example import save_per_example

        out_dir = Path(output_dir)
        seen = metrics.metrics[0].per_example()
        names = [str(n) for n in getattr(self.eval_dataset, "names", [])]
        save_per_example(out_dir, {k: seen[k] for k in ("psnr", "ssim")},
                         example_id=names if len(names) == len(seen["psnr"]) else None)
        if getattr(self.adapter, "allocation", None) is not None:
            self.adapter.save_allocation(out_dir)
        if self._saved:
            from zoo.restoration.figures import save_triptych

            save_triplets(self._saved, out_dir / "images")  # pixel-exact PNGs, and one labelled figure beside them
            save_triptych(self._saved[:4], out_dir / "images" / "triptychs.png", method=str(self.adapter.name))


@register_recipe("restore_eval")
class RestoreEvalRecipe(RestoreRecipe):
    """Evaluate ``model.checkpoint_path`` (or the bare model) on ``data.eval`` without training: ``metrics.json``."""

    run_shape = "study"
    unread_keys = {**_RENAMED, "adapter": "restore_eval evaluates model.checkpoint_path as it is: nothing trains"}

    def run(self, ctx: Any) -> dict[str, Any]:
        from zoo.engine.evaluate import evaluate_model

        model = self._model().requires_grad_(False)
        return evaluate_model(self, model, output_dir=ctx.output_dir, cpu=True if self.cfg.trainer.cpu else None)

