"""SaRA: sparse fine-tuning of the smallest pre-trained weights, with a low-rank constraint and progressive re-selection.

Hu et al., "SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation", ICLR 2025
(arXiv 2409.06633); official code github.com/sjtuplayer/SaRA (``optim/adamw.py``, ``optim/adamw2.py``).

Method, as implemented here on the zoo's adapter core (:mod:`zoo.layers.lora`):

* **Selection.** In every parameter of the model (all of them, as the official optimiser iterates
  ``model.parameters()``: conv and linear weights, biases, norm weights) the entries with ``|w| < threshold`` are
  trainable (θ = 2e-3 selects ≈ 50M of SD 1.5's 860M UNet weights). Each module with parameters becomes a
  :class:`~zoo.layers.lora.LoRALayer` with a :class:`~zoo.layers.lora.SparseDelta` named ``"sara"``: one flat
  trainable vector plus an int32 index per parameter; the original weights are frozen.
* **Unstructured backpropagation.** Only the selected entries get gradients and optimiser state. For the weights
  of ``nn.Linear`` and 1×1 ``nn.Conv2d`` the weight gradient is computed *only at the selected entries* by the
  SDDMM op :func:`zoo.ops.sparse_grad.sparse_linear` / ``sparse_conv1x1`` (dispatched by ``zoo.ops`` to the
  Triton kernel on GPU) — no dense ``dW`` is ever formed. For every other parameter (k×k convolutions, biases,
  norms) the dense gradient is formed transiently by the usual backward and gathered
  (:func:`zoo.ops.sparse_grad.attach_sparse_grad`: dense-gradient-then-gather, which is what the official code
  does for all layers). Nothing here calls ``cuda_ext`` directly.
  The trained values live in the frozen weights in place, so there is no weight copy either.
* **Low-rank constraint.** ``L_rank = λ · ||P ⊙ M||_*`` (nuclear norm) on one randomly chosen 2-D weight per
  step whose smaller side is > 64 and that has > 100 trainable entries (official: ``min(shape) > 64``, and
  ``mask.sum() > 100`` in ``adamw2``). :func:`sara_rank_loss` returns it for adding to the training loss;
  :class:`SaRAOptimizer` can also apply it inside ``step()`` like the official optimiser.
* **Progressive parameter adjustment.** After ``progressive_iter`` optimiser steps the trainable set is re-selected:
  of the currently trainable entries only those whose *current* value is still below the threshold stay
  trainable (``adamw2``: ``new_mask = (|p| < θ) * old_mask``); the others keep their learned values and freeze.
* **LR rule** (paper eq. 12): ``lr = 1e-3 · exp(-350 θ)`` when no lr is given (``sara_lr``).

Where this deviates from / fixes the official code (each is also noted at the place in the code):

* The official UB optimiser computes the nuclear-norm loss on the *original* ``nn.Parameter`` objects, which are
  no longer used by the model, so the rank constraint has no effect there (and allocates a dense gradient);
  here it acts on the trained values.
* Official re-selection rebuilds the optimiser (Adam moments reset) and skips that step's update; here the
  moments of the kept entries are carried over and the step is applied (``reselect_reset_state=True`` resets).
* The official UB optimiser writes ``trainable.abs()`` into the selected weights at construction (a sign flip
  of negative selected weights before the first step); here the model is unchanged until the first update.
* ``clip_grad_norm_(unet.parameters())`` was a no-op in the official UB mode (the model's tensors had no
  ``.grad``); here the trainable values are ordinary parameters of the model, so clipping works.

As an adapter method (``adapter.name=sara``, :class:`SaRAMethod` with :class:`SaRAConfig`): the same
selection, optimiser and loss behind :class:`zoo.adapters.base.AdapterMethod`'s interface.

Saving: :func:`save_sara` writes a compact safetensors file with, for each changed parameter ``name``, the keys
``name.index`` (int32 flat positions) and ``name.values`` (float32 changes), plus metadata (threshold). It is
loaded by :func:`load_sara` into a SaRA-wrapped model, or merged straight into a plain model's weights for
inference (no wrappers needed) — bit-identical to the trained model.

One-line use in an existing training loop — replace the optimiser construction::

    unet = UNet2DConditionModel.from_pretrained("path/to/sd15", subfolder="unet")
    # optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)                 # full fine-tuning
    optimizer = SaRAOptimizer(unet, threshold=2e-3, progressive_iter=2500, lambda_rank=5e-4)   # SaRA
    for batch in loader:                        # the usual diffusers loop, unchanged
        latents = vae.encode(batch["pixel_values"]).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
        pred = unet(scheduler.add_noise(latents, noise, t), t, text_encoder(batch["input_ids"])[0]).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        optimizer.step()
        optimizer.zero_grad()
    optimizer.save("sara_weights.safetensors")  # or save_sara(unet, path): only the trained entries

Limitations: progressive re-selection replaces the trainable parameter tensors, which multi-process DDP cannot
follow (it raises there); parameters that a parent module reads directly (``module.weight``) instead of calling
the module are kept up to date but get no gradient.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from zoo.adapters.base import AdapterConfig, AdapterMethod, register_adapter
from zoo.errors import CheckpointError, ConfigError
from zoo.layers.lora import Delta, LoRALayer, SparseDelta
from zoo.adapters.model import (
    adapter_state_dict,
    inject_adapter,
    iter_lora_layers,
    load_adapter_state_dict,
    mark_only_adapters_trainable,
    match_module_name,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "SARA",
    "sara_lr",
    "select_indices",
    "apply_sara",
    "sara_entries",
    "num_sara_parameters",
    "sara_rank_loss",
    "sara_state_dict",
    "load_sara_state_dict",
    "save_sara",
    "load_sara",
    "SaRAPatch",
    "SaRAOptimizer",
    "SARA_FILE",
    "SaRAConfig",
    "SaRAMethod",
]

_logger = logging.getLogger("zoo")

DEFAULT_THRESHOLD = 2e-3
SARA = "sara"  # adapter name of the sparse deltas
FORMAT = "zoo.sara"
SARA_FILE = "sara_weights.safetensors"  # what save_sara writes in a run directory


def sara_lr(threshold: float) -> float:
    """The paper's learning-rate rule (eq. 12): ``1e-3 · exp(-350 · threshold)`` (θ=2e-3 → 4.97e-4)."""
    return 1e-3 * math.exp(-350.0 * threshold)


