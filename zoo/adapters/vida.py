"""ViDA adapters (Liu et al., "ViDA: Homeostatic Visual Domain Adapter for Continual Test Time Adaptation",
ICLR 2024): the adaptation method ``vida`` (``adapter: {name: vida, low_rank: 1, high_rank: 128}``) on the zoo's
low-rank core (:mod:`zoo.layers.lora`).

Every target layer gets two parallel low-rank deltas, both ``down`` then ``up`` with ``up`` zero-initialised and
``down ~ N(0, 1/r²)`` (init ``"vida"``), as the official ``cifar/inject_vida.py`` (``ViDAInjectedLinear``)::

    y = base(x) + s_low · up_l(down_l(x)) + s_high · up_h(down_h(x))      ranks r_low = 1, r_high = 128

* ``vida_low``  = the official ``vida_down`` / ``vida_up`` (rank ``r``, scaled by ``scale1``),
* ``vida_high`` = the official ``vida_down2`` / ``vida_up2`` (rank ``r2``, scaled by ``scale2``).

Default targets follow the official code: every ``nn.Linear`` that is a direct child of a module whose class is
called ``Attention`` / ``CrossAttention`` (timm ViT: ``attn.qkv`` and ``attn.proj``; the MLP is not adapted).
Module-name patterns (``adapter.target_modules``, see :func:`zoo.adapters.model.match_module_name`) select other
layers, Conv layers included (CNN sources: ``down`` is a conv with the base's kernel, ``up`` a 1×1 conv).

The scales are set per batch by the test-time algorithm (:mod:`zoo.tta.vida`: HKA from the teacher's uncertainty),
per sample if wanted (:class:`PerSampleScale`). Weights load in three layouts (:func:`load_vida_state_dict`): our
adapter-only state, a whole ViDA model of ours (an adapter warm-up run), and the official checkpoint layout.

Reference: Yangsenqiao/vida ``cifar/inject_vida.py``, ``cifar/vida.py`` (``set_scale``, ``collect_params``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from zoo.adapters.base import AdapterConfig, AdapterMethod, register_adapter
from zoo.adapters.model import (
    add_lora,
    adapter_state_dict,
    iter_lora_layers,
    load_adapter_state_dict,
    named_adapter_parameters,
    set_adapter_scale,
)
from zoo.errors import CheckpointError, ConfigError
from zoo.layers.lora import LoRALayer

__all__ = [
    "VIDA_LOW",
    "VIDA_HIGH",
    "ViDAConfig",
    "ViDAMethod",
    "PerSampleScale",
    "default_vida_targets",
    "apply_vida",
    "set_vida_scales",
    "vida_parameters",
    "vida_state_dict",
    "load_vida_state_dict",
    "convert_official_vida_state",
    "is_official_vida_layout",
]

VIDA_LOW = "vida_low"
VIDA_HIGH = "vida_high"
_ATTENTION_CLASSES = ("Attention", "CrossAttention")  # the official target_replace_module
# official per-layer tensor names -> ours (relative to the adapted layer)
_OFFICIAL_KEYS = {
    "linear_vida.weight": "base.weight",
    "linear_vida.bias": "base.bias",
    "vida_down.weight": f"deltas.{VIDA_LOW}.down",
    "vida_up.weight": f"deltas.{VIDA_LOW}.up",
    "vida_down2.weight": f"deltas.{VIDA_HIGH}.down",
    "vida_up2.weight": f"deltas.{VIDA_HIGH}.up",
}


class PerSampleScale:
    """A per-sample adapter scale ``(B,)`` that broadcasts against any layer output ``(B, ...)``.

    The low-rank core multiplies a delta's output by its ``scale`` (``contrib * scale``); a plain ``(B,)`` tensor
    would broadcast against the *last* dimension. This wrapper reshapes to ``(B, 1, ..., 1)`` for the output it
    meets, so one object serves token outputs ``(B, N, C)`` of a ViT and feature maps ``(B, C, H, W)`` of a CNN.
    """

    def __init__(self, values: torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"PerSampleScale takes a (B,) tensor, got shape {tuple(values.shape)}")
        self.values = values

    def __rmul__(self, out: torch.Tensor) -> torch.Tensor:
        if out.shape[0] != self.values.shape[0]:
            raise ValueError(f"per-sample ViDA scale has {self.values.shape[0]} values but the layer output has batch "
                             f"{out.shape[0]}; set the scales for the batch that is being forwarded")
        return out * self.values.to(out.dtype).view(-1, *([1] * (out.dim() - 1)))

    __mul__ = __rmul__

    def __repr__(self) -> str:
        return f"PerSampleScale(shape={tuple(self.values.shape)})"


def default_vida_targets(model: nn.Module) -> list[str]:
    """Names of the official targets: every ``nn.Linear`` directly inside a module whose class name is
    ``Attention`` or ``CrossAttention`` (timm ViT ``blocks.i.attn.qkv`` / ``blocks.i.attn.proj``)."""
    names = []
    for name, module in model.named_modules():
        if type(module).__name__ in _ATTENTION_CLASSES:
            for child_name, child in module.named_children():
                base = child.base if isinstance(child, LoRALayer) else child
                if isinstance(base, nn.Linear):
                    names.append(f"{name}.{child_name}" if name else child_name)
    return names


def apply_vida(model: nn.Module, low_rank: int = 1, high_rank: int = 128, targets: Any = None,
               freeze_base: bool = True, seed: int | None = None) -> nn.Module:
    """Add the two ViDA adapters (``vida_low`` of rank ``low_rank``, ``vida_high`` of rank ``high_rank``) to
    every target layer of ``model`` in place; returns ``model``.

    Args:
        targets: None (official: the Linear layers of attention modules, :func:`default_vida_targets`), or
            module-name patterns / a callable as :func:`zoo.adapters.model.match_module_name` takes (Conv layers too).
        freeze_base: ``requires_grad=False`` for every non-adapter parameter (the adapter warm-up). The official
            test-time code trains the whole model (``collect_params`` returns all parameters); pass False for that,
            which also keeps the wrapped base layers trainable.
        seed: draw each layer's ``down`` from a generator seeded by ``(seed, layer name)`` (else the global RNG).

    Raises :class:`~zoo.errors.ConfigError` (a ``ValueError``) when no layer matches (e.g. a model without
    ``Attention`` modules and no ``targets``).
    """
    if targets is None:
        names = default_vida_targets(model)
        if not names:
            raise ConfigError(f"apply_vida: {type(model).__name__} has no Linear layer inside an Attention module; "
                              "pass targets (adapter.target_modules) = module name patterns, e.g. ['*conv*'] for a CNN")
        chosen = set(names)
        targets = lambda name, module: name in chosen  # noqa: E731
    trainable = {id(p): p.requires_grad for p in model.parameters()}
    add_lora(model, targets, rank=low_rank, name=VIDA_LOW, init="vida", seed=seed, freeze=freeze_base)
    add_lora(model, targets, rank=high_rank, name=VIDA_HIGH, init="vida", seed=None if seed is None else seed + 1,
             freeze=freeze_base)
    if not freeze_base:  # LoRALayer freezes the base it wraps: give it back its trainable flag
        for _, layer in iter_lora_layers(model):
            for p in layer.base.parameters():
                p.requires_grad_(trainable.get(id(p), True))
    return model


def set_vida_scales(model: nn.Module, low: Any, high: Any) -> None:
    """Set the run-time scales of both adapters in every layer: floats, 0-d tensors, ``(B,)`` tensors (wrapped
    in :class:`PerSampleScale`, one scale per sample of the next forward) or tensors already broadcastable
    against the layer outputs."""
    def wrap(s: Any) -> Any:
        if isinstance(s, torch.Tensor):
            if s.dim() == 0:
                return float(s)
            if s.dim() == 1:
                return PerSampleScale(s)
        return s

    if set_adapter_scale(model, VIDA_LOW, wrap(low)) == 0:
        raise KeyError("set_vida_scales: the model has no ViDA adapters; call apply_vida(model) first")
    set_adapter_scale(model, VIDA_HIGH, wrap(high))


def vida_parameters(model: nn.Module, trainable_only: bool = True) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of both adapters' tensors (the official code's ``"vida_" in name`` parameters)."""
    return list(named_adapter_parameters(model, [VIDA_LOW, VIDA_HIGH], trainable_only=trainable_only))


