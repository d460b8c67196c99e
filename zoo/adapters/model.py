"""Adapters on a whole model: which modules get a delta, which adapters train and which are active, their state
dicts, merging and scales -- the model-level half of the adapter core (the delta layers are :mod:`zoo.layers.lora`).

:func:`inject_adapter` / :func:`add_lora` wrap modules selected by name patterns;
:func:`adapter_state_dict` / :func:`load_adapter_state_dict` (only the deltas, a flat safetensors-friendly dict
keyed ``<module path>.<adapter name>.<tensor>``; a ``convert`` hook reads other layouts, see
:mod:`zoo.adapters.lora_formats`), :func:`merge_adapters` / :func:`unmerge_adapters`, :func:`remove_adapters`,
:func:`set_adapter_scale`, :func:`enable_adapter`.

Per-adapter control (peft's ``set_adapter`` / ``active_adapters``, with training and activity kept apart so that
"train the style adapter with the content adapter active but frozen" can be said):

* **trainable state** — :func:`freeze_base` (every parameter that is no delta's: ``requires_grad=False``),
  :func:`set_adapter_trainable` (one or more adapters on/off, others untouched), :func:`trainable_adapters`,
  :func:`mark_only_adapters_trainable` (base *and* every other adapter frozen). ``add_lora(freeze=True)`` freezes
  the base and leaves the adapters that were there before as they were;
* **active set** — :func:`set_active_adapters` (the named adapters contribute, every other is off),
  :func:`active_adapters`; a disabled adapter keeps its trainable flag (its parameters just get no gradient);
* **optimiser groups** — :func:`adapter_param_groups` (a learning rate per adapter, or per adapter tensor:
  ViDA's low/high adapters, Break-for-Make's two projections);
* **dtype** — ``add_lora(dtype=torch.float32)`` trains fp32 factors over an fp16/bf16 base (the delta casts its
  input to its own dtype and its output back to the base's); :func:`cast_adapters` re-casts after ``model.to()``.

How the zoo's adapter methods configure it:

* plain LoRA: ``add_lora(model, ["to_q", "to_v"], rank=8)``;
* ViDA: two deltas per layer, ``add_lora(..., rank=1, name="vida_low", init="vida")`` and
  ``add_lora(..., rank=128, name="vida_high", init="vida")``; the per-batch scales from the uncertainty are set
  with ``set_adapter_scale(model, "vida_high", s)`` before each forward;
* CoLoRA: ``add_lora(model, targets, rank=lambda name, module: ranks[name])`` — per-layer ranks from the
  contribution scores (a rank of 0/None skips the layer);
* Break-for-Make PLP: ``add_lora(..., rank=64, init="orthogonal", frozen_down_cols=in // 2,
  frozen_up_rows=out // 2, seed=0)`` — frozen halves drawn from a per-layer seeded generator, so content and
  style runs share them exactly;
* SaRA: ``zoo.adapters.sara`` adds a :class:`SparseDelta` named ``"sara"`` to every module with parameters;
* HeLlO projector: ``add_lora`` on the encoder's convs and the linear head with different ranks (a dict
  ``{pattern: rank}``).
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from zoo.layers.lora import LOWRANK_TYPES, Delta, LoRALayer, LowRankDelta, SparseDelta, per_layer_generator

__all__ = [
    "match_module_name", "iter_lora_layers", "inject_adapter", "add_lora", "mark_only_adapters_trainable",
    "freeze_base", "set_adapter_trainable", "trainable_adapters", "set_active_adapters", "active_adapters",
    "adapter_param_groups", "cast_adapters", "adapter_parameters", "named_adapter_parameters", "adapter_state_dict",
    "load_adapter_state_dict", "merge_adapters", "unmerge_adapters", "remove_adapters", "set_adapter_scale",
    "enable_adapter", "sync_adapters", "adapter_names",
]


def match_module_name(name: str, module: nn.Module, targets: Any) -> bool:
    """Whether module ``name`` is selected by ``targets``.

    ``targets``: None or ``"all"`` (everything), a callable ``fn(name, module) -> bool``, a string (a regular
    expression that must match the whole name), or a list of strings, each an exact name, a name suffix after a
    dot (``"to_q"`` matches ``"...attn1.to_q"``) or an fnmatch pattern when it contains ``*?[``.
    """
    if targets is None or targets == "all":
        return True
    if callable(targets):
        return bool(targets(name, module))
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    for t in targets:
        if any(c in t for c in "*?["):
            if fnmatch.fnmatchcase(name, t):
                return True
        elif name == t or name.endswith("." + t):
            return True
    return False


def iter_lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALayer]]:
    """``(name, layer)`` for every :class:`LoRALayer` in ``model`` (``model`` itself included)."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            yield name, module


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = module


def inject_adapter(
    model: nn.Module,
    targets: Any,
    make_delta: Callable[[str, nn.Module], Delta | None],
    *,
    name: str = "default",
    layer_types: tuple[type, ...] = LOWRANK_TYPES,
    exclude: Any = (),
) -> dict[str, LoRALayer]:
    """Add a delta named ``name`` to every module of ``layer_types`` selected by ``targets`` (see
    :func:`match_module_name`) and not by ``exclude``; modules are wrapped in a :class:`LoRALayer` (in place in
    ``model``) unless they already are one. ``make_delta(module_name, base)`` builds the delta or returns None to
    skip the module. Returns ``{module name: layer}`` of the layers that got a delta.

    Raises ``ValueError`` if nothing matched (a typo in the targets should not train nothing silently).
    """
    chosen: list[tuple[str, nn.Module]] = []
    skip = set()  # bases inside existing wrappers (matched through the wrapper's name) and the deltas themselves
    for _, layer in iter_lora_layers(model):
        skip.add(id(layer.base))
        skip.update(id(m) for m in layer.deltas.modules())
    for mod_name, module in model.named_modules():
        if id(module) in skip:
            continue
        base = module.base if isinstance(module, LoRALayer) else module
        if not isinstance(base, layer_types) or (module is model and not isinstance(module, LoRALayer)):
            continue  # the root cannot be replaced in place: wrap it yourself with LoRALayer(model)
        if match_module_name(mod_name, base, targets) and not (exclude and match_module_name(mod_name, base, exclude)):
            chosen.append((mod_name, module))
    if not chosen:
        raise ValueError(f"no module of types {[t.__name__ for t in layer_types]} matches targets {targets!r}")
    layers: dict[str, LoRALayer] = {}
    for mod_name, module in chosen:
        base = module.base if isinstance(module, LoRALayer) else module
        delta = make_delta(mod_name, base)
        if delta is None:
            continue
        layer = module if isinstance(module, LoRALayer) else LoRALayer(module)
        if layer is not module:
            _set_submodule(model, mod_name, layer)
        layer.add_delta(name, delta)
        layers[mod_name] = layer
    return layers


def _per_layer(value: Any, mod_name: str, module: nn.Module) -> Any:
    """Resolve a per-layer option: a callable ``fn(name, module)``, a ``{pattern: value}`` dict, or a constant."""
    if callable(value):
        return value(mod_name, module)
    if isinstance(value, Mapping):
        for pattern, v in value.items():
            if match_module_name(mod_name, module, [pattern]) or re.fullmatch(pattern, mod_name):
                return v
        return None
    return value


def add_lora(
    model: nn.Module,
    targets: Any,
    rank: int | Mapping[str, int] | Callable[[str, nn.Module], int | None] = 4,
    alpha: float | Mapping | Callable | None = None,
    *,
    name: str = "default",
    init: str | Callable = "lora",
    dropout: float = 0.0,
    frozen_down_cols: int | Callable[[str, nn.Module], int] = 0,
    frozen_up_rows: int | Callable[[str, nn.Module], int] = 0,
    seed: int | None = None,
    scale: float = 1.0,
    layer_types: tuple[type, ...] = LOWRANK_TYPES,
    exclude: Any = (),
    freeze: bool = True,
    dtype: torch.dtype | None = None,
) -> dict[str, LoRALayer]:
    """Add a :class:`LowRankDelta` named ``name`` to the modules selected by ``targets``.

    ``rank``, ``alpha``, ``frozen_down_cols`` and ``frozen_up_rows`` may be constants, ``{pattern: value}``
    dicts or callables ``fn(module_name, module)`` (a rank of 0/None skips the layer — CoLoRA's per-layer
    ranks). ``seed``: initialise each layer from a generator seeded by ``(seed, module name)`` (reproducible
    frozen PLP parts). ``freeze``: make every parameter that belongs to no adapter non-trainable
    (:func:`freeze_base`); the new adapter is trainable, adapters added before keep their trainable state (so a
    frozen content adapter stays frozen while the style adapter trains). ``dtype``: of the new factors (default:
    each base weight's), e.g. ``torch.float32`` over an fp16/bf16 base.
    """

    def make(mod_name: str, base: nn.Module) -> Delta | None:
        r = _per_layer(rank, mod_name, base)
        if not r:
            return None
        return LowRankDelta(
            base, int(r), _per_layer(alpha, mod_name, base), init=init, dropout=dropout,
            frozen_down_cols=int(_per_layer(frozen_down_cols, mod_name, base) or 0),
            frozen_up_rows=int(_per_layer(frozen_up_rows, mod_name, base) or 0),
            generator=per_layer_generator(seed, mod_name), scale=scale, dtype=dtype,
        )

    layers = inject_adapter(model, targets, make, name=name, layer_types=layer_types, exclude=exclude)
    if freeze:
        freeze_base(model)
    return layers


def _names_list(names: str | Sequence[str] | None) -> list[str] | None:
    return [names] if isinstance(names, str) else (None if names is None else list(names))


def _check_adapter_names(model: nn.Module, names: Sequence[str], what: str) -> None:
    present = adapter_names(model)
    unknown = [n for n in names if n not in present]
    if unknown:
        raise KeyError(f"{what}: no adapter named {', '.join(map(repr, unknown))} in the model; its adapters are "
                       f"{', '.join(map(repr, present)) or 'none (add one with add_lora / inject_adapter first)'}")


def _delta_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for _, layer in iter_lora_layers(model) for p in layer.deltas.parameters()}


