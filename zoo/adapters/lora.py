"""LoRA (``adapter.name=lora``) on the zoo's low-rank core: a :class:`~zoo.layers.lora.LowRankDelta` named ``"lora"``
on every module matched by ``target_modules``, the base frozen.

``ΔW = (alpha / rank) · up @ down`` with ``down (rank, in)`` and ``up (out, rank)``; works on any ``nn.Module``
whose matched modules are ``nn.Linear`` / ``nn.Conv1d|2d|3d`` (a diffusers UNet's attention projections by
default, a NAFNet's convolutions with ``target_modules: ".*conv[12]"``, a ViT's ``qkv``...).

``init`` takes peft's names: ``gaussian`` (``down ~ N(0, 1/r)``, ``up = 0``: peft's ``"gaussian"``, diffusers'
``train_text_to_image_lora.py``), ``true`` / ``lora`` (kaiming-uniform ``down``, zero ``up``: peft's default),
``false`` / ``random`` (both random: the adapted model differs from the base at step 0), or any other init of
:class:`~zoo.layers.lora.LowRankDelta` (``orthogonal``...).

Pipeline hooks (used by :mod:`zoo.diffusion.adapters`, ``tools/sample.py`` and the ``sd_finetune`` recipe):
:meth:`LoRAMethod.save_pipeline_file` writes diffusers' ``pytorch_lora_weights.safetensors``
(``pipe.load_lora_weights`` reads it); :meth:`LoRAMethod.load_into_pipeline` reads such a file (any LoRA file
that adapts only the UNet goes into our core, others through diffusers) with an on/off switch;
:meth:`LoRAMethod.detect_pipeline_file` recognises one.

Reference: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022; peft
``tuners/lora/{config,layer}.py``; diffusers ``examples/text_to_image/train_text_to_image_lora.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from zoo.adapters.base import AdapterConfig, AdapterMethod, register_adapter
from zoo.errors import ConfigError

__all__ = ["DIFFUSERS_ATTENTION", "PEFT_INIT_NAMES", "LoRAConfig", "LoRAMethod", "target_list"]

#: diffusers' attention projections (the targets of ``train_text_to_image_lora.py``)
DIFFUSERS_ATTENTION = ["to_k", "to_q", "to_v", "to_out.0"]
#: peft's ``init_lora_weights`` values -> the zoo's inits (``gaussian`` is the same name in both)
PEFT_INIT_NAMES = {"true": "lora", "false": "random"}


def target_list(targets: Any) -> Any:
    """``target_modules`` as :func:`zoo.adapters.model.match_module_name` takes it (a list stays a list; a
    string pattern, ``"all"`` or ``None`` as they are)."""
    return list(targets) if isinstance(targets, (list, tuple)) else targets


@dataclass
class LoRAConfig(AdapterConfig):
    """``adapter:`` section of ``lora`` (defaults: diffusers' ``train_text_to_image_lora.py``)."""

    name: str = "lora"
    target_modules: Any = field(default_factory=lambda: list(DIFFUSERS_ATTENTION))
    rank: int = 4
    alpha: float | None = None  # default: rank (scaling 1)
    init: str = "gaussian"  # gaussian | true / lora (kaiming, zero up) | false / random | orthogonal | ...
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise ConfigError(f"adapter.rank must be >= 1, got {self.rank}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"adapter.dropout must be in [0, 1), got {self.dropout}")


def _lora_file(path: Path) -> Path:
    from zoo.adapters.lora_formats import LORA_WEIGHT_NAME

    return path / LORA_WEIGHT_NAME if path.is_dir() else path


@register_adapter("lora", config=LoRAConfig)
class LoRAMethod(AdapterMethod):
    """LoRA on :mod:`zoo.layers.lora` (deltas named ``"lora"``); see the module doc."""

    delta_names = ("lora",)
    #: what :meth:`save_pipeline_file` writes (diffusers' LoRA file name)
    pipeline_file = "pytorch_lora_weights.safetensors"
    #: order in which :func:`zoo.diffusion.adapters.detect_adapter` asks the methods (lower first)
    detect_priority = 20

    def apply(self, model: nn.Module) -> nn.Module:
        from zoo.adapters.model import add_lora

        c = self.config
        init = PEFT_INIT_NAMES.get(str(c.init).lower(), str(c.init))
        try:
            add_lora(model, target_list(c.target_modules), rank=c.rank, alpha=c.alpha or c.rank, init=init,
                     dropout=c.dropout, name=self.delta_names[0], freeze=True)
        except ValueError as exc:
            raise ConfigError(f"adapter.target_modules: {exc} (set adapter.target_modules to module names, suffixes "
                              "or a regular expression of this model)") from None
        return model

    # ------------------------------------------------------------------ pipeline hooks
    def save_pipeline_file(self, unet: nn.Module, directory: str | Path) -> Path:
        """Write diffusers' ``pytorch_lora_weights.safetensors`` (keys ``unet.<path>.lora_A/B.weight``) into
        ``directory``; returns the file."""
        from zoo.adapters.lora_formats import save_diffusers_lora

        return save_diffusers_lora(unet, Path(directory) / self.pipeline_file, self.delta_names[0])

    @classmethod
    def detect_pipeline_file(cls, path: Path) -> bool:
        """Whether ``path`` is (a folder holding) a LoRA ``.safetensors`` file."""
        from zoo.adapters.lora_formats import safetensors_header

        if path.is_dir():
            return (path / cls.pipeline_file).is_file()
        return path.suffix == ".safetensors" and any("lora" in k for k in safetensors_header(path)[1])

    @classmethod
    def load_into_pipeline(cls, pipe: Any, path: str | Path) -> Callable[[bool], None]:
        """Load a LoRA file (or its folder) into ``pipe`` (switched on); returns ``set_enabled(bool)``. Files that
        adapt only the UNet go into our core (no peft needed), others through ``pipe.load_lora_weights``."""
        from zoo.adapters.lora_formats import import_lora, read_lora_file
        from zoo.adapters.model import enable_adapter

        p = _lora_file(Path(path))
        state, _ = read_lora_file(p)
        name = cls.delta_names[0]
        if all(k.startswith("unet.") for k in state):
            unet = pipe.unet
            import_lora(unet, p, adapter=name, freeze=False)
            return lambda on: enable_adapter(unet, name, on)
        pipe.load_lora_weights(str(p.parent), weight_name=p.name)
        return lambda on: pipe.enable_lora() if on else pipe.disable_lora()
