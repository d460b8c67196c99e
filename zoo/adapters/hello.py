"""HeLlO's image-to-label projector: a frozen pre-trained image encoder, a linear head, low-rank adapters on both.

"Heavy Labels Out! Dataset Distillation with Label Space Lightening" (Yu et al., ICCV 2025, arXiv 2408.08201; no
official code is public). Instead of storing one soft label per augmented view per epoch (SRe2L / RDED), the student
asks a small *projector* for the label of each view on the fly; only the projector's low-rank matrices are stored.

The projector (:class:`HelloProjector`) computes, for images ``x (B, C, H, W)``::

    f = E(x)                                  (B, D)   frozen encoder (CLIP image tower, or any zoo/timm backbone)
    f = f / ||f||  (normalize=True)
    logits = logit_scale * (W f + b)          (B, K)   head initialised from class text embeddings (CLIP: the
                                                        projector starts as zero-shot CLIP) or class-mean features

and :func:`add_projector_adapters` puts :class:`zoo.layers.lora.LowRankDelta` s (the one low-rank core, adapter name
``"hello"``) on the encoder's convs/linears and on the head, with different ranks (paper: 8 on the encoder, 64/128 on
the head). Adapters start at zero (``init="lora"``), so the adapted projector first reproduces the initial head.
They are trained by :func:`projector_loss` to match the soft labels of one or several teachers (KL at a temperature,
or MSE between probabilities as the paper) plus cross-entropy on the true labels.

Storage: :func:`save_projector` writes only what cannot be regenerated -- the adapters, plus the head when it was
initialised from class means of the user's data (text-embedding heads are regenerated from the class names) -- in
``storage_dtype`` to a safetensors file; :func:`projector_payload_bytes` gives the tensor bytes of that file.

CLIP from a local path (open_clip or transformers, imported only when asked for): :func:`load_clip`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.adapters.model import add_lora, adapter_state_dict, iter_lora_layers, load_adapter_state_dict

__all__ = ["ADAPTER_NAME", "HelloProjector", "FeatureEncoder", "class_mean_features", "init_head", "add_projector_adapters",
           "projector_loss", "projector_state", "save_projector", "load_projector", "projector_payload_bytes",
           "load_clip", "clip_text_embeddings"]

ADAPTER_NAME = "hello"
HEAD_INITS = ("class_means", "text", "pretrained")


class FeatureEncoder(nn.Module):
    """Wraps a backbone so that ``forward(x) -> (B, D)`` pooled features.

    ``fn(module, x)`` picks the features: default ``module.forward_features(x)`` (zoo / timm contract; a
    ``(B, D, ...)`` output is average-pooled over the trailing dims), e.g. ``lambda m, x: m.encode_image(x)`` for
    open_clip or ``lambda m, x: m.get_image_features(pixel_values=x)`` for transformers' CLIP.
    """

    def __init__(self, backbone: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.backbone = backbone
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn is not None:
            f = self.fn(self.backbone, x)
        elif hasattr(self.backbone, "forward_features"):
            f = self.backbone.forward_features(x)
        else:
            f = self.backbone(x)
        if not isinstance(f, torch.Tensor):  # e.g. a transformers output object
            f = getattr(f, "image_embeds", None) if getattr(f, "image_embeds", None) is not None else f[0]
        if f.ndim > 2:
            f = f.flatten(2).mean(-1) if f.ndim > 3 or f.shape[1] != 1 else f.flatten(1)
        return f


class HelloProjector(nn.Module):
    """Image-to-label projector ``(B, C, H, W) -> (B, num_classes)`` logits (see the module docstring).

    Args:
        encoder: module mapping images to ``(B, num_features)`` features (wrap backbones in :class:`FeatureEncoder`).
            It is frozen and kept in eval mode (its BatchNorm statistics never move); only adapters train.
        num_features: ``D``. num_classes: ``K``.
        normalize: L2-normalise features (and the initial head rows) -- CLIP's cosine logits.
        logit_scale: fixed multiplier of the logits (CLIP: 100).
        head_init: how the head was/will be initialised: ``"text"`` (class text embeddings, regenerable from the class
            names: not stored), ``"class_means"`` (stored) or ``"pretrained"`` (comes with the encoder: not stored).

    The head is ``self.head`` (``nn.Linear(D, K)``), frozen like the encoder; ``head_stored`` says whether
    :func:`save_projector` must store it.
    """

    def __init__(self, encoder: nn.Module, num_features: int, num_classes: int, *, normalize: bool = True,
                 logit_scale: float = 1.0, head_init: str = "class_means"):
        super().__init__()
        if head_init not in HEAD_INITS:
            raise ValueError(f"HelloProjector: head_init must be one of {HEAD_INITS}, got {head_init!r}")
        self.encoder = encoder
        self.num_features, self.num_classes = int(num_features), int(num_classes)
        self.normalize = bool(normalize)
        self.head_init = head_init
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)), persistent=True)
        self.head = nn.Linear(self.num_features, self.num_classes)
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def head_stored(self) -> bool:
        """Whether the head must be stored (it cannot be regenerated from the class names or the encoder)."""
        return self.head_init == "class_means"

    def train(self, mode: bool = True) -> "HelloProjector":
        super().train(mode)
        self.encoder.eval()  # frozen backbone: BatchNorm / dropout stay in inference mode
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, D)`` encoder features (normalised when ``normalize``)."""
        f = self.encoder(x)
        if f.ndim != 2 or f.shape[1] != self.num_features:
            raise ValueError(f"HelloProjector: the encoder returned features of shape {tuple(f.shape)}, expected "
                             f"(B, {self.num_features}); pass the encoder's num_features")
        f = f.float()
        return F.normalize(f, dim=-1) if self.normalize else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        return self.logit_scale * self.head(self.features(x))


