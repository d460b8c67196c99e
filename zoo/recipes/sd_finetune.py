"""Stable Diffusion (1.x/2.x and SDXL) fine-tuning on a folder of captioned images (style / subject), with SaRA,
LoRA or full training.

The recipe of diffusers' ``train_text_to_image(_lora).py`` on the zoo's Trainer: the VAE encodes the images to
latents, noise is added at random DDPM timesteps, the UNet predicts the noise (or the velocity, per the
scheduler's ``prediction_type``) from the noisy latents and the CLIP text embedding of the caption, and the loss
is the MSE (optionally Min-SNR weighted). Only the UNet is trained, by one of the registered adapter methods of
:mod:`zoo.diffusion.methods` (``model.adapter``; each knows how to apply, optimise, checkpoint, save, load and
switch itself):

* ``sara`` — :mod:`zoo.adapters.sara`: the entries with ``|w| < threshold`` of every UNet parameter, the sparse
  weight-gradient kernel, SaRA's nuclear-norm loss (added to the loss, logged as ``train_rank``) and progressive
  re-selection; saves ``sara_weights.safetensors``;
* ``lora`` — LoRA on the zoo's adapter core; saves diffusers' ``pytorch_lora_weights.safetensors``
  (``pipe.load_lora_weights`` reads it);
* ``peft_lora`` — the same LoRA through peft (``unet.add_adapter``), the benchmark baseline; same file;
* ``full`` — every UNet weight; saves the UNet as a diffusers folder ``unet/``.

The VAE and the text encoder stay frozen inside the recipe and move to the model's device lazily, in the
mixed-precision dtype. Checkpoints (``last.pt``/``best.pt``) hold only the trained state. The evaluation is a
validation denoising loss (``val_loss``) on the first ``data.eval_images`` images (centre crops), at
``eval.num_timesteps`` fixed timesteps with fixed noise; the final one also writes the adapter file and
``samples.png`` (each ``sample.prompts`` rendered without and with the adapter) into the run directory.

Importing this module does not import diffusers; building the recipe does (``pip install -e .[diffusion]``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.config import ConfigError
from zoo.diffusion.methods import adapter_method_names, get_adapter_method
from zoo.engine.data import build_loader
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe

__all__ = ["SaRAConfig", "LoRAConfig", "SDModelConfig", "SDDataConfig", "SDSampleConfig", "SDEvalConfig",
           "SDFinetuneConfig", "SDFinetuneRecipe"]

_logger = logging.getLogger("zoo")

ADAPTERS = tuple(adapter_method_names())  # the registered methods (zoo.diffusion.methods) at import time


@dataclass
class SaRAConfig:
    """Config section ``model.sara`` (defaults: the official repository's ``finetune.sh``)."""

    threshold: float = 2e-3  # train the entries with |w| < threshold (2e-3 ≈ 50M of SD 1.5's UNet)
    lambda_rank: float = 5e-4  # nuclear-norm loss weight (0: off)
    progressive_iter: float | None = 0.5  # re-select after this many optimiser steps; < 1: fraction of all steps
    lr_rule: bool = False  # lr = 1e-3 · exp(-350 · threshold) instead of optim.lr
    kernel: bool = True  # sparse weight-gradient kernel for Linear / 1×1 conv weights (False: dense-then-gather)
    decay_to: str = "zero"  # weight decay pulls the full weight to 0 (official) or only the change ("pretrained")
    reselect_reset_state: bool = False  # reset Adam moments at re-selection (official) instead of keeping them


@dataclass
class LoRAConfig:
    """Config section ``model.lora`` (defaults: diffusers' ``train_text_to_image_lora.py``)."""

    rank: int = 4
    alpha: float | None = None  # default: rank
    init: str = "gaussian"  # gaussian (N(0, 1/r) / zero) | true or lora (kaiming / zero) | orthogonal | ...
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])


