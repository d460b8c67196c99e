"""Break-for-Make's partly learnable projection (PLP) on the zoo's low-rank core (:mod:`zoo.layers.lora`).

A PLP adapter is a :class:`~zoo.layers.lora.LowRankDelta` per UNet attention projection with a *frozen part*:
``W_up = [A; B]`` (``A``: the first ``frozen_up_rows`` output rows, a buffer; ``B``: trained) and
``W_down = [C | D]`` (``C``: the first ``frozen_down_cols`` input columns, a buffer; ``D``: trained), so that::

    ΔW = s · W_up @ W_down = s · [[A C, A D],
                                  [B C, B D]]          (s = alpha / rank; official: 1)

Content lives in ``D`` (the down projection's learnable columns), style in ``B`` (the up projection's learnable
rows); stage 2 (:func:`zoo.adapters.merge.merge_b4m`) takes ``D`` from the content run, ``B`` from the style run
and the shared ``A``, ``C``.

Geometry, checked against ICTMCG/Break-for-make (``src/diffusers/models/lora.py`` ``LoRALinearLayer`` and
``freeze_linear_params`` in ``code/train_*.py``):

* frozen sizes: the first ``out // 2`` rows of ``up`` and the first ``in // 2`` columns of ``down`` (``frozen=0.5``);
* ``init="official"``: ``down ~ N(0, 1/r)``, ``up = 0``; on the *orthogonal layers* — the square ``to_q``,
  ``to_k``, ``to_v`` (``in == out``; the official passes ``orth=True`` to q/k/v and uses it only when square, so
  cross-attention ``to_k``/``to_v`` and every ``to_out.0`` keep the plain init, their frozen ``A`` rows stay 0) —
  ``C`` and ``A`` are replaced by *disjoint rows* of one orthogonal basis ``Q (basis_rows × r)`` (orthonormal
  columns, ``QᵀQ = I_r``): ``C = Q[S_c]ᵀ``, ``A = Q[S_s]``, ``S_c ∩ S_s = ∅``. ``basis_rows=1280`` (default) is the
  official size (SDXL's widest attention, used for every layer, SD 1.5's 1280-wide layers too), so entries have
  the official scale ``≈ 1/√1280``. ``basis_rows=None`` uses ``fd + fu`` rows (every row used once; then
  ``C Cᵀ + AᵀA = I_r`` exactly, larger entries on narrow layers). ``orth_layers="all"`` gives every target layer
  orthogonal frozen parts (``basis_rows`` must then cover ``fd + fu`` of the widest, e.g. 2048 + 1280 for SDXL's
  cross-attention ``to_k``: raise it or use ``None``).
* **non-zero initial ΔW** (as the official): ``B = 0`` but ``A ≠ 0`` on the orthogonal layers, so
  ``ΔW[:fu] = s · A [C | D₀] ≠ 0`` at step 0 (the adapted UNet differs from the base before training) and
  ``ΔW[fu:] = 0``; :func:`initial_delta_norms` reports it per layer.
* the frozen parts come from a generator seeded by ``(seed, module name)`` (the official draws them from the
  global RNG in module-construction order), so the content and the style run share ``A``/``C`` bit for bit by
  construction, whatever else consumed random numbers; :func:`frozen_parts` / :func:`check_shared_frozen` test it.
* orthogonality, stated honestly: ``C``'s columns and ``A``'s rows are different rows of ``Q`` — not orthogonal
  vectors of ``R^r`` (``r < fd + fu`` rows cannot all be orthogonal). Their cross products are as small as for
  random vectors (:func:`frozen_overlap` ≈ ``1/√r``). ``geometry="split_rank"`` (a zoo option, not the official)
  makes them exactly orthogonal: ``C`` uses rank dims ``[r/2, r)`` and ``A`` dims ``[0, r/2)``, both from
  orthonormal bases, so ``A C = 0`` (the frozen block adds nothing) at the price of rank ``r/2`` per frozen part.
* deviation: the frozen parts are buffers, so nothing — weight decay included — changes them (the official
  masks only the gradients, so AdamW's decoupled decay shrinks its "frozen" halves by ``lr · wd`` per step).

Target module names (:data:`SD15_TARGETS`, :data:`SDXL_TARGETS`): the four projections of every attention of
the diffusers UNet (``down_blocks.*.attentions.*.transformer_blocks.*.attn1|attn2.to_q`` ...; the same suffixes
in SD 1.5 and SDXL, whose ``mid_block`` and deeper transformer stacks are matched by the same names).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from zoo.adapters.base import AdapterConfig, AdapterMethod, register_adapter
from zoo.adapters.model import freeze_base, inject_adapter, iter_lora_layers
from zoo.errors import CheckpointError, ConfigError
from zoo.layers.lora import LoRALayer, LowRankDelta, per_layer_generator

__all__ = ["PLP", "OFFICIAL_BASIS_ROWS", "SD15_TARGETS", "SDXL_TARGETS", "PLPConfig", "PLPMethod", "add_plp",
           "load_plp", "run_plp_config", "plp_init", "plp_deltas", "frozen_parts", "check_shared_frozen", "frozen_overlap",
           "initial_delta_norms", "projection_tensors", "only_projection"]

PLP = "plp"
OFFICIAL_BASIS_ROWS = 1280  # the official orthogonal basis: 1280 x r for every layer (SDXL's widest attention)
SD15_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
SDXL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
_ORTH_SUFFIXES = ("to_q", "to_k", "to_v")  # the official passes orth=True to these only (used when in == out)
GEOMETRIES = ("official", "split_rank")


@dataclass
class PLPConfig(AdapterConfig):
    """``adapter:`` section of ``plp`` (defaults: the official ``train_*.sh``: rank 64, no alpha scaling)."""

    name: str = "plp"
    target_modules: Any = field(default_factory=lambda: list(SD15_TARGETS))
    rank: int = 64
    alpha: float | None = None  # default: rank (scaling 1; the official network_alpha is None)
    frozen: float = 0.5  # fraction of down's input columns / up's output rows that is frozen
    basis_rows: int | None = OFFICIAL_BASIS_ROWS  # None: fd + fu rows per layer
    orth_layers: str = "official"  # official (square to_q/k/v) | all
    geometry: str = "official"  # official | split_rank (frozen A and C exactly orthogonal: A C = 0)
    seed: int = 0  # of the per-layer generators of the frozen parts: the same in the content and style runs

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise ConfigError(f"adapter.rank must be >= 1, got {self.rank}")
        if not 0.0 <= float(self.frozen) < 1.0:
            raise ConfigError(f"adapter.frozen must be in [0, 1), got {self.frozen}")
        if self.orth_layers not in ("official", "all"):
            raise ConfigError(f"adapter.orth_layers must be 'official' or 'all', got '{self.orth_layers}'")
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"adapter.geometry must be one of {', '.join(GEOMETRIES)}, got '{self.geometry}'")
        if self.basis_rows is not None and int(self.basis_rows) < 1:
            raise ConfigError(f"adapter.basis_rows must be >= 1 or null, got {self.basis_rows}")


def _is_orth_layer(name: str, base: nn.Module, orth_layers: str) -> bool:
    if orth_layers == "all":
        return True
    in_f, out_f = base.weight.shape[1], base.weight.shape[0]
    return name.rsplit(".", 1)[-1] in _ORTH_SUFFIXES and in_f == out_f


def plp_init(name: str, seed: int, *, orthogonal: bool, basis_rows: int | None = OFFICIAL_BASIS_ROWS,
             geometry: str = "official") -> Callable[[LowRankDelta], None]:
    """The initialisation of layer ``name``'s PLP delta (a callable for ``LowRankDelta(init=...)``).

    Fills ``down (r, in)`` ~ N(0, 1/r) and ``up (out, r)`` = 0 (full tensors, then split into frozen buffers and
    trained parameters); with ``orthogonal``: the frozen ``C = down[:, :fd]`` and ``A = up[:fu]`` from disjoint
    rows of one orthogonal ``(basis_rows, r)`` basis (``geometry="official"``) or from orthonormal bases of
    complementary rank halves (``"split_rank"``: ``A C = 0``). Random numbers come from a generator seeded by
    ``(seed, name)`` only.
    """

    @torch.no_grad()
    def init(delta: LowRankDelta) -> None:
        gen = per_layer_generator(seed, name)
        r, fd, fu = delta.rank, delta.frozen_down_cols, delta.frozen_up_rows
        down = torch.empty(r, delta.in_features, *delta.kernel_shape, dtype=torch.float32)
        nn.init.normal_(down, std=1.0 / r, generator=gen)
        up = torch.zeros(delta.out_features, r, dtype=torch.float32)
        d2 = down.view(r, delta.in_features, -1)
        if orthogonal and (fd or fu):
            ref = fd + fu if basis_rows is None else int(basis_rows)  # entries at the scale of a ref-row basis
            if geometry == "split_rank":
                if r < 2:
                    raise ConfigError(f"{name}: adapter.geometry='split_rank' needs adapter.rank >= 2, got {r}")
                h = r // 2
                qa = torch.empty(max(fu, h), h)
                nn.init.orthogonal_(qa, generator=gen)
                qc = torch.empty(max(fd, r - h), r - h)
                nn.init.orthogonal_(qc, generator=gen)
                up[:fu] = 0
                up[:fu, :h] = qa[:fu] * math.sqrt(max(fu, h) / ref)
                d2[:, :fd] = 0
                d2[h:, :fd] = (qc[:fd] * math.sqrt(max(fd, r - h) / ref)).t().unsqueeze(-1)
            else:
                n = ref
                if n < fd + fu:
                    raise ConfigError(
                        f"{name}: the PLP basis has {n} rows but the frozen parts need {fd} + {fu} disjoint rows "
                        f"(in={delta.in_features}, out={delta.out_features}); raise adapter.basis_rows to >= "
                        f"{fd + fu} or set it to null (fd + fu rows per layer)")
                basis = torch.empty(n, r)
                nn.init.orthogonal_(basis, generator=gen)
                perm = torch.randperm(n, generator=gen)
                d2[:, :fd] = basis[perm[:fd]].t().unsqueeze(-1)
                up[:fu] = basis[perm[fd:fd + fu]]
        delta.down.copy_(down[:, fd:])
        delta.up.copy_(up[fu:])
        if delta.down_frozen is not None:
            delta.down_frozen.copy_(down[:, :fd])
        if delta.up_frozen is not None:
            delta.up_frozen.copy_(up[:fu])

    init.__name__ = f"plp_{geometry}" + ("_orth" if orthogonal else "")
    return init


def add_plp(model: nn.Module, cfg: PLPConfig | Mapping[str, Any] | None = None, *, name: str = PLP,
            freeze: bool = True, dtype: torch.dtype | None = None) -> dict[str, LoRALayer]:
    """Add a PLP adapter named ``name`` to the attention projections of ``model`` (a diffusers UNet).

    ``cfg``: a :class:`PLPConfig` (or a dict of its fields). Each selected ``nn.Linear (in → out)`` gets a
    :class:`~zoo.layers.lora.LowRankDelta` with ``down_frozen (r, ⌊frozen·in⌋)``, ``down (r, in − fd)``,
    ``up_frozen (⌊frozen·out⌋, r)``, ``up (out − fu, r)``. ``freeze``: the base UNet becomes non-trainable.
    Returns ``{module name: layer}``.
    """
    if cfg is None:
        cfg = PLPConfig()
    elif isinstance(cfg, Mapping):
        cfg = PLPConfig(**{k: v for k, v in dict(cfg).items() if k != "name"})

    def make(mod_name: str, base: nn.Module) -> LowRankDelta | None:
        if not isinstance(base, nn.Linear):
            return None
        in_f, out_f = base.in_features, base.out_features
        fd, fu = int(in_f * cfg.frozen), int(out_f * cfg.frozen)
        init = plp_init(mod_name, cfg.seed, orthogonal=_is_orth_layer(mod_name, base, cfg.orth_layers),
                        basis_rows=cfg.basis_rows, geometry=cfg.geometry)
        return LowRankDelta(base, cfg.rank, cfg.alpha if cfg.alpha is not None else cfg.rank, init=init,
                            frozen_down_cols=fd, frozen_up_rows=fu, dtype=dtype)

    targets = list(cfg.target_modules) if isinstance(cfg.target_modules, (list, tuple)) else cfg.target_modules
    layers = inject_adapter(model, targets, make, name=name, layer_types=(nn.Linear,))
    if freeze:
        freeze_base(model)
    return layers


def plp_deltas(model: nn.Module, name: str = PLP) -> dict[str, LowRankDelta]:
    """``{module name: delta}`` of the low-rank deltas named ``name`` (``KeyError`` if there is none)."""
    out = {path: layer.deltas[name] for path, layer in iter_lora_layers(model)
           if name in layer.deltas and isinstance(layer.deltas[name], LowRankDelta)}
    if not out:
        raise KeyError(f"the model has no low-rank adapter named '{name}'; add one with add_plp(model, name='{name}')")
    return out


def frozen_parts(model: nn.Module, name: str = PLP) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """``{module name: (C = down_frozen (r, fd), A = up_frozen (fu, r))}`` (clones) of adapter ``name``."""
    def c(t):
        return None if t is None else t.detach().clone()

    return {p: (c(d.down_frozen), c(d.up_frozen)) for p, d in plp_deltas(model, name).items()}


def check_shared_frozen(a: Mapping[str, tuple], b: Mapping[str, tuple], what: str = "content/style") -> None:
    """Raise :class:`~zoo.errors.CheckpointError` (naming the layers) unless two :func:`frozen_parts` results are bitwise equal."""
    if set(a) != set(b):
        raise CheckpointError(f"{what} PLP adapters cover different layers: only in the first "
                         f"{sorted(set(a) - set(b))[:5]}, only in the second {sorted(set(b) - set(a))[:5]}")
    def same(x, y):
        return (x is None and y is None) or (x is not None and y is not None and x.shape == y.shape
                                             and torch.equal(x.cpu(), y.cpu()))

    bad = [k for k in a if not all(same(x, y) for x, y in zip(a[k], b[k]))]
    if bad:
        raise CheckpointError(f"{what} PLP adapters have different frozen parts in {len(bad)} layer(s), e.g. "
                              f"{bad[:3]}: train both with the same adapter section (seed, rank, frozen, basis_rows, "
                              "orth_layers, geometry)")


def frozen_overlap(delta: LowRankDelta) -> float:
    """``‖A C‖_F / (‖A‖_F ‖C‖_F)`` — how far the frozen style rows ``A (fu, r)`` and content columns
    ``C (r, fd)`` are from orthogonal (0: ``A C = 0``; ≈ ``1/√r`` for disjoint rows of a tall orthogonal basis,
    as for random vectors). NaN when a frozen part is missing or zero."""
    if delta.down_frozen is None or delta.up_frozen is None:
        return float("nan")
    a = delta.up_frozen.detach().double()
    c = delta.down_frozen.detach().double().reshape(delta.rank, -1)
    denom = a.norm() * c.norm()
    return float((a @ c).norm() / denom) if denom > 0 else float("nan")


def initial_delta_norms(model: nn.Module, name: str = PLP) -> dict[str, float]:
    """``{module name: ‖ΔW‖_F}`` of adapter ``name`` (non-zero at init on PLP's orthogonal layers)."""
    with torch.no_grad():
        return {p: float(d.delta_weight().norm()) for p, d in plp_deltas(model, name).items()}


def projection_tensors(model: nn.Module, name: str, which: str) -> list[nn.Parameter]:
    """The trained tensors of one projection of adapter ``name``: ``which="down"`` (``D``, content) or ``"up"``
    (``B``, style)."""
    if which not in ("down", "up"):
        raise ValueError(f"which must be 'down' or 'up', got '{which}'")
    return [getattr(d, which) for d in plp_deltas(model, name).values()]


@contextlib.contextmanager
def only_projection(model: nn.Module, which: str | None, name: str = PLP) -> Iterator[None]:
    """Within the block only the ``which`` (``"down"`` / ``"up"``) tensors of PLP adapter ``name`` require grad,
    so a loss back-propagated there reaches that projection only (Break-for-Make's MCP routing); the flags are
    restored after. ``which=None``: no change (both projections)."""
    if which is None:
        yield
        return
    deltas = list(plp_deltas(model, name).values())
    other = "up" if which == "down" else "down"
    saved = [(getattr(d, other), getattr(d, other).requires_grad) for d in deltas]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def run_plp_config(source: str | os.PathLike) -> PLPConfig | None:
    """The :class:`PLPConfig` of the run that wrote ``source`` (a run directory, or a file in one): the ``adapter:``
    section of its ``config.yaml`` (``model.plp`` in runs made before that section existed); ``None`` when there is no
    run config beside it or it holds neither. Raises :class:`~zoo.errors.ConfigError` for a run whose adapter is
    another method."""
    import yaml

    path = Path(source)
    config = (path if path.is_dir() else path.parent) / "config.yaml"
    if not config.is_file():
        return None
    run = yaml.safe_load(config.read_text()) or {}
    section = run.get("adapter") or (run.get("model") or {}).get("plp")
    if not isinstance(section, Mapping):
        return None
    if section.get("name", PLP) != PLP:
        raise ConfigError(f"{config}: the run's adapter is '{section.get('name')}', not plp; load it with its own "
                          "method (zoo.adapters.base.build_adapter)")
    return PLPConfig(**{k: v for k, v in section.items() if k != "name"})


def load_plp(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], cfg: Any = None, *,
             name: str = PLP, trainable: bool = False) -> dict[str, LoRALayer]:
    """Add a PLP adapter ``name`` (:func:`add_plp` with ``cfg``) and load a saved one into it, *after* its
    initialisation (the official stage 2 re-initialises square layers after loading; not here).

    ``source``: a stage-1 run directory or file (diffusers LoRA file ``pytorch_lora_weights.safetensors``, full
    factors: split back into frozen and learnable parts), or a state dict in our layout (``P.<name>.down`` ...,
    e.g. ``last.pt``'s ``model`` entry with keys of adapter ``plp``; other adapter names are renamed). ``cfg``
    ``None``: the ``adapter:`` section of the run that wrote ``source`` (its ``config.yaml``), so a run's adapter
    loads with the rank and frozen share it was trained with (:func:`run_plp_config`). Strict: raises
    :class:`~zoo.errors.CheckpointError` naming missing / unexpected keys."""
    from functools import partial

    from zoo.adapters.lora_formats import LORA_WEIGHT_NAME, from_diffusers, read_lora_file
    from zoo.adapters.model import load_adapter_state_dict, set_adapter_trainable

    if cfg is None and not isinstance(source, Mapping):
        cfg = run_plp_config(source)
    layers = add_plp(model, cfg, name=name, freeze=True)
    if isinstance(source, Mapping):
        state = {}
        for k, v in source.items():
            prefix, _, tensor = k.rpartition(".")
            path, _, _adapter = prefix.rpartition(".")
            state[f"{path}.{name}.{tensor}"] = v
        result = load_adapter_state_dict(model, state, strict=False)
    else:
        p = Path(source)
        if p.is_dir():
            p = p / LORA_WEIGHT_NAME
        state, meta = read_lora_file(p)
        result = load_adapter_state_dict(model, state, strict=False,
                                         convert=partial(from_diffusers, adapter=name, metadata=meta))
    # strict for this adapter only (the model may hold other adapters, e.g. the content one when loading the style)
    bad = {k: [x for x in v if x.rpartition(".")[0].rpartition(".")[2] == name or k == "unexpected"]
           for k, v in result.items()}
    if bad["missing"] or bad["unexpected"]:
        raise CheckpointError(f"load_plp({source!s:.200}): the saved adapter does not match the adapter section "
                              f"(rank, frozen, target_modules): missing {bad['missing'][:5]}, unexpected "
                              f"{bad['unexpected'][:5]}")
    set_adapter_trainable(model, name, trainable)
    return layers


