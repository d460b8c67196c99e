"""Pre-training the tiny MNIST text-to-image latent diffusion model (``tiny_t2i_mnist``) in diffusers' format.

Two recipes, run one after the other by ``configs/t2i/pipeline.yaml``:

* ``t2i_vae`` — an ``AutoencoderKL`` (32×32×3 images in [-1, 1] -> 8×8×4 latents) trained with
  ``MSE(x̂, x) + kl_weight · KL(q(z|x) || N(0, I))`` on MNIST digits zero-padded from 28×28 to 32×32 and replicated
  to RGB; a share ``data.colour_prob`` of them are colour/texture composites (:class:`ColourDigits`, skimage
  photos, never the style-benchmark textures) so the frozen VAE can also represent coloured styles later.
  Evaluation: reconstruction PSNR (grey held-out digits, and colour composites) and the latent std; the final
  one writes ``vae/`` (a diffusers folder, ``scaling_factor = 1 / std`` of the held-out latents);
* ``t2i_unet`` — a ``UNet2DConditionModel`` with cross-attention (standard diffusers attention modules
  ``to_q/to_k/to_v/to_out.0``) and a small ``CLIPTextModel`` trained *jointly* from scratch on the frozen VAE's
  latents; captions from :mod:`zoo.diffusion.captions` (paraphrase templates), tokenized by the word-level CLIP
  tokenizer; ``model.cond_drop`` of the captions are replaced by the empty caption (classifier-free guidance
  training). DDPM noise (SD's scaled-linear betas, 1000 steps), epsilon-prediction MSE. Evaluation: validation
  denoising loss at fixed timesteps/noise; the final one writes ``pipeline/`` (a ``StableDiffusionPipeline``
  folder with a DDIM scheduler) and ``samples.png`` (rows: digits 0-9).

Split: the shared MNIST is the 10,000-digit t10k file; ``test[:8000]`` trains, ``test[8000:]`` is held out.
Importing this module does not import diffusers; building a recipe does (``pip install -e .[diffusion]``).
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from zoo.config import ConfigError
from zoo.engine.data import build_loader
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe

__all__ = ["DigitImages", "T2IDataConfig", "VAEModelConfig", "T2IVAEConfig", "T2IVAERecipe", "UNetModelConfig",
           "T2IUNetConfig", "T2IUNetRecipe", "psnr", "build_scheduler", "build_vae", "TextToImage", "pipeline_from_checkpoint"]

_logger = logging.getLogger("zoo")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``(B, C, H, W)`` images in [0, 1]: ``10 · log10(1 / MSE)``; ``(B,)``."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


class DigitImages(Dataset):
    """MNIST digits as ``{"pixel_values": (3, 32, 32) in [-1, 1], "label": int, "caption": str}``.

    ``colour``: a :class:`ColourDigits` (or None: the grey digit replicated to RGB); ``captions``: draw a
    caption template per item (seeded by ``seed`` and the index, so a given epoch order is reproducible) or use
    the canonical prompt."""

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
        from zoo.data.images.style_digits import pad_digit
        from zoo.diffusion.captions import caption

        grey = pad_digit(self.mnist.data[index].float().div(255.0)[None])
        img = self.colour(grey) if self.colour is not None else grey.expand(3, -1, -1)
        label = int(self.mnist.targets[index])
        self.calls += 1
        rng = random.Random(self.seed * 1_000_003 + self.calls) if self.captions else None
        return {"pixel_values": img * 2 - 1, "label": label, "caption": caption(label, rng)}


@dataclass
class T2IDataConfig:
    """Config section ``data`` of both recipes."""

    root: str | None = None  # MNIST folder (default: the shared sample data)
    train_split: str = "test[:8000]"
    eval_split: str = "test[8000:]"
    eval_images: int = 512  # first N held-out digits for the evaluation
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


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {"pixel_values": torch.stack([b["pixel_values"] for b in batch]),
            "label": torch.tensor([b["label"] for b in batch]), "caption": [b["caption"] for b in batch]}


class LatentDigits(Dataset):
    """A :class:`DigitImages` set encoded once by the frozen ``vae`` (its posterior ``mean`` and ``std``,
    ``(4, 8, 8)`` each, unscaled) so that the UNet steps do not run the encoder; the caption is drawn per item."""

    @torch.no_grad()
    def __init__(self, images: DigitImages, vae: Any, batch_size: int = 256):
        self.images = images
        means, stds = [], []
        for start in range(0, len(images), batch_size):
            x = torch.stack([images.mnist.data[i].float().div(255.0)[None] for i in range(start, min(start + batch_size, len(images)))])
            from zoo.data.images.style_digits import pad_digit

            x = pad_digit(x).expand(-1, 3, -1, -1) * 2 - 1
            dist = vae.encode(x).latent_dist
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


def _collate_latents(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {"latent_mean": torch.stack([b["latent_mean"] for b in batch]),
            "latent_std": torch.stack([b["latent_std"] for b in batch]),
            "label": torch.tensor([b["label"] for b in batch]), "caption": [b["caption"] for b in batch]}


# ====================================================================================================== VAE
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
class T2IVAEConfig(RecipeConfig):
    recipe: str = "t2i_vae"
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    data: T2IDataConfig = field(default_factory=T2IDataConfig)


def build_vae(m: VAEModelConfig, seed: int = 0) -> Any:
    """A random ``AutoencoderKL`` for 32×32 RGB from the ``model`` section (seeded)."""
    from zoo.diffusion.pipeline import require_diffusers

    require_diffusers()
    from diffusers import AutoencoderKL

    n = len(m.block_out_channels)
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(m.block_out_channels),
                         layers_per_block=m.layers_per_block, latent_channels=m.latent_channels,
                         norm_num_groups=m.norm_num_groups, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, sample_size=32)


@register_recipe("t2i_vae")
class T2IVAERecipe(Recipe):
    """Train the tiny model's ``AutoencoderKL`` (see the module doc). Main metric: ``psnr`` (grey, held out)."""

    Config = T2IVAEConfig
    main_metric = "psnr"
    main_metric_mode = "max"

    def build_model(self) -> nn.Module:
        return build_vae(self.cfg.model, self.cfg.seed)

    def build_dataloaders(self):
        from zoo.data.images.style_digits import ColourDigits

        d = self.cfg.data
        colour = ColourDigits(d.colour_prob, seed=self.cfg.seed) if d.colour_prob > 0 else None
        train = DigitImages(d.train_split, d.root, colour=colour, captions=False, seed=self.cfg.seed)
        loader = build_loader(train, d.batch_size, shuffle=True, seed=self.cfg.seed, num_workers=d.num_workers,
                              drop_last=True, collate_fn=_collate)
        return loader, self.build_eval_loader()

    def build_eval_loader(self):
        d = self.cfg.data
        ds = DigitImages(f"{d.eval_split}", d.root, captions=False)
        ds = torch.utils.data.Subset(ds, range(min(d.eval_images, len(ds))))
        return build_loader(ds, d.eval_batch_size, shuffle=False, collate_fn=_collate)

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x = batch["pixel_values"]
        dist = model.encode(x).latent_dist
        recon = model.decode(dist.sample()).sample
        mse = F.mse_loss(recon.float(), x.float())
        kl = dist.kl().mean() / x[0].numel()  # per pixel, as the MSE
        loss = mse + self.cfg.model.kl_weight * kl
        return {"loss": loss, "mse": mse.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        from zoo.data.images.style_digits import ColourDigits

        vae = accelerator.unwrap_model(model)
        colour = ColourDigits(1.0, seed=4321)
        grey_psnr, colour_psnr, latents = [], [], []
        for batch in loader:
            x = batch["pixel_values"]
            z = vae.encode(x).latent_dist.mode()
            latents.append(z.flatten().cpu())
            grey_psnr.append(psnr((vae.decode(z).sample + 1) / 2, (x + 1) / 2).cpu())
            xc = torch.stack([colour((xi[:1] + 1) / 2) for xi in x]).to(x.device) * 2 - 1
            colour_psnr.append(psnr((vae.decode(vae.encode(xc).latent_dist.mode()).sample + 1) / 2, (xc + 1) / 2).cpu())
        z = torch.cat(latents)
        std = z.std().item()
        metrics = {"psnr": torch.cat(grey_psnr).mean().item(), "psnr_colour": torch.cat(colour_psnr).mean().item(),
                   "latent_std": std, "latent_mean": z.mean().item()}
        if output_dir is not None and accelerator.is_main_process:
            vae.register_to_config(scaling_factor=1.0 / std)
            vae.save_pretrained(str(Path(output_dir) / "vae"), safe_serialization=True)
            _logger.info("saved the VAE to %s (scaling_factor %.4f)", Path(output_dir) / "vae", 1.0 / std)
        return metrics


# ====================================================================================================== UNet
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
        if len(self.down_block_types) != len(self.block_out_channels) or len(self.up_block_types) != len(self.block_out_channels):
            raise ConfigError("model.down_block_types / model.up_block_types need one entry per model.block_out_channels")


@dataclass
class T2ISampleConfig:
    """Config section ``sample``: the final ``samples.png`` grid."""

    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])