# ============================================================================================= head initialisation
@torch.no_grad()
def class_mean_features(projector: HelloProjector, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        num_classes: int | None = None) -> torch.Tensor:
    """Mean feature per class ``(K, D)`` (the projector's features, normalised if it normalises) over ``(x, y)``
    batches. Raises ``ValueError`` naming the classes that had no sample."""
    k = num_classes or projector.num_classes
    sums = torch.zeros(k, projector.num_features, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    was = projector.training
    projector.eval()
    for x, y in batches:
        f = projector.features(x.to(projector.head.weight.device)).double().cpu()
        y = y.cpu().long()
        sums.index_add_(0, y, f)
        counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
    projector.train(was)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"class_mean_features: no sample of class(es) {missing}; the head cannot be initialised")
    return (sums / counts[:, None]).float()


@torch.no_grad()
def init_head(projector: HelloProjector, class_vectors: torch.Tensor) -> None:
    """Set the head from per-class vectors ``(K, D)`` (text embeddings or class means).

    Normalising projector: ``W = v / ||v||``, ``b = 0`` (cosine to each class vector; CLIP zero-shot for text
    embeddings). Otherwise the nearest-class-mean rule as a linear map: ``W = m``, ``b = -||m||^2 / 2``.
    """
    v = class_vectors.float()
    if v.shape != projector.head.weight.shape:
        raise ValueError(f"init_head: class vectors of shape {tuple(v.shape)}, expected "
                         f"{tuple(projector.head.weight.shape)} (num_classes, num_features)")
    head = projector.head
    if projector.normalize:
        head.weight.copy_(F.normalize(v, dim=-1))
        head.bias.zero_()
    else:
        head.weight.copy_(v)
        head.bias.copy_(-0.5 * (v * v).sum(-1))


