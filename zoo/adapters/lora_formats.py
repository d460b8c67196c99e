"""LoRA files of other tools read into (and written from) the zoo's adapter core, :mod:`zoo.layers.lora`.

Our layout (what :func:`~zoo.adapters.model.adapter_state_dict` writes) is, per adapted module path ``P`` and
adapter name ``A``: ``P.A.down (r, in[, *k])``, ``P.A.up (out, r)``, optionally ``P.A.alpha`` (a scalar; the
delta's ``scaling = alpha / rank`` is set from it exactly). The converters map other layouts to it; each is a
``convert(state) -> state`` hook for ``load_adapter_state_dict(model, state, convert=...)`` (they also take the
``model`` keyword, which the loader passes, to resolve names):

==============  ===============================================================  ===============================
layout          keys (``P`` = module path)                                       alpha
==============  ===============================================================  ===============================
peft            ``base_model.model.P.lora_A[.<name>].weight`` / ``lora_B``        ``adapter_config.json``
                                                                                 (``lora_alpha``, ``r``,
                                                                                 ``alpha_pattern``, ``rank_pattern``,
                                                                                 ``use_rslora``): pass ``config=``
diffusers       ``unet.P.lora_A.weight`` / ``lora_B`` (``save_lora_weights``        the file's ``lora_adapter_metadata``
                today); older ``unet.P.lora.down.weight`` / ``lora.up``             or ``unet.P.alpha`` keys, else
                                                                                 ``alpha = rank`` (diffusers' rule)
kohya-ss        ``lora_unet_<P with _>.lora_down.weight`` / ``lora_up`` / ``alpha``  ``alpha`` key, else ``rank``
==============  ===============================================================  ===============================

Keys a converter does not recognise pass through unchanged, so a strict load lists them as unexpected (e.g. the
text-encoder part of a diffusers file, or kohya files of SDXL with the original SD block names).

:func:`import_lora` creates the deltas from a file (ranks from the shapes) and loads it — for a plain model.
:func:`to_diffusers` / :func:`save_diffusers_lora` write our low-rank deltas as the diffusers/peft file that
``StableDiffusionPipeline.load_lora_weights`` reads (``unet.P.lora_A.weight`` / ``lora_B``; the scaling
``alpha / rank`` is folded into ``lora_B``, so the file follows diffusers' ``alpha = rank`` convention and any
loader gives the same ``ΔW``). Importing this module imports neither diffusers nor peft.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from zoo.adapters.model import adapter_names, inject_adapter, iter_lora_layers, load_adapter_state_dict
from zoo.errors import CheckpointError
from zoo.layers.lora import LoRALayer, LowRankDelta

__all__ = [
    "LORA_WEIGHT_NAME",
    "detect_lora_format",
    "from_peft",
    "from_diffusers",
    "from_kohya",
    "CONVERTERS",
    "read_lora_file",
    "safetensors_header",
    "import_lora",
    "to_diffusers",
    "save_diffusers_lora",
]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<path>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$")
_DIFFUSERS_KEY = re.compile(r"^(?P<path>.+)\.lora_(?P<ab>[AB])\.weight$")
_DIFFUSERS_OLD_KEY = re.compile(r"^(?P<path>.+)\.lora\.(?P<ud>down|up)\.weight$")
_KOHYA_KEY = re.compile(r"^(?P<name>[^.]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")


# ====================================================================================================== helpers
def _default_adapter(model: nn.Module | None, adapter: str | None) -> str:
    """``adapter``, else the model's only low-rank adapter, else ``"default"``."""
    if adapter is not None:
        return adapter
    if model is not None:
        names = [n for n in adapter_names(model)
                 if any(isinstance(layer.deltas[n], LowRankDelta) for _, layer in iter_lora_layers(model) if n in layer.deltas)]
        if len(names) == 1:
            return names[0]
    return "default"


