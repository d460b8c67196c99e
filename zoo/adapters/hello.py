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

As an adaptation method (:mod:`zoo.adapters.base`): ``hello_projector`` (:class:`HelloProjectorConfig`,
:class:`HelloProjectorMethod`) applies the adapters to a projector, trains / checkpoints only them, and saves / loads
the stored file (``projector.safetensors``; a file written by :func:`save_projector` before the method existed
loads as it is).

CLIP from a local path (open_clip or transformers, imported only when asked for): :func:`load_clip`;
:func:`clip_preprocess` turns images in [0, 1] into CLIP's input.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.adapters.base import ADAPTER_CONFIG_FILE, AdapterConfig, AdapterMethod, register_adapter
from zoo.adapters.model import add_lora, adapter_state_dict, iter_lora_layers, load_adapter_state_dict
from zoo.errors import CheckpointError, ConfigError, DataError, MissingDependencyError
from zoo.losses import distillation_kl

__all__ = ["ADAPTER_NAME", "STORAGE_DTYPES", "HelloProjector", "FeatureEncoder", "class_mean_features", "init_head",
           "add_projector_adapters", "projector_loss", "projector_state", "save_projector", "load_projector",
           "projector_payload_bytes", "HelloProjectorConfig", "HelloProjectorMethod", "load_clip", "clip_preprocess",
           "clip_text_embeddings"]

ADAPTER_NAME = "hello"
HEAD_INITS = ("class_means", "text", "pretrained")
#: the dtypes the stored projector may be written in, by name
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
            raise ConfigError(f"HelloProjector: the encoder returned features of shape {tuple(f.shape)}, expected "
                              f"(B, {self.num_features}); pass the encoder's num_features (encoder.num_features)")
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
    batches. Raises :class:`~zoo.errors.DataError` naming the classes that had no sample."""
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
        raise DataError(f"class_mean_features: no sample of class(es) {missing}; the head cannot be initialised "
                        "(the split must hold every class)")
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
    along one teacher's trajectory as the paper), never back-propagated into; ``kind``: ``"kl"`` =
    ``T^2 KL(softmax(t/T) || softmax(s/T))`` (:func:`zoo.losses.distillation_kl`), ``"mse"`` =
    ``mean_b sum_k (softmax(s/T) - softmax(t/T))^2`` (the paper's MSE, on probabilities). Returns
    ``(loss, {"soft": ..., "ce": ...})`` (detached parts).
    """
    if kind not in ("kl", "mse"):
        raise ValueError(f"projector_loss: kind must be 'kl' or 'mse', got {kind!r}")
    teachers = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    if not teachers:
        raise ValueError("projector_loss: no teacher logits given")
    s = logits.float() / temperature  # shared by every teacher's term
    soft = logits.new_zeros((), dtype=torch.float32)
    for t in teachers:
        if t.shape != logits.shape:
            raise ValueError(f"projector_loss: teacher logits {tuple(t.shape)} vs projector logits {tuple(logits.shape)}")
        t = t.float().detach() / temperature
        if kind == "kl":  # T^2 KL at temperature T == T^2 x (KL at 1 of the scaled logits)
            soft = soft + distillation_kl(s, t) * temperature ** 2
        else:
            soft = soft + ((F.softmax(s, -1) - F.softmax(t, -1)) ** 2).sum(-1).mean()
    soft = soft / len(teachers)
    ce = F.cross_entropy(logits.float(), target) if (ce_weight and target is not None) else soft.new_zeros(())
    return soft + ce_weight * ce, {"soft": soft.detach(), "ce": ce.detach()}


# ============================================================================================= storage
def _check_storage_dtype(storage_dtype: str, where: str) -> None:
    if storage_dtype not in STORAGE_DTYPES:
        raise ConfigError(f"{where}: storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}")


def _head_base(projector: HelloProjector) -> nn.Linear:
    """The head's frozen ``nn.Linear`` (inside its adapter wrapper once adapters are added)."""
    return projector.head.base if hasattr(projector.head, "base") else projector.head


def projector_state(projector: HelloProjector) -> dict[str, torch.Tensor]:
    """What is stored: the ``"hello"`` adapters (``<module>.hello.<tensor>``) and, when ``head_stored``, ``head.weight``
    / ``head.bias`` (fp32 copies)."""
    state = {k: v.float() for k, v in adapter_state_dict(projector, [ADAPTER_NAME]).items()}
    if projector.head_stored:
        base = _head_base(projector)
        state["head.weight"] = base.weight.detach().float().clone()
        state["head.bias"] = base.bias.detach().float().clone()
    return state


