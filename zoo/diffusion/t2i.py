"""The parts of the tiny MNIST text-to-image model (``tiny_t2i_mnist``) that its two pre-training recipes
(``t2i_vae``, ``t2i_unet`` in :mod:`zoo.recipes.t2i_pretrain`) build: data, networks, scheduler, pipeline, grid.

* data — :class:`DigitImages` (MNIST digits zero-padded from 28×28 to 32×32, grey replicated to RGB, in
  [-1, 1], with a caption), :class:`LatentDigits` (the same encoded once by the frozen VAE),
  :class:`EvalDigits` (the first N held-out digits with their index and, for the VAE, a colour/texture composite
  of each drawn once in order);
* networks — :func:`build_vae` (``AutoencoderKL``, 32×32×3 -> 8×8×4), :func:`build_text_to_image`
  (:class:`TextToImage`: a ``UNet2DConditionModel`` with standard diffusers attention and a small
  ``CLIPTextModel``, trained jointly), :func:`build_scheduler` (SD's scaled-linear schedule);
* :func:`text_to_image_pipeline` (a ``StableDiffusionPipeline`` of the parts) and :func:`digit_grid`.

Importing this module does not import diffusers; the builders do.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.metrics.base import Metric

__all__ = ["psnr", "LatentStats", "DigitImages", "LatentDigits", "EvalDigits", "collate_digits", "collate_latents", "build_vae",
           "build_scheduler", "TextToImage", "build_text_to_image", "text_to_image_pipeline", "digit_grid"]


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``(B, C, H, W)`` images in [0, 1]: ``10 · log10(1 / MSE)``; ``(B,)``."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


class LatentStats(Metric):
    """``latent_std`` / ``latent_mean`` over every entry of the per-example VAE latents ``(N, C, h, w)`` (the VAE's
    ``scaling_factor`` is ``1 / latent_std``)."""

    keys = ("latent",)

    def compute_from(self, latent: torch.Tensor) -> dict[str, Any]:
        z = latent.flatten()
        return {"latent_std": z.std().item(), "latent_mean": z.mean().item()}


def _grey(mnist: Any, index: int) -> torch.Tensor:
    """``(1, 32, 32)`` digit ``index`` of ``mnist`` in [0, 1], zero-padded."""
    from zoo.data.images.style_digits import pad_digit

    return pad_digit(mnist.data[index].float().div(255.0)[None])


class DigitImages(Dataset):
    """MNIST digits as ``{"pixel_values": (3, 32, 32) in [-1, 1], "label": int, "caption": str}``.

    ``colour``: a :class:`~zoo.data.images.style_digits.ColourDigits` (or None: the grey digit replicated to RGB);
    ``captions``: draw a caption template per item (seeded by ``seed`` and the item count, so a given epoch order
    is reproducible) or use the canonical prompt."""

    def __init__(self, split: str, root: str | None = None, colour: Any = None, captions: bool = True, seed: int = 0):
        from zoo.data.images.mnist import MNIST

        self.mnist = MNIST(root=root, split=split)
        self.colour = colour
        self.captions = captions
        self.seed = seed
        self.calls = 0

    def __len__(self) -> int:
        return len(self.mnist)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from zoo.diffusion.captions import caption

        grey = _grey(self.mnist, index)
        img = self.colour(grey) if self.colour is not None else grey.expand(3, -1, -1)
        label = int(self.mnist.targets[index])
        self.calls += 1
        rng = random.Random(self.seed * 1_000_003 + self.calls) if self.captions else None
        return {"pixel_values": img * 2 - 1, "label": label, "caption": caption(label, rng)}


class EvalDigits(Dataset):
    """The first ``limit`` digits of ``split`` for evaluation: :class:`DigitImages` items (canonical captions)
    with ``"index"`` and, when ``colour_seed`` is given, ``"colour_pixel_values"``: a colour/texture composite
    of each digit (``ColourDigits(1.0, seed=colour_seed)`` applied to the digits in order, once)."""

    def __init__(self, split: str, root: str | None = None, limit: int | None = None, colour_seed: int | None = None):
        self.digits = DigitImages(split, root, captions=False)
        self.n = len(self.digits) if limit is None else min(limit, len(self.digits))
        self.colour: list[torch.Tensor] | None = None
        if colour_seed is not None:
            from zoo.data.images.style_digits import ColourDigits

            colour = ColourDigits(1.0, seed=colour_seed)
            self.colour = [colour((self.digits[i]["pixel_values"][:1] + 1) / 2) * 2 - 1 for i in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {**self.digits[index], "index": index}
        if self.colour is not None:
            item["colour_pixel_values"] = self.colour[index]
        return item


class LatentDigits(Dataset):
    """A :class:`DigitImages` set encoded once by the frozen ``vae`` (its posterior ``mean`` and ``std``,
    ``(4, 8, 8)`` each, unscaled) so that the UNet steps do not run the encoder; the caption is drawn per item."""

    @torch.no_grad()
    def __init__(self, images: DigitImages, vae: Any, batch_size: int = 256):
        self.images = images
        means, stds = [], []
        for start in range(0, len(images), batch_size):
            x = torch.stack([_grey(images.mnist, i) for i in range(start, min(start + batch_size, len(images)))])
            dist = vae.encode(x.expand(-1, 3, -1, -1) * 2 - 1).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        self.mean, self.std = torch.cat(means), torch.cat(stds)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from zoo.diffusion.captions import caption

        self.images.calls += 1
        label = int(self.images.mnist.targets[index])
        rng = random.Random(self.images.seed * 1_000_003 + self.images.calls)
        return {"latent_mean": self.mean[index], "latent_std": self.std[index], "label": label,
                "caption": caption(label, rng)}


def _stack(batch: list[dict[str, Any]], tensors: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {k: torch.stack([b[k] for b in batch]) for k in tensors if k in batch[0]}
    out.update({k: torch.tensor([b[k] for b in batch]) for k in ("label", "index") if k in batch[0]})
    out["caption"] = [b["caption"] for b in batch]
    return out


def collate_digits(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch of :class:`DigitImages` / :class:`EvalDigits` items (tensors stacked, captions a list)."""
    return _stack(batch, ("pixel_values", "colour_pixel_values"))