def vida_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters: ``{"<layer>.vida_low.down": (r, in), ...up: (out, r), ...vida_high...}``."""
    return adapter_state_dict(model, [VIDA_LOW, VIDA_HIGH])


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def is_official_vida_layout(state: Mapping[str, Any]) -> bool:
    """Whether the state dict ``state`` (containers unwrapped) is in the official layout (``linear_vida`` /
    ``vida_down`` keys)."""
    return any(k.endswith(".linear_vida.weight") or ".vida_down" in k for k in state)


def convert_official_vida_state(state: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The official ViDA checkpoint layout -> our model's ``state_dict`` keys.

    Accepts ``{'model': state_dict}`` or a bare state dict (unwrapped by :func:`zoo.hub.clean_state_dict`, which
    also drops ``module.`` prefixes of DataParallel), keys possibly prefixed by ``model.`` (a wrapper around the timm
    ViT, possibly around a DataParallel one); per adapted layer ``<path>.linear_vida.weight/bias`` (the original
    Linear), ``<path>.vida_down/vida_up.weight`` (low, rank r) and ``<path>.vida_down2/vida_up2.weight`` (high, rank
    r2). Other keys (the rest of the ViT) are kept as they are. With ``model`` given, a wrapper prefix is dropped
    only if the model's own keys do not have it.
    """
    from zoo.hub import clean_state_dict

    state = clean_state_dict(state)
    own = set(model.state_dict()) if model is not None else set()
    for prefix in ("model.", "module."):  # a wrapper's prefix, in either order
        if not any(k.startswith(prefix) for k in own):
            state = _strip_prefix(state, prefix)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for official, ours in _OFFICIAL_KEYS.items():
            if key.endswith("." + official) or key == official:
                key = key[: len(key) - len(official)] + ours
                break
        out[key] = value
    return out


