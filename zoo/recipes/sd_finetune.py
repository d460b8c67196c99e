"""Stable Diffusion (1.x/2.x and SDXL) fine-tuning on a folder of captioned images (style / subject) with any
adaptation method of :mod:`zoo.adapters` (``adapter:`` section; SaRA by default).

The recipe of diffusers' ``train_text_to_image(_lora).py`` on the zoo's Trainer: the VAE encodes the images to
latents, noise is added at random DDPM timesteps, the UNet predicts the noise (or the velocity) from the noisy
latents and the CLIP text embedding of the caption, and the loss is the MSE, optionally Min-SNR weighted
(:mod:`zoo.diffusion.denoising`). Only the UNet is adapted, by the method the ``adapter`` section names
(``sara``, ``lora``, ``peft_lora``, ``full``, ``plp``, ... — :func:`zoo.adapters.base.adapter_names`); a method
that measures something on data first (``needs_calibration``, e.g. CoLoRA) gets ``data.calibration_batches``
training batches and this recipe's denoising loss before it is applied. The VAE and the text encoder stay frozen
in the mixed-precision dtype. Checkpoints hold only what the method trains.

Evaluation: ``val_loss``, the denoising loss on the first ``data.eval_images`` images (centre crops) at
``eval.num_timesteps`` fixed timesteps with fixed per-example noise. The final evaluation also writes the method's
file (:func:`zoo.diffusion.adapters.save_for_pipeline`: ``sara_weights.safetensors``,
``pytorch_lora_weights.safetensors``, ``unet/``, or the folder its ``save`` writes) and ``samples.png`` (each
``sample.prompts`` rendered without and with the adapter). Importing this module does not import diffusers.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.adapters.base import build_adapter
from zoo.engine.data import build_loader
from zoo.errors import ConfigError
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe

__all__ = ["SDModelConfig", "SDDataConfig", "SDSampleConfig", "SDEvalConfig", "SDFinetuneConfig", "SDFinetuneRecipe"]

_logger = logging.getLogger("zoo")


@dataclass
class SDModelConfig:
    """Config section ``model``: the pipeline and the training objective (the method is the ``adapter`` section)."""

    pretrained: str | None = None  # diffusers folder (model_index.json) or a single .safetensors/.ckpt file
    single_file_config: str | None = None  # for single files offline: a local diffusers folder with the configs
    original_config: str | None = None  # ... or the original inference yaml
    gradient_checkpointing: bool = False
    prediction_type: str | None = None  # epsilon | v_prediction (default: the scheduler's)
    noise_offset: float = 0.0
    snr_gamma: float | None = None  # Min-SNR loss weighting (e.g. 5.0); None: plain MSE


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
class SDSampleConfig:
    """Config section ``sample``: the grid of the final evaluation."""

    enabled: bool = True
    prompts: list[str] = field(default_factory=lambda: ["a dog", "a house by a lake", "a portrait of a woman"])
    use_prefix: bool = True  # prepend data.prefix to each prompt
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    height: int | None = None  # default: data.resolution
    width: int | None = None
    compare_base: bool = True  # full fine-tuning: reload the original UNet for the "base" column


@dataclass
class SDEvalConfig:
    """Config section ``eval``."""

    num_timesteps: int = 4  # evenly spaced timesteps per image for the validation loss
    seed: int = 1234  # of the validation noise


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
        self.method = build_adapter(cfg.adapter)
        if m.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ConfigError(f"model.prediction_type must be epsilon or v_prediction, got '{m.prediction_type}'")
        if cfg.trainer.ema_decay and not self.method.supports_ema:
            raise ConfigError(f"trainer.ema_decay is not supported with adapter.name={self.method.name} in "
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
        from zoo.diffusion.pipeline import load_components

        m = self.cfg.model
        # float32 master weights whatever the stored dtype; the frozen parts are cast by place_frozen
        c = load_components(m.pretrained, single_file_config=m.single_file_config, original_config=m.original_config,
                            torch_dtype=torch.float32)
        if m.prediction_type is not None:
            c.noise_scheduler.register_to_config(prediction_type=m.prediction_type)
        c.vae.requires_grad_(False).eval()
        for text_encoder in c.text_encoders:
            text_encoder.requires_grad_(False).eval()
        return c

    @property
    def weight_dtype(self) -> torch.dtype:
        from zoo.diffusion.pipeline import dtype_from_precision

        return dtype_from_precision(self.cfg.trainer.mixed_precision)

    # ---------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        unet = self.components.unet
        if self.cfg.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if not self.method.needs_calibration:  # else applied by calibrate(), after measuring on data
            self.method.apply(unet)
        unet.train()
        return unet

    def calibrate(self, unet: nn.Module, accelerator: Any) -> nn.Module:
        """A data-driven method (``needs_calibration``) measures on ``data.calibration_batches`` training batches
        with the denoising loss (backward through the run's accelerator), then is applied."""
        if not self.method.needs_calibration:
            return unet
        from zoo.recipes.base import calibrate_adapter

        loader = build_loader(self._dataset(True), self.cfg.data.batch_size, shuffle=True, seed=self.cfg.seed,
                              collate_fn=self.components.collate())
        batches = []
        for batch in loader:
            if len(batches) == self.cfg.data.calibration_batches:
                break
            batches.append({k: v.to(accelerator.device) for k, v in batch.items()})
        return calibrate_adapter(self.method, unet, batches,
                                 lambda model, batch: self._denoising_loss(model, batch)[0], accelerator)

    def _total_steps(self) -> int:
        """Optimiser steps of the whole run (SaRA's progressive schedule as a fraction of it): the Trainer's plan,
        which knows the loop (``trainer.max_steps`` or epochs); computed from the loader outside a Trainer."""
        if self.plan is not None:
            return self.plan.total_steps
        t = self.cfg.trainer
        if t.max_steps:
            return t.max_steps
        n = len(self._train_loader)
        if t.max_steps_per_epoch:
            n = min(n, t.max_steps_per_epoch * t.grad_accum_steps)
        return math.ceil(n / t.grad_accum_steps) * t.epochs

    def configure_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        """The method's own optimiser (SaRA's sparse AdamW) or the ``optim`` section's over the trainable tensors."""
        opt = self.method.configure_optimizer(model, cfg, self._total_steps)
        return opt if opt is not None else super().configure_optimizer(model, cfg)

    def checkpoint_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Only what the method trains (the adapter's tensors; the whole UNet for ``full``)."""
        return self.method.state_dict(model)

    def load_checkpoint_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        self.method.load_state_dict(model, state)

    def save_adapter(self, model: nn.Module, output_dir: str | Path) -> Path:
        """Write the trained part into ``output_dir`` (:func:`zoo.diffusion.adapters.save_for_pipeline`)."""
        from zoo.diffusion.adapters import save_for_pipeline

        return save_for_pipeline(self.method, model, output_dir)

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
        """(the denoising MSE of one batch at random noise and timesteps, the noising ``(noisy, t, text, cond)``)."""
        from zoo.diffusion.denoising import add_training_noise, denoising_mse, min_snr_weights, prediction_target

        m, sched = self.cfg.model, self.components.noise_scheduler
        latents, text, cond = self._encode(batch, sample=True)
        noisy, noise, t = add_training_noise(sched, latents, m.noise_offset)
        pred = model(noisy, t, text, added_cond_kwargs=cond, return_dict=False)[0]
        target = prediction_target(sched, latents, noise, t)
        return denoising_mse(pred, target, min_snr_weights(sched, t, m.snr_gamma)), (noisy, t, text, cond)

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        mse, _ = self._denoising_loss(model, batch)
        losses = {"loss": mse, "mse": mse.detach()}
        for name, term in self.method.extra_losses(model).items():  # e.g. SaRA's nuclear-norm loss ("rank")
            losses["loss"] = losses["loss"] + term
            losses[name] = term.detach()
        return losses

    # ---------------------------------------------------------------- evaluation
    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """``{"val_loss": (B,)}``: the denoising loss per image at the fixed timesteps, with the noise of each
        image's index (the batches of a one-process evaluation, seeded ``eval.seed + 1000 · batch``)."""
        from zoo.diffusion.denoising import eval_timesteps, example_noise, fixed_noise_loss

        sched = self.components.noise_scheduler
        timesteps = eval_timesteps(sched, self.cfg.eval.num_timesteps)
        latents, text, cond = self._encode(batch, sample=False)
        noise = example_noise(batch["index"], latents.shape[1:], len(timesteps), self._eval_batch_size,
                              self._eval_size, lambda b: self.cfg.eval.seed + 1000 * b)
        denoise = lambda noisy, t: model(noisy, t, text, added_cond_kwargs=cond, return_dict=False)[0]  # noqa: E731
        return {"val_loss": fixed_noise_loss(denoise, sched, latents, noise, timesteps)}

    def build_metrics(self, kind: str = "eval") -> Any:
        from zoo.metrics.base import MeanMetric

        return [MeanMetric("val_loss")]

    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        """The gathered ``val_loss``; with ``output_dir`` (the final evaluation) also the method's file and
        ``samples.png``, written from the evaluated UNet on the main process."""
        values = super().evaluate(model, loader, accelerator)
        if output_dir is not None:
            if accelerator.is_main_process:
                unet = accelerator.unwrap_model(model)
                path = self.save_adapter(unet, output_dir)
                _logger.info("saved the trained %s to %s", self.method.name, path)
                if self.cfg.sample.enabled and self.cfg.sample.prompts:
                    self.render_samples(unet, accelerator.device).save(Path(output_dir) / "samples.png")
            accelerator.wait_for_everyone()
        return values

    def render_samples(self, unet: nn.Module, device: torch.device) -> Any:
        """``samples.png``'s grid: each prompt without (base) and with the trained adapter, same noise."""
        from zoo.diffusion.adapters import sample_switch
        from zoo.diffusion.sampling import comparison_grid

        c, s, d, m = self.components, self.cfg.sample, self.cfg.data, self.cfg.model
        c.place_frozen(device, self.weight_dtype)
        pipe = c.pipeline(unet)  # StableDiffusionPipeline or StableDiffusionXLPipeline
        pipe.set_progress_bar_config(disable=True)

        def load_base() -> nn.Module:
            from zoo.diffusion.pipeline import load_components

            return load_components(m.pretrained, single_file_config=m.single_file_config,
                                   original_config=m.original_config, torch_dtype=torch.float32).unet.to(device)

        set_enabled = sample_switch(self.method, pipe, unet, load_base if s.compare_base else None)
        prompts = [(d.prefix if s.use_prefix else "") + p for p in s.prompts]
        was_training = unet.training
        unet.eval()
        try:
            return comparison_grid(pipe, prompts, set_enabled, num_inference_steps=s.num_inference_steps,
                                   guidance_scale=s.guidance_scale, seed=s.seed, height=s.height or d.resolution,
                                   width=s.width or d.resolution, autocast_dtype=self.weight_dtype)
        finally:
            if set_enabled is not None:
                set_enabled(True)
            unet.train(was_training)