# ============================================================================================= adapters and loss
def add_projector_adapters(projector: HelloProjector, encoder_rank: int = 8, head_rank: int = 64,
                           alpha: float | None = None, encoder_targets: Any = None) -> list[str]:
    """Add the ``"hello"`` low-rank adapters: rank ``encoder_rank`` on the encoder's convs/linears selected by
    ``encoder_targets`` (names relative to the encoder; default all), ``head_rank`` on the head (rank 0 skips a
    part). Zero-initialised (the outputs do not change); everything else is frozen. Returns the adapted module names.
    """
    def rank(name: str, module: nn.Module) -> int | None:
        if name == "head":
            return head_rank
        if not name.startswith("encoder."):
            return None
        if encoder_targets is None:
            return encoder_rank
        from zoo.adapters.model import match_module_name

        return encoder_rank if match_module_name(name[len("encoder."):], module, encoder_targets) else None

    def alpha_of(name: str, module: nn.Module) -> float | None:
        return alpha

    layers = add_lora(projector, None, rank=rank, alpha=alpha_of, name=ADAPTER_NAME, init="lora", freeze=True)
    for _, layer in iter_lora_layers(projector):  # belt and braces: the base of every adapted layer is frozen
        for p in layer.base.parameters():
            p.requires_grad_(False)
    return sorted(layers)


def projector_loss(logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor] | torch.Tensor, target: torch.Tensor | None,
                   *, kind: str = "kl", temperature: float = 1.0, ce_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """``mean over teachers of D(projector, teacher) + ce_weight * CE(logits, target)``.

    ``logits (B, K)``; ``teacher_logits``: one ``(B, K)`` tensor or a list (several weak teachers, e.g. checkpoints
    along one teacher's trajectory as the paper); ``kind``: ``"kl"`` = ``T^2 KL(softmax(t/T) || softmax(s/T))``,
    ``"mse"`` = ``mean (softmax(s/T) - softmax(t/T))^2 * K`` (the paper's MSE, on probabilities). Returns
    ``(loss, {"soft": ..., "ce": ...})`` (detached parts).
    """
    if kind not in ("kl", "mse"):
        raise ValueError(f"projector_loss: kind must be 'kl' or 'mse', got {kind!r}")
    teachers = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    if not teachers:
        raise ValueError("projector_loss: no teacher logits given")
    s = logits.float() / temperature
    soft = logits.new_zeros((), dtype=torch.float32)
    for t in teachers:
        if t.shape != logits.shape:
            raise ValueError(f"projector_loss: teacher logits {tuple(t.shape)} vs projector logits {tuple(logits.shape)}")
        p_t = F.softmax(t.float().detach() / temperature, -1)
        if kind == "kl":
            soft = soft + F.kl_div(F.log_softmax(s, -1), p_t, reduction="batchmean") * temperature ** 2
        else:
            soft = soft + ((F.softmax(s, -1) - p_t) ** 2).sum(-1).mean()
    soft = soft / len(teachers)
    ce = F.cross_entropy(logits.float(), target) if (ce_weight and target is not None) else soft.new_zeros(())
    return soft + ce_weight * ce, {"soft": soft.detach(), "ce": ce.detach()}


# ============================================================================================= storage
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def projector_state(projector: HelloProjector) -> dict[str, torch.Tensor]:
    """What is stored: the ``"hello"`` adapters (``<module>.hello.<tensor>``) and, when ``head_stored``, ``head.weight``
    / ``head.bias`` (fp32 copies)."""
    state = {k: v.float() for k, v in adapter_state_dict(projector, [ADAPTER_NAME]).items()}
    if projector.head_stored:
        base = projector.head.base if hasattr(projector.head, "base") else projector.head
        state["head.weight"] = base.weight.detach().float().clone()
        state["head.bias"] = base.bias.detach().float().clone()
    return state


def projector_payload_bytes(projector: HelloProjector, storage_dtype: str = "float16") -> int:
    """Tensor bytes of :func:`save_projector`'s file (without the small safetensors header)."""
    size = torch.empty((), dtype=_DTYPES[storage_dtype]).element_size()
    return sum(t.numel() * size for t in projector_state(projector).values())