def load_vida_state_dict(model: nn.Module, state: Mapping[str, Any], strict: bool = True) -> dict[str, list[str]]:
    """Load ViDA weights into a model prepared with :func:`apply_vida` (same ranks).

    * **official layout** (a warm-up "source ViDA model" ``.t7``/``.pt``, see :func:`convert_official_vida_state`):
      the whole model is loaded (it holds the backbone too), ``model.load_state_dict(converted, strict)``;
    * **our adapter layout** (:func:`vida_state_dict`): only the adapters are loaded;
    * **our full layout** (``model.state_dict()`` of a ViDA model, e.g. a ``ctta_source`` warm-up run's
      ``best.pt``): loaded as a whole.

    ``{"model": ...}`` containers are unwrapped. Returns ``{"missing": [...], "unexpected": [...]}``; with
    ``strict`` any mismatch raises :class:`~zoo.errors.CheckpointError` (a ``RuntimeError``) naming the keys (a rank
    mismatch names the tensor and both shapes).
    """
    from zoo.hub import clean_state_dict

    state = clean_state_dict(state)
    if is_official_vida_layout(state) or _is_whole_vida_model(state):
        converted = convert_official_vida_state(state, model)
        try:
            result = model.load_state_dict(converted, strict=False)
        except RuntimeError as exc:  # size mismatch: another rank
            raise CheckpointError(f"ViDA checkpoint does not match the model (built with the same ranks?): "
                                  f"{exc}") from None
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        if strict and (missing or unexpected):
            raise CheckpointError(f"ViDA checkpoint does not match the model (built with the same ranks?): "
                                  f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                                  f"unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        return {"missing": missing, "unexpected": unexpected}
    try:
        return load_adapter_state_dict(model, state, strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(str(exc)) from None


def _is_whole_vida_model(state: Mapping[str, Any]) -> bool:
    """Our ``model.state_dict()`` of a ViDA model: delta tensors under ``.deltas.vida_*`` beside the base's."""
    return any(f".deltas.{VIDA_LOW}." in k for k in state)


# ============================================================================================ the method
@dataclass
class ViDAConfig(AdapterConfig):
    """``adapter:`` section of ``vida``. ``target_modules``: ``None`` for the official targets (the Linear layers of
    attention modules, :func:`default_vida_targets`), else module-name patterns (Conv layers too)."""

    name: str = "vida"
    low_rank: int = 1  # the official r (vida_down / vida_up)
    high_rank: int = 128  # the official r2 (vida_down2 / vida_up2)
    seed: int | None = None  # draw each layer's ``down`` from a generator seeded by (seed, layer); None: global RNG

    def __post_init__(self) -> None:
        for key in ("low_rank", "high_rank"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"adapter.{key} must be an integer >= 1, got {value!r}")


@register_adapter("vida", config=ViDAConfig)
class ViDAMethod(AdapterMethod):
    """ViDA's two adapters (:func:`apply_vida`) behind the adaptation-method interface: trainable parameters, state
    (:func:`vida_state_dict`; loading also reads a whole ViDA model of ours or the official layout), both scales
    (:meth:`set_scales`, per sample too), on / off, merge. :meth:`apply` freezes the base; a test-time algorithm
    that trains the whole model (the official ViDA loop) unfreezes it itself."""

    config: ViDAConfig
    delta_names = (VIDA_LOW, VIDA_HIGH)

    def apply(self, model: nn.Module) -> nn.Module:
        c = self.config
        return apply_vida(model, c.low_rank, c.high_rank, targets=c.target_modules, freeze_base=True, seed=c.seed)

    def trainable_parameters(self, model: nn.Module, trainable_only: bool = True) -> list[nn.Parameter]:
        """Both adapters' tensors (``trainable_only=False``: also those frozen now)."""
        return [p for _, p in vida_parameters(model, trainable_only=trainable_only)]

    def load_state_dict(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Our adapter layout, a whole ViDA model of ours, or the official layout (:func:`load_vida_state_dict`)."""
        load_vida_state_dict(model, state, strict=True)

    def holds_adapted_model(self, state: Mapping[str, torch.Tensor]) -> bool:
        """Whether the state dict ``state`` is a whole ViDA model (ours or the official layout), i.e. weights to load
        *after* :meth:`apply`. A file with only the adapters' tensors is refused: it has no base model to start from.
        """
        if is_official_vida_layout(state) or _is_whole_vida_model(state):
            return True
        if state and all(f".{VIDA_LOW}." in k or f".{VIDA_HIGH}." in k for k in state):
            raise CheckpointError("the weights hold only ViDA adapter tensors, no base model: start from a whole "
                                  "model (a source model, a ctta_source run with adapter.name=vida, or an official "
                                  "ViDA checkpoint) and load adapter-only files with ViDAMethod.load")
        return False

    def set_scales(self, model: nn.Module, low: Any, high: Any) -> None:
        """The two adapters' scales (see :func:`set_vida_scales`)."""
        set_vida_scales(model, low, high)

    def set_scale(self, model: nn.Module, scale: Any) -> None:
        set_vida_scales(model, scale, scale)
