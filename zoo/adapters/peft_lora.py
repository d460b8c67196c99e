"""LoRA through peft (``adapter.name=peft_lora``): the benchmark baseline of the zoo's own :mod:`zoo.adapters.lora`,
with the same config (rank, alpha, init, dropout, target_modules).

On a diffusers model (``add_adapter``: diffusers' ``PeftAdapterMixin``) the adapter is added as diffusers' own
LoRA training script adds it; on any other ``nn.Module`` with peft's ``inject_adapter_in_model``. Either way
the modules become peft ``LoraLayer``s with an adapter named ``"default"``; checkpoints hold peft's state dict
(``get_peft_model_state_dict``: ``<path>.lora_A.weight`` / ``lora_B``).

Pipeline hooks: :meth:`PeftLoRAMethod.save_pipeline_file` writes diffusers' ``pytorch_lora_weights.safetensors``
(the same file :class:`~zoo.adapters.lora.LoRAMethod` writes and reads; it is detected as ``lora``).

Reference: peft ``tuners/lora/{config,layer,model}.py``, ``mapping.py::inject_adapter_in_model``; diffusers
``loaders/peft.py::PeftAdapterMixin.add_adapter`` and ``train_text_to_image_lora.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zoo.adapters.base import AdapterMethod, register_adapter
from zoo.adapters.lora import LoRAConfig, LoRAMethod, target_list
from zoo.errors import CheckpointError, MissingDependencyError

__all__ = ["PeftLoRAConfig", "PeftLoRAMethod"]

PEFT_ADAPTER = "default"  # peft's adapter name


@dataclass
class PeftLoRAConfig(LoRAConfig):
    """``adapter:`` section of ``peft_lora``: the same fields as ``lora`` (:class:`~zoo.adapters.lora.LoRAConfig`)."""

    name: str = "peft_lora"


def _tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


@register_adapter("peft_lora", config=PeftLoRAConfig)
class PeftLoRAMethod(AdapterMethod):
    """LoRA through peft (see the module doc)."""

    pipeline_file = LoRAMethod.pipeline_file
    detect_priority = 1000  # its files are LoRAMethod's

    def check(self) -> None:
        try:
            import peft  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("adapter.name=peft_lora needs peft: pip install 'zoo[diffusion]'") from exc

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, inject_adapter_in_model

        c = self.config
        model.requires_grad_(False)
        init: Any = {"true": True, "false": False}.get(str(c.init).lower(), c.init)
        config = LoraConfig(r=c.rank, lora_alpha=c.alpha or c.rank, init_lora_weights=init, lora_dropout=c.dropout,
                            target_modules=target_list(c.target_modules))
        if hasattr(model, "add_adapter") and hasattr(model, "set_adapters"):  # a diffusers model
            model.add_adapter(config)
        else:
            inject_adapter_in_model(config, model, PEFT_ADAPTER)
        return model

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """peft's state dict of the adapter (``<path>.lora_A.weight`` / ``lora_B``)."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state, adapter_name=PEFT_ADAPTER)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise CheckpointError(f"LoRA checkpoint has keys the model does not: {unexpected[:10]}")

    # ------------------------------------------------------------------ inference
    def merge(self, model: nn.Module) -> nn.Module:
        for _, layer in _tuner_layers(model):
            layer.merge()
        return model

    def unmerge(self, model: nn.Module) -> nn.Module:
        for _, layer in _tuner_layers(model):
            layer.unmerge()
        return model

    def merge_and_unload(self, model: nn.Module) -> nn.Module:
        """The plain model: every peft layer merged and replaced by its base layer."""
        for name, layer in _tuner_layers(model):
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
        return model

    def set_scale(self, model: nn.Module, scale: Any) -> None:
        for _, layer in _tuner_layers(model):
            if hasattr(layer, "set_scale"):
                layer.set_scale(PEFT_ADAPTER, float(scale))

    def set_enabled(self, model: nn.Module, enabled: bool = True) -> None:
        for _, layer in _tuner_layers(model):
            layer.enable_adapters(bool(enabled))

    # ------------------------------------------------------------------ pipeline hooks
    def save_pipeline_file(self, unet: nn.Module, directory: str | Path) -> Path:
        """diffusers' ``pytorch_lora_weights.safetensors`` of the peft adapter (``save_lora_weights``)."""
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import get_peft_model_state_dict

        out = Path(directory)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True)
        return out / self.pipeline_file

    @classmethod
    def load_into_pipeline(cls, pipe: Any, path: str | Path) -> Callable[[bool], None]:
        """As :meth:`LoRAMethod.load_into_pipeline` (the same file)."""
        return LoRAMethod.load_into_pipeline(pipe, path)