def save_projector(projector: HelloProjector, path: str | os.PathLike, storage_dtype: str = "float16",
                   metadata: Mapping[str, Any] | None = None) -> int:
    """Write :func:`projector_state` in ``storage_dtype`` to a safetensors file (atomically); returns its size in bytes."""
    from safetensors.torch import save_file

    if storage_dtype not in _DTYPES:
        raise ValueError(f"save_projector: storage_dtype must be one of {sorted(_DTYPES)}, got {storage_dtype!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(_DTYPES[storage_dtype]).contiguous() for k, v in projector_state(projector).items()}
    meta = {"format": "zoo-hello-projector", "head_init": projector.head_init, "storage_dtype": storage_dtype,
            **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path.stat().st_size


def load_projector(projector: HelloProjector, path: str | os.PathLike) -> None:
    """Load a :func:`save_projector` file into a projector built the same way (same encoder, adapters added;
    strict: missing / unexpected adapter keys raise ``RuntimeError`` listing them). Tensors are cast to fp32."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_projector: no file {path}")
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    head = {k: state.pop(k) for k in ("head.weight", "head.bias") if k in state}
    if projector.head_stored and len(head) != 2:
        raise RuntimeError(f"{path}: the projector's head was initialised from class means and must be stored, "
                           "but the file has no head.weight / head.bias")
    if head:
        base = projector.head.base if hasattr(projector.head, "base") else projector.head
        with torch.no_grad():
            base.weight.copy_(head["head.weight"])
            base.bias.copy_(head["head.bias"])
    load_adapter_state_dict(projector, state, strict=True)


# ============================================================================================= CLIP (optional)
def load_clip(path: str | os.PathLike, backend: str | None = None, model_name: str | None = None):
    """A CLIP model from a local path: ``(model, image_encoder: FeatureEncoder, num_features, backend)``.

    ``backend``: ``"transformers"`` (a directory written by ``save_pretrained``, ``CLIPModel``) or ``"open_clip"``
    (a checkpoint file plus ``model_name``, e.g. ``"RN50"`` as HeLlO's conv-LoRA implies); default: transformers for
    a directory, open_clip for a file. Raises ``ImportError`` naming the package to install.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_clip: no CLIP checkpoint at {path}")
    backend = backend or ("transformers" if path.is_dir() else "open_clip")
    if backend == "transformers":
        try:
            from transformers import CLIPModel
        except ImportError as e:
            raise ImportError("CLIP via transformers needs `pip install -e .[diffusion]` (transformers)") from e
        model = CLIPModel.from_pretrained(str(path)).eval()
        enc = FeatureEncoder(model, lambda m, x: _as_tensor(m.get_image_features(pixel_values=x)))
        return model, enc, int(model.config.projection_dim), backend
    if backend == "open_clip":
        try:
            import open_clip
        except ImportError as e:
            raise ImportError("CLIP via open_clip needs `pip install open_clip_torch`") from e
        if not model_name:
            raise ValueError("load_clip: open_clip needs model_name (e.g. 'RN50') besides the checkpoint path")
        model = open_clip.create_model(model_name, pretrained=str(path)).eval()
        enc = FeatureEncoder(model, lambda m, x: m.encode_image(x))
        return model, enc, int(model.visual.output_dim), backend
    raise ValueError(f"load_clip: backend must be 'transformers' or 'open_clip', got {backend!r}")


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for key in ("image_embeds", "text_embeds", "pooler_output"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    return out[0]


@torch.no_grad()
def clip_text_embeddings(model: Any, backend: str, class_names: Sequence[str], template: str = "a photo of a {}.",
                         path: str | os.PathLike | None = None, model_name: str | None = None) -> torch.Tensor:
    """L2-normalised text embeddings ``(K, D)`` of ``template.format(name)`` for each class (the paper's head init)."""
    prompts = [template.format(c) for c in class_names]
    if backend == "transformers":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        batch = tok(prompts, padding=True, return_tensors="pt")
        emb = _as_tensor(model.get_text_features(**batch))
    else:
        import open_clip

        emb = model.encode_text(open_clip.get_tokenizer(model_name)(prompts))
    return F.normalize(emb.float(), dim=-1)