# ====================================================================================================== method
@register_adapter("plp", config=PLPConfig)
class PLPMethod(AdapterMethod):
    """Break-for-Make's PLP adapter as an adapter method (``adapter.name=plp``): :func:`add_plp` on the matched
    ``nn.Linear`` layers (deltas named ``"plp"``), the base and the frozen halves fixed, ``B`` and ``D`` trained.

    :meth:`load` also reads a stage-1 run directory / diffusers LoRA file (:func:`load_plp`). Pipeline hooks:
    :meth:`save_pipeline_file` writes diffusers' ``pytorch_lora_weights.safetensors`` (full factors, frozen parts
    included), which :class:`~zoo.adapters.lora.LoRAMethod` loads into a pipeline. Break-for-Make's stages
    (which adapters a stage builds and trains, their optimisers) are :mod:`zoo.diffusion.b4m`.
    """

    delta_names = (PLP,)
    pipeline_file = "pytorch_lora_weights.safetensors"
    detect_priority = 1000  # its files are plain diffusers LoRA files (LoRAMethod reads them)

    def apply(self, model: nn.Module) -> nn.Module:
        try:
            add_plp(model, self.config, name=self.delta_names[0])
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"adapter.target_modules: {exc}") from None
        return model

    def load(self, model: nn.Module, directory: str | os.PathLike) -> nn.Module:
        """Apply and load what :meth:`save` wrote, or a diffusers LoRA file / stage-1 run directory
        (:func:`load_plp`, trainable)."""
        p = Path(directory)
        if (p / self.weights_file).is_file():
            return super().load(model, p)
        load_plp(model, p, self.config, name=self.delta_names[0], trainable=True)
        return model

    # ------------------------------------------------------------------ pipeline hooks
    def save_pipeline_file(self, unet: nn.Module, directory: str | os.PathLike) -> Path:
        """diffusers' LoRA file of the PLP adapter in ``directory``; returns it."""
        from zoo.adapters.lora_formats import save_diffusers_lora

        return save_diffusers_lora(unet, Path(directory) / self.pipeline_file, self.delta_names[0])

    @classmethod
    def load_into_pipeline(cls, pipe: Any, path: str | os.PathLike) -> Callable[[bool], None]:
        """As :meth:`zoo.adapters.lora.LoRAMethod.load_into_pipeline` (a plain diffusers LoRA file)."""
        from zoo.adapters.lora import LoRAMethod

        return LoRAMethod.load_into_pipeline(pipe, path)
