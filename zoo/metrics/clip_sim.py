"""CLIP similarities of generated images: image–image (CLIP-I, content / style fidelity to reference images) and
image–text (CLIP-T, prompt fidelity), with a CLIP model from a local folder (transformers' ``CLIPModel`` format:
``config.json`` + weights, with its tokenizer; nothing is downloaded).

Preprocessing is fixed and stated here, because papers of this line disagree on it (PIL resizes of uint8 images
by the CLIP processor, torchvision resizes of float tensors, with or without antialiasing, centre crop or squash):
images ``(N, 3, H, W)`` float in [0, 1] are

1. resized so the *shorter* side is ``image_size`` (the model's ``vision_config.image_size``, 224 for ViT-B/32),
   bicubic with antialiasing (``torch.nn.functional.interpolate(..., mode="bicubic", antialias=True)``), clamped
   to [0, 1];
2. centre-cropped to ``image_size × image_size``;
3. normalised with the model's mean / std (``preprocessor_config.json``'s ``image_mean`` / ``image_std`` when the
   folder has one, else OpenAI CLIP's ``(0.4815, 0.4578, 0.4082)`` / ``(0.2686, 0.2613, 0.2758)``).

Texts are tokenised with the folder's tokenizer, padded / truncated to its ``model_max_length``. Embeddings are
the projected pooled outputs, L2-normalised; similarities are plain cosines in [-1, 1] (not CLIPScore's
``2.5 · max(cos, 0)``, not × 100). Everything runs in batches of ``batch_size`` under ``torch.no_grad``.

Importing this module imports neither transformers nor open_clip; :class:`CLIPScorer` raises an ``ImportError``
naming the extra (``pip install 'zoo[diffusion]'``) when transformers is missing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "CLIPScorer", "preprocess", "clip_image_similarity", "clip_text_similarity"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(images: torch.Tensor, image_size: int, mean: Sequence[float] = OPENAI_MEAN,
               std: Sequence[float] = OPENAI_STD) -> torch.Tensor:
    """``(N, 3, H, W)`` in [0, 1] -> ``(N, 3, S, S)`` CLIP input (shorter side to ``S`` bicubic + antialias,
    centre crop, normalise; see the module doc)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"clip_sim expects images of shape (N, 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    h, w = x.shape[-2:]
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    x = x[..., top:top + image_size, left:left + image_size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class CLIPScorer:
    """CLIP embeddings of images and texts (see the module doc for the preprocessing).

    Args:
        model: a ``transformers.CLIPModel`` (or a local folder to load one from; see :meth:`from_pretrained`).
        tokenizer: its tokenizer (needed for texts only).
        device: where to run. batch_size: images / texts per forward.
        mean, std: normalisation (default OpenAI CLIP's).
    """

    def __init__(self, model: Any, tokenizer: Any = None, *, device: str | torch.device = "cpu", batch_size: int = 32,
                 mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = int(model.config.vision_config.image_size)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> "CLIPScorer":
        """Load ``CLIPModel`` and its tokenizer from the local folder ``path`` (``config.json``, weights,
        tokenizer files, optional ``preprocessor_config.json`` for mean / std)."""
        try:
            from transformers import AutoTokenizer, CLIPModel
        except ImportError as exc:
            from zoo.errors import MissingDependencyError

            raise MissingDependencyError("zoo.metrics.clip_sim needs transformers: pip install 'zoo[diffusion]'") from exc
        p = Path(path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"no CLIP model at {p} (expected a transformers folder with config.json, e.g. "
                                    "openai/clip-vit-base-patch32 saved with save_pretrained)")
        model = CLIPModel.from_pretrained(str(p))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(p))
        except (OSError, ValueError):
            tokenizer = None
        pre = p / "preprocessor_config.json"
        if pre.is_file() and "mean" not in kwargs:
            cfg = json.loads(pre.read_text())
            kwargs.setdefault("mean", cfg.get("image_mean", OPENAI_MEAN))
            kwargs.setdefault("std", cfg.get("image_std", OPENAI_STD))
        return cls(model, tokenizer, **kwargs)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, D)`` L2-normalised image embeddings."""
        out = []
        for i in range(0, len(images), self.batch_size):
            x = preprocess(images[i:i + self.batch_size].to(self.device), self.image_size, self.mean, self.std)
            pooled = self.model.vision_model(pixel_values=x.to(self.model.dtype)).pooler_output
            out.append(F.normalize(self.model.visual_projection(pooled).float(), dim=-1))
        return torch.cat(out).cpu()

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """``N`` strings -> ``(N, D)`` L2-normalised text embeddings."""
        if self.tokenizer is None:
            raise ValueError("CLIPScorer has no tokenizer: pass tokenizer= or load a folder that holds one")
        out = []
        texts = list(texts)
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[i:i + self.batch_size], padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt")
            pooled = self.model.text_model(input_ids=tok.input_ids.to(self.device),
                                           attention_mask=tok.attention_mask.to(self.device)).pooler_output
            out.append(F.normalize(self.model.text_projection(pooled).float(), dim=-1))
        return torch.cat(out).cpu()


def clip_image_similarity(scorer: CLIPScorer, images: torch.Tensor, references: torch.Tensor) -> dict[str, Any]:
    """CLIP-I: cosine of every image ``(N, 3, H, W)`` with every reference ``(M, 3, h, w)``.

    Returns ``{"mean": mean over all N·M pairs, "per_image": (N,) mean over the references, "matrix": (N, M)}``.
    """
    a, b = scorer.image_features(images), scorer.image_features(references)
    sim = a @ b.t()
    return {"mean": float(sim.mean()), "per_image": sim.mean(dim=1), "matrix": sim}


def clip_text_similarity(scorer: CLIPScorer, images: torch.Tensor, texts: Sequence[str]) -> dict[str, Any]:
    """CLIP-T: cosine of image ``i`` with text ``i`` (``len(texts) == N``, or one text for all images).

    Returns ``{"mean": mean over images, "per_image": (N,)}``."""
    texts = list(texts)
    if len(texts) == 1:
        texts = texts * len(images)
    if len(texts) != len(images):
        raise ValueError(f"clip_text_similarity: {len(images)} images but {len(texts)} texts (give one per image, "
                         "or one)")
    sim = (scorer.image_features(images) * scorer.text_features(texts)).sum(-1)
    return {"mean": float(sim.mean()), "per_image": sim}
