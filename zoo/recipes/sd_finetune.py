"""Stable Diffusion (1.x/2.x and SDXL) fine-tuning on a folder of captioned images (style / subject) with any
adaptation method of :mod:`zoo.adapters` (``adapter:`` section; SaRA by default): diffusers'
``train_text_to_image(_lora).py`` on the zoo's Trainer, the objective and its settings in :mod:`zoo.diffusion.finetune`.

Only the UNet is adapted; the VAE and the text encoders stay frozen in the mixed-precision dtype. A method that
measures something on data first (``needs_calibration``, e.g. CoLoRA) gets ``data.calibration_batches`` training
batches and the denoising loss before it is applied. Checkpoints hold only what the method trains. Evaluation:
``val_loss`` on the first ``data.eval_images`` images (centre crops) at fixed timesteps and noise; the final one also
writes the method's file (:func:`zoo.diffusion.adapters.save_for_pipeline`) and ``samples.png`` (each
``sample.prompts`` without and with the adapter). Importing this module does not import diffusers.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.adapters.base import build_adapter
from zoo.diffusion.finetune import (SDEvalConfig, SDModelConfig, SDSampleConfig, denoising_loss,
                                    load_training_components, sample_comparison, validation_loss)
from zoo.data.loader import build_loader
from zoo.errors import ConfigError
from zoo.models._contract import loss_with_auxiliary
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe

__all__ = ["SDModelConfig", "SDDataConfig", "SDSampleConfig", "SDEvalConfig", "SDFinetuneConfig", "SDFinetuneRecipe"]

_logger = logging.getLogger("zoo")


@dataclass
class SDDataConfig:
    """Config section ``data``: a folder of images with captions (see ``zoo.data.images.folder``)."""

    root: str | None = None
    resolution: int = 512
    center_crop: bool = False
    random_flip: bool = True
    prefix: str = ""  # prepended to every caption, e.g. "Barbie style, " (SaRA)
    default_caption: str = "an image"  # for images without a caption
    caption_column: str = "text"  # metadata.jsonl keys
    image_column: str = "file_name"
    repeats: int = 1  # repeat the (small) image list per epoch
    batch_size: int = 4  # global
    eval_batch_size: int | None = None
    eval_images: int = 8  # validation loss on the first N images (centre crops, no flip)
    calibration_batches: int = 2  # training batches a data-driven method (needs_calibration) measures on
    num_workers: int = 0


@dataclass
class SDFinetuneConfig(RecipeConfig):
    recipe: str = "sd_finetune"
    model: SDModelConfig = field(default_factory=SDModelConfig)
    adapter: dict[str, Any] = field(default_factory=lambda: {"name": "sara"})  # a registered method + its config
    data: SDDataConfig = field(default_factory=SDDataConfig)
    sample: SDSampleConfig = field(default_factory=SDSampleConfig)
    eval: SDEvalConfig = field(default_factory=SDEvalConfig)


@register_recipe("sd_finetune")
class SDFinetuneRecipe(Recipe):
    """Fine-tune a Stable Diffusion UNet on captioned images (see the module doc)."""

    Config = SDFinetuneConfig
    main_metric = "val_loss"
    main_metric_mode = "min"
    unread_keys = {
        "model.adapter": "moved: the method is adapter.name, e.g. adapter.name=lora",
        "model.sara": "moved: SaRA's settings are the adapter section, e.g. adapter.threshold",
        "model.lora": "moved: LoRA's settings are the adapter section, e.g. adapter.rank",
    }

    def __init__(self, cfg: SDFinetuneConfig):
        super().__init__(cfg)
        from zoo.data.images.folder import find_captioned_images
        from zoo.diffusion.pipeline import require_diffusers, resolve_pipeline_path

        m, d = cfg.model, cfg.data
        self.adapter = build_adapter(cfg.adapter)
        if m.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ConfigError(f"model.prediction_type must be epsilon or v_prediction, got '{m.prediction_type}'")
        if cfg.trainer.ema_decay and not self.adapter.supports_ema:
            raise ConfigError(f"trainer.ema_decay is not supported with adapter.name={self.adapter.name} in "
                              f"{cfg.recipe} (an EMA copy of an adapter run would duplicate the whole UNet; use "
                              "adapter.name=full)")
        require_diffusers()
        resolve_pipeline_path(m.pretrained, "model.pretrained")  # fail before any heavy work
        try:
            find_captioned_images(d.root, caption_column=d.caption_column, image_column=d.image_column)
        except ValueError as exc:
            raise ConfigError(f"data.root: {exc}") from None

    # ---------------------------------------------------------------- components
    @cached_property
    def components(self) -> Any:
        """The pipeline's parts, VAE and text encoders frozen
        (:func:`zoo.diffusion.finetune.load_training_components`)."""
        return load_training_components(self.cfg.model)

    @property
    def weight_dtype(self) -> torch.dtype:
        from zoo.diffusion.pipeline import dtype_from_precision

        return dtype_from_precision(self.cfg.trainer.mixed_precision)

    # ---------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        unet = self.components.unet
        if self.cfg.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if not self.adapter.needs_calibration:  # else applied by calibrate(), after measuring on data
            self.adapter.apply(unet)
        unet.train()
        return unet

    def calibrate(self, unet: nn.Module, accelerator: Any) -> nn.Module:
        """A data-driven method (``needs_calibration``) measures on ``data.calibration_batches`` training batches
        with the denoising loss (backward through the run's accelerator), then is applied."""
        if not self.adapter.needs_calibration:
            return unet
        loader = build_loader(self._dataset(True), self.cfg.data.batch_size, shuffle=True, seed=self.cfg.seed,
                              collate_fn=self.components.collate())
        batches = [{k: v.to(accelerator.device) for k, v in batch.items()}
                   for batch in itertools.islice(loader, self.cfg.data.calibration_batches)]
        return self.adapter.calibrate_and_apply(unet, batches, lambda m, batch: self._denoising_loss(m, batch)[0],
                                               accelerator)

    def _total_steps(self) -> int:
        """Optimiser steps of the whole run (SaRA's progressive schedule as a fraction of it): the Trainer's plan,
        which knows the loop (``trainer.max_steps`` or epochs); computed from the loader outside a Trainer."""
        from zoo.engine.trainer import choose_loop, plan_training

        t, loader = self.cfg.trainer, getattr(self, "_train_loader", None)
        return (self.plan or plan_training(t, None if loader is None else len(loader), choose_loop(t))[0]).total_steps

    def configure_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        """The method's own optimiser (SaRA's sparse AdamW) or the ``optim`` section's over the trainable tensors."""
        opt = self.adapter.configure_optimizer(model, cfg, self._total_steps)
        return opt if opt is not None else super().configure_optimizer(model, cfg)

    def save_adapter(self, model: nn.Module, output_dir: str | Path) -> Path:
        """Write the trained part into ``output_dir`` (:func:`zoo.diffusion.adapters.save_for_pipeline`)."""
        from zoo.diffusion.adapters import save_for_pipeline

        return save_for_pipeline(self.adapter, model, output_dir)

    # ---------------------------------------------------------------- data
    def _dataset(self, train: bool) -> Any:
        from zoo.data.images.folder import CaptionedImageFolder
        from zoo.diffusion.denoising import WithIndex

        d = self.cfg.data
        ds = CaptionedImageFolder(
            d.root, resolution=d.resolution, center_crop=d.center_crop if train else True,
            random_flip=d.random_flip if train else False, prefix=d.prefix, default_caption=d.default_caption,
            caption_column=d.caption_column, image_column=d.image_column, repeats=d.repeats if train else 1,
            limit=None if train else d.eval_images,
        )
        return ds if train else WithIndex(ds)

    def build_dataloaders(self):
        d = self.cfg.data
        train_set = self._dataset(True)
        self._train_loader = build_loader(train_set, d.batch_size, shuffle=True, seed=self.cfg.seed,
                                          num_workers=d.num_workers, drop_last=len(train_set) >= d.batch_size,
                                          collate_fn=self.components.collate())
        return self._train_loader, self.build_eval_loader()

    def build_eval_loader(self):
        d = self.cfg.data
        ds = self._dataset(False)
        self._eval_size = len(ds)
        return build_loader(ds, self._eval_batch_size, shuffle=False, num_workers=d.num_workers,
                            collate_fn=self.components.collate())

    @property
    def _eval_batch_size(self) -> int:
        return self.cfg.data.eval_batch_size or self.cfg.data.batch_size

    # ---------------------------------------------------------------- steps
    def _encode(self, batch: dict[str, torch.Tensor], sample: bool) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
        """``(latents, text embedding, added_cond_kwargs)`` (:meth:`zoo.diffusion.pipeline.SDComponents.encode`)."""
        self.components.place_frozen(batch["pixel_values"].device, self.weight_dtype)
        return self.components.encode(batch, sample, self.weight_dtype, self.cfg.data.resolution)

    def _denoising_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        """(the denoising MSE of one batch, its noising): :func:`zoo.diffusion.finetune.denoising_loss`."""
        return denoising_loss(model, self.components.noise_scheduler, *self._encode(batch, sample=True), self.cfg.model)

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        mse, _ = self._denoising_loss(model, batch)  # + the method's terms, e.g. SaRA's nuclear norm ("rank")
        return loss_with_auxiliary(mse, self.adapter.extra_losses(model), name="mse")

    # ---------------------------------------------------------------- evaluation
    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """``{"val_loss": (B,)}``: the denoising loss per image at the fixed timesteps, with the noise of each
        image's index (:func:`zoo.diffusion.finetune.validation_loss`)."""
        return {"val_loss": validation_loss(model, self.components.noise_scheduler, *self._encode(batch, sample=False),
                                            batch["index"], self.cfg.eval, self._eval_batch_size, self._eval_size)}

    def build_metrics(self, kind: str = "eval") -> Any:
        from zoo.metrics.base import MeanMetric

        return [MeanMetric("val_loss")]

    def save_outputs(self, model: nn.Module, output_dir: Any) -> dict[str, Any]:
        """The final evaluation's files: the method's file and ``samples.png``, from the evaluated UNet ``model``."""
        path = self.save_adapter(model, output_dir)
        _logger.info("saved the trained %s to %s", self.adapter.name, path)
        if self.cfg.sample.enabled and self.cfg.sample.prompts:
            device = next(model.parameters()).device
            self.render_samples(model, device).save(Path(output_dir) / "samples.png")
        return {}

    def render_samples(self, unet: nn.Module, device: torch.device) -> Any:
        """``samples.png``'s grid: each prompt without (base) and with the trained adapter, same noise
        (:func:`zoo.diffusion.finetune.sample_comparison`)."""
        m, d = self.cfg.model, self.cfg.data
        load_base = lambda: load_training_components(m, frozen=False).unet.to(device)  # noqa: E731
        return sample_comparison(self.components, unet, self.adapter, self.cfg.sample, prefix=d.prefix,
                                 resolution=d.resolution, dtype=self.weight_dtype, device=device, load_base=load_base)
