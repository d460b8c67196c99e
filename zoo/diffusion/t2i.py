"""The parts of the tiny MNIST text-to-image model (``tiny_t2i_mnist``) that its two pre-training recipes
(``t2i_vae``, ``t2i_unet``) build: settings, data, networks, scheduler, pipeline, grid, what a finished run writes.

* data — :class:`DigitImages` (MNIST digits zero-padded from 28×28 to 32×32, grey replicated to RGB, in
  [-1, 1], with a caption), :class:`LatentDigits` (the same encoded once by the frozen VAE),
  :class:`EvalDigits` (the first N held-out digits with their index and, for the VAE, a colour/texture composite
  of each drawn once in order);
* networks — :func:`build_vae` (``AutoencoderKL``, 32×32×3 -> 8×8×4), :func:`build_text_to_image`
  (:class:`TextToImage`: a ``UNet2DConditionModel`` with standard diffusers attention and a small
  ``CLIPTextModel``, trained jointly), :func:`build_scheduler` (SD's scaled-linear schedule);
* :func:`text_to_image_pipeline` (a ``StableDiffusionPipeline`` of the parts) and :func:`digit_grid`;
* settings — the config sections :class:`T2IDataConfig`, :class:`VAEModelConfig`, :class:`UNetModelConfig`,
  :class:`T2ISampleConfig` (checked when built);
* steps — ``t2i_vae``: :func:`vae_training_losses` (``MSE(x̂, x) + kl_weight · KL(q(z|x) || N(0, I))``),
  :func:`vae_eval_outputs` (reconstruction PSNR of grey digits and colour composites, latents); ``t2i_unet``:
  :func:`unet_training_loss` (DDPM noise, SD's scaled-linear betas, epsilon-prediction MSE; the recipe replaces
  ``model.cond_drop`` of the captions by the empty one: classifier-free guidance training),
  :func:`unet_validation_loss` (fixed timesteps and per-example noise);
* outputs — :func:`save_vae` (``vae/`` with ``scaling_factor = 1 / std`` of the *training* digits' latents,
  :func:`training_latent_stats`), :func:`save_pipeline_and_samples`, :func:`pipeline_from_checkpoint`.

Importing this module does not import diffusers; the builders do.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.errors import ConfigError
from zoo.metrics.base import Metric

__all__ = ["psnr", "LatentStats", "DigitImages", "LatentDigits", "EvalDigits", "collate_digits", "collate_latents",
           "build_vae", "build_scheduler", "TextToImage", "build_text_to_image", "text_to_image_pipeline", "digit_grid",
           "T2IDataConfig", "train_digits_loader", "eval_digits_loader", "VAEModelConfig", "UNetModelConfig",
           "T2ISampleConfig",
           "training_latent_stats", "save_vae", "save_pipeline_and_samples", "pipeline_from_checkpoint",
           "vae_training_losses", "vae_eval_outputs", "token_ids", "unet_training_loss", "unet_validation_loss"]

_logger = logging.getLogger("zoo")


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


# ====================================================================================================== settings
@dataclass
class T2IDataConfig:
    """Config section ``data`` of both recipes."""

    root: str | None = None  # MNIST folder (default: the shared sample data)
    train_split: str = "test[:7000]"
    eval_split: str = "test[7000:8000]"  # validation (zoo/data/splits.py); test[8000:] is reported, never read here
    eval_images: int = 512  # first N validation digits for the evaluation
    batch_size: int = 64
    eval_batch_size: int = 128
    colour_prob: float = 0.5  # t2i_vae: share of colour/texture composites in training
    num_workers: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.colour_prob <= 1.0:
            raise ConfigError(f"data.colour_prob must be in [0, 1], got {self.colour_prob!r}")
        for key in ("eval_images", "batch_size", "eval_batch_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(self, key)!r}")


def train_digits_loader(d: T2IDataConfig, seed: int, vae: Any = None) -> Any:
    """The training loader of ``d.train_split`` (shuffled with ``seed``, last partial batch dropped): for the VAE
    (``vae`` None) grey digits of which a share ``d.colour_prob`` are colour / texture composites, no captions; for
    the UNet the digits encoded once by the frozen ``vae`` (:class:`LatentDigits`), with drawn captions."""
    from zoo.data.images.style_digits import ColourDigits
    from zoo.data.loader import build_loader

    if vae is None:
        colour = ColourDigits(d.colour_prob, seed=seed) if d.colour_prob > 0 else None
        data, collate = DigitImages(d.train_split, d.root, colour=colour, captions=False, seed=seed), collate_digits
    else:
        data, collate = LatentDigits(DigitImages(d.train_split, d.root, captions=True, seed=seed), vae), collate_latents
    return build_loader(data, d.batch_size, shuffle=True, seed=seed, num_workers=d.num_workers, drop_last=True,
                        collate_fn=collate)


def eval_digits_loader(d: T2IDataConfig, colour_seed: int | None = None) -> Any:
    """The evaluation loader of both pre-training recipes: the first ``d.eval_images`` digits of ``d.eval_split``
    (:class:`EvalDigits`; with ``colour_seed`` also their colour composites), in order."""
    from zoo.data.loader import build_loader

    ds = EvalDigits(d.eval_split, d.root, limit=d.eval_images, colour_seed=colour_seed)
    return build_loader(ds, d.eval_batch_size, shuffle=False, collate_fn=collate_digits)


@dataclass
class VAEModelConfig:
    """Config section ``model`` of ``t2i_vae``: the ``AutoencoderKL`` (each block but the last halves the size)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    kl_weight: float = 1.0e-5

    def __post_init__(self) -> None:
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"model.block_out_channels {list(self.block_out_channels)} must be multiples of "
                              f"model.norm_num_groups={self.norm_num_groups}")
        if self.kl_weight < 0:
            raise ConfigError(f"model.kl_weight must be >= 0, got {self.kl_weight!r}")


