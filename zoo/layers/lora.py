"""The one adapter core of the zoo: a frozen base layer plus named, scalable, mergeable weight deltas.

A :class:`LoRALayer` wraps a frozen base module (``nn.Linear``, ``nn.Conv1d/2d`` with any kernel, stride and
groups; sparse deltas also work on any module with parameters, e.g. norms) and computes::

    y = base(x; W + Σ_sparse s_k · ΔW_k) + Σ_lowrank s_k · ΔW_k(x)

Deltas are ``nn.Module`` s stored by name in ``layer.deltas``:

* :class:`LowRankDelta` — ``ΔW = (alpha / rank) · up @ down`` applied in activation space (``up(down(x))``, so no
  dense ``ΔW`` during training). Options: rank, alpha, dropout, initialisation (``"lora"`` kaiming/zero,
  ``"gaussian"`` N(0, 1/r)/zero, ``"vida"`` N(0, 1/r²)/zero, ``"orthogonal"``, ``"random"`` (both non-zero, for
  tests), or a callable), and a *frozen part* of the projections (Break-for-Make's partly learnable projection):
  the first ``frozen_down_cols`` input columns of ``down`` and the first ``frozen_up_rows`` output rows of ``up``
  are buffers, only the rest is trained. Convolutions: ``down`` is a conv with the base's kernel/stride/padding,
  ``up`` a 1×1 conv; grouped convs (depthwise) use the weight-space form ``conv(x, up @ down)``.
* :class:`SparseDelta` — trainable ``values (K,)`` at a flat index set of one or more parameters of the base
  (SaRA). The effective values are written *into the frozen weight in place* (the original entries are kept
  in a ``(K,)`` buffer for exact restore), so the forward needs no weight copy; gradients reach ``values``
  through the sparse SDDMM kernel for Linear / 1×1 conv weights (no dense ``dW``) and through
  dense-gradient-then-gather for everything else. Entries can be frozen later with their learned values kept
  (:meth:`SparseDelta.freeze_entries`, SaRA's progressive re-selection).

Every delta has a run-time ``scale`` (a float; low-rank deltas also accept a tensor broadcast against the
output, for ViDA's input-dependent scales) and an ``enabled`` flag. ``layer.merge()`` folds all enabled deltas
into the base weights (the layer then runs as the plain base module) and ``layer.unmerge()`` restores the exact
base weights (bit for bit; with ``keep_base=False`` the low-rank part is subtracted instead, saving one weight
copy at the price of rounding).

Applying deltas to a whole model (selecting modules by name, trainable / active sets, state dicts, merge,
scales) is :mod:`zoo.adapters.model`; the adaptation methods built on these layers (LoRA, ViDA, CoLoRA, PLP, SaRA,
the HeLlO projector) are the files of :mod:`zoo.adapters`.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Delta", "LowRankDelta", "SparseDelta", "LoRALayer", "per_layer_generator", "CONV_TYPES", "LOWRANK_TYPES"]

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LOWRANK_TYPES = (nn.Linear,) + CONV_TYPES


# ====================================================================================================== deltas
class Delta(nn.Module):
    """Base class of a named weight change of a :class:`LoRALayer`.

    Attributes:
        scale: multiplier of the delta's contribution (float, or for activation-space deltas a tensor).
        enabled: whether the delta contributes at all.
    """

    #: True for deltas that live in the base weights (:class:`SparseDelta`), False for activation-space ones
    in_place: bool = False
    #: tensors a saved state may carry besides :meth:`delta_state`'s (e.g. a LoRA file's ``alpha``)
    optional_state_keys: tuple[str, ...] = ()

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale: Any = scale
        self.enabled = True

    def delta_weight(self, base: nn.Module, param: str = "weight") -> torch.Tensor | None:
        """Dense change of ``base.<param>`` with the delta's own factor (not ``scale``); None if untouched."""
        raise NotImplementedError

    def load_delta_state(self, layer: "LoRALayer", state: Mapping[str, torch.Tensor]) -> None:
        """Load this delta's tensors (keys relative to the delta, as in :meth:`delta_state`)."""
        own = dict(self.named_parameters()) | {k: v for k, v in self.named_buffers() if k not in self._non_persistent_buffers_set}
        for key, value in state.items():
            target = own[key]
            if target.shape != value.shape:
                raise RuntimeError(f"shape mismatch for {key}: adapter has {tuple(target.shape)}, file has {tuple(value.shape)}")
            with torch.no_grad():
                target.copy_(value)

    def delta_state(self) -> dict[str, torch.Tensor]:
        """The tensors that define the delta (parameters and persistent buffers)."""
        return {k: v for k, v in self.state_dict(keep_vars=True).items()}

    def required_state_keys(self, state: Mapping[str, torch.Tensor]) -> set[str]:
        """The keys (of :meth:`delta_state`) that ``state`` must hold for :meth:`load_delta_state` to be complete."""
        return set(self.delta_state())


