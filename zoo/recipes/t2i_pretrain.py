"""Pre-training the tiny MNIST text-to-image latent diffusion model (``tiny_t2i_mnist``) in diffusers' format, and
measuring the shipped one. The model's parts, settings and steps are :mod:`zoo.diffusion.t2i`; these recipes wire them:

* ``t2i_vae`` — the ``AutoencoderKL`` (32×32×3 in [-1, 1] -> 8×8×4 latents) on MNIST digits padded to 32×32 RGB, a
  share ``data.colour_prob`` of them colour/texture composites (so the frozen VAE can represent coloured styles
  later). Evaluation: reconstruction PSNR (grey, colour) and the latent std; the final one writes ``vae/`` with
  ``scaling_factor = 1 / std`` of the *training* digits' latents (never measured on an evaluation split);
* ``t2i_unet`` — a ``UNet2DConditionModel`` and a small ``CLIPTextModel`` trained *jointly* from scratch on the frozen
  VAE's latents, captions from :mod:`zoo.diffusion.captions`, ``model.cond_drop`` of them empty (classifier-free
  guidance). Evaluation: validation denoising loss at fixed timesteps / noise; the final one writes ``pipeline/`` (a
  ``StableDiffusionPipeline`` folder, DDIM scheduler) and ``samples.png`` (rows: digits 0-9);
* ``t2i_measure`` — the shipped model's reported numbers (:mod:`zoo.diffusion.t2i_measure`).

Split (:mod:`zoo.data.splits`): of the shared 10,000-digit t10k file ``test[:7000]`` trains every part,
``test[7000:8000]`` validates (``best.pt``), ``test[8000:]`` is reported and read by no pre-training stage
(``tests/diffusion/test_t2i_pretrain.py`` checks it). Importing this module does not import diffusers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.config import ConfigError
from zoo.diffusion.t2i import (T2IDataConfig, T2ISampleConfig, UNetModelConfig, VAEModelConfig, eval_digits_loader,
                               save_pipeline_and_samples, save_vae, token_ids, train_digits_loader, unet_training_loss,
                               unet_validation_loss, vae_eval_outputs, vae_training_losses)
from zoo.diffusion.t2i_measure import T2IMeasureSection, measure_tiny_t2i
from zoo.metrics.base import MeanMetric
from zoo.recipes.base import Recipe, RecipeConfig, StudyStage, register_recipe

__all__ = ["T2IVAEConfig", "T2IVAERecipe", "T2IUNetConfig", "T2IUNetRecipe", "T2IMeasureConfig", "T2IMeasureRecipe"]


# ====================================================================================================== VAE
@dataclass
class T2IVAEConfig(RecipeConfig):
    recipe: str = "t2i_vae"
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    data: T2IDataConfig = field(default_factory=T2IDataConfig)


@register_recipe("t2i_vae")
class T2IVAERecipe(Recipe):
    """Train the tiny model's ``AutoencoderKL`` (see the module doc). Main metric: ``psnr`` (grey validation digits)."""

    Config = T2IVAEConfig
    main_metric = "psnr"
    main_metric_mode = "max"
    COLOUR_SEED = 4321  # of the held-out colour composites

    def build_model(self) -> nn.Module:
        from zoo.diffusion.t2i import build_vae

        m = self.cfg.model
        return build_vae(m.block_out_channels, m.layers_per_block, m.latent_channels, m.norm_num_groups, self.cfg.seed)

    def build_dataloaders(self):
        return train_digits_loader(self.cfg.data, self.cfg.seed), self.build_eval_loader()

    def build_eval_loader(self):
        return eval_digits_loader(self.cfg.data, colour_seed=self.COLOUR_SEED)

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        return vae_training_losses(model, batch["pixel_values"], self.cfg.model.kl_weight)

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Per image: ``latent``, ``psnr`` and ``psnr_colour`` (:func:`zoo.diffusion.t2i.vae_eval_outputs`)."""
        vae = getattr(model, "module", model)  # a DDP wrapper has no encode / decode
        return vae_eval_outputs(vae, batch["pixel_values"], batch["colour_pixel_values"])

    def build_metrics(self, kind: str = "eval") -> Any:
        from zoo.diffusion.t2i import LatentStats

        return [MeanMetric("psnr"), MeanMetric("psnr_colour"), LatentStats()]

    def save_outputs(self, model: nn.Module, output_dir: Any) -> dict[str, Any]:
        """``vae/`` (a diffusers folder with ``scaling_factor = 1 / std`` of the training digits' latents,
        :func:`zoo.diffusion.t2i.save_vae`), also returned as ``train_latent_std`` / ``train_latent_mean`` /
        ``scaling_factor``."""
        return save_vae(model, self.cfg.data, output_dir)


# ====================================================================================================== UNet
@dataclass
class T2IUNetConfig(RecipeConfig):
    recipe: str = "t2i_unet"
    model: UNetModelConfig = field(default_factory=UNetModelConfig)
    data: T2IDataConfig = field(default_factory=lambda: T2IDataConfig(colour_prob=0.0))
    sample: T2ISampleConfig = field(default_factory=T2ISampleConfig)
    eval_timesteps: int = 8
    eval_seed: int = 1234


@register_recipe("t2i_unet")
class T2IUNetRecipe(Recipe):
    """Train the tiny model's UNet and text encoder on VAE latents (see the module doc). Main metric: ``val_loss``."""

    Config = T2IUNetConfig
    main_metric = "val_loss"
    main_metric_mode = "min"

    def __init__(self, cfg: T2IUNetConfig):
        super().__init__(cfg)
        from zoo.diffusion.pipeline import require_diffusers

        require_diffusers()
        vae = cfg.model.vae
        if not vae or not (Path(vae) / "config.json").is_file():
            raise ConfigError(f"model.vae must be the vae/ folder of a t2i_vae run (config.json inside), got {vae!r}")
        self._vae_device: torch.device | None = None

    @cached_property
    def vae(self) -> Any:
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(self.cfg.model.vae).requires_grad_(False).eval()

    @cached_property
    def tokenizer(self) -> Any:
        from zoo.diffusion.captions import word_tokenizer

        return word_tokenizer()

    @cached_property
    def noise_scheduler(self) -> Any:
        from zoo.diffusion.t2i import build_scheduler

        return build_scheduler("ddpm")

    def build_model(self) -> nn.Module:
        from zoo.diffusion.t2i import build_text_to_image

        return build_text_to_image(self.cfg.model, self.vae.config, self.tokenizer, self.cfg.seed)

    def build_dataloaders(self):
        return train_digits_loader(self.cfg.data, self.cfg.seed, self.vae), self.build_eval_loader()

    def build_eval_loader(self):
        loader = eval_digits_loader(self.cfg.data)
        self._eval_size = len(loader.dataset)
        return loader

    @torch.no_grad()
    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        if self._vae_device != x.device:
            self.vae.to(x.device)
            self._vae_device = x.device
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        mean, std = batch["latent_mean"], batch["latent_std"]
        latents = (mean + std * torch.randn_like(std)) * self.vae.config.scaling_factor  # a posterior sample
        captions = [("" if torch.rand(()).item() < self.cfg.model.cond_drop else c) for c in batch["caption"]]
        ids = token_ids(self.tokenizer, captions, mean.device)
        return {"loss": unet_training_loss(model, self.noise_scheduler, latents, ids)}

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """``{"val_loss": (B,)}``: the denoising loss of each validation digit under its canonical prompt at
        ``eval_timesteps`` fixed timesteps, with the noise of its index (the batches of a one-process evaluation,
        seeded ``eval_seed + batch``; :func:`zoo.diffusion.t2i.unet_validation_loss`)."""
        from zoo.diffusion.captions import prompt

        x = batch["pixel_values"]
        ids = token_ids(self.tokenizer, [prompt(int(k)) for k in batch["label"]], x.device)
        return {"val_loss": unet_validation_loss(model, self.noise_scheduler, self._latents(x), ids, batch["index"],
                                                 self.cfg.eval_timesteps, self.cfg.data.eval_batch_size,
                                                 self._eval_size, self.cfg.eval_seed)}

    def build_metrics(self, kind: str = "eval") -> Any:
        return [MeanMetric("val_loss")]

    def save_outputs(self, model: nn.Module, output_dir: Any) -> dict[str, Any]:
        """``pipeline/`` (a ``StableDiffusionPipeline`` folder) and ``samples.png`` (rows: digits 0-9)."""
        save_pipeline_and_samples(self.vae, model, self.tokenizer, self.cfg.sample, output_dir)
        return {}


# ====================================================================================================== measure
@dataclass
class T2IMeasureConfig(RecipeConfig):
    recipe: str = "t2i_measure"
    measure: T2IMeasureSection = field(default_factory=T2IMeasureSection)


@register_recipe("t2i_measure")
class T2IMeasureRecipe(StudyStage):
    """The shipped model's reported numbers on the reported split, one cell per sampling seed ``seed``
    (:func:`zoo.diffusion.t2i_measure.measure_tiny_t2i`)."""

    Config = T2IMeasureConfig

    def run(self, ctx: Any) -> dict[str, Any]:
        return measure_tiny_t2i(self.cfg.measure, self.cfg.seed, ctx.output_dir)
