"""Full fine-tuning (``adapter.name=full``): every weight of the model (or of the modules matched by
``target_modules``) is trained; the "adapter" is the whole model.

There is no delta to merge, scale or switch off: :meth:`FullMethod.merge` and friends return the model as it
is, and :meth:`FullMethod.set_enabled` / :meth:`FullMethod.set_scale` raise (the base weights are gone; keep a
copy of the original model to compare with it, as :meth:`FullMethod.sample_switch` does for sample grids).
Checkpoints hold the whole state dict; the Trainer's EMA applies (``supports_ema``).

Pipeline hooks (a diffusers UNet): :meth:`FullMethod.save_pipeline_file` writes the UNet as a diffusers folder
``unet/`` (``UNet2DConditionModel.from_pretrained`` reads it), :meth:`FullMethod.load_into_pipeline` puts such a
folder into a pipeline with a switch back to the pipeline's own UNet.

Reference: diffusers ``examples/text_to_image/train_text_to_image.py`` (full UNet fine-tuning).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zoo.adapters.base import AdapterConfig, AdapterMethod, register_adapter
from zoo.errors import ConfigError, MissingDependencyError

__all__ = ["FullConfig", "FullMethod"]


@dataclass
class FullConfig(AdapterConfig):
    """``adapter:`` section of ``full``: ``target_modules`` None trains every parameter; else only the parameters
    of the matched modules (the rest is frozen)."""

    name: str = "full"


def _unet_folder(path: Path) -> Path:
    return path / "unet" if (path / "unet" / "config.json").is_file() else path


@register_adapter("full", config=FullConfig)
class FullMethod(AdapterMethod):
    """Every weight trained (see the module doc)."""

    supports_ema = True
    pipeline_file = "unet/"
    detect_priority = 10

    def apply(self, model: nn.Module) -> nn.Module:
        from zoo.adapters.lora import target_list
        from zoo.adapters.model import match_module_name

        targets = self.config.target_modules
        if targets is None:
            model.requires_grad_(True)
            return model
        model.requires_grad_(False)
        chosen = [m for n, m in model.named_modules() if n and match_module_name(n, m, target_list(targets))]
        if not chosen:
            raise ConfigError(f"adapter.target_modules: no module of the model matches {targets!r}")
        for module in chosen:
            module.requires_grad_(True)
        return model

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's state dict."""
        return model.state_dict()

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state)

    def merge(self, model: nn.Module) -> nn.Module:
        return model

    def unmerge(self, model: nn.Module) -> nn.Module:
        return model

    def merge_and_unload(self, model: nn.Module) -> nn.Module:
        return model

    def set_scale(self, model: nn.Module, scale: Any) -> None:
        raise NotImplementedError("full fine-tuning has no separate delta to scale (the base weights were trained)")

    def set_enabled(self, model: nn.Module, enabled: bool = True) -> None:
        raise NotImplementedError("full fine-tuning cannot be switched off (the base weights were trained); keep a "
                                  "copy of the original model to compare with")

    # ------------------------------------------------------------------ pipeline hooks
    def save_pipeline_file(self, unet: nn.Module, directory: str | Path) -> Path:
        """Write ``unet`` (a diffusers ``ModelMixin``) as the diffusers folder ``directory/unet``; returns it."""
        if not hasattr(unet, "save_pretrained"):
            raise TypeError(f"{type(unet).__name__} has no save_pretrained (not a diffusers model); use save()")
        out = Path(directory) / "unet"
        unet.save_pretrained(str(out), safe_serialization=True)
        return out

    @classmethod
    def detect_pipeline_file(cls, path: Path) -> bool:
        """Whether ``path`` is a diffusers UNet folder (``config.json``) or holds one as ``unet/``."""
        return path.is_dir() and ((path / "config.json").is_file() or (path / "unet" / "config.json").is_file())

    @classmethod
    def load_into_pipeline(cls, pipe: Any, path: str | Path) -> Callable[[bool], None]:
        """Put the UNet folder ``path`` (or ``path/unet``) into ``pipe`` (on); ``set_enabled(False)`` puts the
        pipeline's own UNet back."""
        try:
            from diffusers import UNet2DConditionModel
        except ImportError as exc:
            raise MissingDependencyError("loading a fine-tuned UNet needs diffusers: pip install 'zoo[diffusion]'") from exc
        base = pipe.unet
        tuned = UNet2DConditionModel.from_pretrained(str(_unet_folder(Path(path))))
        tuned = tuned.to(device=base.device, dtype=base.dtype)

        def set_enabled(on: bool) -> None:
            pipe.unet = tuned if on else base

        set_enabled(True)
        return set_enabled

    def sample_switch(self, pipe: Any, unet: nn.Module, load_base: Callable[[], nn.Module] | None
                      ) -> Callable[[bool], None] | None:
        """The sample grid's switch: the trained ``unet`` or a fresh copy of the original (``load_base()``); None
        (no base column) without ``load_base``."""
        if load_base is None:
            return None
        base = load_base()

        def set_enabled(on: bool) -> None:
            pipe.unet = unet if on else base

        return set_enabled