def projector_payload_bytes(projector: HelloProjector, storage_dtype: str = "float16") -> int:
    """Tensor bytes of :func:`save_projector`'s file (without the small safetensors header)."""
    size = torch.empty((), dtype=STORAGE_DTYPES[storage_dtype]).element_size()
    return sum(t.numel() * size for t in projector_state(projector).values())


def save_projector(projector: HelloProjector, path: str | os.PathLike, storage_dtype: str = "float16",
                   metadata: Mapping[str, Any] | None = None) -> int:
    """Write :func:`projector_state` in ``storage_dtype`` to a safetensors file (atomically); returns its size in bytes.
    The header records ``format``, ``head_init``, ``storage_dtype`` and ``metadata`` (values as JSON)."""
    from zoo.files import write_safetensors_file

    _check_storage_dtype(storage_dtype, "save_projector")
    state = {k: v.to(STORAGE_DTYPES[storage_dtype]) for k, v in projector_state(projector).items()}
    meta = {"format": "zoo-hello-projector", "head_init": projector.head_init, "storage_dtype": storage_dtype,
            **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    return write_safetensors_file(state, path, metadata=meta).stat().st_size


def load_projector(projector: HelloProjector, path: str | os.PathLike) -> None:
    """Load a :func:`save_projector` file into a projector built the same way (same encoder, adapters added;
    strict: missing / unexpected adapter keys are a :class:`~zoo.errors.CheckpointError` listing them). Tensors are
    cast to fp32."""
    from zoo.files import read_safetensors_file

    state = {k: v.float() for k, v in read_safetensors_file(path, what="projector file").items()}
    head = {k: state.pop(k) for k in ("head.weight", "head.bias") if k in state}
    if projector.head_stored and len(head) != 2:
        raise CheckpointError(f"{path}: the projector's head was initialised from class means and must be stored, "
                              "but the file has no head.weight / head.bias")
    if head:
        base = _head_base(projector)
        with torch.no_grad():
            base.weight.copy_(head["head.weight"])
            base.bias.copy_(head["head.bias"])
    load_adapter_state_dict(projector, state, strict=True)


# ============================================================================================= adaptation method
@dataclass
class HelloProjectorConfig(AdapterConfig):
    """``adapter:`` section of ``hello_projector`` (HeLlO; paper, IN-1K: ranks 8 / 128).

    ``target_modules``: the encoder's modules that get an adapter (names relative to the encoder, as
    :func:`zoo.adapters.model.match_module_name` takes them; ``None``: every conv / linear).
    """

    name: str = "hello_projector"
    encoder_rank: int = 8  # 0: no adapter on the encoder
    head_rank: int = 64  # 0: no adapter on the head
    alpha: float | None = None  # default: the rank (scaling 1)
    storage_dtype: str = "float16"  # of the stored file

    def __post_init__(self) -> None:
        if self.encoder_rank < 0 or self.head_rank < 0 or self.encoder_rank + self.head_rank == 0:
            raise ConfigError(f"hello_projector: encoder_rank and head_rank must be >= 0 and not both 0, got "
                              f"{self.encoder_rank} and {self.head_rank}")
        _check_storage_dtype(self.storage_dtype, "hello_projector")


@register_adapter("hello_projector", config=HelloProjectorConfig)
class HelloProjectorMethod(AdapterMethod):
    """HeLlO's low-rank adapters on a :class:`HelloProjector` (any module with an ``encoder`` and a linear
    ``head``, ``head_init`` / ``head_stored`` as the projector's).

    Trains and checkpoints only the adapters (:meth:`state_dict`, the ``"hello"`` deltas); :meth:`save` writes the
    stored artefact, ``projector.safetensors`` (:func:`save_projector`: adapters + the head when it came from class
    means, in ``storage_dtype``) beside ``adapter_config.json``; :meth:`load` takes that folder or the file alone.
    """

    delta_names = (ADAPTER_NAME,)
    weights_file = "projector.safetensors"

    @staticmethod
    def _projector(model: nn.Module) -> HelloProjector:
        if not (isinstance(getattr(model, "encoder", None), nn.Module) and hasattr(model, "head_stored")
                and isinstance(_head_base(model), nn.Linear)):
            raise ConfigError(f"adapter 'hello_projector' applies to a HeLlO projector (zoo.adapters.hello."
                              f"HelloProjector: an encoder and a linear head), not to {type(model).__name__}")
        return model

    def apply(self, model: nn.Module) -> nn.Module:
        """Add the zero-initialised ``"hello"`` adapters (:func:`add_projector_adapters`); the rest is frozen."""
        c = self.config
        add_projector_adapters(self._projector(model), c.encoder_rank, c.head_rank, c.alpha, c.target_modules)
        return model

    def _is_applied(self, model: nn.Module) -> bool:
        return any(ADAPTER_NAME in layer.deltas for _, layer in iter_lora_layers(model))

    def payload_bytes(self, model: nn.Module) -> int:
        """Tensor bytes of the file :meth:`save` writes (:func:`projector_payload_bytes`)."""
        return projector_payload_bytes(self._projector(model), self.config.storage_dtype)

    def save(self, model: nn.Module, directory: str | os.PathLike) -> Path:
        """Write ``projector.safetensors`` (ranks in its header) and ``adapter_config.json`` into ``directory``."""
        c, out = self.config, Path(directory)
        save_projector(self._projector(model), out / self.weights_file, c.storage_dtype,
                       {"encoder_rank": c.encoder_rank, "head_rank": c.head_rank})
        tmp = out / f"{ADAPTER_CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(self.config.to_dict(), indent=2, default=str))
        os.replace(tmp, out / ADAPTER_CONFIG_FILE)
        return out

    def load(self, model: nn.Module, directory: str | os.PathLike) -> nn.Module:
        """Load the stored projector (a folder :meth:`save` wrote, or a ``projector.safetensors`` file) into
        ``model``, adding the adapters first if it has none yet."""
        path = Path(directory)
        file = path / self.weights_file if path.is_dir() else path
        if not self._is_applied(model):
            self.apply(model)
        load_projector(self._projector(model), file)
        return model


# ============================================================================================= CLIP (optional)
def load_clip(path: str | os.PathLike, backend: str | None = None, model_name: str | None = None):
    """A CLIP model from a local path: ``(model, image_encoder: FeatureEncoder, num_features, backend)``.

    ``backend``: ``"transformers"`` (a directory written by ``save_pretrained``, ``CLIPModel``) or ``"open_clip"``
    (a checkpoint file plus ``model_name``, e.g. ``"RN50"`` as HeLlO's conv-LoRA implies); default: transformers for
    a directory, open_clip for a file. Raises ``ImportError`` naming the package to install.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_clip: no CLIP checkpoint at {path} (encoder.clip_path)")
    backend = backend or ("transformers" if path.is_dir() else "open_clip")
    if backend == "transformers":
        try:
            from transformers import CLIPModel
        except ImportError as e:
            raise MissingDependencyError("CLIP via transformers needs transformers: pip install 'zoo[diffusion]'") from e
        model = CLIPModel.from_pretrained(str(path)).eval()
        enc = FeatureEncoder(model, lambda m, x: _as_tensor(m.get_image_features(pixel_values=x)))
        return model, enc, int(model.config.projection_dim), backend
    if backend == "open_clip":
        try:
            import open_clip
        except ImportError as e:
            raise MissingDependencyError("CLIP via open_clip needs open_clip: pip install open_clip_torch") from e
        if not model_name:
            raise ConfigError("load_clip: open_clip needs model_name (encoder.clip_model_name, e.g. 'RN50') besides "
                              "the checkpoint path")
        model = open_clip.create_model(model_name, pretrained=str(path)).eval()
        enc = FeatureEncoder(model, lambda m, x: m.encode_image(x))
        return model, enc, int(model.visual.output_dim), backend
    raise ConfigError(f"load_clip: backend (encoder.clip_backend) must be 'transformers' or 'open_clip', got "
                      f"{backend!r}")


def clip_preprocess(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model`` applied to CLIP's input made from images ``x (B, C, H, W)`` in [0, 1]: grey expanded to RGB,
    resized to 224 px (bicubic), normalised with CLIP's mean / std. Use as ``FeatureEncoder(clip_encoder,
    clip_preprocess)``."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=x.device).view(1, 3, 1, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != 224 or x.shape[-2] != 224:
        x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
    return model((x - mean) / std)


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