@dataclass
class UNetModelConfig:
    """Config section ``model`` of ``t2i_unet``: the frozen VAE, the UNet and the text encoder."""

    vae: str | None = None  # the t2i_vae run's vae/ folder (pipelines: ${stage:vae}/vae)
    block_out_channels: list[int] = field(default_factory=lambda: [64, 128])
    down_block_types: list[str] = field(default_factory=lambda: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"])
    up_block_types: list[str] = field(default_factory=lambda: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
    layers_per_block: int = 2
    attention_head_dim: int = 32
    norm_num_groups: int = 32
    text_hidden: int = 64  # CLIPTextModel width (= the UNet's cross_attention_dim)
    text_layers: int = 2
    text_heads: int = 4
    train_text_encoder: bool = True
    cond_drop: float = 0.1  # share of empty captions (classifier-free guidance)

    def __post_init__(self) -> None:
        if not 0.0 <= self.cond_drop < 1.0:
            raise ConfigError(f"model.cond_drop must be in [0, 1), got {self.cond_drop!r}")
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError("model.down_block_types / model.up_block_types need one entry per "
                              "model.block_out_channels")


@dataclass
class T2ISampleConfig:
    """Config section ``sample``: the final ``samples.png`` grid."""

    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])


# ====================================================================================================== outputs
@torch.no_grad()
def training_latent_stats(vae: nn.Module, split: str, root: str | None = None, batch_size: int = 256
                          ) -> dict[str, float]:
    """``{"latent_std", "latent_mean"}`` over every entry of the posterior-mode latents ``(N, 4, 8, 8)`` of all grey
    digits of the *training* ``split`` (the images the UNet is trained on): the VAE's ``scaling_factor`` is
    ``1 / latent_std`` (SD's convention: unit-variance latents). Runs on the VAE's device, in eval mode."""
    images = DigitImages(split, root, captions=False)
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    total = total_sq = count = 0.0
    try:
        for start in range(0, len(images), batch_size):
            x = torch.stack([images[i]["pixel_values"] for i in range(start, min(start + batch_size, len(images)))])
            z = vae.encode(x.to(device)).latent_dist.mode().double()
            total += z.sum().item()
            total_sq += z.pow(2).sum().item()
            count += z.numel()
    finally:
        vae.train(was_training)
    mean = total / count
    var = (total_sq - count * mean * mean) / max(count - 1, 1)
    return {"latent_std": math.sqrt(max(var, 0.0)), "latent_mean": mean}


def save_vae(vae: nn.Module, d: T2IDataConfig, output_dir: str | Path) -> dict[str, float]:
    """Write ``output_dir/vae`` (a diffusers folder) with ``scaling_factor = 1 / std`` of the latents of the grey
    *training* digits (:func:`training_latent_stats`: a constant baked into every later stage is never measured on an
    evaluation split); returns ``train_latent_std`` / ``train_latent_mean`` / ``scaling_factor``."""
    stats = training_latent_stats(vae, d.train_split, d.root, d.eval_batch_size)
    values = {"train_latent_std": stats["latent_std"], "train_latent_mean": stats["latent_mean"],
              "scaling_factor": 1.0 / stats["latent_std"]}
    vae.register_to_config(scaling_factor=values["scaling_factor"])
    vae.save_pretrained(str(Path(output_dir) / "vae"), safe_serialization=True)
    _logger.info("saved the VAE to %s (scaling_factor %.4f = 1 / std of the %s latents)", Path(output_dir) / "vae",
                 values["scaling_factor"], d.train_split)
    return values


def save_pipeline_and_samples(vae: Any, net: TextToImage, tokenizer: Any, sample: T2ISampleConfig,
                              output_dir: str | Path) -> None:
    """Write ``output_dir/pipeline`` (a ``StableDiffusionPipeline`` folder of the parts) and ``samples.png``
    (:func:`digit_grid` with ``sample``'s settings); ``net`` is put in eval mode meanwhile."""
    was_training = net.training
    net.eval()
    pipe = text_to_image_pipeline(vae, net, tokenizer)
    pipe.save_pretrained(str(Path(output_dir) / "pipeline"), safe_serialization=True)
    _logger.info("saved the text-to-image pipeline to %s", Path(output_dir) / "pipeline")
    digit_grid(pipe, sample.seeds, sample.num_inference_steps, sample.guidance_scale).save(
        Path(output_dir) / "samples.png")
    net.train(was_training)