def select_indices(param: torch.Tensor, threshold: float) -> torch.Tensor:
    """Flat positions (int64) of the entries of ``param`` with ``|w| < threshold`` (compared in float32)."""
    return (param.detach().float().abs() < threshold).reshape(-1).nonzero().squeeze(1)


def _own_float_params(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters(recurse=False) if p is not None and p.is_floating_point()]


def apply_sara(
    model: nn.Module,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    targets: Any = None,
    exclude: Any = (),
    kernel: bool = True,
    name: str = SARA,
) -> dict[str, LoRALayer]:
    """Select ``|w| < threshold`` in every parameter of the modules matched by ``targets`` (default: all modules
    with parameters) and make exactly those entries trainable (everything else in ``model`` is frozen).

    Returns ``{module name: LoRALayer}``. ``kernel=False`` uses dense-gradient-then-gather everywhere (the
    official code's behaviour; for comparisons). Modules already wrapped (e.g. with LoRA) get the delta on their
    base module's parameters.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")

    def make(mod_name: str, base: nn.Module) -> SparseDelta | None:
        indices = {}
        for p in _own_float_params(base):
            idx = select_indices(getattr(base, p), threshold)
            if idx.numel():
                indices[p] = idx
        if not indices:
            return None
        return SparseDelta(base, indices, kernel=kernel)

    def has_params(mod_name: str, module: nn.Module) -> bool:
        return bool(_own_float_params(module)) and match_module_name(mod_name, module, targets)

    layers = inject_adapter(model, has_params, make, name=name, layer_types=(nn.Module,), exclude=exclude)
    mark_only_adapters_trainable(model, [name])
    for layer in layers.values():
        layer.deltas[name].threshold = float(threshold)
    return layers


def sara_entries(model: nn.Module, name: str = SARA) -> list[tuple[str, LoRALayer, SparseDelta, str]]:
    """``(module name, layer, delta, parameter name)`` for every SaRA-adapted parameter, in model order."""
    out = []
    for layer_name, layer in iter_lora_layers(model):
        delta = layer.deltas[name] if name in layer.deltas else None
        if isinstance(delta, SparseDelta):
            out += [(layer_name, layer, delta, p) for p in delta.params]
    return out


def num_sara_parameters(model: nn.Module, name: str = SARA) -> int:
    """Number of currently trainable SaRA entries."""
    return sum(d.index(p).numel() for _, _, d, p in sara_entries(model, name))


def _rank_candidates(model: nn.Module, name: str = SARA) -> list[tuple[LoRALayer, SparseDelta]]:
    # Official: 2-D parameters with min(shape) > 64 (i.e. Linear weights; 4-D convs excluded), and (adamw2) only
    # when more than 100 entries are trainable.
    return [
        (layer, delta)
        for _, layer, delta, p in sara_entries(model, name)
        if p == "weight" and layer.base.weight.dim() == 2 and min(layer.base.weight.shape) > 64
        and delta.index(p).numel() > 100
    ]


def sara_rank_loss(model: nn.Module, lambda_rank: float, generator: torch.Generator | None = None,
                   name: str = SARA) -> torch.Tensor:
    """``λ · ||P ⊙ M||_*`` for one random eligible weight (see the module doc); 0 if none is eligible.

    ``P ⊙ M`` is the dense matrix holding the current values of the trainable entries (zeros elsewhere); its
    gradient reaches only the trainable values. The layer is drawn with ``generator`` (default: torch's global RNG,
    so a seeded / resumed run draws the same layers).
    """
    candidates = _rank_candidates(model, name)
    if not lambda_rank or not candidates:
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        return torch.zeros((), device=dev)
    i = int(torch.randint(len(candidates), (1,), generator=generator))
    layer, delta = candidates[i]
    w = layer.base.weight
    dense = torch.zeros(w.numel(), dtype=delta.values("weight").dtype, device=w.device)
    dense = dense.index_put((delta.index("weight").long(),), delta.effective_values("weight")).view(w.shape)
    return lambda_rank * torch.linalg.matrix_norm(dense, ord="nuc")


# ====================================================================================================== save / load
def sara_state_dict(model: nn.Module, name: str = SARA) -> dict[str, torch.Tensor]:
    """The training state of the SaRA deltas (trainable and frozen index/value pairs) — for checkpoints/resume."""
    return adapter_state_dict(model, [name])


def load_sara_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], name: str = SARA) -> None:
    """Inverse of :func:`sara_state_dict` on a SaRA-wrapped model (index sets may differ from the current ones)."""
    load_adapter_state_dict(model, {k: v for k, v in state.items()}, strict=True)


def _compact(model: nn.Module, name: str = SARA) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for layer_name, layer, delta, p in sara_entries(model, name):
        idx = torch.cat([delta.index(p), getattr(delta, f"{p}_frozen_index")]).long()
        vals = torch.cat([delta.values(p).detach(), getattr(delta, f"{p}_frozen_values")]) * float(delta.scale)
        order = torch.argsort(idx)
        key = f"{layer_name}.{p}".lstrip(".")
        out[f"{key}.index"] = idx[order].to(torch.int32).cpu().contiguous()
        out[f"{key}.values"] = vals[order].float().cpu().contiguous()
    return out


def save_sara(model: nn.Module, path: str | os.PathLike, *, threshold: float | None = None, name: str = SARA,
              metadata: Mapping[str, str] | None = None) -> Path:
    """Write the learned changes as ``{param}.index`` / ``{param}.values`` pairs to a safetensors file (atomic)."""
    from zoo.files import write_safetensors_file

    state = _compact(model, name)
    if not state:
        raise ValueError(f"the model has no SaRA deltas named '{name}' (call apply_sara or use SaRAOptimizer first)")
    if threshold is None:
        threshold = next((getattr(d, "threshold", None) for _, _, d, _ in sara_entries(model, name)), None)
    meta = {"format": FORMAT, "version": "1", "threshold": json.dumps(threshold),
            "num_values": str(sum(v.numel() for k, v in state.items() if k.endswith(".values")))}
    meta.update(metadata or {})
    return write_safetensors_file(state, path, metadata=meta)


def _read_compact(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"SaRA weights file not found: {path}")
        from zoo.adapters.lora_formats import safetensors_header
        from zoo.files import read_safetensors_file

        fmt = safetensors_header(path)[0].get("format")
        if fmt != FORMAT:
            raise CheckpointError(f"{path} is not a SaRA weights file (metadata format={fmt!r}, expected {FORMAT!r})")
        state = read_safetensors_file(path, what="SaRA weights file")
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in state:
        if key.endswith(".index"):
            param = key[: -len(".index")]
            if f"{param}.values" not in state:
                raise CheckpointError(f"SaRA weights: '{key}' has no matching '{param}.values'")
            pairs[param] = (state[key], state[f"{param}.values"])
    return pairs


def _plain_named_parameters(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """``{original parameter name: (owning module, attribute)}`` with adapter wrappers looked through."""
    out: dict[str, tuple[nn.Module, str]] = {}
    wrapped = {id(layer.base): name for name, layer in iter_lora_layers(model)}
    for mod_name, module in model.named_modules():
        if isinstance(module, (LoRALayer, Delta)):
            continue
        name = wrapped.get(id(module), mod_name)
        for p, t in module.named_parameters(recurse=False):
            out[f"{name}.{p}".lstrip(".")] = (module, p)
    return out


class SaRAPatch:
    """Saved SaRA changes applied to a plain model's weights in place, removable exactly.

    ``apply()`` writes ``w[index] = w0[index] + values`` (the arithmetic of training, so the weights are
    bit-identical to the trained model's), ``remove()`` writes ``w0`` back. Used by :func:`load_sara` and by the
    sample tool to render with and without the adapter from one loaded pipeline.
    """

    def __init__(self, model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor]):
        pairs = _read_compact(source)
        params = _plain_named_parameters(model)
        missing = [k for k in pairs if k not in params]
        if missing:
            raise CheckpointError(f"SaRA weights name {len(missing)} parameters the model does not have: "
                                  f"{', '.join(missing[:10])}")
        self.entries = []
        for key, (idx, vals) in pairs.items():
            module, p = params[key]
            w = getattr(module, p)
            if idx.numel() and int(idx.max()) >= w.numel():
                raise CheckpointError(f"SaRA weights for {key}: index {int(idx.max())} out of range for shape {tuple(w.shape)}")
            ix = idx.to(w.device).long()
            self.entries.append((w, ix, vals.to(w.device), w.detach().reshape(-1)[ix].clone()))
        self.applied = False

    @torch.no_grad()
    def apply(self) -> None:
        for w, ix, v, orig in self.entries:
            w.view(-1)[ix] = (orig.to(v.dtype) + 1.0 * v).to(w.dtype)  # same arithmetic as SparseDelta.write
        self.applied = True

    @torch.no_grad()
    def remove(self) -> None:
        for w, ix, _, orig in self.entries:
            w.view(-1)[ix] = orig
        self.applied = False

    def set_enabled(self, enabled: bool) -> None:
        self.apply() if enabled else self.remove()


@torch.no_grad()
def load_sara(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], name: str = SARA) -> nn.Module:
    """Apply saved SaRA weights to ``model`` (a path to :func:`save_sara`'s file, or its tensors).

    Plain model (no SaRA deltas): the changes are merged into the weights (:class:`SaRAPatch`), bit-identical to
    the trained model. SaRA-wrapped model: each saved parameter's entries replace that delta's index set (all
    trainable again; modules or parameters not yet adapted are added), so training can continue; parameters
    not in the file keep their current entries. Parameters named in the file but missing from the model raise.
    """
    if not sara_entries(model, name):
        SaRAPatch(model, source).apply()
        return model
    pairs = _read_compact(source)
    params = _plain_named_parameters(model)
    missing = [k for k in pairs if k not in params]
    if missing:
        raise CheckpointError(f"SaRA weights name {len(missing)} parameters the model does not have: "
                              f"{', '.join(missing[:10])}")
    layers = dict(iter_lora_layers(model))
    for key, (idx, vals) in pairs.items():
        mod_name, _, p = key.rpartition(".")
        layer = layers.get(mod_name)
        if layer is None:  # a module without selected entries: wrap it now
            base = params[key][0]
            layer = inject_adapter(model, [mod_name] if mod_name else None,
                                   lambda n, b: SparseDelta(b, {p: idx}, kernel=True), name=name,
                                   layer_types=(type(base),))[mod_name]
            layers[mod_name] = layer
        if name not in layer.deltas:
            layer.add_delta(name, SparseDelta(layer.base, {p: idx}))
        delta = layer.deltas[name]
        delta.scale = 1.0
        if p in delta.params:
            delta.set_entries(layer.base, p, idx, vals)
        else:
            delta.add_target(layer.base, p, idx, vals)
    mark_only_adapters_trainable(model, [name])
    return model


# ====================================================================================================== optimiser
class SaRAOptimizer(torch.optim.AdamW):
    """AdamW over SaRA's sparse trainable values; construct it from the *model* (one changed line, see module doc).

    It selects the entries (``apply_sara``, unless the model already has SaRA deltas), owns the sparse
    parameters, applies the optional in-step nuclear-norm loss and runs the progressive re-selection. Optimiser
    state is only as large as the trainable set.

    Args:
        model: the network to fine-tune (modified in place: modules with parameters are wrapped).
        threshold: selection threshold θ (entries with ``|w| < θ`` are trained).
        lr: learning rate (default: the paper's rule ``1e-3 · exp(-350 θ)``).
        betas, eps: Adam settings.
        weight_decay: decoupled weight decay (official default 1e-2).
        decay_to: ``"zero"`` (official: decay the full weight value ``w = w0 + Δ`` towards 0) or
            ``"pretrained"`` (decay only the change ``Δ``).
        progressive_iter: re-select after this many steps (None/≤0: never).
        lambda_rank: weight of the nuclear-norm loss applied inside ``step()`` (0: off; the zoo recipe adds
            :func:`sara_rank_loss` to its loss instead, which also works with fp16 loss scaling).
        reselect_reset_state: reset the Adam moments at re-selection (official behaviour) instead of carrying
            over those of the kept entries.
        kernel: use the sparse-gradient kernel for Linear / 1×1 conv weights (False: dense-then-gather).
        targets, exclude: which modules to adapt (see :func:`apply_sara`).
        foreach: passed to ``torch.optim.AdamW``.
    """

    def __init__(
        self,
        model: nn.Module,
        threshold: float = DEFAULT_THRESHOLD,
        lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        decay_to: str = "zero",
        progressive_iter: int | None = None,
        lambda_rank: float = 0.0,
        reselect_reset_state: bool = False,
        kernel: bool = True,
        targets: Any = None,
        exclude: Any = (),
        foreach: bool | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError("SaRAOptimizer takes the model (it selects the trainable entries itself), e.g. "
                            "SaRAOptimizer(unet, threshold=2e-3); got " + type(model).__name__)
        if decay_to not in ("zero", "pretrained"):
            raise ValueError(f"decay_to must be 'zero' or 'pretrained', got {decay_to!r}")
        if not sara_entries(model):
            apply_sara(model, threshold, targets=targets, exclude=exclude, kernel=kernel)
        self.model = model
        self.threshold = float(threshold)
        self.decay_to = decay_to
        self.progressive_iter = int(progressive_iter) if progressive_iter and progressive_iter > 0 else None
        self.lambda_rank = float(lambda_rank)
        self.reselect_reset_state = reselect_reset_state
        self.sara_step = 0
        self.reselected = False
        self._entries = sara_entries(model)
        params = [delta.values(p) for _, _, delta, p in self._entries]
        if not params:
            raise ConfigError(f"no entry of the model is below the SaRA threshold {threshold}; raise the threshold "
                              "(adapter.threshold)")
        super().__init__(params, lr=sara_lr(threshold) if lr is None else lr, betas=betas, eps=eps,
                         weight_decay=0.0, foreach=foreach)
        for group in self.param_groups:
            group["sara_weight_decay"] = weight_decay

    # ------------------------------------------------------------------------------------------ helpers
    def num_trainable(self) -> int:
        return sum(p.numel() for g in self.param_groups for p in g["params"])

    def state_bytes(self) -> int:
        """Bytes held by the optimiser state (Adam moments)."""
        return sum(t.numel() * t.element_size() for s in self.state.values() for t in s.values() if torch.is_tensor(t))

    def _refresh_params(self) -> None:
        """Point the param group at the model's current value tensors (after re-selection or a state load)."""
        self._entries = sara_entries(self.model)
        params = [delta.values(p) for _, _, delta, p in self._entries]
        if len(self.param_groups) != 1:
            raise RuntimeError("SaRAOptimizer expects a single parameter group")
        old = self.param_groups[0]["params"]
        if len(old) != len(params):
            raise RuntimeError(f"the model now has {len(params)} SaRA tensors, the optimiser {len(old)}")
        self.param_groups[0]["params"] = params

    def save(self, path: str | os.PathLike) -> Path:
        """:func:`save_sara` of the model (only the learned entries)."""
        return save_sara(self.model, path, threshold=self.threshold)

    # ------------------------------------------------------------------------------------------ steps
    @torch.no_grad()
    def reselect(self) -> int:
        """Progressive re-selection: keep training only the entries still below the threshold; returns their count."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise NotImplementedError("SaRA's progressive re-selection replaces the trainable tensors, which DDP cannot "
                                      "follow; train on one process or set progressive_iter to None")
        group = self.param_groups[0]
        new_params = []
        for (_, layer, delta, p), old in zip(self._entries, group["params"]):
            keep = delta.effective_values(p).detach().abs() < self.threshold  # adamw2: (|p| < θ) ∧ old mask
            state = self.state.pop(old, {})
            delta.freeze_entries(layer.base, p, keep)
            new = delta.values(p)
            if state and not self.reselect_reset_state:
                # Deviation: the official optimiser is rebuilt here (moments reset, this step skipped); we keep the
                # moments of the kept entries and apply the step, so training continues smoothly.
                self.state[new] = {k: (v[keep] if torch.is_tensor(v) and v.shape == keep.shape else v) for k, v in state.items()}
            new_params.append(new)
        group["params"] = new_params
        self._entries = sara_entries(self.model)
        self.reselected = True
        return sum(p.numel() for p in new_params)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.sara_step += 1
        if self.progressive_iter is not None and not self.reselected and self.sara_step == self.progressive_iter + 1:
            self.reselect()
        if self.lambda_rank:
            # Fix: the official UB optimiser took this loss on the unused original parameters (no effect).
            with torch.enable_grad():
                sara_rank_loss(self.model, self.lambda_rank).backward()
        self._decay()
        super().step()
        return loss

    @torch.no_grad()
    def _decay(self) -> None:
        """Decoupled weight decay, before the Adam update like the official AdamW (``param.mul_(1 - lr·wd)``)."""
        for group in self.param_groups:
            wd = group.get("sara_weight_decay", 0.0)
            if not wd:
                continue
            lr = float(group["lr"])
            for (_, _, delta, p), v in zip(self._entries, group["params"]):
                if v.grad is None:
                    continue
                if self.decay_to == "zero":  # w = orig + v decays to 0: v -= lr·wd·(orig + v)
                    v.sub_(delta.orig(p).to(v.dtype) + v, alpha=lr * wd)
                else:
                    v.mul_(1.0 - lr * wd)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["sara"] = {"step": self.sara_step, "reselected": self.reselected, "threshold": self.threshold}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; load the model's SaRA state (which may have been re-selected) first."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("sara", {})
        self._refresh_params()
        super().load_state_dict(state_dict)
        self.sara_step = int(extra.get("step", 0))
        self.reselected = bool(extra.get("reselected", False))


# ====================================================================================================== method
@dataclass
class SaRAConfig(AdapterConfig):
    """``adapter:`` section of ``sara`` (defaults: the official repository's ``finetune.sh``); ``target_modules``
    None adapts every module with parameters."""

    name: str = "sara"
    threshold: float = DEFAULT_THRESHOLD  # train the entries with |w| < threshold (2e-3 ≈ 50M of SD 1.5's UNet)
    lambda_rank: float = 5e-4  # nuclear-norm loss weight (0: off)
    progressive_iter: float | None = 0.5  # re-select after this many optimiser steps; < 1: fraction of all steps
    lr_rule: bool = False  # lr = 1e-3 · exp(-350 · threshold) instead of optim.lr
    kernel: bool = True  # sparse weight-gradient kernel for Linear / 1×1 conv weights (False: dense-then-gather)
    decay_to: str = "zero"  # weight decay pulls the full weight to 0 (official) or only the change ("pretrained")
    reselect_reset_state: bool = False  # reset Adam moments at re-selection (official) instead of keeping them

    def __post_init__(self) -> None:
        if not float(self.threshold) > 0:
            raise ConfigError(f"adapter.threshold must be > 0, got {self.threshold}")
        if self.decay_to not in ("zero", "pretrained"):
            raise ConfigError(f"adapter.decay_to must be 'zero' or 'pretrained', got '{self.decay_to}'")


@register_adapter("sara", config=SaRAConfig)
class SaRAMethod(AdapterMethod):
    """SaRA as an adapter method: :func:`apply_sara`, its own optimiser (:class:`SaRAOptimizer`: AdamW over the
    sparse values, decoupled decay, progressive re-selection) and the nuclear-norm loss as an extra loss term.

    Pipeline hooks: :meth:`save_pipeline_file` writes :data:`SARA_FILE` (:func:`save_sara`: only the changed
    entries, readable into a plain model), :meth:`load_into_pipeline` applies it to a pipeline's UNet with an
    exact on/off switch (:class:`SaRAPatch`).
    """

    delta_names = (SARA,)
    pipeline_file = SARA_FILE
    detect_priority = 30

    def apply(self, model: nn.Module) -> nn.Module:
        from zoo.adapters.lora import target_list

        c = self.config
        apply_sara(model, c.threshold, targets=target_list(c.target_modules), kernel=c.kernel)
        _logger.info("SaRA: %d trainable entries (|w| < %g) of %d weights", num_sara_parameters(model), c.threshold,
                     sum(p.numel() for n, p in model.named_parameters() if ".deltas." not in n))
        return model

    def configure_optimizer(self, model: nn.Module, optim_cfg: Any, total_steps: Callable[[], int]) -> torch.optim.Optimizer:
        """:class:`SaRAOptimizer` with the ``optim`` section's AdamW settings (``lr_rule``: the paper's lr);
        ``progressive_iter < 1`` is a fraction of ``total_steps()``. The nuclear-norm loss is not applied in the
        step (``lambda_rank=0`` there): :meth:`extra_losses` adds it to the training loss instead (logged, and
        correct under fp16 loss scaling and gradient accumulation)."""
        c = self.config
        if optim_cfg.name.lower() != "adamw":
            raise ConfigError(f"adapter.name=sara trains with its own AdamW; optim.name must be adamw, got "
                              f"'{optim_cfg.name}'")
        prog = c.progressive_iter
        if prog is not None and 0 < prog < 1:
            prog = round(prog * total_steps())
        return SaRAOptimizer(model, c.threshold, lr=None if c.lr_rule else optim_cfg.lr, betas=tuple(optim_cfg.betas),
                             eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay, decay_to=c.decay_to,
                             progressive_iter=int(prog) if prog else None, lambda_rank=0.0,
                             reselect_reset_state=c.reselect_reset_state, kernel=c.kernel)

    def extra_losses(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``{"rank": λ · ||P ⊙ M||_*}`` (:func:`sara_rank_loss`) when ``lambda_rank`` is set."""
        if not self.config.lambda_rank:
            return {}
        return {"rank": sara_rank_loss(model, self.config.lambda_rank)}

    # ------------------------------------------------------------------ pipeline hooks
    def save_pipeline_file(self, model: nn.Module, directory: str | os.PathLike) -> Path:
        """:func:`save_sara` into ``directory/sara_weights.safetensors``; returns the file."""
        return save_sara(model, Path(directory) / SARA_FILE, threshold=self.config.threshold)

    @classmethod
    def detect_pipeline_file(cls, path: Path) -> bool:
        """Whether ``path`` is (a folder holding) a SaRA weights file."""
        from zoo.adapters.lora_formats import safetensors_header

        if path.is_dir():
            return (path / SARA_FILE).is_file()
        return path.suffix == ".safetensors" and safetensors_header(path)[0].get("format") == FORMAT

    @classmethod
    def load_into_pipeline(cls, pipe: Any, path: str | os.PathLike) -> Callable[[bool], None]:
        """Apply a SaRA file (or its folder) to ``pipe.unet`` (on); returns ``set_enabled(bool)``."""
        p = Path(path)
        patch = SaRAPatch(pipe.unet, p / SARA_FILE if p.is_dir() else p)
        patch.apply()
        return patch.set_enabled