@dataclass
class SDModelConfig:
    """Config section ``model``."""

    pretrained: str | None = None  # diffusers folder (model_index.json) or a single .safetensors/.ckpt file
    single_file_config: str | None = None  # for single files offline: a local diffusers folder with the configs
    original_config: str | None = None  # ... or the original inference yaml
    adapter: str = "sara"  # a registered method of zoo.diffusion.methods: sara | lora | peft_lora | full
    sara: SaRAConfig = field(default_factory=SaRAConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
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
    data: SDDataConfig = field(default_factory=SDDataConfig)
    sample: SDSampleConfig = field(default_factory=SDSampleConfig)
    eval: SDEvalConfig = field(default_factory=SDEvalConfig)


class _TokenizeCollate:
    """Stack images and tokenize captions to ``(B, model_max_length)`` ids (picklable for loader workers):
    ``input_ids``, and ``input_ids_2`` with SDXL's second tokenizer."""

    def __init__(self, tokenizer: Any, tokenizer_2: Any = None):
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        captions = [b["caption"] for b in batch]
        out = {"pixel_values": torch.stack([b["pixel_values"] for b in batch])}
        for key, tok in (("input_ids", self.tokenizer), ("input_ids_2", self.tokenizer_2)):
            if tok is not None:
                out[key] = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                               return_tensors="pt").input_ids
        return out


