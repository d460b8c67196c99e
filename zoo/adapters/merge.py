"""Composition of a content adapter with a style adapter, behind one interface: :func:`compose`.

Both adapters are low-rank deltas already in the model (e.g. loaded with :func:`zoo.adapters.plp.load_plp` from the
files of the two stage-1 runs); ``compose(model, composition, content, style, weights=(w_c, w_s), name=...)`` adds
a new adapter
``name`` that computes the composition, as a :class:`~zoo.layers.lora.LowRankDelta` per layer (so it exports to
diffusers' LoRA format with :func:`zoo.adapters.lora_formats.save_diffusers_lora`) — except ``ziplora``, whose
learned mergers live in a :class:`ZipLoRADelta` until :func:`ziplora_to_lowrank` folds them in. Compositions
(:data:`COMPOSITIONS`):

==============  ==============================================================================================
``b4m``         Break-for-Make's stage-2 merge (official ``train_second_stage.py``: the style file's ``down``
                with its learnable columns replaced by the content file's): ``up = [A; w_s·B_style]``,
                ``down = [C | w_c·D_content]``, rank ``r``; ``A``, ``C`` are the shared frozen parts (checked
                bitwise). The merged adapter keeps PLP's frozen parts and is trained further in stage 2.
                Unlike the official, nothing re-initialises it after loading: the content columns survive.
``weighted_sum`` diffusers' ``set_adapters([c, s], [w_c, w_s])`` / peft's ``add_weighted_adapter("cat")``:
                ``ΔW = w_c ΔW_c + w_s ΔW_s`` exactly, as one rank ``r_c + r_s`` LoRA (factors concatenated).
``ziplora``     ZipLoRA (Shah et al. 2023; community ``mkshing/ziplora-pytorch``): ``ΔW = ΔW_c·diag(m_c) +
                ΔW_s·diag(m_s)`` with learnable per-input-column mergers ``m_c, m_s (in,)`` initialised to
                ``w_c``, ``w_s``; train them with :func:`ziplora_loss` (and the two teachers' outputs), then
                :func:`ziplora_to_lowrank` (exact, rank ``r_c + r_s``).
``blora``       B-LoRA's block split (Frenkel et al. 2024): the content adapter only in the content blocks and the
                style adapter only in the style blocks (``blocks={"content": [...], "style": [...]}``, module
                name prefixes; default :data:`BLORA_BLOCKS_SDXL`, for other UNets pass your own). B-LoRA trains one
                LoRA per image and filters it; here the two given adapters are filtered the same way.
==============  ==============================================================================================

The composed adapter is active alone after :func:`compose` (``set_active_adapters(model, [name])``); the
sources stay in the model (switched off) unless ``remove_sources=True``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.adapters.model import iter_lora_layers, set_active_adapters
from zoo.errors import CheckpointError
from zoo.layers.lora import Delta, LoRALayer, LowRankDelta

__all__ = ["COMPOSITIONS", "BLORA_BLOCKS_SDXL", "compose", "merge_b4m", "weighted_sum", "block_split",
           "ZipLoRADelta", "add_ziplora", "ziplora_loss", "ziplora_to_lowrank", "ziplora_diffusers_state"]

COMPOSITIONS = ("b4m", "weighted_sum", "ziplora", "blora")
#: B-LoRA's blocks on SDXL (yardenfren1996/B-LoRA ``blora_utils.py``)
BLORA_BLOCKS_SDXL = {"content": ["up_blocks.0.attentions.0"], "style": ["up_blocks.0.attentions.1"]}


_Pair = tuple[str, LoRALayer, "LowRankDelta | None", "LowRankDelta | None"]


def _pairs(model: nn.Module, content: str, style: str) -> list[_Pair]:
    """``(path, layer, content delta or None, style delta or None)`` of every layer with at least one of them."""
    out = []
    for path, layer in iter_lora_layers(model):
        c = layer.deltas[content] if content in layer.deltas else None
        s = layer.deltas[style] if style in layer.deltas else None
        if c is None and s is None:
            continue
        for n, d in ((content, c), (style, s)):
            if d is not None and not isinstance(d, LowRankDelta):
                raise TypeError(f"compose: adapter '{n}' at '{path}' is a {type(d).__name__}; only low-rank deltas "
                                "compose")
        out.append((path, layer, c, s))
    if not out:
        raise KeyError(f"compose: the model has neither adapter '{content}' nor '{style}'")
    return out


def _new_delta(layer: LoRALayer, like: LowRankDelta, rank: int, alpha: float, frozen: bool) -> LowRankDelta:
    return LowRankDelta(layer.base, rank, alpha, init="lora",
                        frozen_down_cols=like.frozen_down_cols if frozen else 0,
                        frozen_up_rows=like.frozen_up_rows if frozen else 0, dtype=like.down.dtype)


def _finish(model: nn.Module, name: str, sources: Sequence[str], remove_sources: bool) -> str:
    set_active_adapters(model, [name])
    if remove_sources:
        for _, layer in iter_lora_layers(model):
            for s in sources:
                if s in layer.deltas and s != name:
                    layer.remove_delta(s)
    return name


@torch.no_grad()
def merge_b4m(model: nn.Module, content: str = "content", style: str = "style", name: str = "b4m",
              weights: Sequence[float] = (1.0, 1.0), remove_sources: bool = False) -> str:
    """Break-for-Make's merge (see the module doc): a PLP delta ``name`` with the shared frozen parts, the content
    adapter's learnable ``down`` columns (× ``w_c``) and the style adapter's learnable ``up`` rows (× ``w_s``),
    trainable. Raises :class:`~zoo.errors.CheckpointError` when a layer lacks one of them, or their shapes,
    ``alpha`` or frozen parts differ (the two stage-1 runs must use the same ``adapter`` section). Returns
    ``name``."""
    wc, ws = map(float, weights)
    for path, layer, c, s in _pairs(model, content, style):
        if c is None or s is None:
            raise CheckpointError(f"merge_b4m: layer '{path}' has only the {'content' if s is None else 'style'} adapter; "
                             "train both stage-1 adapters on the same target modules")
        def shape(d):
            return d.rank, d.frozen_down_cols, d.frozen_up_rows, d.alpha

        if shape(c) != shape(s):
            raise CheckpointError(f"merge_b4m: '{path}': content (rank, frozen cols/rows, alpha) {shape(c)} and style "
                                  f"{shape(s)} adapters differ; train both with the same adapter section")
        for key in ("down_frozen", "up_frozen"):
            a, b = getattr(c, key), getattr(s, key)
            if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
                raise CheckpointError(f"merge_b4m: '{path}': the content and style adapters have different {key} "
                                      "(the frozen PLP parts must be shared): train both with the same adapter.seed")
        d = _new_delta(layer, c, c.rank, c.alpha, frozen=True)
        d.down.copy_(c.down * wc)
        d.up.copy_(s.up * ws)
        if d.down_frozen is not None:
            d.down_frozen.copy_(c.down_frozen)
        if d.up_frozen is not None:
            d.up_frozen.copy_(c.up_frozen)
        layer.add_delta(name, d)
    return _finish(model, name, (content, style), remove_sources)


def _concat(layer: LoRALayer, parts: Sequence[tuple[LowRankDelta, float]]) -> LowRankDelta:
    """One delta with ``ΔW = Σ w_k ΔW_k`` (factors concatenated along the rank, scalings folded into ``up``)."""
    rank = sum(d.rank for d, _ in parts)
    out = _new_delta(layer, parts[0][0], rank, float(rank), frozen=False)  # alpha = rank: scaling 1
    with torch.no_grad():
        out.down.copy_(torch.cat([d.down_weight().to(out.down.dtype) for d, _ in parts], dim=0))
        out.up.copy_(torch.cat([d.up_weight().to(out.up.dtype) * (d.scaling * w) for d, w in parts], dim=1))
    return out


def weighted_sum(model: nn.Module, content: str = "content", style: str = "style", name: str = "weighted_sum",
                 weights: Sequence[float] = (1.0, 1.0), remove_sources: bool = False) -> str:
    """``ΔW = w_c ΔW_c + w_s ΔW_s`` per layer (a layer with only one of them keeps that one, weighted), as one
    LoRA of rank ``r_c + r_s`` (diffusers' ``set_adapters`` arithmetic, fused). Returns ``name``."""
    wc, ws = map(float, weights)
    for _, layer, c, s in _pairs(model, content, style):
        parts = [(d, w) for d, w in ((c, wc), (s, ws)) if d is not None]
        layer.add_delta(name, _concat(layer, parts))
    return _finish(model, name, (content, style), remove_sources)


def block_split(model: nn.Module, content: str = "content", style: str = "style", name: str = "blora",
                weights: Sequence[float] = (1.0, 1.0), blocks: Mapping[str, Sequence[str]] | None = None,
                remove_sources: bool = False) -> str:
    """B-LoRA-style composition: the content adapter in the layers under ``blocks["content"]`` (module-name
    prefixes), the style adapter under ``blocks["style"]``, nothing elsewhere. Raises if a block list matches no
    adapted layer (a wrong prefix must not silently drop a concept). Returns ``name``."""
    blocks = dict(BLORA_BLOCKS_SDXL if blocks is None else blocks)
    wc, ws = map(float, weights)
    used = {"content": 0, "style": 0}

    def under(path: str, prefixes: Sequence[str]) -> bool:
        return any(path == p or path.startswith(p.rstrip(".") + ".") for p in prefixes)

    for path, layer, c, s in _pairs(model, content, style):
        parts = []
        if c is not None and under(path, blocks.get("content", ())):
            parts.append((c, wc))
            used["content"] += 1
        if s is not None and under(path, blocks.get("style", ())):
            parts.append((s, ws))
            used["style"] += 1
        if parts:
            layer.add_delta(name, _concat(layer, parts))
    empty = [k for k, v in used.items() if not v]
    if empty:
        raise ValueError(f"block_split: the {' and '.join(empty)} block(s) {[blocks.get(k) for k in empty]} contain no "
                         f"layer with the {'/'.join(empty)} adapter; pass blocks={{'content': [...], 'style': [...]}} "
                         "with module-name prefixes of this UNet (e.g. 'up_blocks.0.attentions.0')")
    return _finish(model, name, (content, style), remove_sources)


# ====================================================================================================== ziplora
class ZipLoRADelta(Delta):
    """``ΔW x = s_c·up_c (down_c (m_c ⊙ x)) + s_s·up_s (down_s (m_s ⊙ x))``: two frozen LoRAs (buffers, full
    factors ``down (r, in)``, ``up (out, r)``) and learnable mergers ``m_c, m_s (in,)`` — ZipLoRA's
    ``merger_1 * weight_1 + merger_2 * weight_2`` (the mergers scale ``ΔW``'s input columns) in low-rank form."""

    def __init__(self, content: LowRankDelta | None, style: LowRankDelta | None, weights: Sequence[float] = (1.0, 1.0)):
        super().__init__()
        ref = content if content is not None else style
        self.in_features, self.out_features = ref.in_features, ref.out_features
        for tag, d, w in (("c", content, weights[0]), ("s", style, weights[1])):
            if d is None:
                self.register_buffer(f"down_{tag}", None)
                self.register_buffer(f"up_{tag}", None)
                self.register_parameter(f"merger_{tag}", None)
                continue
            self.register_buffer(f"down_{tag}", d.down_weight().detach().reshape(d.rank, -1).clone())
            self.register_buffer(f"up_{tag}", (d.up_weight().detach() * d.scaling).clone())
            self.register_parameter(f"merger_{tag}", nn.Parameter(torch.full((self.in_features,), float(w),
                                                                             dtype=d.down.dtype, device=d.down.device)))

    def _terms(self):
        for tag in ("c", "s"):
            m = getattr(self, f"merger_{tag}")
            if m is not None:
                yield m, getattr(self, f"down_{tag}"), getattr(self, f"up_{tag}")

    def delta_weight(self, base: nn.Module | None = None, param: str = "weight") -> torch.Tensor | None:
        """Dense ``ΔW (out, in)``."""
        if param != "weight":
            return None
        return sum((up @ down) * m for m, down, up in self._terms())

    def forward(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        out = 0
        for m, down, up in self._terms():
            out = out + F.linear(F.linear(x.to(down.dtype) * m, down), up)
        return out


def add_ziplora(model: nn.Module, content: str = "content", style: str = "style", name: str = "ziplora",
                weights: Sequence[float] = (1.0, 1.0), remove_sources: bool = False) -> str:
    """Add a :class:`ZipLoRADelta` ``name`` (mergers trainable, initialised to the weights) over the two
    adapters' layers (Linear layers only). Returns ``name``."""
    for path, layer, c, s in _pairs(model, content, style):
        for d in (c, s):
            if d is not None and d.is_conv:
                raise TypeError(f"add_ziplora: '{path}' is a convolution; ZipLoRA's mergers are defined for Linear "
                                "layers")
        layer.add_delta(name, ZipLoRADelta(c, s, weights))
    return _finish(model, name, (content, style), remove_sources)


def ziplora_loss(model: nn.Module, name: str = "ziplora") -> torch.Tensor:
    """ZipLoRA's merger similarity term ``Σ_layers mean|m_c ⊙ m_s|`` (pushes the two mergers to disjoint
    columns; multiply by ``similarity_lambda``)."""
    terms = [(d.merger_c * d.merger_s).abs().mean() for _, layer in iter_lora_layers(model)
             for k, d in layer.deltas.items() if k == name and isinstance(d, ZipLoRADelta)
             and d.merger_c is not None and d.merger_s is not None]
    if not terms:
        raise KeyError(f"ziplora_loss: no ZipLoRA adapter named '{name}' with both mergers in the model")
    return torch.stack(terms).sum()


@torch.no_grad()
def ziplora_to_lowrank(model: nn.Module, name: str = "ziplora", out_name: str | None = None) -> str:
    """Replace ZipLoRA adapter ``name`` by an exact rank ``r_c + r_s`` :class:`LowRankDelta` (mergers folded into
    ``down``'s columns) named ``out_name`` (default ``name``), exportable to diffusers' format."""
    out_name = out_name or name
    for _, layer in list(iter_lora_layers(model)):
        d = layer.deltas[name] if name in layer.deltas else None
        if not isinstance(d, ZipLoRADelta):
            continue
        terms = list(d._terms())
        rank = sum(down.shape[0] for _, down, _ in terms)
        new = LowRankDelta(layer.base, rank, float(rank), init="lora", dtype=terms[0][1].dtype)
        new.down.copy_(torch.cat([down * m for m, down, _ in terms], dim=0))
        new.up.copy_(torch.cat([up for _, _, up in terms], dim=1))
        enabled = d.enabled
        layer.remove_delta(name)
        layer.add_delta(out_name, new)
        new.enabled = enabled
    return out_name


@torch.no_grad()
def ziplora_diffusers_state(model: nn.Module, name: str = "ziplora", prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """The ZipLoRA adapter ``name`` as diffusers LoRA tensors (``{prefix}P.lora_A.weight`` = the mergers folded
    into the concatenated ``down`` factors, ``lora_B`` = the concatenated scaled ``up``; rank ``r_c + r_s``),
    without changing the model (for checkpoints of a run that goes on training the mergers)."""
    out: dict[str, torch.Tensor] = {}
    for path, layer in iter_lora_layers(model):
        d = layer.deltas[name] if name in layer.deltas else None
        if isinstance(d, ZipLoRADelta):
            terms = list(d._terms())
            out[f"{prefix}{path}.lora_A.weight"] = torch.cat([down * m for m, down, _ in terms]).cpu().contiguous()
            out[f"{prefix}{path}.lora_B.weight"] = torch.cat([up for _, _, up in terms], dim=1).cpu().contiguous()
    if not out:
        raise KeyError(f"the model has no ZipLoRA adapter named '{name}'")
    return out


# ====================================================================================================== interface
def compose(model: nn.Module, composition: str, content: str = "content", style: str = "style", *,
            name: str | None = None, weights: Sequence[float] = (1.0, 1.0), remove_sources: bool = False,
            **options: Any) -> str:
    """Add adapter ``name`` (default: ``composition``) composing adapters ``content`` and ``style`` with
    ``weights`` by ``composition`` (one of :data:`COMPOSITIONS`; ``options``: ``blocks=`` for ``blora``); it
    becomes the only active adapter. Returns its name."""
    fns = {"b4m": merge_b4m, "weighted_sum": weighted_sum, "ziplora": add_ziplora, "blora": block_split}
    if composition not in fns:
        raise ValueError(f"compose: unknown composition '{composition}'; choose one of {', '.join(COMPOSITIONS)}")
    return fns[composition](model, content, style, name=name or composition, weights=weights,
                            remove_sources=remove_sources, **options)