def pipeline_from_checkpoint(run_dir: str | Path, out_dir: str | Path, ema: bool = True) -> Path:
    """Write the ``StableDiffusionPipeline`` of a ``t2i_unet`` run's ``last.pt`` (its EMA weights when the run
    keeps them and ``ema``) to ``out_dir``: for looking at samples while the run goes on. Returns ``out_dir``."""
    from diffusers import AutoencoderKL

    from zoo.config import load_config, to_container, validate_config
    from zoo.diffusion.captions import word_tokenizer
    from zoo.engine.checkpoint import read_checkpoint

    run_dir = Path(run_dir)
    raw = to_container(load_config(run_dir / "config.yaml"))
    if raw.get("recipe") != "t2i_unet":
        raise ConfigError(f"{run_dir} is a '{raw.get('recipe')}' run, not t2i_unet")
    m = validate_config(raw.get("model", {}), UNetModelConfig, prefix="model.")
    vae = AutoencoderKL.from_pretrained(m.vae).requires_grad_(False).eval()
    tokenizer = word_tokenizer()
    net = build_text_to_image(m, vae.config, tokenizer, int(raw.get("seed", 0)))
    state = read_checkpoint(run_dir / "last.pt", what="the run's last.pt")
    weights = state["model"]
    if ema and state.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "num_updates"}
    net.load_state_dict(weights)
    text_to_image_pipeline(vae, net.eval(), tokenizer).save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


# ====================================================================================================== steps
def vae_training_losses(vae: nn.Module, x: torch.Tensor, kl_weight: float) -> dict[str, torch.Tensor]:
    """``t2i_vae``'s loss on images ``x (B, 3, 32, 32)`` in [-1, 1]: ``MSE(x̂, x) + kl_weight · KL(q(z|x) || N(0, I))``
    (the KL per pixel, as the MSE; ``x̂`` decoded from a posterior sample); ``{"loss", "mse", "kl"}``."""
    import torch.nn.functional as F

    dist = vae.encode(x).latent_dist
    recon = vae.decode(dist.sample()).sample
    mse = F.mse_loss(recon.float(), x.float())
    kl = dist.kl().mean() / x[0].numel()
    return {"loss": mse + kl_weight * kl, "mse": mse.detach(), "kl": kl.detach()}


def vae_eval_outputs(vae: nn.Module, x: torch.Tensor, xc: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image of grey digits ``x`` and their colour composites ``xc`` (``(B, 3, 32, 32)`` in [-1, 1]): the
    posterior mode ``latent (B, 4, 8, 8)`` and the reconstruction PSNR (``psnr``, ``psnr_colour``; ``(B,)``)."""
    z = vae.encode(x).latent_dist.mode()
    recon_c = vae.decode(vae.encode(xc).latent_dist.mode()).sample
    return {"latent": z, "psnr": psnr((vae.decode(z).sample + 1) / 2, (x + 1) / 2),
            "psnr_colour": psnr((recon_c + 1) / 2, (xc + 1) / 2)}


def token_ids(tokenizer: Any, captions: Sequence[str], device: torch.device) -> torch.Tensor:
    """``(B, L)`` token ids of ``captions``, padded / truncated to the tokenizer's ``model_max_length``."""
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def unet_training_loss(net: TextToImage, scheduler: Any, latents: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``t2i_unet``'s loss: epsilon-prediction MSE of ``net`` on ``latents (B, 4, 8, 8)`` (already scaled) noised
    at random DDPM timesteps, conditioned on ``ids (B, L)``."""
    import torch.nn.functional as F

    from zoo.diffusion.denoising import add_training_noise

    noisy, noise, t = add_training_noise(scheduler, latents)
    return F.mse_loss(net(noisy, t, ids).float(), noise.float())


def unet_validation_loss(net: TextToImage, scheduler: Any, latents: torch.Tensor, ids: torch.Tensor,
                         index: torch.Tensor, num_timesteps: int, batch_size: int, num_examples: int,
                         seed: int) -> torch.Tensor:
    """``(B,)``: the denoising loss of each validation example at ``num_timesteps`` fixed timesteps, with the noise
    of its ``index`` (the batches of a one-process evaluation of ``batch_size``, seeded ``seed + batch``)."""
    from zoo.diffusion.denoising import eval_timesteps, example_noise, fixed_noise_loss

    timesteps = eval_timesteps(scheduler, num_timesteps)
    noise = example_noise(index, latents.shape[1:], len(timesteps), batch_size, num_examples, lambda b: seed + b)
    return fixed_noise_loss(lambda noisy, t: net(noisy, t, ids), scheduler, latents, noise, timesteps)