def mark_only_adapters_trainable(model: nn.Module, names: str | Sequence[str] | None = None) -> None:
    """``requires_grad=False`` for every parameter except those of the deltas named ``names`` (default: all
    adapters), which become trainable: the base and every other adapter are frozen."""
    keep = {id(p) for _, p in named_adapter_parameters(model, _names_list(names), trainable_only=False)}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def freeze_base(model: nn.Module) -> None:
    """``requires_grad=False`` for every parameter of ``model`` that belongs to no delta; adapters are untouched."""
    adapter = _delta_param_ids(model)
    for p in model.parameters():
        if id(p) not in adapter:
            p.requires_grad_(False)


def set_adapter_trainable(model: nn.Module, names: str | Sequence[str], trainable: bool = True) -> int:
    """Make the parameters of adapters ``names`` trainable (or frozen with ``trainable=False``) in every layer;
    other adapters and the base keep their state. Returns the number of deltas changed; unknown names raise."""
    names = _names_list(names)
    _check_adapter_names(model, names, "set_adapter_trainable")
    n = 0
    for _, layer in iter_lora_layers(model):
        for delta_name, delta in layer.deltas.items():
            if delta_name in names:
                delta.requires_grad_(trainable)
                n += 1
    return n


def trainable_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters with at least one trainable parameter (in order of first appearance)."""
    out: dict[str, None] = {}
    for _, layer in iter_lora_layers(model):
        for delta_name, delta in layer.deltas.items():
            if any(p.requires_grad for p in delta.parameters()):
                out[delta_name] = None
    return list(out)


def set_active_adapters(model: nn.Module, names: str | Sequence[str]) -> list[str]:
    """Enable the adapters ``names`` in every layer and disable every other one (peft's ``set_adapter``; an
    empty list switches all off). Trainable flags are not changed (see :func:`set_adapter_trainable`). Unknown
    names raise a ``KeyError``; merged layers a ``RuntimeError`` (unmerge first). Returns the active names."""
    names = _names_list(names)
    _check_adapter_names(model, names, "set_active_adapters")
    for _, layer in iter_lora_layers(model):
        for delta_name in layer.deltas:
            layer.enable(delta_name, delta_name in names)
    return active_adapters(model)


def active_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters enabled in at least one layer (in order of first appearance)."""
    return list(dict.fromkeys(k for _, layer in iter_lora_layers(model) for k, d in layer.deltas.items() if d.enabled))


