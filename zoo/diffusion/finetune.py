"""Fine-tuning a Stable Diffusion UNet (1.x/2.x, SDXL) with an adaptation method: the settings of the ``model``,
``sample`` and ``eval`` sections of the ``sd_finetune`` recipe and what they drive -- the frozen parts loaded for
training, the denoising loss of a batch, the fixed-noise validation loss, and the base | adapter sample grid.

Reference: diffusers' ``examples/text_to_image/train_text_to_image(_lora).py`` (latents of the frozen VAE, noise
at random DDPM timesteps, epsilon / v-prediction MSE, ``noise_offset``, Min-SNR weighting of Hang et al., ICCV 2023).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["SDModelConfig", "SDSampleConfig", "SDEvalConfig", "load_training_components", "denoising_loss",
           "validation_loss", "sample_comparison"]


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


def load_training_components(m: SDModelConfig, *, frozen: bool = True) -> Any:
    """The pipeline's parts (:func:`zoo.diffusion.pipeline.load_components`) in float32 master weights whatever the
    stored dtype, the scheduler's ``prediction_type`` set from ``m``; with ``frozen`` the VAE and text encoders are
    frozen in eval mode (``place_frozen`` casts them to the run's dtype later)."""
    from zoo.diffusion.pipeline import load_components

    c = load_components(m.pretrained, single_file_config=m.single_file_config, original_config=m.original_config,
                        torch_dtype=torch.float32)
    if m.prediction_type is not None:
        c.noise_scheduler.register_to_config(prediction_type=m.prediction_type)
    if frozen:
        c.vae.requires_grad_(False).eval()
        for text_encoder in c.text_encoders:
            text_encoder.requires_grad_(False).eval()
    return c


def denoising_loss(unet: nn.Module, scheduler: Any, latents: torch.Tensor, text: torch.Tensor, cond: dict | None,
                   m: SDModelConfig) -> tuple[torch.Tensor, tuple]:
    """The denoising MSE of ``latents (B, 4, h, w)`` under ``text`` (and SDXL's ``cond``) at random noise (with
    ``m.noise_offset``) and DDPM timesteps, against the scheduler's prediction target, Min-SNR weighted with
    ``m.snr_gamma``; returns (the scalar loss, the noising ``(noisy, t, text, cond)``)."""
    from zoo.diffusion.denoising import add_training_noise, denoising_mse, min_snr_weights, prediction_target

    noisy, noise, t = add_training_noise(scheduler, latents, m.noise_offset)
    pred = unet(noisy, t, text, added_cond_kwargs=cond, return_dict=False)[0]
    target = prediction_target(scheduler, latents, noise, t)
    return denoising_mse(pred, target, min_snr_weights(scheduler, t, m.snr_gamma)), (noisy, t, text, cond)


def validation_loss(unet: nn.Module, scheduler: Any, latents: torch.Tensor, text: torch.Tensor, cond: dict | None,
                    index: torch.Tensor, ev: SDEvalConfig, batch_size: int, num_examples: int) -> torch.Tensor:
    """``(B,)``: the denoising loss per image at ``ev.num_timesteps`` fixed timesteps, with the noise of each
    image's ``index`` (the batches of a one-process evaluation of ``batch_size``, seeded ``ev.seed + 1000 · batch``),
    so the number does not depend on the batching or the processes."""
    from zoo.diffusion.denoising import eval_timesteps, example_noise, fixed_noise_loss

    timesteps = eval_timesteps(scheduler, ev.num_timesteps)
    noise = example_noise(index, latents.shape[1:], len(timesteps), batch_size, num_examples,
                          lambda b: ev.seed + 1000 * b)
    denoise = lambda noisy, t: unet(noisy, t, text, added_cond_kwargs=cond, return_dict=False)[0]  # noqa: E731
    return fixed_noise_loss(denoise, scheduler, latents, noise, timesteps)


def sample_comparison(components: Any, unet: nn.Module, method: Any, s: SDSampleConfig, *, prefix: str,
                      resolution: int, dtype: torch.dtype, device: torch.device,
                      load_base: Callable[[], nn.Module] | None = None) -> Any:
    """``samples.png``'s grid: each of ``s.prompts`` (``prefix`` prepended with ``s.use_prefix``) rendered without
    (base) and with the trained ``method`` on ``unet``, same noise (:func:`zoo.diffusion.sampling.comparison_grid`);
    ``load_base``: the original UNet, for a method that cannot be switched off (full fine-tuning). ``unet`` keeps
    its mode and the adapter stays enabled."""
    from zoo.diffusion.adapters import sample_switch
    from zoo.diffusion.sampling import comparison_grid

    components.place_frozen(device, dtype)
    pipe = components.pipeline(unet)  # StableDiffusionPipeline or StableDiffusionXLPipeline
    pipe.set_progress_bar_config(disable=True)
    set_enabled = sample_switch(method, pipe, unet, load_base if s.compare_base else None)
    prompts = [(prefix if s.use_prefix else "") + p for p in s.prompts]
    was_training = unet.training
    unet.eval()
    try:
        return comparison_grid(pipe, prompts, set_enabled, num_inference_steps=s.num_inference_steps,
                               guidance_scale=s.guidance_scale, seed=s.seed, height=s.height or resolution,
                               width=s.width or resolution, autocast_dtype=dtype)
    finally:
        if set_enabled is not None:
            set_enabled(True)
        unet.train(was_training)
