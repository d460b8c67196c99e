"""A tiny Stable Diffusion in the real diffusers format, built from configs (no download), plus SD 1.5's UNet config.

``build_tiny_pipeline()`` gives a ``StableDiffusionPipeline`` with a ~1M-parameter UNet, a small VAE and CLIP text
encoder and a character-level CLIP tokenizer made in memory (``build_tiny_pipeline(sdxl=True)``: a
``StableDiffusionXLPipeline`` with two text encoders, the second with a projection, and a UNet with SDXL's
``text_time`` added conditioning); ``save_tiny_pipeline(dir)`` writes it as a diffusers folder
(``model_index.json``, ``unet/``, ``vae/``, ...) that ``load_pipeline`` and the ``sd_finetune`` recipe read like a
real model. ``sd15_unet_config`` / ``build_unet`` give SD 1.5's UNet (or a narrower copy) with random
weights for benchmarks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from zoo.diffusion.pipeline import require_diffusers

__all__ = ["tiny_tokenizer", "build_tiny_pipeline", "save_tiny_pipeline", "sd15_unet_config", "build_unet"]

MAX_LENGTH = 16


def tiny_tokenizer(model_max_length: int = MAX_LENGTH) -> Any:
    """A CLIP BPE tokenizer over single characters (every word splits into letters): no files, no download —
    :func:`zoo.diffusion.captions.word_tokenizer` with no whole-word tokens."""
    from zoo.diffusion.captions import word_tokenizer

    return word_tokenizer(words=(), model_max_length=model_max_length)


def sd15_unet_config(width: float = 1.0, sample_size: int = 64) -> dict[str, Any]:
    """``UNet2DConditionModel`` config of Stable Diffusion 1.5 (860M parameters at ``width=1``).

    ``width`` scales the channels (``block_out_channels = width · (320, 640, 1280, 1280)``, rounded to a multiple
    of 32 so that the 32 norm groups divide them) for smaller stand-ins with the same structure.
    """
    ch = tuple(max(32, int(round(c * width / 32)) * 32) for c in (320, 640, 1280, 1280))
    return dict(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=ch,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu",
    )


def build_unet(config: dict[str, Any], seed: int = 0) -> Any:
    """A randomly initialised ``UNet2DConditionModel`` from ``config`` (seeded)."""
    require_diffusers()
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**config)


def build_tiny_pipeline(seed: int = 0, sample_size: int = 8, prediction_type: str = "epsilon", sdxl: bool = False) -> Any:
    """A tiny ``StableDiffusionPipeline`` (random weights, seeded): UNet with (32, 96) channels and cross-attention
    at 96 (so its 96×96 projections are eligible for SaRA's rank loss), a 2-block VAE (``vae_scale_factor = 2``:
    ``sample_size`` 8 → 16×16 images), a 2-layer CLIP text encoder and :func:`tiny_tokenizer`.

    ``sdxl=True``: a ``StableDiffusionXLPipeline`` of the same size — a second text encoder
    (``CLIPTextModelWithProjection``, projection 32) and tokenizer, UNet cross-attention at 32 + 32 = 64 and
    ``addition_embed_type="text_time"`` (time ids of 6 × 8 plus the pooled 32: 80 inputs), linear projections."""
    require_diffusers()
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    xl = dict(cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
              projection_class_embeddings_input_dim=6 * 8 + 32, use_linear_projection=True) if sdxl else {}
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 96),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **({"cross_attention_dim": 32} | xl), attention_head_dim=8, norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=sample_size * 2,
    )
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=128, max_position_embeddings=MAX_LENGTH, layer_norm_eps=1e-5, projection_dim=32,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    if sdxl:
        from diffusers import StableDiffusionXLPipeline
        from transformers import CLIPTextModelWithProjection

        torch.manual_seed(seed + 3)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tiny_tokenizer(),
            tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def save_tiny_pipeline(path: str | os.PathLike, **kwargs: Any) -> Path:
    """Build :func:`build_tiny_pipeline` and ``save_pretrained`` it to ``path`` (a diffusers folder)."""
    path = Path(path)
    build_tiny_pipeline(**kwargs).save_pretrained(str(path), safe_serialization=True)
    return path