@dataclass
class T2IUNetConfig(RecipeConfig):
    recipe: str = "t2i_unet"
    model: UNetModelConfig = field(default_factory=UNetModelConfig)
    data: T2IDataConfig = field(default_factory=lambda: T2IDataConfig(colour_prob=0.0))
    sample: T2ISampleConfig = field(default_factory=T2ISampleConfig)
    eval_timesteps: int = 8
    eval_seed: int = 1234


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
        return build_scheduler("ddpm")

    def build_model(self) -> nn.Module:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        m = self.cfg.model
        torch.manual_seed(self.cfg.seed)
        latent_size = 32 // 2 ** (len(self.vae.config.block_out_channels) - 1)  # 8 for the 3-block VAE
        unet = UNet2DConditionModel(
            sample_size=latent_size, in_channels=self.vae.config.latent_channels, out_channels=self.vae.config.latent_channels,
            layers_per_block=m.layers_per_block, block_out_channels=tuple(m.block_out_channels),
            down_block_types=tuple(m.down_block_types), up_block_types=tuple(m.up_block_types),
            cross_attention_dim=m.text_hidden, attention_head_dim=m.attention_head_dim, norm_num_groups=m.norm_num_groups,
        )
        tok = self.tokenizer
        text_config = CLIPTextConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            hidden_size=m.text_hidden, intermediate_size=2 * m.text_hidden, num_attention_heads=m.text_heads,
            num_hidden_layers=m.text_layers, vocab_size=len(tok), max_position_embeddings=tok.model_max_length,
            layer_norm_eps=1e-5, projection_dim=m.text_hidden,
        )
        text_encoder = CLIPTextModel(text_config)
        text_encoder.requires_grad_(m.train_text_encoder)
        return TextToImage(unet, text_encoder)

    def build_dataloaders(self):
        d = self.cfg.data
        train = LatentDigits(DigitImages(d.train_split, d.root, captions=True, seed=self.cfg.seed), self.vae)
        loader = build_loader(train, d.batch_size, shuffle=True, seed=self.cfg.seed, num_workers=d.num_workers,
                              drop_last=True, collate_fn=_collate_latents)
        return loader, self.build_eval_loader()

    def build_eval_loader(self):
        d = self.cfg.data
        ds = DigitImages(d.eval_split, d.root, captions=False)
        ds = torch.utils.data.Subset(ds, range(min(d.eval_images, len(ds))))
        return build_loader(ds, d.eval_batch_size, shuffle=False, collate_fn=_collate)

    def _tokens(self, captions: list[str], device: torch.device) -> torch.Tensor:
        tok = self.tokenizer
        return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(device)

    @torch.no_grad()
    def _latents(self, x: torch.Tensor, sample: bool) -> torch.Tensor:
        if self._vae_device != x.device:
            self.vae.to(x.device)
            self._vae_device = x.device
        dist = self.vae.encode(x).latent_dist
        return (dist.sample() if sample else dist.mode()) * self.vae.config.scaling_factor

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        mean, std = batch["latent_mean"], batch["latent_std"]
        x = mean
        latents = (mean + std * torch.randn_like(std)) * self.vae.config.scaling_factor  # a posterior sample
        captions = [("" if torch.rand(()).item() < self.cfg.model.cond_drop else c) for c in batch["caption"]]
        ids = self._tokens(captions, x.device)
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x.shape[0],), device=x.device)
        pred = model(self.noise_scheduler.add_noise(latents, noise, t), t, ids)
        mse = F.mse_loss(pred.float(), noise.float())
        return {"loss": mse}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        from zoo.diffusion.captions import prompt

        net = accelerator.unwrap_model(model)
        was_training = net.training
        net.eval()
        sched = self.noise_scheduler
        timesteps = torch.linspace(0, sched.config.num_train_timesteps - 1, self.cfg.eval_timesteps).round().long()
        losses = []
        for i, batch in enumerate(loader):
            x = batch["pixel_values"]
            latents = self._latents(x, sample=False)
            ids = self._tokens([prompt(int(k)) for k in batch["label"]], x.device)
            gen = torch.Generator().manual_seed(self.cfg.eval_seed + i)
            total = torch.zeros(x.shape[0])
            for tv in timesteps.tolist():
                noise = torch.randn(latents.shape, generator=gen).to(latents.device)
                t = torch.full((x.shape[0],), tv, device=x.device, dtype=torch.long)
                pred = net(sched.add_noise(latents, noise, t), t, ids)
                total += F.mse_loss(pred.float(), noise, reduction="none").mean((1, 2, 3)).cpu()
            losses.append(total / len(timesteps))
        metrics = {"val_loss": torch.cat(losses).mean().item()}
        if output_dir is not None and accelerator.is_main_process:
            pipe = self.pipeline(net)
            path = Path(output_dir) / "pipeline"
            pipe.save_pretrained(str(path), safe_serialization=True)
            _logger.info("saved the text-to-image pipeline to %s", path)
            self.sample_grid(pipe).save(Path(output_dir) / "samples.png")
        net.train(was_training)
        return metrics

    def pipeline(self, net: TextToImage) -> Any:
        """A ``StableDiffusionPipeline`` of the frozen VAE, ``net``'s UNet and text encoder, the word tokenizer and
        a DDIM scheduler (no safety checker)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=self.vae, text_encoder=net.text_encoder, tokenizer=self.tokenizer,
                                       unet=net.unet, scheduler=build_scheduler("ddim"), safety_checker=None,
                                       feature_extractor=None, image_encoder=None, requires_safety_checker=False)

    def sample_grid(self, pipe: Any) -> Any:
        """Rows: digits 0-9 (canonical prompt); columns: ``sample.seeds``."""
        from zoo.diffusion.generate import generate_digits
        from zoo.diffusion.sampling import make_grid
        from PIL import Image

        s = self.cfg.sample
        rows = []
        for seed in s.seeds:
            imgs = generate_digits(pipe, range(10), seed=seed, num_inference_steps=s.num_inference_steps,
                                   guidance_scale=s.guidance_scale)
            rows.append(imgs)
        cols = torch.stack(rows, 1)  # (10, S, 3, 32, 32)
        to_pil = lambda t: Image.fromarray((t.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())  # noqa: E731
        return make_grid([[to_pil(t) for t in row] for row in cols], [str(d) for d in range(10)], min_size=32)


def pipeline_from_checkpoint(run_dir: str | Path, out_dir: str | Path, ema: bool = True) -> Path:
    """Write the ``StableDiffusionPipeline`` of a ``t2i_unet`` run's ``last.pt`` (its EMA weights when the run
    keeps them and ``ema``) to ``out_dir``: for looking at samples while the run goes on. Returns ``out_dir``."""
    from zoo.cli import load_run_config

    run_dir = Path(run_dir)
    recipe_cls, cfg, _ = load_run_config(str(run_dir / "config.yaml"))
    if recipe_cls is not T2IUNetRecipe:
        raise ValueError(f"{run_dir} is a '{cfg.recipe}' run, not t2i_unet")
    recipe = recipe_cls(cfg)
    net = recipe.build_model()
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    weights = state["model"]
    if ema and state.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "num_updates"}
    net.load_state_dict(weights)
    recipe.pipeline(net.eval()).save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)
