"""Pre-training the tiny MNIST text-to-image latent diffusion model (``tiny_t2i_mnist``) in diffusers' format.

Two recipes, run one after the other by ``configs/t2i/pipeline.yaml``:

* ``t2i_vae`` — an ``AutoencoderKL`` (32×32×3 images in [-1, 1] -> 8×8×4 latents) trained with
  ``MSE(x̂, x) + kl_weight · KL(q(z|x) || N(0, I))`` on MNIST digits zero-padded from 28×28 to 32×32 and replicated
  to RGB; a share ``data.colour_prob`` of them are colour/texture composites (:class:`ColourDigits`, skimage
  photos, never the style-benchmark textures) so the frozen VAE can also represent coloured styles later.
  Evaluation (validation split): reconstruction PSNR (grey digits, and colour composites) and the latent std;
  the final one writes ``vae/`` (a diffusers folder, ``scaling_factor = 1 / std`` of the latents of the grey
  *training* digits, :func:`training_latent_stats`: a constant baked into every later stage is never measured on
  an evaluation split);
* ``t2i_unet`` — a ``UNet2DConditionModel`` with cross-attention (standard diffusers attention modules
  ``to_q/to_k/to_v/to_out.0``) and a small ``CLIPTextModel`` trained *jointly* from scratch on the frozen VAE's
  latents; captions from :mod:`zoo.diffusion.captions` (paraphrase templates), tokenized by the word-level CLIP
  tokenizer; ``model.cond_drop`` of the captions are replaced by the empty caption (classifier-free guidance
  training). DDPM noise (SD's scaled-linear betas, 1000 steps), epsilon-prediction MSE. Evaluation: validation
  denoising loss at fixed timesteps/noise; the final one writes ``pipeline/`` (a ``StableDiffusionPipeline``
  folder with a DDIM scheduler) and ``samples.png`` (rows: digits 0-9).

The model's parts (data, networks, pipeline) are :mod:`zoo.diffusion.t2i`; the denoising objective and its
fixed-noise validation loss :mod:`zoo.diffusion.denoising`. Evaluations go through the one evaluation loop
(per-example outputs gathered across processes; the colour composites and the validation noise are fixed per
held-out example). Split (:mod:`zoo.data.splits`): the shared MNIST is the 10,000-digit t10k file; ``test[:7000]``
trains every part, ``test[7000:8000]`` validates (``best.pt``, the logged evaluations), ``test[8000:]`` is reported
and read by no pre-training stage (``tests/diffusion/test_t2i_pretrain.py`` checks it).
Importing this module does not import diffusers; building a recipe does (``pip install -e .[diffusion]``).
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
from zoo.metrics.base import MeanMetric
from zoo.recipes.base import NOTHING_TRAINED, Recipe, RecipeConfig, register_recipe

__all__ = ["T2IDataConfig", "VAEModelConfig", "T2IVAEConfig", "T2IVAERecipe", "UNetModelConfig", "T2ISampleConfig",
           "T2IUNetConfig", "T2IUNetRecipe", "pipeline_from_checkpoint", "training_latent_stats",
           "T2IMeasureSection", "T2IMeasureConfig", "T2IMeasureRecipe"]

_logger = logging.getLogger("zoo")


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


def _eval_loader(d: T2IDataConfig, colour_seed: int | None = None) -> Any:
    from zoo.diffusion.t2i import EvalDigits, collate_digits

    ds = EvalDigits(d.eval_split, d.root, limit=d.eval_images, colour_seed=colour_seed)
    return build_loader(ds, d.eval_batch_size, shuffle=False, collate_fn=collate_digits)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (its methods, e.g. a VAE's ``encode``, are not on the wrapper)."""
    return getattr(model, "module", model)


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
        from zoo.data.images.style_digits import ColourDigits
        from zoo.diffusion.t2i import DigitImages, collate_digits

        d = self.cfg.data
        colour = ColourDigits(d.colour_prob, seed=self.cfg.seed) if d.colour_prob > 0 else None
        train = DigitImages(d.train_split, d.root, colour=colour, captions=False, seed=self.cfg.seed)
        loader = build_loader(train, d.batch_size, shuffle=True, seed=self.cfg.seed, num_workers=d.num_workers,
                              drop_last=True, collate_fn=collate_digits)
        return loader, self.build_eval_loader()

    def build_eval_loader(self):
        return _eval_loader(self.cfg.data, colour_seed=self.COLOUR_SEED)

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x = batch["pixel_values"]
        dist = model.encode(x).latent_dist
        recon = model.decode(dist.sample()).sample
        mse = F.mse_loss(recon.float(), x.float())
        kl = dist.kl().mean() / x[0].numel()  # per pixel, as the MSE
        loss = mse + self.cfg.model.kl_weight * kl
        return {"loss": loss, "mse": mse.detach(), "kl": kl.detach()}

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Per image: the posterior mode ``latent``, the reconstruction PSNR of the grey digit (``psnr``) and of
        its colour composite (``psnr_colour``)."""
        from zoo.diffusion.t2i import psnr

        vae = _unwrap(model)
        x, xc = batch["pixel_values"], batch["colour_pixel_values"]
        z = vae.encode(x).latent_dist.mode()
        recon_c = vae.decode(vae.encode(xc).latent_dist.mode()).sample
        return {"latent": z, "psnr": psnr((vae.decode(z).sample + 1) / 2, (x + 1) / 2),
                "psnr_colour": psnr((recon_c + 1) / 2, (xc + 1) / 2)}

    def build_metrics(self, kind: str = "eval") -> Any:
        from zoo.diffusion.t2i import LatentStats

        return [MeanMetric("psnr"), MeanMetric("psnr_colour"), LatentStats()]

    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        """The gathered metrics; with ``output_dir`` (the final evaluation) also ``vae/`` (a diffusers folder with
        ``scaling_factor = 1 / std`` of the training digits' latents, :func:`training_latent_stats`; also returned
        as ``train_latent_std`` / ``train_latent_mean`` / ``scaling_factor``)."""
        values = super().evaluate(model, loader, accelerator)
        if output_dir is not None and accelerator.is_main_process:
            vae = accelerator.unwrap_model(model)
            d = self.cfg.data
            stats = training_latent_stats(vae, d.train_split, d.root, d.eval_batch_size)
            values.update(train_latent_std=stats["latent_std"], train_latent_mean=stats["latent_mean"],
                          scaling_factor=1.0 / stats["latent_std"])
            vae.register_to_config(scaling_factor=values["scaling_factor"])
            vae.save_pretrained(str(Path(output_dir) / "vae"), safe_serialization=True)
            _logger.info("saved the VAE to %s (scaling_factor %.4f = 1 / std of the %s latents)",
                         Path(output_dir) / "vae", values["scaling_factor"], d.train_split)
        return values


@torch.no_grad()
def training_latent_stats(vae: nn.Module, split: str, root: str | None = None, batch_size: int = 256
                          ) -> dict[str, float]:
    """``{"latent_std", "latent_mean"}`` over every entry of the posterior-mode latents ``(N, 4, 8, 8)`` of all grey
    digits of the *training* ``split`` (the images the UNet is trained on): the VAE's ``scaling_factor`` is
    ``1 / latent_std`` (SD's convention: unit-variance latents). Runs on the VAE's device, in eval mode."""
    from zoo.diffusion.t2i import DigitImages

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
        from zoo.diffusion.t2i import DigitImages, LatentDigits, collate_latents

        d = self.cfg.data
        train = LatentDigits(DigitImages(d.train_split, d.root, captions=True, seed=self.cfg.seed), self.vae)
        loader = build_loader(train, d.batch_size, shuffle=True, seed=self.cfg.seed, num_workers=d.num_workers,
                              drop_last=True, collate_fn=collate_latents)
        return loader, self.build_eval_loader()

    def build_eval_loader(self):
        loader = _eval_loader(self.cfg.data)
        self._eval_size = len(loader.dataset)
        return loader

    def _tokens(self, captions: list[str], device: torch.device) -> torch.Tensor:
        tok = self.tokenizer
        return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(device)

    @torch.no_grad()
    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        if self._vae_device != x.device:
            self.vae.to(x.device)
            self._vae_device = x.device
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        from zoo.diffusion.denoising import add_training_noise

        mean, std = batch["latent_mean"], batch["latent_std"]
        latents = (mean + std * torch.randn_like(std)) * self.vae.config.scaling_factor  # a posterior sample
        captions = [("" if torch.rand(()).item() < self.cfg.model.cond_drop else c) for c in batch["caption"]]
        ids = self._tokens(captions, mean.device)
        noisy, noise, t = add_training_noise(self.noise_scheduler, latents)
        return {"loss": F.mse_loss(model(noisy, t, ids).float(), noise.float())}

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """``{"val_loss": (B,)}``: the denoising loss of each validation digit under its canonical prompt at
        ``eval_timesteps`` fixed timesteps, with the noise of its index (the batches of a one-process evaluation,
        seeded ``eval_seed + batch``)."""
        from zoo.diffusion.captions import prompt
        from zoo.diffusion.denoising import eval_timesteps, example_noise, fixed_noise_loss

        x = batch["pixel_values"]
        latents = self._latents(x)
        ids = self._tokens([prompt(int(k)) for k in batch["label"]], x.device)
        timesteps = eval_timesteps(self.noise_scheduler, self.cfg.eval_timesteps)
        noise = example_noise(batch["index"], latents.shape[1:], len(timesteps), self.cfg.data.eval_batch_size,
                              self._eval_size, lambda b: self.cfg.eval_seed + b)
        loss = fixed_noise_loss(lambda noisy, t: model(noisy, t, ids), self.noise_scheduler, latents, noise, timesteps)
        return {"val_loss": loss}

    def build_metrics(self, kind: str = "eval") -> Any:
        return [MeanMetric("val_loss")]

    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        """The gathered ``val_loss``; with ``output_dir`` (the final evaluation) also ``pipeline/`` (a
        ``StableDiffusionPipeline`` folder) and ``samples.png`` (rows: digits 0-9)."""
        from zoo.diffusion.t2i import digit_grid, text_to_image_pipeline

        values = super().evaluate(model, loader, accelerator)
        if output_dir is not None and accelerator.is_main_process:
            net = accelerator.unwrap_model(model)
            was_training = net.training
            net.eval()
            pipe = text_to_image_pipeline(self.vae, net, self.tokenizer)
            pipe.save_pretrained(str(Path(output_dir) / "pipeline"), safe_serialization=True)
            _logger.info("saved the text-to-image pipeline to %s", Path(output_dir) / "pipeline")
            s = self.cfg.sample
            digit_grid(pipe, s.seeds, s.num_inference_steps, s.guidance_scale).save(Path(output_dir) / "samples.png")
            net.train(was_training)
        return values


def pipeline_from_checkpoint(run_dir: str | Path, out_dir: str | Path, ema: bool = True) -> Path:
    """Write the ``StableDiffusionPipeline`` of a ``t2i_unet`` run's ``last.pt`` (its EMA weights when the run
    keeps them and ``ema``) to ``out_dir``: for looking at samples while the run goes on. Returns ``out_dir``."""
    from zoo.config import load_config, validate_config
    from zoo.diffusion.t2i import text_to_image_pipeline
    from zoo.engine.checkpoint import read_checkpoint

    run_dir = Path(run_dir)
    raw = load_config(run_dir / "config.yaml")
    if raw.get("recipe") != "t2i_unet":
        raise ConfigError(f"{run_dir} is a '{raw.get('recipe')}' run, not t2i_unet")
    recipe = T2IUNetRecipe(validate_config(raw, T2IUNetConfig))
    net = recipe.build_model()
    state = read_checkpoint(run_dir / "last.pt", what="the run's last.pt")
    weights = state["model"]
    if ema and state.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "num_updates"}
    net.load_state_dict(weights)
    text_to_image_pipeline(recipe.vae, net.eval(), recipe.tokenizer).save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


# ====================================================================================================== measure
@dataclass
class T2IMeasureSection:
    """Config section ``measure`` of ``t2i_measure``."""

    pretrained: str = "tiny_t2i_mnist"  # a shipped pipeline name or a diffusers folder
    split: str = "test[8000:]"  # the reported split
    per_digit: int = 20  # prompt fidelity: images per digit (canonical prompt), sampling seeds from ``seed``
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    batch_size: int = 100
    psnr_images: int = 512  # VAE PSNR: the first N digits of ``split``
    colour_seed: int = 4321  # of the colour composites (as the VAE's evaluation)
    mnist_root: str | None = None
    classifier: str | None = None  # default: the shipped convnet_small_mnist32


@dataclass
class T2IMeasureConfig(RecipeConfig):
    recipe: str = "t2i_measure"
    measure: T2IMeasureSection = field(default_factory=T2IMeasureSection)


@register_recipe("t2i_measure")
class T2IMeasureRecipe(Recipe):
    """The shipped model's reported numbers on the reported split (``configs/t2i/evaluate.yaml``; one cell per
    sampling seed ``seed``): ``prompt_fidelity`` — the digit classifier's accuracy (%) on ``per_digit`` images per
    digit of the canonical prompt (25 DDIM steps, guidance 4; image ``(k, d)`` from the noise of seed
    ``seed + 1000 k + d``); ``vae_psnr`` / ``vae_psnr_colour`` — reconstruction PSNR (dB, posterior mode) of the
    first ``psnr_images`` grey digits of ``split`` and of their colour composites; ``classifier_top1`` — the digit
    classifier's accuracy on every digit of ``split`` (its own reported number). The last three do not depend on
    the seed; the prompt fidelity's per-image values are saved (``per_example.npz``) for the summary's bootstrap
    over images. The module's split rule holds here too: this recipe reads only ``measure.split``."""

    Config = T2IMeasureConfig
    run_shape = "study"
    unread_keys = NOTHING_TRAINED

    def run(self, ctx: Any) -> dict[str, Any]:
        import numpy as np

        from zoo.data.images.mnist import MNIST
        from zoo.data.images.style_digits import ColourDigits, pad_digit
        from zoo.diffusion.generate import collate_items, generate_step
        from zoo.diffusion.pretrained import PRETRAINED_PIPELINES, load_pretrained_pipeline
        from zoo.diffusion.style_eval import generation_items
        from zoo.diffusion.t2i import psnr
        from zoo.metrics.generation import classifier_logits_features, load_digit_classifier
        from zoo.studies import save_per_example

        m = self.cfg.measure
        if m.pretrained in PRETRAINED_PIPELINES:
            pipe = load_pretrained_pipeline(m.pretrained)
        else:
            from zoo.diffusion.pipeline import load_pipeline

            pipe = load_pipeline(m.pretrained, torch_dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)
        classifier = load_digit_classifier(m.classifier)
        step = generate_step(num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale)
        items = generation_items("", m.per_digit, self.cfg.seed)
        hits = []
        with torch.no_grad():
            for start in range(0, len(items), m.batch_size):
                out = step(pipe, collate_items(items[start:start + m.batch_size]))
                pred = classifier_logits_features(classifier, out["images"])[0].argmax(1)
                hits.append(100.0 * (pred == out["digit"]).double())
        fidelity = torch.cat(hits)
        ds = MNIST(root=m.mnist_root, split=m.split)
        grey = pad_digit(ds.data.float().div(255.0)[:, None]).expand(-1, 3, -1, -1)
        top1 = 100.0 * (classifier_logits_features(classifier, grey)[0].argmax(1) == ds.targets).double()
        x = grey[:m.psnr_images]
        colour = ColourDigits(1.0, seed=m.colour_seed)
        xc = torch.stack([colour(img[:1]) for img in x])
        vae = pipe.vae.eval()
        with torch.no_grad():
            rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample
            rec_c = vae.decode(vae.encode(xc * 2 - 1).latent_dist.mode()).sample
        p_grey, p_colour = psnr((rec + 1) / 2, x), psnr((rec_c + 1) / 2, xc)
        save_per_example(ctx.output_dir, {"prompt_fidelity": fidelity}, example_id=np.arange(len(fidelity)))
        return {"prompt_fidelity": fidelity.mean().item(), "vae_psnr": p_grey.double().mean().item(),
                "vae_psnr_colour": p_colour.double().mean().item(), "classifier_top1": top1.mean().item(),
                "per_digit": {str(d): fidelity[d::10].mean().item() for d in range(10)},
                "images": len(fidelity), "split": m.split}
