"""Adaptation methods (:mod:`zoo.adapters`) on Stable Diffusion pipelines: what a run writes for diffusers tools,
which method a file or folder holds, loading it into a pipeline with an on/off switch, the sample grid's switch.

Every registered method works here. Methods with a pipeline-specific artefact implement optional hooks (on the
method class, see :mod:`zoo.adapters.lora`, ``sara``, ``full``, ``plp``, ``peft_lora``):

* ``pipeline_file`` (class attribute) and ``save_pipeline_file(unet, directory) -> Path`` — the file diffusers
  tools read (``pytorch_lora_weights.safetensors``, ``sara_weights.safetensors``, a ``unet/`` folder);
* ``detect_pipeline_file(path) -> bool`` (classmethod) and ``detect_priority`` (lower is asked first) — whether
  a file or folder holds that artefact;
* ``load_into_pipeline(pipe, path) -> set_enabled`` (classmethod) — load it into a pipeline, switched on;
* ``sample_switch(pipe, unet, load_base) -> set_enabled | None`` — the on/off switch of the sample grid of a
  trained UNet (``full`` swaps in a fresh copy of the original UNet).

Methods without them go through the generic interface: ``save`` (``adapter_config.json`` + the method's weights
file), ``from_saved`` + ``load`` into ``pipe.unet``, ``set_enabled``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from torch import nn

from zoo.adapters.base import ADAPTER_CONFIG_FILE, AdapterMethod, adapter_names, get_adapter
from zoo.errors import ConfigError

__all__ = ["SetEnabled", "save_for_pipeline", "detect_adapter", "load_adapter", "sample_switch"]

SetEnabled = Callable[[bool], None]


def save_for_pipeline(method: AdapterMethod, unet: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the trained part of ``unet`` into ``directory``: the method's pipeline file when it has one, else its
    generic :meth:`~zoo.adapters.base.AdapterMethod.save`. Returns the file or folder written."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    hook = _hook(method, "save_pipeline_file")
    return hook(unet, directory) if hook is not None else method.save(unet, directory)


def _hook(obj: Any, name: str) -> Callable | None:
    """The optional hook ``name`` of a method (class or instance), or None (absent or set to None)."""
    hook = getattr(obj, name, None)
    return hook if callable(hook) else None


def _saved_method_name(folder: Path) -> str:
    import json

    return str(json.loads((folder / ADAPTER_CONFIG_FILE).read_text()).get("name", ""))


def _with_hooks() -> list[type[AdapterMethod]]:
    classes = [get_adapter(n) for n in adapter_names()]
    return sorted((c for c in classes if _hook(c, "detect_pipeline_file")), key=lambda c: c.detect_priority)


def detect_adapter(path: str | os.PathLike) -> str:
    """The name of the method whose output ``path`` (a file or folder) holds: a folder written by a method's
    ``save`` (its ``adapter_config.json`` names it), else the first method whose ``detect_pipeline_file`` claims
    it. Raises ``FileNotFoundError`` / :class:`~zoo.errors.ConfigError` naming what was expected."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"adapter not found: {p}")
    if p.is_dir() and (p / ADAPTER_CONFIG_FILE).is_file():
        return _saved_method_name(p)
    if p.is_file() and p.suffix != ".safetensors":
        raise ConfigError(f"{p}: adapter files are .safetensors (SaRA or diffusers LoRA)")
    methods = _with_hooks()
    for cls in methods:
        if cls.detect_pipeline_file(p):
            return cls.name
    expected = ", ".join(dict.fromkeys(f"{c.pipeline_file} ({c.name})" for c in methods))
    if p.is_dir():
        raise ConfigError(f"{p}: a folder with none of: a UNet (config.json or unet/), {ADAPTER_CONFIG_FILE} (a "
                          f"method's save), or one of {expected}")
    raise ConfigError(f"{p}: neither a SaRA weights file nor a diffusers LoRA file")


def load_adapter(pipe: Any, path: str | os.PathLike, name: str | None = None) -> SetEnabled:
    """Load the adapter at ``path`` into ``pipe`` (switched on) and return ``set_enabled(bool)``. ``name``: the
    method (default: :func:`detect_adapter`)."""
    p = Path(path)
    name = name or detect_adapter(p)
    try:
        cls = get_adapter(name)
    except KeyError:
        raise ConfigError(f"unknown adapter method '{name}'; choose one of {', '.join(adapter_names())}") from None
    if p.is_dir() and (p / ADAPTER_CONFIG_FILE).is_file():
        saved = _saved_method_name(p)
        if saved != name:
            raise ConfigError(f"{p} holds a '{saved}' adapter ({ADAPTER_CONFIG_FILE}), not '{name}'")
        method = cls.from_saved(p)
        unet = pipe.unet
        method.load(unet, p)
        return lambda on: method.set_enabled(unet, on)
    hook = _hook(cls, "load_into_pipeline")
    if hook is None:
        raise FileNotFoundError(f"{p}: no {ADAPTER_CONFIG_FILE}; a '{name}' adapter is read from the folder its "
                                "save() wrote")
    return hook(pipe, p)


def sample_switch(method: AdapterMethod, pipe: Any, unet: nn.Module,
                  load_base: Callable[[], nn.Module] | None) -> SetEnabled | None:
    """The on/off switch of the sample grid of a trained ``unet`` in ``pipe``: the method's ``sample_switch``
    hook, else its ``set_enabled``. ``load_base()``: a fresh copy of the original UNet (for methods that need one)."""
    hook = _hook(method, "sample_switch")
    if hook is not None:
        return hook(pipe, unet, load_base)
    return lambda on: method.set_enabled(unet, on)