def _fit_trailing_ones(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``value`` reshaped to ``shape`` when the two differ only by trailing 1-dims (``(o, r, 1, 1)`` vs ``(o, r)``)."""
    def strip(s):
        s = list(s)
        while len(s) > 2 and s[-1] == 1:
            s.pop()
        return s

    if tuple(value.shape) != tuple(shape) and strip(value.shape) == strip(shape):
        return value.reshape(shape)
    return value


def per_layer_generator(seed: int | None, name: str) -> torch.Generator | None:
    """A CPU generator seeded by ``seed`` and the layer name (stable across runs and processes), or None."""
    if seed is None:
        return None
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63))


class LowRankDelta(Delta):
    """``ΔW = (alpha / rank) · up @ down`` on a Linear or a convolution, applied in activation space.

    Shapes: Linear ``down (r, in)``, ``up (out, r)``; Conv ``down (r, in/groups, *k)``, ``up (out, r)``. Trained
    parameters are ``down`` and ``up``; with a frozen part (PLP) they hold only the learnable columns/rows and
    ``down_frozen (r, frozen_down_cols, *k)`` / ``up_frozen (frozen_up_rows, r)`` are persistent buffers
    (``down = [down_frozen | down]`` along the input dim, ``up = [up_frozen ; up]`` along the output dim).

    Initial ``ΔW``: zero for every init except ``"random"`` and PLP. **PLP** (``init="orthogonal"`` with a frozen
    part) starts from a *non-zero* ``ΔW``, as Break-for-Make's official code does (its
    ``LoRALinearLayer.initialize_weights_feature``: ``up`` zero, then the first rows of ``up`` and the first
    columns of ``down`` are replaced by disjoint rows of an orthogonal basis). With ``fu = frozen_up_rows``,
    ``s = alpha / rank``, and the trainable ``up`` rows starting at zero::

        ΔW[:fu, :] = s · up_frozen @ [down_frozen | down]      (non-zero)
        ΔW[fu:, :] = 0

    so the frozen block ``ΔW[:fu, :frozen_down_cols] = s · up_frozen @ down_frozen`` stays non-zero throughout
    training of the other parts. The adapted layer therefore differs from the base at step 0; content and style
    runs that pass the same ``seed`` (``add_lora(seed=...)``, a per-layer generator) share the frozen parts bit for
    bit. Deviation: the official code draws a 1280-row basis for every layer (rows of norm ``√(r/1280)``) from the
    global RNG; here the basis has ``max(frozen_down_cols + frozen_up_rows, rank)`` rows (the same for SD's 1280-wide
    layers, larger rows on narrower ones) from the given generator.

    Args:
        base: the layer being adapted (only its shapes are read).
        rank: inner dimension ``r`` (>= 1).
        alpha: scaling numerator (default ``rank``, i.e. factor 1).
        init: ``"lora"`` (down kaiming-uniform a=√5, up 0 — peft's default), ``"gaussian"`` (down N(0, 1/r), up 0),
            ``"vida"`` (down N(0, 1/r²), up 0), ``"orthogonal"`` (down rows orthonormal, up 0; the frozen parts of
            PLP come from disjoint rows of one orthogonal basis), ``"random"`` (both non-zero), or a callable
            ``fn(delta)`` that fills the tensors.
        dropout: dropout on the input of ``down``.
        frozen_down_cols, frozen_up_rows: sizes of the frozen parts (0: all trainable).
        generator: torch generator for the initialisation (for reproducible frozen parts).
        scale: run-time multiplier.
        dtype: of the delta's tensors (default: the base weight's; pass float32 to train on a half-precision base).
    """

    optional_state_keys = ("alpha",)

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        init: str | Callable[["LowRankDelta"], None] = "lora",
        dropout: float = 0.0,
        frozen_down_cols: int = 0,
        frozen_up_rows: int = 0,
        generator: torch.Generator | None = None,
        scale: float = 1.0,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(scale)
        if not isinstance(base, LOWRANK_TYPES):
            raise TypeError(f"LowRankDelta adapts nn.Linear / nn.Conv1d/2d/3d, got {type(base).__name__}")
        if int(rank) < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.rank = int(rank)
        self.alpha = float(alpha if alpha is not None else rank)
        self.scaling = self.alpha / self.rank
        self.is_conv = isinstance(base, CONV_TYPES)
        w = base.weight
        out_f, in_f = w.shape[0], w.shape[1]
        self.kernel_shape = tuple(w.shape[2:])
        self.groups = getattr(base, "groups", 1)
        if not 0 <= frozen_down_cols <= in_f or not 0 <= frozen_up_rows <= out_f:
            raise ValueError(f"frozen_down_cols must be in [0, {in_f}] and frozen_up_rows in [0, {out_f}], "
                             f"got {frozen_down_cols} and {frozen_up_rows}")
        self.in_features, self.out_features = in_f, out_f
        self.frozen_down_cols, self.frozen_up_rows = int(frozen_down_cols), int(frozen_up_rows)
        factory = {"device": w.device, "dtype": dtype or (w.dtype if w.is_floating_point() else torch.float32)}
        r, k = self.rank, self.kernel_shape
        self.down = nn.Parameter(torch.zeros(r, in_f - self.frozen_down_cols, *k, **factory))
        self.up = nn.Parameter(torch.zeros(out_f - self.frozen_up_rows, r, **factory))
        self.register_buffer("down_frozen", torch.zeros(r, self.frozen_down_cols, *k, **factory) if self.frozen_down_cols else None)
        self.register_buffer("up_frozen", torch.zeros(self.frozen_up_rows, r, **factory) if self.frozen_up_rows else None)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.init = init if isinstance(init, str) else getattr(init, "__name__", "custom")
        self.reset_parameters(init, generator)

    # ------------------------------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, init: str | Callable = "lora", generator: torch.Generator | None = None) -> None:
        """(Re)initialise ``down``/``up`` (and the frozen parts) following ``init`` (see the class doc)."""
        if callable(init):
            init(self)
            return
        down = torch.empty(self.rank, self.in_features, *self.kernel_shape, dtype=torch.float32)
        up = torch.zeros(self.out_features, self.rank, dtype=torch.float32)
        r = self.rank
        if init == "lora":
            nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        elif init == "gaussian":
            nn.init.normal_(down, std=1.0 / r, generator=generator)
        elif init == "vida":
            nn.init.normal_(down, std=1.0 / r**2, generator=generator)
        elif init == "random":
            nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
            nn.init.normal_(up, std=1.0 / r, generator=generator)
        elif init == "orthogonal":
            nn.init.normal_(down, std=1.0 / r, generator=generator)
            fd, fu = self.frozen_down_cols, self.frozen_up_rows
            if fd or fu:
                # Break-for-Make: the frozen columns of down and the frozen rows of up are disjoint rows of one
                # orthogonal basis (its code draws that basis from the global RNG; we take a generator so that
                # content and style runs get the same frozen parts by construction).
                n = max(fd + fu, r)
                basis = torch.empty(n, r)
                nn.init.orthogonal_(basis, generator=generator)
                perm = torch.randperm(n, generator=generator)
                d2 = down.view(r, self.in_features, -1)
                d2[:, :fd] = basis[perm[:fd]].t().unsqueeze(-1)
                up[:fu] = basis[perm[fd:fd + fu]]
            else:
                nn.init.orthogonal_(down.view(r, -1), generator=generator)
        else:
            raise ValueError(f"Unknown LoRA init '{init}'; choose lora, gaussian, vida, orthogonal, random or pass a callable")
        fd, fu = self.frozen_down_cols, self.frozen_up_rows
        self.down.copy_(down[:, fd:])
        self.up.copy_(up[fu:])
        if self.down_frozen is not None:
            self.down_frozen.copy_(down[:, :fd])
        if self.up_frozen is not None:
            self.up_frozen.copy_(up[:fu])

    # ------------------------------------------------------------------------------------------ weights
    def down_weight(self) -> torch.Tensor:
        """Full ``down`` ``(r, in/groups, *k)`` (frozen part first)."""
        return self.down if self.down_frozen is None else torch.cat([self.down_frozen, self.down], dim=1)

    def up_weight(self) -> torch.Tensor:
        """Full ``up`` ``(out, r)`` (frozen part first)."""
        return self.up if self.up_frozen is None else torch.cat([self.up_frozen, self.up], dim=0)

    def delta_weight(self, base: nn.Module | None = None, param: str = "weight") -> torch.Tensor | None:
        """``(alpha / r) · up @ down`` in the base weight's shape (dense)."""
        if param != "weight":
            return None
        down = self.down_weight()
        w = self.up_weight() @ down.reshape(self.rank, -1)
        return (w * self.scaling).view(self.out_features, *down.shape[1:])

    def forward(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        """The delta's contribution to ``base(x)`` (without ``scale``), in activation space."""
        x = self.dropout(x)
        down, up = self.down_weight(), self.up_weight()
        if not torch.is_autocast_enabled(x.device.type) and x.dtype != down.dtype:
            x = x.to(down.dtype)
        if not self.is_conv:
            return F.linear(F.linear(x, down), up) * self.scaling
        if self.groups == 1:
            h = base._conv_forward(x, down, None)  # base's stride / padding / dilation / padding mode
            up = up.view(*up.shape, *([1] * (h.dim() - 2)))
            conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[h.dim()]
            return conv(h, up) * self.scaling
        return base._conv_forward(x, self.delta_weight(), None)  # grouped: weight space (already scaled)

    def load_delta_state(self, layer: "LoRALayer", state: Mapping[str, torch.Tensor]) -> None:
        """Load ``down`` / ``up`` (and the frozen parts); also accepts what LoRA files hold.

        * ``alpha`` (a scalar tensor): sets ``alpha`` and ``scaling = alpha / rank`` exactly (kohya / converted files);
        * factors with extra trailing 1-dims or without them (a conv ``lora_B`` ``(out, r, 1, 1)`` for ``up (out, r)``,
          a Linear factor ``(r, in)`` for a 1×1 conv's ``down (r, in, 1, 1)``) are reshaped;
        * full-size ``down (r, in, *k)`` / ``up (out, r)`` for a delta with a frozen part (and no ``*_frozen`` keys)
          are split into the frozen buffer and the trainable parameter.
        """
        state = dict(state)
        if "alpha" in state:
            self.set_alpha(float(state.pop("alpha")))
        for key, frozen_key, dim, n_frozen in (("down", "down_frozen", 1, self.frozen_down_cols),
                                               ("up", "up_frozen", 0, self.frozen_up_rows)):
            if key not in state:
                continue
            value = state[key]
            full = self.down_weight() if key == "down" else self.up_weight()
            target = getattr(self, key)
            for shape in (target.shape, full.shape):
                value = _fit_trailing_ones(value, shape)
            if n_frozen and frozen_key not in state and value.shape == full.shape:
                state[frozen_key], value = value.narrow(dim, 0, n_frozen), value.narrow(dim, n_frozen, value.shape[dim] - n_frozen)
            state[key] = value
        super().load_delta_state(layer, state)

    def required_state_keys(self, state: Mapping[str, torch.Tensor]) -> set[str]:
        """As the base class, but a full-size ``down`` / ``up`` also provides its frozen part (LoRA files)."""
        keys = set(self.delta_state())
        for key, frozen_key in (("down", "down_frozen"), ("up", "up_frozen")):
            full = self.down_weight() if key == "down" else self.up_weight()
            if frozen_key in keys and key in state and _fit_trailing_ones(state[key], full.shape).shape == full.shape:
                keys.discard(frozen_key)
        return keys

    def set_alpha(self, alpha: float) -> None:
        """Set ``alpha`` and with it ``scaling = alpha / rank``."""
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank

    def extra_repr(self) -> str:
        s = f"rank={self.rank}, alpha={self.alpha:g}, init={self.init}, scale={self.scale}, enabled={self.enabled}"
        if self.frozen_down_cols or self.frozen_up_rows:
            s += f", frozen_down_cols={self.frozen_down_cols}, frozen_up_rows={self.frozen_up_rows}"
        return s


class SparseDelta(Delta):
    """Trainable values at flat index sets of some parameters of the base module, kept *in place* in the base.

    For every target parameter ``p`` (e.g. ``"weight"``, ``"bias"``) with ``K`` selected flat positions it holds
    (``p`` is the attribute prefix)::

        p_index    (K,)  int32 buffer      — sorted flat positions (persistent)
        p_values   (K,)  float Parameter   — the trained change (the effective entry is orig + scale · values)
        p_orig     (K,)  buffer            — the base's original entries there (not saved: re-read from the base)
        p_frozen_index / p_frozen_values / p_frozen_orig — entries no longer trained but whose learned change
                                              is kept (after :meth:`freeze_entries`); persistent (except orig)

    The owning :class:`LoRALayer` writes ``orig + scale · values`` into the base parameter whenever ``values``
    changed (tracked through the tensor version counter, so any in-place optimiser update is seen; updates made
    through ``.data`` are not — call :func:`sync_adapters` after those). Memory per selected entry: 4 (index) +
    4 or 2 (orig) + 4 (value) bytes, plus gradient and optimiser state of the value.

    Args:
        base: the module whose parameters are adapted.
        indices: ``{param name: flat positions}`` (any int dtype/order; stored sorted, unique, int32).
        kernel: use the sparse SDDMM kernel for the weight of a Linear / 1×1 conv (otherwise, and for all other
            parameters, the dense gradient is formed and gathered).
        dtype: dtype of the trainable values (default float32, whatever the base dtype).
    """

    in_place = True

    def __init__(self, base: nn.Module, indices: Mapping[str, torch.Tensor], kernel: bool = True,
                 dtype: torch.dtype = torch.float32, scale: float = 1.0):
        super().__init__(scale)
        self.kernel = kernel
        self.params: list[str] = []
        for name, idx in indices.items():
            p = getattr(base, name, None)
            if not isinstance(p, torch.Tensor):
                raise ValueError(f"{type(base).__name__} has no parameter '{name}'")
            if not p.is_contiguous():
                raise ValueError(f"{type(base).__name__}.{name} must be contiguous for in-place sparse deltas")
            self.params.append(name)
            idx = self._clean_index(idx, p.numel(), p.device)
            self.register_buffer(f"{name}_index", idx)
            self.register_buffer(f"{name}_orig", p.detach().reshape(-1)[idx.long()].clone(), persistent=False)
            self.register_parameter(f"{name}_values", nn.Parameter(torch.zeros(idx.numel(), dtype=dtype, device=p.device)))
            self.register_buffer(f"{name}_frozen_index", torch.zeros(0, dtype=torch.int32, device=p.device))
            self.register_buffer(f"{name}_frozen_values", torch.zeros(0, dtype=dtype, device=p.device))
            self.register_buffer(f"{name}_frozen_orig", torch.zeros(0, dtype=p.dtype, device=p.device), persistent=False)
        self._synced: dict[str, tuple] = {}

    @staticmethod
    def _clean_index(idx: torch.Tensor, numel: int, device: torch.device) -> torch.Tensor:
        idx = torch.as_tensor(idx).reshape(-1).to(device=device, dtype=torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
            raise ValueError(f"sparse indices must be in [0, {numel}), got [{int(idx.min())}, {int(idx.max())}]")
        if numel >= 2**31:
            raise ValueError(f"parameter with {numel} entries is too large for int32 flat indices")
        return torch.unique(idx).to(torch.int32)  # sorted

    # ------------------------------------------------------------------------------------------ access
    def index(self, p: str) -> torch.Tensor:
        return getattr(self, f"{p}_index")

    def values(self, p: str) -> nn.Parameter:
        return getattr(self, f"{p}_values")

    def orig(self, p: str) -> torch.Tensor:
        return getattr(self, f"{p}_orig")

    def num_trainable(self) -> int:
        return sum(self.index(p).numel() for p in self.params)

    def num_changed(self) -> int:
        """Entries that carry a change: trainable plus frozen-with-learned-value."""
        return sum(self.index(p).numel() + getattr(self, f"{p}_frozen_index").numel() for p in self.params)

    def delta_weight(self, base: nn.Module, param: str = "weight") -> torch.Tensor | None:
        """Dense ``scatter(index, values)`` (trainable + frozen) in the shape of ``base.<param>``; None if untouched."""
        if param not in self.params:
            return None
        target = getattr(base, param)
        out = torch.zeros(target.numel(), dtype=self.values(param).dtype, device=target.device)
        out[getattr(self, f"{param}_frozen_index").long()] = getattr(self, f"{param}_frozen_values")
        out = out.index_put((self.index(param).long(),), self.values(param))
        return out.view(target.shape)

    def effective_values(self, p: str) -> torch.Tensor:
        """``orig + scale · values`` at the trainable positions (differentiable w.r.t. ``values``), float32+."""
        v = self.values(p)
        return self.orig(p).to(v.dtype) + float(self.scale) * v

    # ------------------------------------------------------------------------------------------ in place
    def _signature(self, p: str) -> tuple:
        v = self.values(p)
        fv = getattr(self, f"{p}_frozen_values")
        return (id(v), v._version, v.data_ptr(), fv._version, fv.numel(), float(self.scale), self.enabled)

    @torch.no_grad()
    def write(self, base: nn.Module, force: bool = False) -> None:
        """Write ``orig + scale · values`` (or ``orig`` when disabled) into ``base`` where something changed."""
        for p in self.params:
            sig = self._signature(p)
            if not force and self._synced.get(p) == sig:
                continue
            flat = getattr(base, p).view(-1)
            for prefix in (f"{p}_", f"{p}_frozen_"):
                idx = getattr(self, prefix + "index").long()
                if idx.numel() == 0:
                    continue
                orig, vals = getattr(self, prefix + "orig"), getattr(self, prefix + "values")
                if self.enabled:
                    flat[idx] = (orig.to(vals.dtype) + float(self.scale) * vals.detach()).to(flat.dtype)
                else:
                    flat[idx] = orig
            self._synced[p] = sig

    @torch.no_grad()
    def restore(self, base: nn.Module) -> None:
        """Write the original entries back into ``base`` (the base becomes pristine at this delta's positions)."""
        for p in self.params:
            flat = getattr(base, p).view(-1)
            for prefix in (f"{p}_", f"{p}_frozen_"):
                idx = getattr(self, prefix + "index").long()
                if idx.numel():
                    flat[idx] = getattr(self, prefix + "orig")
            self._synced.pop(p, None)

    @torch.no_grad()
    def add_target(self, base: nn.Module, p: str, index: torch.Tensor, values: torch.Tensor | None = None) -> None:
        """Start adapting another parameter ``p`` of ``base`` at ``index`` (initial changes ``values``, default 0)."""
        if p in self.params:
            raise ValueError(f"parameter '{p}' is already adapted by this delta; use set_entries")
        target = getattr(base, p, None)
        if not isinstance(target, torch.Tensor) or not target.is_contiguous():
            raise ValueError(f"{type(base).__name__} has no contiguous parameter '{p}'")
        vdtype = next((self.values(q).dtype for q in self.params), torch.float32)
        dev = target.device
        self.params.append(p)
        self.register_buffer(f"{p}_index", torch.zeros(0, dtype=torch.int32, device=dev))
        self.register_buffer(f"{p}_orig", torch.zeros(0, dtype=target.dtype, device=dev), persistent=False)
        self.register_parameter(f"{p}_values", nn.Parameter(torch.zeros(0, dtype=vdtype, device=dev)))
        self.register_buffer(f"{p}_frozen_index", torch.zeros(0, dtype=torch.int32, device=dev))
        self.register_buffer(f"{p}_frozen_values", torch.zeros(0, dtype=vdtype, device=dev))
        self.register_buffer(f"{p}_frozen_orig", torch.zeros(0, dtype=target.dtype, device=dev), persistent=False)
        self.set_entries(base, p, index, values)

    @torch.no_grad()
    def set_entries(self, base: nn.Module, p: str, index: torch.Tensor, values: torch.Tensor | None = None,
                    frozen_index: torch.Tensor | None = None, frozen_values: torch.Tensor | None = None) -> None:
        """Replace the index sets of ``p`` (e.g. when loading a state with other positions).

        The base is first restored at the old positions, the originals at the new positions are read from it, and
        the new values (default 0) are written. ``values`` becomes a new ``nn.Parameter`` (re-create optimisers).
        """
        self.restore(base)
        target = getattr(base, p)
        dev, vdtype = target.device, self.values(p).dtype
        idx = self._clean_index(index, target.numel(), dev)
        if frozen_index is None:
            fidx = torch.zeros(0, dtype=torch.int32, device=dev)
        else:
            fidx = self._clean_index(frozen_index, target.numel(), dev)
        for name, ix, vals in ((f"{p}_", idx, values), (f"{p}_frozen_", fidx, frozen_values)):
            if vals is not None and vals.numel() != ix.numel():
                raise ValueError(f"{name}values has {vals.numel()} entries for {ix.numel()} indices")
        flat = target.detach().reshape(-1)
        setattr(self, f"{p}_index", idx)
        setattr(self, f"{p}_orig", flat[idx.long()].clone())
        new_vals = torch.zeros(idx.numel(), dtype=vdtype, device=dev) if values is None else values.detach().to(dev, vdtype).clone()
        self.register_parameter(f"{p}_values", nn.Parameter(new_vals, requires_grad=self.values(p).requires_grad))
        setattr(self, f"{p}_frozen_index", fidx)
        setattr(self, f"{p}_frozen_orig", flat[fidx.long()].clone())
        setattr(self, f"{p}_frozen_values", torch.zeros(fidx.numel(), dtype=vdtype, device=dev) if frozen_values is None
                else frozen_values.detach().to(dev, vdtype).clone())
        self.write(base, force=True)

    @torch.no_grad()
    def freeze_entries(self, base: nn.Module, p: str, keep: torch.Tensor) -> None:
        """Stop training the entries of ``p`` where ``keep`` (bool, ``(K,)``) is False, keeping their learned values.

        The frozen entries move to the ``p_frozen_*`` buffers; ``p_values`` becomes a new, smaller ``nn.Parameter``
        (its ``.grad``, if any, is carried over for the kept entries). Optimisers must switch to the new parameter.
        """
        keep = keep.to(device=self.index(p).device, dtype=torch.bool)
        old = self.values(p)
        if keep.shape != old.shape:
            raise ValueError(f"keep mask must have shape {tuple(old.shape)}, got {tuple(keep.shape)}")
        drop = ~keep
        fidx = torch.cat([getattr(self, f"{p}_frozen_index"), self.index(p)[drop]])
        order = torch.argsort(fidx)
        setattr(self, f"{p}_frozen_index", fidx[order])
        setattr(self, f"{p}_frozen_values", torch.cat([getattr(self, f"{p}_frozen_values"), old.detach()[drop]])[order])
        setattr(self, f"{p}_frozen_orig", torch.cat([getattr(self, f"{p}_frozen_orig"), self.orig(p)[drop]])[order])
        setattr(self, f"{p}_index", self.index(p)[keep])
        setattr(self, f"{p}_orig", self.orig(p)[keep])
        new = nn.Parameter(old.detach()[keep].clone(), requires_grad=old.requires_grad)
        if old.grad is not None:
            new.grad = old.grad[keep].clone()
        self.register_parameter(f"{p}_values", new)
        self._synced.pop(p, None)

    def load_delta_state(self, layer: "LoRALayer", state: Mapping[str, torch.Tensor]) -> None:
        """Load ``p_index``/``p_values`` (and the frozen pair) for each parameter; index sets may differ in size."""
        for p in self.params:
            if f"{p}_index" not in state:
                continue
            self.set_entries(layer.base, p, state[f"{p}_index"], state.get(f"{p}_values"),
                             state.get(f"{p}_frozen_index"), state.get(f"{p}_frozen_values"))

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{p}: {self.index(p).numel()}" for p in self.params)
        return f"trainable=({sizes}), kernel={self.kernel}, scale={self.scale}, enabled={self.enabled}"


# ====================================================================================================== layer
def _functional_forward(base: nn.Module, overrides: dict[str, torch.Tensor], x: torch.Tensor, *args, **kwargs):
    """``base(x)`` with some parameters replaced by the given tensors (no module state is changed)."""
    if isinstance(base, nn.Linear) and not args and not kwargs:
        return F.linear(x, overrides.get("weight", base.weight), overrides.get("bias", base.bias))
    if isinstance(base, CONV_TYPES) and not args and not kwargs:
        return base._conv_forward(x, overrides.get("weight", base.weight), overrides.get("bias", base.bias))
    return torch.func.functional_call(base, overrides, (x,) + args, kwargs)


class LoRALayer(nn.Module):
    """A frozen ``base`` module plus named deltas (see the module doc). Behaves like ``base`` otherwise:
    attributes it does not have (``in_features``, ``weight``, ``kernel_size``, ...) are read from ``base``.
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        if isinstance(base, LoRALayer):
            raise TypeError("base is already a LoRALayer; add deltas to it instead of wrapping it again")
        self.base = base
        self.deltas = nn.ModuleDict()
        self.merged = False
        self._merge_state: dict[str, Any] = {}
        base.requires_grad_(False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self._modules.get("base")
            if base is None:
                raise
            return getattr(base, name)

    # ------------------------------------------------------------------------------------------ deltas
    def add_delta(self, name: str, delta: Delta) -> Delta:
        """Register ``delta`` under ``name`` (unique per layer)."""
        if name in self.deltas:
            raise ValueError(f"this layer already has a delta named '{name}'")
        if self.merged:
            raise RuntimeError("unmerge the layer before adding deltas")
        self.deltas[name] = delta
        if delta.in_place:
            delta.write(self.base, force=True)
        return delta

    def remove_delta(self, name: str) -> Delta:
        """Remove and return delta ``name``; the base weights are restored where it was applied."""
        if self.merged:
            raise RuntimeError("unmerge the layer before removing deltas")
        delta = self.deltas[name]
        if delta.in_place:
            delta.restore(self.base)
        del self.deltas[name]
        return delta

    def set_scale(self, name: str, scale: Any) -> None:
        """Set delta ``name``'s run-time multiplier (in-place deltas need a float; re-written on the next forward)."""
        delta = self.deltas[name]
        if delta.in_place and isinstance(scale, torch.Tensor):
            if scale.numel() != 1:
                raise ValueError(f"the sparse delta '{name}' needs a scalar scale, got shape {tuple(scale.shape)}")
            scale = float(scale)
        if self.merged:
            raise RuntimeError("unmerge the layer before changing scales")
        delta.scale = scale

    def enable(self, name: str | None = None, enabled: bool = True) -> None:
        """Enable (or with ``enabled=False`` disable) delta ``name`` or all deltas."""
        if self.merged:
            raise RuntimeError("unmerge the layer before enabling/disabling deltas")
        for key in [name] if name is not None else list(self.deltas):
            self.deltas[key].enabled = enabled

    def disable(self, name: str | None = None) -> None:
        self.enable(name, False)

    def sync(self) -> None:
        """Write changed sparse values into the base weights (done automatically at each forward)."""
        if not self.merged:
            for delta in self.deltas.values():
                if delta.in_place:
                    delta.write(self.base)

    def delta_weight(self, name: str, param: str = "weight") -> torch.Tensor | None:
        """Dense change of ``base.<param>`` made by delta ``name`` including its scale (None if it touches none)."""
        delta = self.deltas[name]
        w = delta.delta_weight(self.base, param)
        return None if w is None else w * delta.scale

    # ------------------------------------------------------------------------------------------ merge
    @torch.no_grad()
    def merge(self, keep_base: bool = True) -> None:
        """Fold the enabled deltas into the base weights; the layer then runs as ``base``.

        Sparse deltas already live in the base weights. Low-rank deltas are added; with ``keep_base`` the base
        weights before merging are kept so that :meth:`unmerge` restores them bit for bit.
        """
        if self.merged:
            return
        self.sync()
        lowrank = [d for d in self.deltas.values() if d.enabled and not d.in_place]
        if lowrank:
            w = self.base.weight
            if keep_base:
                self._merge_state["weight"] = w.detach().clone()
            total = sum(self._scaled_delta(d) for d in lowrank)
            self._merge_state["lowrank"] = None if keep_base else total
            w.add_(total.to(w.dtype))
        self.merged = True

    def _scaled_delta(self, d: Delta) -> torch.Tensor:
        s = d.scale
        if isinstance(s, torch.Tensor) and s.numel() != 1:
            raise ValueError("cannot merge a delta whose scale is not a scalar")
        return d.delta_weight(self.base) * float(s)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (exactly, if it kept the base weights)."""
        if not self.merged:
            return
        if "weight" in self._merge_state:
            self.base.weight.copy_(self._merge_state["weight"])
        elif self._merge_state.get("lowrank") is not None:
            self.base.weight.sub_(self._merge_state["lowrank"].to(self.base.weight.dtype))
        self._merge_state.clear()
        self.merged = False

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.merged:
            return self.base(x, *args, **kwargs)
        self.sync()
        train_sparse = torch.is_grad_enabled() and [
            d for d in self.deltas.values() if d.in_place and d.enabled and any(d.values(p).requires_grad for p in d.params)
        ]
        out = self._sparse_forward(x, train_sparse, *args, **kwargs) if train_sparse else self.base(x, *args, **kwargs)
        for delta in self.deltas.values():
            if delta.in_place or not delta.enabled:
                continue
            s = delta.scale
            contrib = delta(x, self.base)
            out = out + (contrib * s if not (isinstance(s, (int, float)) and s == 1) else contrib).to(out.dtype)
        return out

    def _sparse_forward(self, x: torch.Tensor, deltas: list[SparseDelta], *args, **kwargs) -> torch.Tensor:
        """Base forward whose sparse-delta values receive gradients (kernel for Linear / 1×1 conv weights).

        The ops come from :mod:`zoo.ops.sparse_grad` (which dispatches to the kernels): its autograd Functions
        ``SparseLinearFunction`` / ``SparseConv1x1Function`` (SDDMM weight gradient, no dense ``dW``) for the one
        weight delta of a Linear / 1×1 conv, ``GatherGradFunction`` (dense gradient gathered at the indices) for
        every other parameter. They are applied directly rather than through ``sparse_linear`` & co., whose
        index range checks (``index.min()`` / ``max()``) would sync the GPU at every layer of every forward; the
        indices were validated once when the delta was built (:meth:`SparseDelta._clean_index`).
        """
        from zoo.ops.sparse_grad import GatherGradFunction, SparseConv1x1Function, SparseLinearFunction, is_conv1x1

        base = self.base
        overrides: dict[str, torch.Tensor] = {}
        kernel_delta = None
        weight_users = [d for d in deltas if "weight" in d.params]
        if (len(weight_users) == 1 and weight_users[0].kernel and not args and not kwargs
                and (isinstance(base, nn.Linear) or is_conv1x1(base))):
            kernel_delta = weight_users[0]
        for d in deltas:
            s = float(d.scale)
            for p in d.params:
                if d is kernel_delta and p == "weight":
                    continue
                vals = d.values(p)
                if not vals.requires_grad:
                    continue
                current = overrides.get(p, getattr(base, p))
                overrides[p] = GatherGradFunction.apply(current, d.index(p), vals, s)
        if kernel_delta is not None:
            fn = SparseLinearFunction if isinstance(base, nn.Linear) else SparseConv1x1Function
            bias = overrides.get("bias", base.bias)
            # the weight already holds the values in place (SparseDelta.write): no weight copy
            return fn.apply(x, base.weight, bias, kernel_delta.index("weight"), kernel_delta.values("weight"),
                            float(kernel_delta.scale))
        return _functional_forward(base, overrides, x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"merged={self.merged}" if self.merged else ""
