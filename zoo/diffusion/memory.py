"""What fine-tuning a diffusion UNet costs in memory, counted exactly and measured.

**Counted** (:func:`training_state_bytes`, after one real optimiser step): what the training adds to the frozen
model — the bytes SaRA's memory claim is about (Hu et al., ICLR 2025, App. I: the saving of sparse fine-tuning is
the gradients and optimiser state of the frozen weights):

* ``adapter_bytes`` — parameters and buffers the method added to the model (LoRA's ``A``/``B``; SaRA's trained
  values, their int32 positions and the original entries there; 0 for full fine-tuning, which trains in place),
  from the model's tensors before and after the method was applied;
* ``grad_bytes`` — one gradient per trainable tensor (what the optimiser reads each step; a method that forms a
  dense gradient transiently, e.g. SaRA on k×k convolutions, does not keep it, and it is not counted here);
* ``optimizer_bytes`` — the optimiser's state tensors (Adam's two moments, step counters);
* ``state_bytes`` — their sum; ``trainable`` — the trained entries.

**Measured** (:func:`measure_recipe_step` on a built recipe; :func:`measure_training_step` runs it in a fresh process
so nothing of an earlier run is in the heap): ``peak_step_bytes`` — the peak resident set size (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs``: :func:`zoo.benchmarks._common.peak_memory`, the benchmarks' one peak
counter) during the first training step (forward, backward, the optimiser step that creates its state) above the
resident size just before it, with glibc's mmap threshold at 64 KiB so that freed tensors leave the resident set;
and ``step_ms`` — the median time of ``repeat`` further steps. It includes activations and every transient buffer, so
it is what a user sees; the counted bytes are what a method keeps.

Reference: the accounting (parameters + gradients + optimiser state) is the usual training memory breakdown (ZeRO,
Rajbhandari et al. 2020, §3).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["tensor_bytes", "model_tensor_bytes", "training_state_bytes", "recipe_from_config", "measure_recipe_step",
           "measure_training_step"]

_MEASURED = "MEASURED "


def tensor_bytes(t: torch.Tensor) -> int:
    """``numel · element_size`` of a tensor."""
    return t.numel() * t.element_size()


def model_tensor_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` (each tensor once, shared ones too)."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[id(t)] = tensor_bytes(t)
    return sum(seen.values())


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, frozen_model_bytes: int
                         ) -> dict[str, int]:
    """The counted bytes of the module doc for ``model`` trained by ``optimizer`` (after at least one step, so that
    its state exists); ``frozen_model_bytes``: :func:`model_tensor_bytes` of the model before the method was
    applied. Returns ``{"trainable", "adapter_bytes", "grad_bytes", "optimizer_bytes", "state_bytes"}``."""
    params = {id(p): p for g in optimizer.param_groups for p in g["params"]}
    trainable = sum(p.numel() for p in params.values())
    grad_bytes = sum(p.numel() * p.element_size() for p in params.values())  # a gradient of each, same dtype
    optimizer_bytes = sum(tensor_bytes(v) for state in optimizer.state.values() for v in state.values()
                          if torch.is_tensor(v))
    adapter_bytes = max(0, model_tensor_bytes(model) - frozen_model_bytes)
    return {"trainable": trainable, "adapter_bytes": adapter_bytes, "grad_bytes": grad_bytes,
            "optimizer_bytes": optimizer_bytes, "state_bytes": adapter_bytes + grad_bytes + optimizer_bytes}


def recipe_from_config(config: str | os.PathLike, overrides: Sequence[str] = ()) -> Any:
    """The recipe of the run config ``config`` with ``overrides``, built (``zoo.config`` + the recipe registry of
    :mod:`zoo.recipes.base`; the same validation a training run applies)."""
    from zoo.config import ConfigError, load_config, validate_config
    from zoo.registry import RECIPES

    raw = load_config(config, list(overrides))
    name = raw.get("recipe")
    if not name:
        raise ConfigError(f"{config}: the config names no recipe, so there is no training step to measure")
    recipe_cls = RECIPES.get(name)
    return recipe_cls(validate_config(raw, recipe_cls.Config))


def measure_recipe_step(recipe: Any, repeat: int = 3) -> dict[str, Any]:
    """Counted and measured memory of the first training step of a built ``recipe`` (its ``build_dataloaders`` /
    ``build_model`` / ``configure_optimizer`` / ``training_step``), in this process: :func:`training_state_bytes`
    plus ``peak_step_bytes`` (peak RSS of the step above the RSS before it, through
    :func:`zoo.benchmarks._common.peak_memory`; None where the OS offers no resettable peak) and ``step_ms`` (median
    of ``repeat`` further steps; None for ``repeat=0``). Run it in a fresh process (:func:`measure_training_step`)
    so that nothing of an earlier run is in the heap."""
    from zoo.profiling import peak_memory, time_fn

    train_loader, _ = recipe.build_dataloaders()
    base = getattr(getattr(recipe, "components", None), "unet", None)  # sd_finetune: the frozen UNet before
    frozen = model_tensor_bytes(base) if base is not None else None  # the method is applied to it
    model = recipe.build_model()
    if frozen is None:
        frozen = model_tensor_bytes(model)
    model.train()
    optimizer = recipe.configure_optimizer(model, recipe.cfg.optim)
    batch = next(iter(train_loader))

    def step() -> None:
        loss = recipe.training_step(model, batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    peak = peak_memory(step)  # the first step also creates the optimiser state
    counted = training_state_bytes(model, optimizer, frozen)
    ms = 1000 * time_fn(step, warmup=0, repeat=repeat) if repeat > 0 else None
    return {**counted, "peak_step_bytes": peak, "step_ms": ms}


def measure_training_step(config: str | os.PathLike, overrides: Sequence[str] = (), repeat: int = 3,
                          threads: int = 1) -> dict[str, Any]:
    """:func:`measure_recipe_step` of the run ``config`` (a config file, e.g. a finished run's ``config.yaml``, with
    ``overrides``) in a fresh Python process (``threads`` CPU threads, glibc mmap threshold 64 KiB so that freed
    tensors leave the resident set). Raises ``RuntimeError`` with the child's error output when it fails."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    code = ("import json, sys, torch; torch.set_num_threads(int(sys.argv[1])); "
            "from zoo.diffusion.memory import measure_recipe_step, recipe_from_config; "
            "recipe = recipe_from_config(sys.argv[2], json.loads(sys.argv[3])); "
            f"print({_MEASURED!r} + json.dumps(measure_recipe_step(recipe, int(sys.argv[4]))))")
    res = subprocess.run([sys.executable, "-c", code, str(threads), str(config), json.dumps(list(overrides)),
                          str(repeat)], env=env, capture_output=True, text=True)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith(_MEASURED)), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"measuring a training step of {config} failed:\n{res.stderr[-3000:]}")
    return json.loads(line[len(_MEASURED):])