def adapter_param_groups(
    model: nn.Module, groups: Mapping[str, Mapping[str, Any]], base: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Optimiser parameter groups by adapter name: ``[{"params": [...], "name": key, **options}, ...]``.

    ``groups`` maps an adapter name (``"vida_high"``) or an adapter tensor (``"plp.down"``, ``"plp.up"``: one
    tensor name of the deltas, as in :func:`named_adapter_parameters`) to the group's options (``{"lr": 1e-5}``);
    a tensor key wins over its adapter's key. Every other trainable parameter — the base's and those of adapters
    not named — goes into one last group ``"name": "base"`` with the options ``base`` (default: none, i.e. the
    optimiser's defaults). Only trainable parameters are listed, each in exactly one group; empty groups are left
    out. Keys naming no adapter (or no tensor of it) raise a ``KeyError`` listing the model's adapters.

    Example (ViDA: two learning rates)::

        torch.optim.AdamW(adapter_param_groups(model, {"vida_low": {"lr": 1e-5}, "vida_high": {"lr": 1e-4}},
                                               base={"lr": 1e-6}))
    """
    present = adapter_names(model)
    tensors: dict[str, set[str]] = {}
    for _, layer in iter_lora_layers(model):
        for delta_name, delta in layer.deltas.items():
            tensors.setdefault(delta_name, set()).update(n for n, _ in delta.named_parameters())
    for key in groups:
        adapter, _, tensor = key.partition(".")
        if adapter not in present:
            raise KeyError(f"adapter_param_groups: no adapter named '{adapter}' (key '{key}') in the model; its "
                           f"adapters are {', '.join(map(repr, present)) or 'none'}")
        if tensor and tensor not in tensors[adapter]:
            raise KeyError(f"adapter_param_groups: adapter '{adapter}' has no tensor '{tensor}' (key '{key}'); its "
                           f"trainable tensors are {', '.join(sorted(tensors[adapter]))}")
    members: dict[str, list[nn.Parameter]] = {key: [] for key in groups}
    seen: set[int] = set()
    for _, layer in iter_lora_layers(model):
        for delta_name, delta in layer.deltas.items():
            for pname, p in delta.named_parameters():
                if not p.requires_grad or id(p) in seen:
                    continue
                key = f"{delta_name}.{pname}" if f"{delta_name}.{pname}" in groups else delta_name
                if key in groups:
                    members[key].append(p)
                    seen.add(id(p))
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    out = [{"params": members[key], "name": key, **dict(opts)} for key, opts in groups.items() if members[key]]
    if rest:
        out.append({"params": rest, "name": "base", **dict(base or {})})
    return out


def cast_adapters(model: nn.Module, dtype: torch.dtype, names: str | Sequence[str] | None = None) -> None:
    """Cast the tensors of the deltas (of adapters ``names``, default all) to ``dtype`` — e.g. back to float32
    after ``model.to(torch.float16)`` cast everything (diffusers' ``cast_training_params``). Sparse deltas keep
    their int32 indices and the copies of the base entries (``*_orig``, in the base's dtype)."""
    names = _names_list(names)
    for _, layer in iter_lora_layers(model):
        for delta_name, delta in layer.deltas.items():
            if names is None or delta_name in names:
                for key, t in list(delta.named_parameters()) + list(delta.named_buffers()):
                    if t is not None and t.is_floating_point() and t.dtype != dtype and not key.endswith("_orig"):
                        t.data = t.data.to(dtype)


def named_adapter_parameters(
    model: nn.Module, names: Sequence[str] | None = None, trainable_only: bool = True
) -> Iterator[tuple[str, nn.Parameter]]:
    """``(full name, parameter)`` of the deltas' parameters (of adapters ``names``, default all)."""
    for layer_name, layer in iter_lora_layers(model):
        for delta_name, delta in layer.deltas.items():
            if names is not None and delta_name not in names:
                continue
            for pname, p in delta.named_parameters():
                if p.requires_grad or not trainable_only:
                    yield f"{layer_name}.{delta_name}.{pname}".lstrip("."), p


def adapter_parameters(model: nn.Module, names: Sequence[str] | None = None) -> list[nn.Parameter]:
    """The trainable parameters of the deltas (for the optimiser)."""
    return [p for _, p in named_adapter_parameters(model, names)]


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters present anywhere in ``model`` (in order of first appearance)."""
    return list(dict.fromkeys(k for _, layer in iter_lora_layers(model) for k in layer.deltas))


def adapter_state_dict(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Only the deltas, as ``{"<module path>.<adapter>.<tensor>": tensor}`` (detached, contiguous, no shared storage).

    Works with ``safetensors.torch.save_file`` as is.
    """
    out: dict[str, torch.Tensor] = {}
    for layer_name, layer in iter_lora_layers(model):
        for delta_name, delta in layer.deltas.items():
            if names is not None and delta_name not in names:
                continue
            for key, t in delta.delta_state().items():
                out[f"{layer_name}.{delta_name}.{key}".lstrip(".")] = t.detach().contiguous().clone()
    return out


def load_adapter_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    strict: bool = True,
    convert: Callable[..., Mapping[str, torch.Tensor]] | None = None,
) -> dict[str, list[str]]:
    """Load tensors saved by :func:`adapter_state_dict` into the existing deltas of ``model``.

    ``convert(state) -> state``: a key-conversion hook applied first, mapping another layout to ours
    (``<module path>.<adapter>.<tensor>``); :mod:`zoo.adapters.lora_formats` ships ``from_peft``,
    ``from_diffusers`` and ``from_kohya`` (LoRA files of peft, diffusers and kohya-ss). A hook that takes a
    ``model`` keyword also receives ``model`` (to resolve module names or the adapter's name).
    Besides the deltas' own tensors a delta accepts its ``optional_state_keys`` (``alpha`` for low-rank deltas:
    ``scaling = alpha / rank`` is set exactly).

    Returns ``{"missing": [...], "unexpected": [...]}``; with ``strict`` any of them raises a ``RuntimeError``
    listing the keys. Sparse deltas accept index sets of other sizes (they are re-applied to the base).
    """
    if convert is not None:
        import inspect

        try:
            takes_model = "model" in inspect.signature(convert).parameters
        except (TypeError, ValueError):
            takes_model = False
        state = convert(state, model=model) if takes_model else convert(state)
    targets: dict[str, tuple[LoRALayer, str, Delta]] = {}
    for layer_name, layer in iter_lora_layers(model):
        for delta_name, delta in layer.deltas.items():
            targets[f"{layer_name}.{delta_name}".lstrip(".")] = (layer, delta_name, delta)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        prefix, _, tensor_name = key.rpartition(".")
        if prefix in targets:
            grouped.setdefault(prefix, {})[tensor_name] = value
        else:
            unexpected.append(key)
    missing: list[str] = []
    for prefix, (layer, _, delta) in targets.items():
        expected = set(delta.delta_state())
        got = grouped.get(prefix, {})
        missing += [f"{prefix}.{k}" for k in sorted(delta.required_state_keys(got) - set(got))]
        unexpected += [f"{prefix}.{k}" for k in sorted(set(got) - expected - set(delta.optional_state_keys))]
    if strict and (missing or unexpected):
        raise RuntimeError(
            "adapter state does not match the model's adapters:"
            + (f"\n  missing ({len(missing)}): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}" if missing else "")
            + (f"\n  unexpected ({len(unexpected)}): {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}"
               if unexpected else "")
        )
    for prefix, values in grouped.items():
        layer, _, delta = targets[prefix]
        accepted = set(delta.delta_state()) | set(delta.optional_state_keys)
        delta.load_delta_state(layer, {k: v for k, v in values.items() if k in accepted})
    return {"missing": missing, "unexpected": unexpected}


def merge_adapters(model: nn.Module, keep_base: bool = True) -> None:
    """Merge every :class:`LoRALayer` (see :meth:`LoRALayer.merge`)."""
    for _, layer in iter_lora_layers(model):
        layer.merge(keep_base=keep_base)


def unmerge_adapters(model: nn.Module) -> None:
    """Unmerge every :class:`LoRALayer`."""
    for _, layer in iter_lora_layers(model):
        layer.unmerge()


def sync_adapters(model: nn.Module) -> None:
    """Write changed sparse values into the base weights now (needed only after updates through ``.data``)."""
    for _, layer in iter_lora_layers(model):
        for delta in layer.deltas.values():
            if delta.in_place and not layer.merged:
                delta.write(layer.base, force=True)


@torch.no_grad()
def remove_adapters(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every :class:`LoRALayer` by its base module: with the enabled deltas merged in (``merge``), or
    with the original weights restored. Returns ``model`` (a wrapped root module is returned unwrapped)."""
    for name, layer in list(iter_lora_layers(model)):
        if merge:
            layer.merge(keep_base=False)
        else:
            layer.unmerge()
            for delta in layer.deltas.values():
                if delta.in_place:
                    delta.restore(layer.base)
        if name:
            _set_submodule(model, name, layer.base)
        else:
            model = layer.base
    return model


def set_adapter_scale(model: nn.Module, name: str, scale: Any) -> int:
    """Set the scale of adapter ``name`` in every layer that has it; returns the number of layers."""
    n = 0
    for _, layer in iter_lora_layers(model):
        if name in layer.deltas:
            layer.set_scale(name, scale)
            n += 1
    return n


def enable_adapter(model: nn.Module, name: str | None = None, enabled: bool = True) -> int:
    """Enable/disable adapter ``name`` (default: all) in every layer; returns the number of layers touched."""
    n = 0
    for _, layer in iter_lora_layers(model):
        if name is None or name in layer.deltas:
            layer.enable(name, enabled)
            n += 1
    return n
