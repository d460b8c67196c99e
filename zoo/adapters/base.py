"""The one interface of every way of adapting a frozen model, and the registry that names them (peft's shape).

An adaptation method is a pair registered under one name (the ``name`` of a config's ``adapter:`` section):

* a **config class** — a dataclass subclassing :class:`AdapterConfig` with the method's hyper-parameters and their
  defaults (peft's ``LoraConfig``); a config's ``adapter:`` section is validated against it, so an unknown key is
  an error naming the key, the closest valid one and the method;
* an **implementation** — a subclass of :class:`AdapterMethod` (peft's ``LoraModel``) that changes a model in
  place (wraps layers with deltas of :mod:`zoo.layers.lora`, freezes the base) and knows what it trains, what its
  state is, how it is saved and loaded, merged and unmerged, scaled, switched on and off.

::

    @register_adapter("lora", config=LoRAConfig)
    class LoRAMethod(AdapterMethod): ...

    method = build_adapter({"name": "lora", "rank": 8, "target_modules": ["to_q", "to_v"]})
    model = method.apply(model)                # in place; returns the model
    optimizer = torch.optim.AdamW(method.param_groups(model, lr=1e-4))
    method.save(model, "runs/x")               # adapter_config.json + the method's weights file

Adding a method is one file in ``zoo/adapters/`` (its config class and implementation) plus its tests; the
registry imports the package's modules on the first lookup, so every method is known to every tool (the sample
script, the config reference) without importing its module by hand. Nothing here imports diffusers or peft.

Reference: peft ``src/peft/tuners/tuners_utils.py`` (``BaseTuner``), ``tuners/lora/{config,model}.py``,
``utils/peft_types.py`` / ``register_peft_method`` (a method = a config class + a model class under one name).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import nn

from zoo._registry_base import Registry

__all__ = ["AdapterConfig", "AdapterMethod", "ADAPTERS", "register_adapter", "get_adapter", "adapter_names",
           "build_adapter", "adapter_config_from_dict", "ADAPTER_CONFIG_FILE", "SetEnabled"]

ADAPTER_CONFIG_FILE = "adapter_config.json"

#: every module of ``zoo.adapters`` is imported on the first lookup: a method's file registers it
ADAPTERS = Registry("adapter method (adapter.name)", populate=("zoo.adapters",))

SetEnabled = Callable[[bool], None]


@dataclass
class AdapterConfig:
    """What every method's config has. Subclasses add their hyper-parameters (with defaults) as dataclass fields.

    ``name`` is the registered method; ``target_modules`` selects the modules that get a delta (see
    :func:`zoo.adapters.model.match_module_name`; ``None``: the method's default set).
    """

    name: str = ""
    target_modules: Any = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``adapter_config.json`` holds)."""
        return dataclasses.asdict(self)


def register_adapter(name: str, *, config: type[AdapterConfig]) -> Callable[[type], type]:
    """Class decorator: register an :class:`AdapterMethod` subclass as ``name`` with its config class ``config`` (an
    :class:`AdapterConfig` dataclass); sets ``cls.name`` and ``cls.config_class``."""
    return ADAPTERS.register_with_config(name, config, base=AdapterMethod, config_base=AdapterConfig)


def get_adapter(name: str) -> type["AdapterMethod"]:
    """The method class registered as ``name``; ``KeyError`` naming the closest registered names otherwise."""
    return ADAPTERS.get(name)


def adapter_names() -> list[str]:
    """Every registered method name, in registration order."""
    return ADAPTERS.in_order()


def adapter_config_from_dict(section: Mapping[str, Any] | AdapterConfig, where: str = "adapter") -> AdapterConfig:
    """The validated config object of the method ``section["name"]`` (``section``: a config's ``adapter:`` mapping).

    Raises :class:`~zoo.errors.ConfigError` for a missing or unknown method name and for keys the method's config
    class does not have (naming ``where.key``, the closest valid key and the method).
    """
    if isinstance(section, AdapterConfig):
        return section
    from zoo.config import validate_config

    data = dict(section or {})
    cls = ADAPTERS.get_for_section(data, where)
    return validate_config(data, cls.config_class, prefix=f"{where}.", what=f"adapter method '{cls.name}'")


def build_adapter(section: Mapping[str, Any] | AdapterConfig, where: str = "adapter") -> "AdapterMethod":
    """The method instance a config's ``adapter:`` section describes (validated, see :func:`adapter_config_from_dict`)."""
    config = adapter_config_from_dict(section, where)
    method = get_adapter(config.name)(config)
    method.check()
    return method


class AdapterMethod:
    """One way of adapting a frozen model: apply it, train what it trains, save / load / merge / scale / switch it.

    The defaults suit a method whose deltas live on :mod:`zoo.layers.lora` layers under the adapter names
    :attr:`delta_names` (LoRA-like methods): subclasses implement :meth:`apply` and override what differs.
    ``self.config`` is the method's validated config object.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[AdapterConfig]] = AdapterConfig
    #: the delta names (``zoo.layers.lora`` adapter names) this method adds; ``()`` for methods without deltas
    delta_names: ClassVar[tuple[str, ...]] = ()
    #: the weights file :meth:`save` writes (in the folder, beside ``adapter_config.json``)
    weights_file: ClassVar[str] = "adapter_model.safetensors"
    #: whether the Trainer's EMA copy of the whole model makes sense (full fine-tuning only)
    supports_ema: ClassVar[bool] = False
    #: whether :meth:`apply` needs :meth:`calibrate` first (CoLoRA: contributions measured on data set the ranks)
    needs_calibration: ClassVar[bool] = False

    def __init__(self, config: AdapterConfig | None = None):
        self.config = config if config is not None else self.config_class(name=self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    # ------------------------------------------------------------------ applying and training
    def check(self) -> None:
        """Raise early (``ImportError`` naming the extra, ``ConfigError`` naming the key) if the method cannot run."""

    def calibrate(self, model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                  backward: Callable[[torch.Tensor], None]) -> None:
        """Measure on data what :meth:`apply` needs (only for ``needs_calibration``): ``loss_fn(model, batch)`` is
        the task's loss of one batch and ``backward(loss)`` back-propagates it through the run's accelerator (AMP
        scaling, DDP hooks). Default: nothing to measure."""

    def calibrate_and_apply(self, model: nn.Module, batches: Iterable[Any],
                            loss_fn: Callable[[nn.Module, Any], torch.Tensor], accelerator: Any,
                            **calibrate_kwargs: Any) -> nn.Module:
        """:meth:`calibrate` on ``batches`` with the task's ``loss_fn(model, batch)``, on the run's device under its
        autocast, back-propagating through ``accelerator.backward`` (loss scaling), then :meth:`apply`; a method
        without ``needs_calibration`` is applied at once. Every process measures on the same batches, so all ranks
        build the same adapter. ``calibrate_kwargs``: the method's own options of :meth:`calibrate` (CoLoRA's
        ``attribution_loss_fn``, ``optimizer_step``). Returns the model."""
        if self.needs_calibration:
            model.to(accelerator.device)
            with accelerator.autocast():
                self.calibrate(model, batches, loss_fn, accelerator.backward, **calibrate_kwargs)
            model.zero_grad(set_to_none=True)
        return self.apply(model)

    def apply(self, model: nn.Module) -> nn.Module:
        """Make ``model`` adapted this way, in place (wrap layers, freeze the base); returns it."""
        raise NotImplementedError(f"{type(self).__name__}.apply")

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The tensors the optimiser updates (default: the deltas of :attr:`delta_names`)."""
        from zoo.adapters.model import adapter_parameters

        if not self.delta_names:
            return [p for p in model.parameters() if p.requires_grad]
        return adapter_parameters(model, list(self.delta_names))

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimiser parameter groups (default: one group of :meth:`trainable_parameters`)."""
        return [{"params": self.trainable_parameters(model), "lr": lr, "weight_decay": weight_decay}]

    def configure_optimizer(self, model: nn.Module, optim_cfg: Any, total_steps: Callable[[], int]) -> torch.optim.Optimizer | None:
        """A method-specific optimiser (SaRA's, AdamWr), or None for the recipe's default over :meth:`param_groups`."""
        return None

    def extra_losses(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Terms added to the training loss (logged under their names)."""
        return {}

    def num_trainable(self, model: nn.Module) -> int:
        """How many scalars the method trains."""
        return sum(p.numel() for p in self.trainable_parameters(model))

    # ------------------------------------------------------------------ state
    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What checkpoints hold: only the trained tensors (default: the deltas of :attr:`delta_names`)."""
        from zoo.adapters.model import adapter_state_dict

        return adapter_state_dict(model, list(self.delta_names))

    def load_state_dict(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict` (strict: missing or unexpected keys are errors)."""
        from zoo.adapters.model import load_adapter_state_dict

        load_adapter_state_dict(model, dict(state), strict=True)

    def save(self, model: nn.Module, directory: str | os.PathLike) -> Path:
        """Write ``adapter_config.json`` and :attr:`weights_file` (safetensors) into ``directory``; returns the folder."""
        from zoo.files import write_safetensors_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_safetensors_file(self.state_dict(model), out / self.weights_file, metadata={"format": f"zoo.{self.name}"})
        tmp = out / f"{ADAPTER_CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(self.config.to_dict(), indent=2, default=str))
        os.replace(tmp, out / ADAPTER_CONFIG_FILE)
        return out

    @classmethod
    def from_saved(cls, directory: str | os.PathLike) -> "AdapterMethod":
        """The method instance described by a folder :meth:`save` wrote (its ``adapter_config.json``)."""
        path = Path(directory) / ADAPTER_CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a folder written by AdapterMethod.save "
                                    f"(expected {ADAPTER_CONFIG_FILE} and the weights file)")
        return build_adapter(json.loads(path.read_text()), where=str(path))

    def load(self, model: nn.Module, directory: str | os.PathLike) -> nn.Module:
        """Apply this method to ``model`` and load the weights :meth:`save` wrote into ``directory``."""
        from zoo.files import read_safetensors_file

        weights = Path(directory) / self.weights_file
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found ({self.name} adapter weights written by save())")
        self.apply(model)
        self.load_state_dict(model, read_safetensors_file(weights, what=f"{self.name} adapter weights"))
        return model

    # ------------------------------------------------------------------ inference
    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the adaptation into the base weights (reversible with :meth:`unmerge`); returns the model."""
        from zoo.adapters.model import merge_adapters

        merge_adapters(model)
        return model

    def unmerge(self, model: nn.Module) -> nn.Module:
        """Undo :meth:`merge` (the base weights come back bit for bit)."""
        from zoo.adapters.model import unmerge_adapters

        unmerge_adapters(model)
        return model

    def merge_and_unload(self, model: nn.Module) -> nn.Module:
        """A plain model (no wrappers) computing what the adapted one computes (peft's ``merge_and_unload``)."""
        from zoo.adapters.model import remove_adapters

        return remove_adapters(model, merge=True)

    def set_scale(self, model: nn.Module, scale: Any) -> None:
        """Multiply the method's contribution by ``scale`` (a float; 1 is as trained)."""
        from zoo.adapters.model import set_adapter_scale

        for name in self.delta_names:
            set_adapter_scale(model, name, scale)

    def set_enabled(self, model: nn.Module, enabled: bool = True) -> None:
        """Switch the method's contribution on or off (off: the base model's outputs)."""
        from zoo.adapters.model import enable_adapter

        for name in self.delta_names:
            enable_adapter(model, name, enabled)

    def enable(self, model: nn.Module) -> None:
        """:meth:`set_enabled` ``(model, True)``."""
        self.set_enabled(model, True)

    def disable(self, model: nn.Module) -> None:
        """:meth:`set_enabled` ``(model, False)``."""
        self.set_enabled(model, False)