@register_recipe("sd_finetune")
class SDFinetuneRecipe(Recipe):
    """Fine-tune a Stable Diffusion UNet on captioned images (see the module doc)."""

    Config = SDFinetuneConfig
    main_metric = "val_loss"
    main_metric_mode = "min"

    def __init__(self, cfg: SDFinetuneConfig):
        super().__init__(cfg)
        m, d = cfg.model, cfg.data
        names = adapter_method_names()
        if m.adapter not in names:
            raise ConfigError(f"model.adapter must be one of {', '.join(names)}, got '{m.adapter}'")
        self.method = get_adapter_method(m.adapter)(m)
        if m.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ConfigError(f"model.prediction_type must be epsilon or v_prediction, got '{m.prediction_type}'")
        if m.sara.decay_to not in ("zero", "pretrained"):
            raise ConfigError(f"model.sara.decay_to must be 'zero' or 'pretrained', got '{m.sara.decay_to}'")
        if cfg.trainer.ema_decay and not self.method.supports_ema:
            raise ConfigError(f"trainer.ema_decay is not supported with model.adapter={m.adapter} in sd_finetune "
                              "(an EMA copy of an adapter run would duplicate the whole UNet; use model.adapter=full)")
        from zoo.diffusion.pipeline import require_diffusers, resolve_pipeline_path

        require_diffusers()
        self.method.check(m)
        # fail before any heavy work: the model path and the image folder must be usable
        try:
            resolve_pipeline_path(m.pretrained, "model.pretrained")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        from zoo.data.images.folder import find_captioned_images

        try:
            find_captioned_images(d.root, caption_column=d.caption_column, image_column=d.image_column)
        except ValueError as exc:
            raise ConfigError(f"data.root: {exc}") from None
        self._frozen_device: torch.device | None = None

    # ---------------------------------------------------------------- components
    @cached_property
    def components(self) -> Any:
        from zoo.diffusion.pipeline import load_components

        m = self.cfg.model
        # float32 master weights whatever the stored dtype (a folder saved in fp16 would otherwise load as fp16 and
        # train in half precision); the frozen parts are cast to the mixed-precision dtype in _place_frozen
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

    def _place_frozen(self, device: torch.device) -> None:
        if self._frozen_device != device:
            c = self.components
            for module in (c.vae, *c.text_encoders):
                dtype = self.weight_dtype if module.dtype != self.weight_dtype else None  # .to(dtype) warns even if equal
                module.to(device=device, dtype=dtype)
            self._frozen_device = device

    # ---------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        m = self.cfg.model
        unet = self.components.unet
        if m.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.method.apply(unet, m)
        unet.train()
        return unet

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
        """Write the trained part into ``output_dir`` (``sara_weights.safetensors``,
        ``pytorch_lora_weights.safetensors`` or ``unet/``, per method); returns its path."""
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        return self.method.save(model, output_dir)

    # ---------------------------------------------------------------- data
    def _dataset(self, train: bool) -> Any:
        from zoo.data.images.folder import CaptionedImageFolder

        d = self.cfg.data
        return CaptionedImageFolder(
            d.root, resolution=d.resolution, center_crop=d.center_crop if train else True,
            random_flip=d.random_flip if train else False, prefix=d.prefix, default_caption=d.default_caption,
            caption_column=d.caption_column, image_column=d.image_column, repeats=d.repeats if train else 1,
            limit=None if train else d.eval_images,
        )

    def build_dataloaders(self):
        d = self.cfg.data
        train_set = self._dataset(True)
        collate = self._collate()
        self._train_loader = build_loader(train_set, d.batch_size, shuffle=True, seed=self.cfg.seed,
                                          num_workers=d.num_workers, drop_last=len(train_set) >= d.batch_size,
                                          collate_fn=collate)
        return self._train_loader, self.build_eval_loader()

    def build_eval_loader(self):
        d = self.cfg.data
        return build_loader(self._dataset(False), d.eval_batch_size or d.batch_size, shuffle=False,
                            num_workers=d.num_workers, collate_fn=self._collate())

    def _collate(self) -> _TokenizeCollate:
        c = self.components
        return _TokenizeCollate(c.tokenizer, c.tokenizer_2)

    # ---------------------------------------------------------------- steps
    def _encode(self, batch: dict[str, torch.Tensor], sample: bool) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
        """``(latents (B, 4, h, w), text embedding (B, L, D), added_cond_kwargs or None)``.

        SD: the text encoder's last hidden state. SDXL (as diffusers' ``train_text_to_image_sdxl.py``): the
        penultimate hidden states of both encoders concatenated ``(B, L, D1 + D2)``, the second encoder's pooled
        projection as ``text_embeds (B, P)`` and ``time_ids (B, 6)`` = original size, crop top-left, target size.
        Deviation: the time ids are ``(R, R, 0, 0, R, R)`` for resolution ``R`` (the images were resized and
        cropped to ``R × R``), not each image's original size and crop offset.
        """
        c = self.components
        px = batch["pixel_values"]
        self._place_frozen(px.device)
        with torch.no_grad():
            dist = c.vae.encode(px.to(self.weight_dtype)).latent_dist
            latents = (dist.sample() if sample else dist.mode()) * c.vae.config.scaling_factor
            if not c.is_sdxl:
                return latents, c.text_encoder(batch["input_ids"], return_dict=False)[0], None
            h1 = c.text_encoder(batch["input_ids"], output_hidden_states=True)
            h2 = c.text_encoder_2(batch["input_ids_2"], output_hidden_states=True)
            text = torch.cat([h1.hidden_states[-2], h2.hidden_states[-2]], dim=-1)
            r = self.cfg.data.resolution
            time_ids = torch.tensor([[r, r, 0, 0, r, r]], device=px.device, dtype=text.dtype).expand(px.shape[0], 6)
        return latents, text, {"text_embeds": h2.text_embeds, "time_ids": time_ids}

    def _target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sched = self.components.noise_scheduler
        if sched.config.prediction_type == "epsilon":
            return noise
        if sched.config.prediction_type == "v_prediction":
            return sched.get_velocity(latents, noise, t)
        raise ValueError(f"unsupported prediction_type '{sched.config.prediction_type}'")

    def _loss_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        gamma = self.cfg.model.snr_gamma
        if not gamma:
            return None
        from diffusers.training_utils import compute_snr

        sched = self.components.noise_scheduler
        snr = compute_snr(sched, t)
        w = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
        return w / snr if sched.config.prediction_type == "epsilon" else w / (snr + 1)

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        m = self.cfg.model
        sched = self.components.noise_scheduler
        latents, text, cond = self._encode(batch, sample=True)
        noise = torch.randn_like(latents)
        if m.noise_offset:
            noise = noise + m.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=latents.device,
                                                         dtype=latents.dtype)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
        noisy = sched.add_noise(latents, noise, t)
        pred = model(noisy, t, text, added_cond_kwargs=cond, return_dict=False)[0]
        target = self._target(latents, noise, t)
        weights = self._loss_weights(t)
        if weights is None:
            mse = F.mse_loss(pred.float(), target.float())
        else:
            per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            mse = (per * weights.to(per.device)).mean()
        losses = {"loss": mse, "mse": mse.detach()}
        for name, term in self.method.extra_losses(model).items():  # e.g. SaRA's nuclear-norm loss ("rank")
            losses["loss"] = losses["loss"] + term
            losses[name] = term.detach()
        return losses

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        sched = self.components.noise_scheduler
        T = sched.config.num_train_timesteps
        n_t = max(1, self.cfg.eval.num_timesteps)
        timesteps = torch.linspace(0, T - 1, n_t).round().long()
        per_sample: list[torch.Tensor] = []
        for i, batch in enumerate(loader):
            latents, text, cond = self._encode(batch, sample=False)
            gen = torch.Generator().manual_seed(self.cfg.eval.seed + 1000 * i + accelerator.process_index)
            total = torch.zeros(latents.shape[0], device=latents.device)
            for t_val in timesteps.tolist():
                noise = torch.randn(latents.shape, generator=gen).to(latents.device, latents.dtype)
                t = torch.full((latents.shape[0],), t_val, device=latents.device, dtype=torch.long)
                pred = model(sched.add_noise(latents, noise, t), t, text, added_cond_kwargs=cond, return_dict=False)[0]
                total += F.mse_loss(pred.float(), self._target(latents, noise, t).float(), reduction="none").mean((1, 2, 3))
            per_sample.append(accelerator.gather_for_metrics(total / n_t).cpu())
        metrics = {"val_loss": torch.cat(per_sample).mean().item()}
        if output_dir is not None:
            if accelerator.is_main_process:
                unet = accelerator.unwrap_model(model)
                path = self.save_adapter(unet, output_dir)
                _logger.info("saved the trained %s to %s", self.cfg.model.adapter, path)
                if self.cfg.sample.enabled and self.cfg.sample.prompts:
                    grid = self.render_samples(unet, latents.device)
                    grid.save(Path(output_dir) / "samples.png")
            accelerator.wait_for_everyone()
        return metrics

    def render_samples(self, unet: nn.Module, device: torch.device) -> Any:
        """``samples.png``'s grid: each prompt without (base) and with the trained adapter, same noise."""
        from zoo.diffusion.sampling import comparison_grid

        c, s, d = self.components, self.cfg.sample, self.cfg.data
        self._place_frozen(device)
        pipe = c.pipeline(unet)  # StableDiffusionPipeline or StableDiffusionXLPipeline
        pipe.set_progress_bar_config(disable=True)
        set_enabled = self._adapter_switch(pipe, unet, device)
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

    def _adapter_switch(self, pipe: Any, unet: nn.Module, device: torch.device) -> Any:
        """The method's on/off switch for the sample grid (``full`` reloads the original UNet for the base column)."""
        m = self.cfg.model

        def load_base() -> nn.Module:
            from zoo.diffusion.pipeline import load_components

            return load_components(m.pretrained, single_file_config=m.single_file_config,
                                   original_config=m.original_config, torch_dtype=torch.float32).unet.to(device)

        return self.method.switch(pipe, unet, load_base if self.cfg.sample.compare_base else None)