def _pattern_value(patterns: Mapping[str, Any] | None, path: str) -> Any:
    """peft's ``rank_pattern`` / ``alpha_pattern`` lookup: the first key ``k`` with ``re.match(rf"(.*\\.)?({k})$", path)``."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return None


def _alpha_from_config(config: Mapping[str, Any], path: str, rank: int) -> float:
    """Our ``alpha`` (``scaling · rank``) for module ``path`` under a peft ``LoraConfig`` dict."""
    alpha = _pattern_value(config.get("alpha_pattern"), path)
    if alpha is None:
        alpha = config.get("lora_alpha", 8)
    if config.get("use_rslora"):
        return float(alpha) / math.sqrt(rank) * rank  # rsLoRA: scaling = alpha / sqrt(r)
    return float(alpha)


def _load_config(config: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any] | None:
    if config is None or isinstance(config, Mapping):
        return None if config is None else dict(config)
    p = Path(config)
    if p.is_dir():
        p = p / "adapter_config.json"
    if not p.is_file():
        raise FileNotFoundError(f"peft adapter config not found: {p} (the adapter_config.json next to the weights)")
    return json.loads(p.read_text())


def _out(path: str, adapter: str, down: torch.Tensor, up: torch.Tensor, alpha: float | None) -> dict[str, torch.Tensor]:
    out = {f"{path}.{adapter}.down": down, f"{path}.{adapter}.up": up}
    if alpha is not None:
        out[f"{path}.{adapter}.alpha"] = torch.tensor(float(alpha), dtype=torch.float64)
    return out


def _pairs_to_ours(pairs: Mapping[str, dict[str, torch.Tensor]], rest: dict[str, torch.Tensor], adapter: str,
                   alpha_of) -> dict[str, torch.Tensor]:
    """``{path: {"down", "up"[, "alpha"]}}`` -> our keys; incomplete pairs stay in ``rest`` (reported unexpected)."""
    out = dict(rest)
    for path, t in pairs.items():
        if "down" not in t or "up" not in t:
            out.update({f"{path}.<incomplete:{k}>": v for k, v in t.items()})
            continue
        rank = t["down"].shape[0]
        out.update(_out(path, adapter, t["down"], t["up"], alpha_of(path, rank, t.get("alpha"))))
    return out


# ====================================================================================================== converters
def from_peft(
    state: Mapping[str, torch.Tensor],
    *,
    model: nn.Module | None = None,
    adapter: str | None = None,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    source_adapter: str | None = None,
) -> dict[str, torch.Tensor]:
    """peft layout -> ours: ``base_model.model.P.lora_A[.<name>].weight`` -> ``P.<adapter>.down`` (``lora_B`` -> up).

    ``config``: the ``LoraConfig`` as a dict, or the path of ``adapter_config.json`` (or its folder); gives each
    module's alpha exactly (``lora_alpha`` / ``alpha_pattern``, rsLoRA's ``alpha / √r``). Without it no alpha is
    emitted and the existing deltas keep theirs. Keys carrying peft adapter names (``lora_A.<name>.weight``, a
    ``PeftModel.state_dict()``) keep those names as ours unless ``adapter`` is given; then only ``source_adapter``'s
    keys (default: the only name present) are taken.
    """
    cfg = _load_config(config)
    named: dict[str | None, dict[str, dict[str, torch.Tensor]]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            rest[key] = value
            continue
        named.setdefault(m["name"], {}).setdefault(m["path"], {})["down" if m["ab"] == "A" else "up"] = value
    peft_names = [n for n in named if n is not None]
    if adapter is not None and peft_names:
        pick = source_adapter
        if pick is None:
            if len(peft_names) > 1:
                raise ValueError(f"from_peft: the state holds the peft adapters {peft_names}; say which one with "
                                 f"source_adapter=")
            pick = peft_names[0]
        if pick not in named:
            raise KeyError(f"from_peft: no peft adapter '{pick}' in the state (it has {peft_names})")
        named = {None: named[pick]}

    def alpha_of(path, rank, _):
        return None if cfg is None else _alpha_from_config(cfg, path, rank)

    out = dict(rest)
    for name, pairs in named.items():
        target = name if name is not None and adapter is None else _default_adapter(model, adapter)
        out.update(_pairs_to_ours(pairs, {}, target, alpha_of))
    return out


def from_diffusers(
    state: Mapping[str, torch.Tensor],
    *,
    model: nn.Module | None = None,
    adapter: str | None = None,
    prefix: str = "unet.",
    metadata: Mapping[str, Any] | str | None = None,
) -> dict[str, torch.Tensor]:
    """diffusers layout -> ours: ``unet.P.lora_A.weight`` / ``lora_B`` (today's ``save_lora_weights``) and the
    older ``unet.P.lora.down.weight`` / ``lora.up`` -> ``P.<adapter>.down`` / ``up`` plus the exact ``alpha``.

    Alpha per module: the ``unet.P.alpha`` key if present (older files converted from kohya), else the file's
    ``lora_adapter_metadata`` (``metadata``: that dict, its JSON string, or the safetensors header dict holding
    it) read as a peft ``LoraConfig``, else ``alpha = rank`` (what ``load_lora_weights`` does: scaling 1). Keys
    outside ``prefix`` (``text_encoder.``...) pass through. ``prefix=""`` reads un-prefixed keys.
    """
    if isinstance(metadata, Mapping) and "lora_adapter_metadata" in metadata:
        metadata = metadata["lora_adapter_metadata"]
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    cfg = dict(metadata) if metadata else None
    if cfg is not None and prefix and any(k.startswith(prefix) for k in cfg):
        cfg = {k[len(prefix):]: v for k, v in cfg.items() if k.startswith(prefix)}  # save_lora_weights packs "unet.r"
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if prefix and not key.startswith(prefix):
            rest[key] = value
            continue
        k = key[len(prefix):]
        m = _DIFFUSERS_KEY.match(k)
        if m is not None:
            pairs.setdefault(m["path"], {})["down" if m["ab"] == "A" else "up"] = value
            continue
        m = _DIFFUSERS_OLD_KEY.match(k)
        if m is not None:
            pairs.setdefault(m["path"], {})[m["ud"]] = value
            continue
        if k.endswith(".alpha"):
            pairs.setdefault(k[: -len(".alpha")], {})["alpha"] = value
            continue
        rest[key] = value

    def alpha_of(path, rank, alpha):
        if alpha is not None:
            return float(alpha)
        if cfg is not None and ("lora_alpha" in cfg or "alpha_pattern" in cfg):
            return _alpha_from_config(cfg, path, rank)
        return float(rank)

    return _pairs_to_ours(pairs, rest, _default_adapter(model, adapter), alpha_of)


def _kohya_names(model: nn.Module) -> dict[str, str]:
    """``{module path with "_" for ".": module path}`` of the modules kohya can name (wrappers looked through)."""
    inner = set()
    for _, layer in iter_lora_layers(model):
        inner.add(id(layer.base))
        inner.update(id(m) for m in layer.deltas.modules())
    return {name.replace(".", "_"): name for name, m in model.named_modules() if name and id(m) not in inner}


def from_kohya(
    state: Mapping[str, torch.Tensor],
    *,
    model: nn.Module | None = None,
    adapter: str | None = None,
    prefix: str = "lora_unet_",
) -> dict[str, torch.Tensor]:
    """kohya-ss layout -> ours: ``lora_unet_<P with _>.lora_down.weight`` / ``lora_up`` / ``alpha`` ->
    ``P.<adapter>.down`` / ``up`` / ``alpha`` (kohya's scaling is ``alpha / rank`` too: copied exactly; no
    ``alpha`` key means ``alpha = rank``).

    The underscores are resolved against ``model``'s module names (required: ``down_blocks_0`` is ambiguous
    without them); names that match no module of the model pass through (reported as unexpected by a strict
    load) — e.g. SDXL files using the original SD block names (``input_blocks_4_1_...``): convert those with
    diffusers first. ``prefix``: ``lora_unet_`` (UNet), ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` (text encoders).
    """
    if model is None:
        raise ValueError("from_kohya needs the model (model=...) to turn kohya's underscore names back into module "
                         "paths; load_adapter_state_dict(model, state, convert=from_kohya) passes it")
    names = _kohya_names(model)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _KOHYA_KEY.match(key)
        if m is None or not m["name"].startswith(prefix) or m["name"][len(prefix):] not in names:
            rest[key] = value
            continue
        path = names[m["name"][len(prefix):]]
        part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[m["part"]]
        pairs.setdefault(path, {})[part] = value

    def alpha_of(path, rank, alpha):
        return float(rank) if alpha is None else float(alpha)

    return _pairs_to_ours(pairs, rest, _default_adapter(model, adapter), alpha_of)


CONVERTERS = {"peft": from_peft, "diffusers": from_diffusers, "kohya": from_kohya}


def detect_lora_format(state: Mapping[str, Any], prefix: str = "unet.") -> str:
    """``"zoo"``, ``"peft"``, ``"diffusers"`` or ``"kohya"`` from the key names; ``ValueError`` if none fits."""
    keys = list(state)
    if any(_KOHYA_KEY.match(k) and k.startswith("lora_") and ".lora_down." in k for k in keys):
        return "kohya"
    if any(k.startswith(prefix) and (_DIFFUSERS_KEY.match(k) or _DIFFUSERS_OLD_KEY.match(k)) for k in keys):
        return "diffusers"
    if any(_PEFT_KEY.match(k) for k in keys):
        return "peft"
    if any(k.endswith((".down", ".up")) for k in keys):
        return "zoo"
    raise CheckpointError(f"not a LoRA state dict of a known layout (peft, diffusers, kohya, zoo); first keys: {keys[:5]}")


# ====================================================================================================== files
def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, safetensors header metadata)`` of a ``.safetensors`` LoRA file (or a folder holding
    ``pytorch_lora_weights.safetensors``); ``.bin`` / ``.pt`` files are read with ``weights_only=True``."""
    p = Path(path)
    if p.is_dir():
        p = p / LORA_WEIGHT_NAME
    if not p.is_file():
        raise FileNotFoundError(f"LoRA file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    from zoo.files import read_torch_file

    return dict(read_torch_file(p, what="LoRA file")), {}


def safetensors_header(path: str | os.PathLike) -> tuple[dict[str, str], list[str]]:
    """``(metadata, tensor names)`` of a ``.safetensors`` file, without reading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {}), list(f.keys())


def import_lora(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    adapter: str = "default",
    format: str | None = None,
    dtype: torch.dtype | None = None,
    freeze: bool = True,
    **convert_kwargs: Any,
) -> dict[str, LoRALayer]:
    """Add a :class:`~zoo.layers.lora.LowRankDelta` named ``adapter`` for every module a LoRA file adapts (rank
    from the factor shapes, alpha exactly as the layout says) and load the factors. Returns ``{path: layer}``.

    ``source``: a file / folder (:func:`read_lora_file`) or a state dict; ``format``: ``peft``, ``diffusers``,
    ``kohya`` or ``zoo`` (default: detected); ``convert_kwargs`` go to the converter (``config=`` for peft,
    ``prefix=``). Keys of the file that adapt nothing in ``model`` raise a
    :class:`~zoo.errors.CheckpointError` listing them.
    ``freeze``: make the base non-trainable (the new adapter is trainable). ``dtype``: of the new factors.
    """
    metadata: dict[str, str] = {}
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        state, metadata = read_lora_file(source)
    fmt = format or detect_lora_format(state, convert_kwargs.get("prefix", "unet."))
    if fmt == "diffusers" and metadata and "metadata" not in convert_kwargs:
        convert_kwargs["metadata"] = metadata
    if fmt == "zoo":
        ours = state
    elif fmt in CONVERTERS:
        ours = CONVERTERS[fmt](state, model=model, adapter=adapter, **convert_kwargs)
    else:
        raise ValueError(f"unknown LoRA format '{fmt}'; choose one of {', '.join(['zoo', *CONVERTERS])}")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in ours.items():
        prefix, _, tensor = key.rpartition(".")
        path, _, name = prefix.rpartition(".")
        if name == adapter and tensor in ("down", "up", "alpha"):
            factors.setdefault(path, {})[tensor] = value
    modules = dict(model.named_modules())
    unknown = [k for k in ours if k.rpartition(".")[0].rpartition(".")[0] not in factors]
    unknown += [p for p in factors if p not in modules or "down" not in factors[p]]
    if unknown:
        raise CheckpointError(f"the LoRA state has {len(unknown)} keys that adapt no module of the model (adapter "
                       f"'{adapter}', format {fmt}): {', '.join(map(str, unknown[:10]))}{' ...' if len(unknown) > 10 else ''}")

    def make(name: str, base: nn.Module) -> LowRankDelta | None:
        t = factors.get(name)
        if t is None:
            return None
        rank = int(t["down"].shape[0])
        alpha = float(t["alpha"]) if "alpha" in t else float(rank)
        return LowRankDelta(base, rank, alpha, init="lora", dtype=dtype or t["down"].dtype)

    layers = inject_adapter(model, lambda name, m: name in factors, make, name=adapter)
    load_adapter_state_dict(model, {k: v for k, v in ours.items() if k.rpartition(".")[0].rpartition(".")[0] in factors
                                    and k.rpartition(".")[0].rpartition(".")[2] == adapter}, strict=False)
    missing = [p for p in factors if p not in layers]
    if missing:
        raise CheckpointError(f"import_lora: modules {missing[:10]} are not Linear / Conv layers and cannot hold a LoRA")
    if freeze:
        from zoo.adapters.model import freeze_base

        freeze_base(model)
    return layers


# ====================================================================================================== export
def to_diffusers(model: nn.Module, adapter: str = "default", prefix: str = "unet.",
                 dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The low-rank deltas named ``adapter`` as diffusers LoRA tensors ``{prefix}P.lora_A.weight`` (``down``,
    frozen part included: Linear ``(r, in)``, conv ``(r, in, *k)``) and ``{prefix}P.lora_B.weight``
    (``(alpha / r) · up``: Linear ``(out, r)``, conv ``(out, r, 1, ...)``). The run-time ``scale`` is not folded in
    (it is a knob, like diffusers' adapter weights). Raises for sparse deltas and grouped convs (no LoRA form)."""
    out: dict[str, torch.Tensor] = {}
    for path, layer in iter_lora_layers(model):
        if adapter not in layer.deltas:
            continue
        delta = layer.deltas[adapter]
        if not isinstance(delta, LowRankDelta):
            raise TypeError(f"adapter '{adapter}' at '{path}' is a {type(delta).__name__}; only low-rank deltas have a "
                            "diffusers/peft LoRA form")
        if delta.groups != 1:
            raise ValueError(f"'{path}' is a grouped convolution (groups={delta.groups}); peft's LoRA has no form for it")
        with torch.no_grad():
            down = delta.down_weight().detach()
            up = (delta.up_weight().detach().double() * delta.scaling).to(delta.up.dtype)
            if delta.is_conv:
                up = up.reshape(*up.shape, *([1] * len(delta.kernel_shape)))
        for name, t in (("lora_A", down), ("lora_B", up)):
            t = t if dtype is None else t.to(dtype)
            out[f"{prefix}{path}.{name}.weight"] = t.cpu().contiguous().clone()
    if not out:
        raise ValueError(f"the model has no adapter named '{adapter}' (its adapters: {adapter_names(model) or 'none'})")
    return out


def save_diffusers_lora(model: nn.Module, path: str | os.PathLike, adapter: str = "default", *,
                        prefix: str = "unet.", dtype: torch.dtype | None = None) -> Path:
    """Write :func:`to_diffusers` as a safetensors file that ``pipe.load_lora_weights`` reads; ``path`` is the
    file, or a folder (then ``pytorch_lora_weights.safetensors`` in it). Written atomically; returns the file."""
    from zoo.files import write_safetensors_file

    p = Path(path)
    if p.suffix != ".safetensors":
        p = p / LORA_WEIGHT_NAME
    return write_safetensors_file(to_diffusers(model, adapter, prefix, dtype), p, metadata={"format": "pt"})
