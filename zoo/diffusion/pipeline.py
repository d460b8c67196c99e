"""Loading Stable Diffusion (1.x / 2.x) and SDXL from local files: a diffusers folder or one ``.safetensors`` /
``.ckpt`` checkpoint.

The pipeline class comes from the folder's ``model_index.json`` (``_class_name``): ``StableDiffusionPipeline`` or
``StableDiffusionXLPipeline`` (two text encoders, pooled text embeddings and size/crop time ids). Single files are
SD unless ``single_file_config`` (a diffusers folder of the same family) says SDXL, or ``pipeline_class`` is given.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.errors import CheckpointError, ConfigError, MissingDependencyError

__all__ = ["require_diffusers", "dtype_kwargs", "SINGLE_FILE_SUFFIXES", "PIPELINE_CLASSES", "pipeline_class_name",
           "resolve_pipeline_path", "load_pipeline", "SDComponents", "load_components", "dtype_from_precision",
           "TokenizeCollate"]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
#: the diffusers pipeline classes this module loads (``model_index.json``'s ``_class_name``)
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def require_diffusers() -> None:
    """Raise :class:`~zoo.errors.MissingDependencyError` naming the extra when diffusers / transformers are not
    installed."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"Stable Diffusion support needs diffusers and transformers ({exc.name} is missing): "
            "pip install 'zoo[diffusion]'"
        ) from exc


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``{"dtype": dtype}`` for diffusers versions that renamed ``torch_dtype`` (>= 0.36), else ``{"torch_dtype": ...}``."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def dtype_from_precision(mixed_precision: str | None) -> torch.dtype:
    """``"fp16"`` -> float16, ``"bf16"`` -> bfloat16, anything else -> float32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(str(mixed_precision).lower(), torch.float32)


def resolve_pipeline_path(path: str | os.PathLike | None, key: str = "model.pretrained") -> tuple[str, Path]:
    """``("folder" | "single_file", path)``; raises ``FileNotFoundError`` / :class:`~zoo.errors.ConfigError` naming
    the fix."""
    if not path:
        raise ConfigError(f"{key} is not set: give a local diffusers Stable Diffusion folder (with model_index.json) "
                         "or a single .safetensors/.ckpt checkpoint")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"Stable Diffusion model not found at '{p}' ({key}): give a local diffusers folder "
                                "(with model_index.json) or a single .safetensors/.ckpt checkpoint")
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise FileNotFoundError(f"'{p}' ({key}) is a folder but has no model_index.json: it must be a diffusers "
                                    "pipeline folder as written by StableDiffusionPipeline.save_pretrained")
        return "folder", p
    if p.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ConfigError(f"'{p}' ({key}) is a file but not a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)})")
    return "single_file", p


def pipeline_class_name(folder: str | os.PathLike) -> str:
    """``_class_name`` of a diffusers folder's ``model_index.json`` (one of :data:`PIPELINE_CLASSES`); raises a
    :class:`~zoo.errors.ConfigError` naming the file for other pipelines."""
    index = Path(folder) / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name", "StableDiffusionPipeline")
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {index}: {exc}") from exc
    if name not in PIPELINE_CLASSES:
        raise ConfigError(f"{index} describes a {name}; supported: {', '.join(PIPELINE_CLASSES)}")
    return name


def load_pipeline(
    path: str | os.PathLike,
    *,
    single_file_config: str | os.PathLike | None = None,
    original_config: str | os.PathLike | None = None,
    torch_dtype: torch.dtype | None = None,
    key: str = "model.pretrained",
    pipeline_class: str | None = None,
) -> Any:
    """A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (no safety checker) from a diffusers folder
    (class from its ``model_index.json``) or a single checkpoint file.

    Single files go through ``<class>.from_single_file``. Offline, diffusers needs the architecture's configs:
    ``single_file_config`` (a local diffusers folder of the same model family, e.g. a saved SD 1.5 pipeline; its
    class is used) or ``original_config`` (the original ``v1-inference.yaml``). ``pipeline_class`` forces the class.
    """
    require_diffusers()
    import diffusers

    kind, p = resolve_pipeline_path(path, key)
    if pipeline_class is None:
        if kind == "folder":
            pipeline_class = pipeline_class_name(p)
        elif single_file_config is not None and (Path(single_file_config) / "model_index.json").is_file():
            pipeline_class = pipeline_class_name(single_file_config)
        else:
            pipeline_class = "StableDiffusionPipeline"
    if pipeline_class not in PIPELINE_CLASSES:
        raise ValueError(f"pipeline_class must be one of {', '.join(PIPELINE_CLASSES)}, got '{pipeline_class}'")
    cls = getattr(diffusers, pipeline_class)
    sdxl = pipeline_class == "StableDiffusionXLPipeline"
    kwargs: dict[str, Any] = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
    if torch_dtype is not None:
        kwargs.update(dtype_kwargs(torch_dtype))
    if kind == "folder":
        return cls.from_pretrained(str(p), local_files_only=True, **kwargs)
    if single_file_config is not None:
        cfg = Path(single_file_config)
        if not (cfg / "model_index.json").is_file():
            raise FileNotFoundError(f"single_file_config '{cfg}' must be a local diffusers pipeline folder with model_index.json")
        kwargs["config"] = str(cfg)
        kwargs["local_files_only"] = True
    if original_config is not None:
        if not Path(original_config).is_file():
            raise FileNotFoundError(f"original_config file not found: {original_config}")
        kwargs["original_config"] = str(original_config)
    if not sdxl:
        kwargs["load_safety_checker"] = False
    try:
        return cls.from_single_file(str(p), **kwargs)
    except Exception as exc:
        if single_file_config is None and original_config is None:
            raise CheckpointError(
                f"could not load the single-file checkpoint '{p}' ({exc}). Offline, diffusers needs the model configs: "
                "set model.single_file_config to a local diffusers folder of the same architecture, or "
                "model.original_config to the original inference yaml"
            ) from exc
        raise


@dataclass
class SDComponents:
    """What a fine-tuning run needs: the trainable UNet, the frozen parts, and the two schedulers. SDXL has a
    second text encoder (``CLIPTextModelWithProjection``: its pooled output conditions the UNet) and tokenizer."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any  # DDPM, for adding noise in training
    scheduler: Any  # the pipeline's own (inference) scheduler
    text_encoder_2: Any = None  # SDXL only
    tokenizer_2: Any = None
    pipeline_class: str = "StableDiffusionPipeline"

    frozen_on: Any = None  # (device, dtype) the frozen parts were last moved to (place_frozen)

    @property
    def is_sdxl(self) -> bool:
        return self.pipeline_class == "StableDiffusionXLPipeline"

    @property
    def text_encoders(self) -> list[Any]:
        return [t for t in (self.text_encoder, self.text_encoder_2) if t is not None]

    def place_frozen(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the frozen parts (VAE, text encoders) to ``device`` in ``dtype`` (the mixed-precision dtype), once."""
        if self.frozen_on != (device, dtype):
            for module in (self.vae, *self.text_encoders):
                module.to(device=device, dtype=dtype if module.dtype != dtype else None)  # .to(dtype) warns if equal
            self.frozen_on = (device, dtype)

    def collate(self) -> "TokenizeCollate":
        """The loader's collate function for captioned images (this pipeline's tokenizers)."""
        return TokenizeCollate(self.tokenizer, self.tokenizer_2)

    def encode(self, batch: dict[str, torch.Tensor], sample: bool, dtype: torch.dtype, resolution: int
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """``(latents (B, 4, h, w), text embedding (B, L, D), added_cond_kwargs or None)`` of a batch
        (``pixel_values (B, 3, H, W)`` in [-1, 1], ``input_ids (B, L)``, SDXL also ``input_ids_2``), without
        gradients; the VAE posterior is sampled (``sample``) or its mode taken, in ``dtype``.

        SD: the text encoder's last hidden state. SDXL (as diffusers' ``train_text_to_image_sdxl.py``): the
        penultimate hidden states of both encoders concatenated ``(B, L, D1 + D2)``, the second encoder's pooled
        projection as ``text_embeds (B, P)`` and ``time_ids (B, 6)`` = original size, crop top-left, target size.
        Deviation: the time ids are ``(R, R, 0, 0, R, R)`` for ``resolution`` R (the images were resized and
        cropped to ``R × R``), not each image's original size and crop offset.
        """
        px = batch["pixel_values"]
        with torch.no_grad():
            dist = self.vae.encode(px.to(dtype)).latent_dist
            latents = (dist.sample() if sample else dist.mode()) * self.vae.config.scaling_factor
            if not self.is_sdxl:
                return latents, self.text_encoder(batch["input_ids"], return_dict=False)[0], None
            h1 = self.text_encoder(batch["input_ids"], output_hidden_states=True)
            h2 = self.text_encoder_2(batch["input_ids_2"], output_hidden_states=True)
            text = torch.cat([h1.hidden_states[-2], h2.hidden_states[-2]], dim=-1)
            r = resolution
            time_ids = torch.tensor([[r, r, 0, 0, r, r]], device=px.device, dtype=text.dtype).expand(px.shape[0], 6)
        return latents, text, {"text_embeds": h2.text_embeds, "time_ids": time_ids}

    def pipeline(self, unet: Any = None) -> Any:
        """A pipeline of these components (``unet`` replaces the UNet, e.g. the trained one), no safety checker."""
        import diffusers

        parts = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                     unet=self.unet if unet is None else unet, scheduler=self.scheduler)
        if self.is_sdxl:
            return diffusers.StableDiffusionXLPipeline(text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
                                                       **parts)
        return diffusers.StableDiffusionPipeline(safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False, **parts)


class TokenizeCollate:
    """Stack images (and example indices) and tokenize captions to ``(B, model_max_length)`` ids (picklable for
    loader workers): ``input_ids``, and ``input_ids_2`` with SDXL's second tokenizer."""

    def __init__(self, tokenizer: Any, tokenizer_2: Any = None):
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        captions = [b["caption"] for b in batch]
        out = {"pixel_values": torch.stack([b["pixel_values"] for b in batch])}
        if "index" in batch[0]:
            out["index"] = torch.tensor([b["index"] for b in batch])
        for key, tok in (("input_ids", self.tokenizer), ("input_ids_2", self.tokenizer_2)):
            if tok is not None:
                out[key] = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                               return_tensors="pt").input_ids
        return out


def load_components(path: str | os.PathLike, **kwargs: Any) -> SDComponents:
    """:func:`load_pipeline` split into components; the training scheduler is DDPM with the pipeline's config
    (what diffusers' training scripts use)."""
    from diffusers import DDPMScheduler

    pipe = load_pipeline(path, **kwargs)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return SDComponents(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, noise_scheduler, pipe.scheduler,
                        text_encoder_2=getattr(pipe, "text_encoder_2", None), tokenizer_2=getattr(pipe, "tokenizer_2", None),
                        pipeline_class=type(pipe).__name__)