def collate_latents(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch of :class:`LatentDigits` items."""
    return _stack(batch, ("latent_mean", "latent_std"))


def build_vae(block_out_channels: Sequence[int], layers_per_block: int, latent_channels: int, norm_num_groups: int,
              seed: int = 0) -> Any:
    """A random ``AutoencoderKL`` for 32×32 RGB (each block but the last halves the size), seeded."""
    from zoo.diffusion.pipeline import require_diffusers

    require_diffusers()
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(block_out_channels),
                         layers_per_block=layers_per_block, latent_channels=latent_channels,
                         norm_num_groups=norm_num_groups, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, sample_size=32)


def build_scheduler(kind: str = "ddim") -> Any:
    """SD's noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps, epsilon): ``"ddpm"`` for training,
    ``"ddim"`` for the pipeline."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, prediction_type="epsilon")
    if kind == "ddpm":
        return DDPMScheduler(**common)
    return DDIMScheduler(set_alpha_to_one=False, steps_offset=1, **common)


class TextToImage(nn.Module):
    """The trainable pair: ``unet`` (``UNet2DConditionModel``) and ``text_encoder`` (``CLIPTextModel``)."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, 4, h, w)`` noisy latents, ``(B,)`` timesteps, ``(B, L)`` token ids -> predicted noise."""
        text = self.text_encoder(input_ids, return_dict=False)[0]
        return self.unet(noisy, t, text, return_dict=False)[0]


def build_text_to_image(m: Any, vae_config: Any, tokenizer: Any, seed: int = 0) -> TextToImage:
    """:class:`TextToImage` from the ``t2i_unet`` recipe's ``model`` section ``m`` (block widths and types, layers,
    attention head size, text width / layers / heads, ``train_text_encoder``), for the latents of a VAE with
    config ``vae_config`` and the word ``tokenizer``; seeded."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    latent_size = 32 // 2 ** (len(vae_config.block_out_channels) - 1)  # 8 for the 3-block VAE
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=vae_config.latent_channels, out_channels=vae_config.latent_channels,
        layers_per_block=m.layers_per_block, block_out_channels=tuple(m.block_out_channels),
        down_block_types=tuple(m.down_block_types), up_block_types=tuple(m.up_block_types),
        cross_attention_dim=m.text_hidden, attention_head_dim=m.attention_head_dim, norm_num_groups=m.norm_num_groups,
    )
    tok = tokenizer
    text_config = CLIPTextConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        hidden_size=m.text_hidden, intermediate_size=2 * m.text_hidden, num_attention_heads=m.text_heads,
        num_hidden_layers=m.text_layers, vocab_size=len(tok), max_position_embeddings=tok.model_max_length,
        layer_norm_eps=1e-5, projection_dim=m.text_hidden,
    )
    text_encoder = CLIPTextModel(text_config)
    text_encoder.requires_grad_(m.train_text_encoder)
    return TextToImage(unet, text_encoder)


def text_to_image_pipeline(vae: Any, net: TextToImage, tokenizer: Any) -> Any:
    """A ``StableDiffusionPipeline`` of the frozen ``vae``, ``net``'s UNet and text encoder, ``tokenizer`` and a
    DDIM scheduler (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=net.text_encoder, tokenizer=tokenizer, unet=net.unet,
                                   scheduler=build_scheduler("ddim"), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)


def digit_grid(pipe: Any, seeds: Sequence[int], num_inference_steps: int, guidance_scale: float) -> Any:
    """A PIL grid: rows digits 0-9 (labelled with their canonical prompt), columns ``seeds`` (one generated batch
    each, labelled "seed S"), titled with the sampler settings."""
    from PIL import Image

    from zoo.diffusion.captions import prompt
    from zoo.diffusion.generate import generate_digits
    from zoo.diffusion.sampling import make_grid

    rows = [generate_digits(pipe, range(10), seed=seed, num_inference_steps=num_inference_steps,
                            guidance_scale=guidance_scale) for seed in seeds]
    cols = torch.stack(rows, 1)  # (10, S, 3, 32, 32)
    to_pil = lambda t: Image.fromarray((t.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())  # noqa: E731
    return make_grid([[to_pil(t) for t in row] for row in cols], [f'"{prompt(d)}"' for d in range(10)],
                     [f"seed {s}" for s in seeds], min_size=32,
                     title=f"Samples: {num_inference_steps} DDIM steps, guidance {guidance_scale:g}")
