"""Stable Diffusion fine-tuning on a folder of captioned images (style / subject), with SaRA, LoRA or full training.

The recipe of diffusers' ``train_text_to_image(_lora).py`` on the zoo's Trainer: the VAE encodes the images to
latents, noise is added at random DDPM timesteps, the UNet predicts the noise (or the velocity, per the
scheduler's ``prediction_type``) from the noisy latents and the CLIP text embedding of the caption, and the loss
is the MSE (optionally Min-SNR weighted). Only the UNet is trained, through one of three adapters
(``model.adapter``):

* ``sara`` — :mod:`zoo.adapters.sara`: the entries with ``|w| < threshold`` of every UNet parameter, the sparse
  weight-gradient kernel, SaRA's nuclear-norm loss (added to the loss, logged as ``train_rank``) and progressive
  re-selection; saves ``sara_weights.safetensors``;
* ``lora`` — the baseline through peft (``unet.add_adapter``); saves diffusers' ``pytorch_lora_weights.safetensors``;
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
from zoo.engine.data import build_loader
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe

__all__ = ["SaRAConfig", "LoRAConfig", "SDModelConfig", "SDDataConfig", "SDSampleConfig", "SDEvalConfig",
           "SDFinetuneConfig", "SDFinetuneRecipe"]

_logger = logging.getLogger("zoo")

ADAPTERS = ("sara", "lora", "full")


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
    init: str = "gaussian"  # peft init_lora_weights: gaussian | true (kaiming/zero) | ...
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])


@dataclass
class SDModelConfig:
    """Config section ``model``."""

    pretrained: str | None = None  # diffusers folder (model_index.json) or a single .safetensors/.ckpt file
    single_file_config: str | None = None  # for single files offline: a local diffusers folder with the configs
    original_config: str | None = None  # ... or the original inference yaml
    adapter: str = "sara"  # sara | lora | full
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
    """Stack images and tokenize captions to ``(B, model_max_length)`` ids (picklable for loader workers)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        ids = tok([b["caption"] for b in batch], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        return {"pixel_values": torch.stack([b["pixel_values"] for b in batch]), "input_ids": ids}


@register_recipe("sd_finetune")
class SDFinetuneRecipe(Recipe):
    """Fine-tune a Stable Diffusion UNet on captioned images (see the module doc)."""

    Config = SDFinetuneConfig
    main_metric = "val_loss"
    main_metric_mode = "min"

    def __init__(self, cfg: SDFinetuneConfig):
        super().__init__(cfg)
        m, d = cfg.model, cfg.data
        if m.adapter not in ADAPTERS:
            raise ConfigError(f"model.adapter must be one of {', '.join(ADAPTERS)}, got '{m.adapter}'")
        if m.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ConfigError(f"model.prediction_type must be epsilon or v_prediction, got '{m.prediction_type}'")
        if m.sara.decay_to not in ("zero", "pretrained"):
            raise ConfigError(f"model.sara.decay_to must be 'zero' or 'pretrained', got '{m.sara.decay_to}'")
        if cfg.trainer.ema_decay and m.adapter != "full":
            raise ConfigError("trainer.ema_decay is only supported with model.adapter=full in sd_finetune "
                              "(an EMA copy of an adapter run would duplicate the whole UNet)")
        from zoo.diffusion.pipeline import require_diffusers, resolve_pipeline_path

        require_diffusers()
        if m.adapter == "lora":
            try:
                import peft  # noqa: F401
            except ImportError as exc:
                raise ImportError("model.adapter=lora needs peft: pip install -e .[diffusion]") from exc
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
        c = load_components(m.pretrained, single_file_config=m.single_file_config, original_config=m.original_config)
        if m.prediction_type is not None:
            c.noise_scheduler.register_to_config(prediction_type=m.prediction_type)
        c.vae.requires_grad_(False).eval()
        c.text_encoder.requires_grad_(False).eval()
        return c

    @property
    def weight_dtype(self) -> torch.dtype:
        from zoo.diffusion.pipeline import dtype_from_precision

        return dtype_from_precision(self.cfg.trainer.mixed_precision)

    def _place_frozen(self, device: torch.device) -> None:
        if self._frozen_device != device:
            c = self.components
            for module in (c.vae, c.text_encoder):
                dtype = self.weight_dtype if module.dtype != self.weight_dtype else None  # .to(dtype) warns even if equal
                module.to(device=device, dtype=dtype)
            self._frozen_device = device

    # ---------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        m = self.cfg.model
        unet = self.components.unet
        unet.requires_grad_(m.adapter == "full")
        if m.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if m.adapter == "sara":
            from zoo.adapters.sara import apply_sara, num_sara_parameters

            apply_sara(unet, m.sara.threshold, kernel=m.sara.kernel)
            _logger.info("SaRA: %d trainable entries (|w| < %g) of %d UNet weights", num_sara_parameters(unet),
                         m.sara.threshold, sum(p.numel() for n, p in unet.named_parameters() if ".deltas." not in n))
        elif m.adapter == "lora":
            from peft import LoraConfig

            init: Any = {"true": True, "false": False}.get(str(m.lora.init).lower(), m.lora.init)
            unet.add_adapter(LoraConfig(r=m.lora.rank, lora_alpha=m.lora.alpha or m.lora.rank, init_lora_weights=init,
                                        lora_dropout=m.lora.dropout, target_modules=list(m.lora.target_modules)))
        unet.train()
        return unet

    def _total_steps(self) -> int:
        t = self.cfg.trainer
        n = len(self._train_loader)
        if t.max_steps_per_epoch:
            n = min(n, t.max_steps_per_epoch * t.grad_accum_steps)
        return math.ceil(n / t.grad_accum_steps) * t.epochs

    def configure_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        if self.cfg.model.adapter != "sara":
            return super().configure_optimizer(model, cfg)
        from zoo.adapters.sara import SaRAOptimizer

        s = self.cfg.model.sara
        if cfg.name.lower() != "adamw":
            raise ConfigError(f"model.adapter=sara trains with its own AdamW; optim.name must be adamw, got '{cfg.name}'")
        prog = s.progressive_iter
        if prog is not None and 0 < prog < 1:
            prog = round(prog * self._total_steps())
        # lambda_rank=0 here: the recipe adds the nuclear-norm loss to the training loss (works with fp16 loss scaling
        # and gradient accumulation, and is logged), instead of the official in-step backward.
        return SaRAOptimizer(model, s.threshold, lr=None if s.lr_rule else cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, decay_to=s.decay_to,
                             progressive_iter=int(prog) if prog else None, lambda_rank=0.0,
                             reselect_reset_state=s.reselect_reset_state, kernel=s.kernel)

    def checkpoint_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        adapter = self.cfg.model.adapter
        if adapter == "sara":
            from zoo.adapters.sara import sara_state_dict

            return sara_state_dict(model)
        if adapter == "lora":
            from peft import get_peft_model_state_dict

            return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        return model.state_dict()

    def load_checkpoint_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        adapter = self.cfg.model.adapter
        if adapter == "sara":
            from zoo.adapters.sara import load_sara_state_dict

            load_sara_state_dict(model, state)
        elif adapter == "lora":
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(model, state, adapter_name="default")
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise RuntimeError(f"LoRA checkpoint has keys the model does not: {unexpected[:10]}")
        else:
            model.load_state_dict(state)

    def save_adapter(self, model: nn.Module, output_dir: str | Path) -> Path:
        """Write the trained part into ``output_dir``: ``sara_weights.safetensors``,
        ``pytorch_lora_weights.safetensors`` or ``unet/``; returns its path."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        adapter = self.cfg.model.adapter
        if adapter == "sara":
            from zoo.adapters.sara import save_sara

            return save_sara(model, out / "sara_weights.safetensors", threshold=self.cfg.model.sara.threshold)
        if adapter == "lora":
            from diffusers import StableDiffusionPipeline
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
            StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True)
            return out / "pytorch_lora_weights.safetensors"
        model.save_pretrained(str(out / "unet"), safe_serialization=True)
        return out / "unet"

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
        collate = _TokenizeCollate(self.components.tokenizer)
        self._train_loader = build_loader(train_set, d.batch_size, shuffle=True, seed=self.cfg.seed,
                                          num_workers=d.num_workers, drop_last=len(train_set) >= d.batch_size,
                                          collate_fn=collate)
        return self._train_loader, self.build_eval_loader()

    def build_eval_loader(self):
        d = self.cfg.data
        return build_loader(self._dataset(False), d.eval_batch_size or d.batch_size, shuffle=False,
                            num_workers=d.num_workers, collate_fn=_TokenizeCollate(self.components.tokenizer))

    # ---------------------------------------------------------------- steps
    def _encode(self, batch: dict[str, torch.Tensor], sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.components
        px = batch["pixel_values"]
        self._place_frozen(px.device)
        with torch.no_grad():
            dist = c.vae.encode(px.to(self.weight_dtype)).latent_dist
            latents = (dist.sample() if sample else dist.mode()) * c.vae.config.scaling_factor
            text = c.text_encoder(batch["input_ids"], return_dict=False)[0]
        return latents, text

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
        latents, text = self._encode(batch, sample=True)
        noise = torch.randn_like(latents)
        if m.noise_offset:
            noise = noise + m.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=latents.device,
                                                         dtype=latents.dtype)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
        noisy = sched.add_noise(latents, noise, t)
        pred = model(noisy, t, text, return_dict=False)[0]
        target = self._target(latents, noise, t)
        weights = self._loss_weights(t)
        if weights is None:
            mse = F.mse_loss(pred.float(), target.float())
        else:
            per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            mse = (per * weights.to(per.device)).mean()
        losses = {"loss": mse, "mse": mse.detach()}
        if m.adapter == "sara" and m.sara.lambda_rank:
            from zoo.adapters.sara import sara_rank_loss

            rank = sara_rank_loss(model, m.sara.lambda_rank)
            losses["loss"] = mse + rank
            losses["rank"] = rank.detach()
        return losses

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        sched = self.components.noise_scheduler
        T = sched.config.num_train_timesteps
        n_t = max(1, self.cfg.eval.num_timesteps)
        timesteps = torch.linspace(0, T - 1, n_t).round().long()
        per_sample: list[torch.Tensor] = []
        for i, batch in enumerate(loader):
            latents, text = self._encode(batch, sample=False)
            gen = torch.Generator().manual_seed(self.cfg.eval.seed + 1000 * i + accelerator.process_index)
            total = torch.zeros(latents.shape[0], device=latents.device)
            for t_val in timesteps.tolist():
                noise = torch.randn(latents.shape, generator=gen).to(latents.device, latents.dtype)
                t = torch.full((latents.shape[0],), t_val, device=latents.device, dtype=torch.long)
                pred = model(sched.add_noise(latents, noise, t), t, text, return_dict=False)[0]
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
        from diffusers import StableDiffusionPipeline

        from zoo.diffusion.sampling import comparison_grid

        c, s, d = self.components, self.cfg.sample, self.cfg.data
        self._place_frozen(device)
        pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=unet,
                                       scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
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
        adapter = self.cfg.model.adapter
        if adapter == "sara":
            from zoo.layers.lora import enable_adapter

            return lambda on: enable_adapter(unet, "sara", on)
        if adapter == "lora":
            return lambda on: unet.enable_adapters() if on else unet.disable_adapters()
        if not self.cfg.sample.compare_base:
            return None
        from zoo.diffusion.pipeline import load_components

        m = self.cfg.model
        base = load_components(m.pretrained, single_file_config=m.single_file_config,
                               original_config=m.original_config).unet.to(device)

        def set_enabled(on: bool) -> None:
            pipe.unet = unet if on else base

        return set_enabled
