"""Image restoration: pre-training (e.g. PROD) and adaptation by any adapter method, PSNR / SSIM evaluation.

Recipes:

* ``restore`` -- train a restoration model on ``(lq, gt)`` pairs with an L1, MSE or PSNR loss
  (:mod:`zoo.restoration.losses`), evaluate PSNR / SSIM per image with BasicSR's conventions
  (:mod:`zoo.metrics.image`; outputs clamped to [0, 1] and rounded to 8 bits, as saved PNGs are) on whole images,
  optionally tiled (``eval.tile`` / ``eval.tile_overlap``, :mod:`zoo.restoration.tiling`); the scores are gathered
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

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.adapters.base import adapter_config_from_dict, build_adapter
from zoo.data import build_dataset
from zoo.engine.data import build_loader
from zoo.errors import ConfigError
from zoo.metrics.image import ImageQualityMetric, image_quality
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.registry import create_model
from zoo.restoration.losses import LOSSES, restoration_loss
from zoo.restoration.tiling import tiled_forward

__all__ = ["DatasetSpec", "RestoreDataConfig", "RestoreLossConfig", "RestoreEvalConfig", "RestoreConfig",
           "RestoreRecipe", "RestoreEvalRecipe", "ALLOCATION_FILE"]

#: what an adapter's ``allocation`` (CoLoRA's ranks) is written to, in the run directory
ALLOCATION_FILE = "colora_allocation.json"


# ================================================================================================ config
@dataclass
class DatasetSpec:
    """A dataset by registry name: ``name``, ``root``, ``split`` and its keyword arguments."""

    name: str = "degraded_patches"
    root: Any = None  # a folder, a list of folders, or "a,b" (degraded_* datasets)
    split: str = "all"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RestoreDataConfig:
    """Config section ``data``: the training and evaluation datasets and loader settings."""

    train: DatasetSpec = field(default_factory=DatasetSpec)
    eval: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="degraded_images"))
    batch_size: int = 8
    num_workers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers!r}")


@dataclass
class RestoreLossConfig:
    """Config section ``loss``: ``type`` l1 | mse | psnr."""

    type: str = "l1"

    def __post_init__(self) -> None:
        if self.type not in LOSSES:
            raise ConfigError(f"loss.type must be one of {', '.join(LOSSES)}, got {self.type!r}")


@dataclass
class RestoreEvalConfig:
    """Config section ``eval``: tiled inference and metric conventions."""

    tile: int = 0  # 0: whole images
    tile_overlap: int = 32
    crop_border: int = 0
    test_y_channel: bool = False
    save_images: int = 0  # write the first N (input | output | gt) triplets of the main process as PNG

    def __post_init__(self) -> None:
        if self.tile and self.tile_overlap >= self.tile:
            raise ConfigError(f"eval.tile_overlap ({self.tile_overlap}) must be smaller than eval.tile ({self.tile})")
        if self.tile < 0 or self.tile_overlap < 0 or self.crop_border < 0:
            raise ConfigError("eval.tile, eval.tile_overlap and eval.crop_border must be >= 0")


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

    def __init__(self, cfg: RestoreConfig):
        super().__init__(cfg)
        self.adapter = build_adapter(cfg.adapter)
        self._saved: list[tuple] = []  # (name, lq, output, gt) of this evaluation's first images (eval.save_images)

    # ---------------------------------------------------------------- data
    def _dataset(self, spec: DatasetSpec, key: str):
        try:
            return build_dataset(spec.name, root=spec.root, split=spec.split, **spec.kwargs)
        except FileNotFoundError as exc:  # the image datasets name "data.root"; this recipe's keys are data.train/eval
            raise FileNotFoundError(str(exc).replace("config key data.root", f"config key {key}.root")) from None

    @cached_property
    def train_dataset(self):
        return self._dataset(self.cfg.data.train, "data.train")

    @cached_property
    def eval_dataset(self):
        return self._dataset(self.cfg.data.eval, "data.eval")

    def _train_loader(self, seed: int):
        d = self.cfg.data
        return build_loader(self.train_dataset, d.batch_size, shuffle=True, seed=seed, num_workers=d.num_workers,
                            drop_last=len(self.train_dataset) > d.batch_size, collate_fn=_stack)

    def build_dataloaders(self):
        return self._train_loader(self.cfg.seed), self.build_eval_loader()

    def build_eval_loader(self):
        """Whole images of any size, one per process per batch (listed, not stacked: sizes differ)."""
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return build_loader(self.eval_dataset, world, shuffle=False, num_workers=self.cfg.data.num_workers,
                            collate_fn=_listed)

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
        from zoo.engine.step import StepContext
        from zoo.recipes.base import calibrate_adapter

        def forward(m: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            return m(batch["lq"].to(accelerator.device)).float(), batch["gt"].to(accelerator.device).float()

        ctx = StepContext(accelerator, model, None, step=0, epoch=0, batch_index=0)
        return calibrate_adapter(self.adapter, model, self._train_loader(self.cfg.seed + 1),
                                 lambda m, b: restoration_loss(self.cfg.loss.type, *forward(m, b)), accelerator,
                                 optimizer_step=ctx.optimizer_step,
                                 attribution_loss_fn=lambda m, b: F.mse_loss(*forward(m, b), reduction="sum"))

    def build_eval_model(self, model_name: str | None = None, pretrained: bool = False,
                         checkpoint_path: str | None = None) -> nn.Module:
        """The model with the adapter's structure, then ``checkpoint_path`` (strict). CoLoRA's ranks come from the
        run's ``colora_allocation.json`` beside the checkpoint (or ``adapter.ranks``)."""
        from zoo.hub import load_checkpoint, resolve_checkpoint

        if checkpoint_path and self.adapter.needs_calibration:
            alloc = resolve_checkpoint(checkpoint_path).parent / ALLOCATION_FILE
            if alloc.is_file():
                self.adapter.config.ranks = {k: int(v) for k, v in json.loads(alloc.read_text())["ranks"].items()}
        if self.adapter.needs_calibration:
            raise ConfigError(f"adapter.name={self.adapter.name}: the per-layer ranks of the checkpoint are not known "
                              f"(no {ALLOCATION_FILE} beside {checkpoint_path}); give adapter.ranks from the run's "
                              "allocation")
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
        losses = {"loss": restoration_loss(self.cfg.loss.type, out.float(), batch["gt"].float())}
        extra = self.adapter.extra_losses(model)
        if extra:
            losses = {"loss": losses["loss"] + sum(extra.values()), "task_loss": losses["loss"], **extra}
        return losses

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Per image: the output (tiled when ``eval.tile``, clamped to [0, 1]), its PSNR / SSIM and the degraded
        input's (``input_psnr`` / ``input_ssim``), ``(B,)`` each."""
        ev = self.cfg.eval
        kw = dict(crop_border=ev.crop_border, test_y_channel=ev.test_y_channel, quantize=True)
        device = next(model.parameters()).device
        rows = []
        for name, lq, gt in zip(batch["name"], batch["lq"], batch["gt"]):
            lq, gt = lq[None].to(device), gt[None].to(device)
            out = tiled_forward(model, lq, ev.tile, ev.tile_overlap).clamp(0, 1)
            if len(self._saved) < ev.save_images:
                self._saved.append((name, lq[0].cpu(), out[0].cpu(), gt[0].cpu()))
            rows.append({**image_quality(out, gt, **kw), **image_quality(lq, gt, prefix="input_", **kw)})
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}

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
        allocation = getattr(self.adapter, "allocation", None)
        if allocation is not None:
            (out_dir / ALLOCATION_FILE).write_text(json.dumps(allocation, indent=2))
        if self._saved:
            from zoo.restoration.figures import save_triptych

            _save_triplets(self._saved, out_dir / "images")  # pixel-exact PNGs, and one labelled figure beside them
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


def _stack(items: list[dict]) -> dict[str, Any]:
    """Training batch: ``lq``, ``gt`` ``(B, C, H, W)`` (patches of one size) and their names."""
    return {"lq": torch.stack([i["lq"] for i in items]), "gt": torch.stack([i["gt"] for i in items]),
            "name": [i["name"] for i in items]}


def _listed(items: list[dict]) -> dict[str, Any]:
    """Evaluation batch: ``lq``, ``gt`` lists of ``(C, H, W)`` images (sizes may differ) and their names."""
    return {"lq": [i["lq"] for i in items], "gt": [i["gt"] for i in items], "name": [i["name"] for i in items]}


def _save_triplets(saved: list, folder: Path) -> None:
    """``<name>.png``: input | output | ground truth side by side (8-bit)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, *imgs in saved:
        row = torch.cat(imgs, dim=2).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(row).save(folder / f"{str(name).replace('/', '_').replace(':', '_')}.png")
