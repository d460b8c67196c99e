"""The ways the ``sd_finetune`` recipe trains a Stable Diffusion UNet, as registered classes with one interface.

``model.adapter`` in a config names one of them (``get_adapter_method(name)(cfg)`` builds it):

* ``sara`` — :mod:`zoo.adapters.sara` (sparse entries ``|w| < threshold``, its own optimiser, nuclear-norm loss);
  file ``sara_weights.safetensors``;
* ``lora`` — LoRA on the zoo's adapter core (:func:`zoo.adapters.model.add_lora`, adapter name ``"lora"``); file
  ``pytorch_lora_weights.safetensors`` in diffusers' format (:func:`zoo.adapters.lora_formats.save_diffusers_lora`),
  which ``pipe.load_lora_weights`` and ``tools/sample.py`` read;
* ``peft_lora`` — the same LoRA through peft (``unet.add_adapter``): the benchmark baseline, same file format;
* ``full`` — every UNet weight; saves the UNet as a diffusers folder ``unet/``.

Interface (:class:`AdapterMethod`): ``apply(unet, cfg)`` (``cfg``: the recipe's ``model`` section),
``trainable_parameters(unet)``, ``configure_optimizer(unet, optim_cfg, total_steps)`` (None: the recipe's default),
``extra_losses(unet)`` (added to the loss), ``state_dict(unet)`` / ``load_state_dict(unet, state)`` (what
``last.pt`` holds), ``save(unet, output_dir) -> Path`` / ``load(pipe, path) -> set_enabled`` (the saved file, and
reading it into a pipeline with an on/off switch), ``detect(path)`` (does a file/folder hold this method's
output), ``merge(unet) -> unet`` (a plain UNet with the change folded in) and ``switch(pipe, unet, load_base)``
(the on/off switch of the sample grids during training).

A new method (e.g. Break-for-Make's ``plp``) subclasses :class:`AdapterMethod` and registers itself with
``@register_adapter_method("plp")`` in a module imported before the lookup (add it to ``_EXTENSIONS`` below to have
it imported lazily). Importing this module imports neither diffusers nor peft.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zoo._registry_base import Registry

__all__ = ["AdapterMethod", "ADAPTER_METHODS", "register_adapter_method", "get_adapter_method", "adapter_method_names",
           "detect_adapter_method", "SaRAMethod", "LoRAMethod", "PeftLoRAMethod", "FullMethod", "LORA_FILE", "SARA_FILE"]

_logger = logging.getLogger("zoo")

LORA_FILE = "pytorch_lora_weights.safetensors"
SARA_FILE = "sara_weights.safetensors"
_EXTENSIONS: tuple[str, ...] = ()  # modules that register more methods (imported at the first lookup)

ADAPTER_METHODS = Registry("adapter method (model.adapter)", populate=_EXTENSIONS)

SetEnabled = Callable[[bool], None]


def register_adapter_method(name: str):
    """Class decorator: register an :class:`AdapterMethod` subclass under ``name`` (sets ``cls.name``)."""
    def deco(cls):
        cls.name = name
        return ADAPTER_METHODS.register(name)(cls)

    return deco


def get_adapter_method(name: str) -> type["AdapterMethod"]:
    """The class registered as ``name``; ``KeyError`` naming the closest registered names otherwise."""
    return ADAPTER_METHODS.get(name)


def adapter_method_names() -> list[str]:
    """The registered method names, in registration order."""
    ADAPTER_METHODS._ensure_populated()
    return list(ADAPTER_METHODS._entries)


class AdapterMethod:
    """How the UNet is trained, saved, loaded and switched on/off (see the module doc). Subclasses override what
    differs; the defaults suit a method whose trainable tensors are ordinary parameters of the UNet."""

    name: str = ""
    #: whether the Trainer's EMA copy makes sense (only for full fine-tuning: an EMA of an adapter run would
    #: duplicate the whole UNet)
    supports_ema: bool = False
    #: what :meth:`save` writes, for messages ("sara_weights.safetensors")
    artefact: str = ""
    #: order in which :func:`detect_adapter_method` asks the methods (lower first)
    detect_priority: int = 100

    def __init__(self, cfg: Any = None) -> None:
        self.cfg: Any = cfg  # the recipe's ``model`` section (also set by :meth:`apply`)

    # ---------------------------------------------------------------- training
    def check(self, cfg: Any) -> None:
        """Raise early (ImportError naming the extra, ValueError naming the key) if the method cannot run."""

    def apply(self, unet: nn.Module, cfg: Any) -> nn.Module:
        """Make ``unet`` trainable this way (in place: wrap layers, freeze the rest); returns it."""
        raise NotImplementedError

    def trainable_parameters(self, unet: nn.Module) -> list[nn.Parameter]:
        """The tensors the optimiser updates."""
        return [p for p in unet.parameters() if p.requires_grad]

    def configure_optimizer(self, unet: nn.Module, optim_cfg: Any, total_steps: Callable[[], int]) -> torch.optim.Optimizer | None:
        """A method-specific optimiser, or None for the recipe's default (the ``optim`` section)."""
        return None

    def extra_losses(self, unet: nn.Module) -> dict[str, torch.Tensor]:
        """Terms added to the training loss (logged under their names)."""
        return {}

    def state_dict(self, unet: nn.Module) -> dict[str, torch.Tensor]:
        """What the checkpoints (``last.pt`` / ``best.pt``) hold: only the trained tensors."""
        raise NotImplementedError

    def load_state_dict(self, unet: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict` (strict)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- artefacts
    def save(self, unet: nn.Module, output_dir: str | os.PathLike) -> Path:
        """Write the trained part into ``output_dir``; returns the file or folder written."""
        raise NotImplementedError

    @classmethod
    def detect(cls, path: Path) -> bool:
        """Whether ``path`` (an existing file or folder) holds what :meth:`save` writes."""
        return False

    @classmethod
    def load(cls, pipe: Any, path: str | os.PathLike) -> SetEnabled:
        """Load what :meth:`save` wrote into ``pipe`` (switched on) and return ``set_enabled(bool)``."""
        raise NotImplementedError

    def merge(self, unet: nn.Module) -> nn.Module:
        """A plain UNet (no wrappers) computing what the adapted one computes."""
        from zoo.adapters.model import remove_adapters

        return remove_adapters(unet, merge=True)

    def switch(self, pipe: Any, unet: nn.Module, load_base: Callable[[], nn.Module] | None) -> SetEnabled | None:
        """``set_enabled(bool)`` for the sample grid of a trained ``unet`` in ``pipe`` (None: no base column).
        ``load_base()`` returns a fresh copy of the original UNet when a method needs one."""
        return None


def _safetensors_info(path: Path) -> tuple[dict[str, str], list[str]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {}), list(f.keys())


def _file_in(path: Path, name: str) -> Path:
    return path / name if path.is_dir() else path


# ====================================================================================================== sara
@register_adapter_method("sara")
class SaRAMethod(AdapterMethod):
    """SaRA (:mod:`zoo.adapters.sara`); ``cfg.sara``: threshold, lambda_rank, progressive_iter, lr_rule, kernel,
    decay_to, reselect_reset_state."""

    artefact = SARA_FILE
    detect_priority = 30

    def apply(self, unet, cfg):
        from zoo.adapters.sara import apply_sara, num_sara_parameters

        self.cfg = cfg
        apply_sara(unet, cfg.sara.threshold, kernel=cfg.sara.kernel)
        _logger.info("SaRA: %d trainable entries (|w| < %g) of %d UNet weights", num_sara_parameters(unet),
                     cfg.sara.threshold, sum(p.numel() for n, p in unet.named_parameters() if ".deltas." not in n))
        return unet

    def trainable_parameters(self, unet):
        from zoo.adapters.sara import SARA
        from zoo.adapters.model import adapter_parameters

        return adapter_parameters(unet, [SARA])

    def configure_optimizer(self, unet, optim_cfg, total_steps):
        from zoo.adapters.sara import SaRAOptimizer
        from zoo.config import ConfigError

        s = self.cfg.sara
        if optim_cfg.name.lower() != "adamw":
            raise ConfigError(f"model.adapter=sara trains with its own AdamW; optim.name must be adamw, got '{optim_cfg.name}'")
        prog = s.progressive_iter
        if prog is not None and 0 < prog < 1:
            prog = round(prog * total_steps())
        # lambda_rank=0 here: the recipe adds the nuclear-norm loss to the training loss (extra_losses; works with
        # fp16 loss scaling and gradient accumulation, and is logged), instead of the official in-step backward.
        return SaRAOptimizer(unet, s.threshold, lr=None if s.lr_rule else optim_cfg.lr, betas=tuple(optim_cfg.betas),
                             eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay, decay_to=s.decay_to,
                             progressive_iter=int(prog) if prog else None, lambda_rank=0.0,
                             reselect_reset_state=s.reselect_reset_state, kernel=s.kernel)

    def extra_losses(self, unet):
        if not self.cfg.sara.lambda_rank:
            return {}
        from zoo.adapters.sara import sara_rank_loss

        return {"rank": sara_rank_loss(unet, self.cfg.sara.lambda_rank)}

    def state_dict(self, unet):
        from zoo.adapters.sara import sara_state_dict

        return sara_state_dict(unet)

    def load_state_dict(self, unet, state):
        from zoo.adapters.sara import load_sara_state_dict

        load_sara_state_dict(unet, state)

    def save(self, unet, output_dir):
        from zoo.adapters.sara import save_sara

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        return save_sara(unet, out / SARA_FILE, threshold=self.cfg.sara.threshold if self.cfg else None)

    @classmethod
    def detect(cls, path):
        if path.is_dir():
            return (path / SARA_FILE).is_file()
        return path.suffix == ".safetensors" and _safetensors_info(path)[0].get("format") == "zoo.sara"

    @classmethod
    def load(cls, pipe, path):
        from zoo.adapters.sara import SaRAPatch

        patch = SaRAPatch(pipe.unet, _file_in(Path(path), SARA_FILE))
        patch.apply()
        return patch.set_enabled

    def switch(self, pipe, unet, load_base):
        from zoo.adapters.sara import SARA
        from zoo.adapters.model import enable_adapter

        return lambda on: enable_adapter(unet, SARA, on)


# ====================================================================================================== lora (ours)
_PEFT_INIT = {"true": "lora", "false": "random"}  # peft's init_lora_weights values -> ours ("gaussian" is the same)


@register_adapter_method("lora")
class LoRAMethod(AdapterMethod):
    """LoRA on :mod:`zoo.layers.lora` (adapter ``"lora"``); ``cfg.lora``: rank, alpha (default rank), init
    (``gaussian`` — down N(0, 1/r), up 0 as peft's ``"gaussian"`` —, ``true``/``lora`` kaiming/zero, or any init
    of :class:`~zoo.layers.lora.LowRankDelta`), dropout, target_modules. Saves the diffusers LoRA file."""

    adapter = "lora"
    artefact = LORA_FILE
    detect_priority = 20

    def apply(self, unet, cfg):
        from zoo.adapters.model import add_lora

        self.cfg = cfg
        c = cfg.lora
        init = _PEFT_INIT.get(str(c.init).lower(), str(c.init))
        add_lora(unet, list(c.target_modules), rank=c.rank, alpha=c.alpha or c.rank, init=init, dropout=c.dropout,
                 name=self.adapter, freeze=True)
        return unet

    def trainable_parameters(self, unet):
        from zoo.adapters.model import adapter_parameters

        return adapter_parameters(unet, [self.adapter])

    def state_dict(self, unet):
        from zoo.adapters.model import adapter_state_dict

        return adapter_state_dict(unet, [self.adapter])

    def load_state_dict(self, unet, state):
        from zoo.adapters.model import load_adapter_state_dict

        load_adapter_state_dict(unet, state, strict=True)

    def save(self, unet, output_dir):
        from zoo.adapters.lora_formats import save_diffusers_lora

        return save_diffusers_lora(unet, Path(output_dir) / LORA_FILE, self.adapter)

    @classmethod
    def detect(cls, path):
        if path.is_dir():
            return (path / LORA_FILE).is_file()
        return path.suffix == ".safetensors" and any("lora" in k for k in _safetensors_info(path)[1])

    @classmethod
    def load(cls, pipe, path):
        """UNet-only files go into our core (no peft needed); files with other parts (text encoders) through
        ``pipe.load_lora_weights``."""
        from zoo.adapters.lora_formats import import_lora, read_lora_file

        p = _file_in(Path(path), LORA_FILE)
        state, _ = read_lora_file(p)
        if all(k.startswith("unet.") for k in state):
            from zoo.adapters.model import enable_adapter

            unet = pipe.unet
            import_lora(unet, p, adapter=cls.adapter, freeze=False)
            return lambda on: enable_adapter(unet, cls.adapter, on)
        pipe.load_lora_weights(str(p.parent), weight_name=p.name)
        return lambda on: pipe.enable_lora() if on else pipe.disable_lora()

    def merge(self, unet):
        from zoo.adapters.model import remove_adapters

        return remove_adapters(unet, merge=True)

    def switch(self, pipe, unet, load_base):
        from zoo.adapters.model import enable_adapter

        return lambda on: enable_adapter(unet, self.adapter, on)


# ====================================================================================================== peft lora
@register_adapter_method("peft_lora")
class PeftLoRAMethod(AdapterMethod):
    """The LoRA baseline through peft (``unet.add_adapter(LoraConfig(...))``, ``cfg.lora`` as for ``lora``); the
    file is the same diffusers LoRA file (read back by :class:`LoRAMethod`'s loader)."""

    artefact = LORA_FILE
    detect_priority = 1000  # its files are LoRAMethod's

    def check(self, cfg):
        try:
            import peft  # noqa: F401
        except ImportError as exc:
            raise ImportError("model.adapter=peft_lora needs peft: pip install -e .[diffusion]") from exc

    def apply(self, unet, cfg):
        from peft import LoraConfig

        self.cfg = cfg
        c = cfg.lora
        unet.requires_grad_(False)
        init: Any = {"true": True, "false": False}.get(str(c.init).lower(), c.init)
        unet.add_adapter(LoraConfig(r=c.rank, lora_alpha=c.alpha or c.rank, init_lora_weights=init,
                                    lora_dropout=c.dropout, target_modules=list(c.target_modules)))
        return unet

    def state_dict(self, unet):
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}

    def load_state_dict(self, unet, state):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(unet, state, adapter_name="default")
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RuntimeError(f"LoRA checkpoint has keys the model does not: {unexpected[:10]}")

    def save(self, unet, output_dir):
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import get_peft_model_state_dict

        out = Path(output_dir)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True)
        return out / LORA_FILE

    @classmethod
    def load(cls, pipe, path):
        return LoRAMethod.load(pipe, path)

    def merge(self, unet):
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in unet.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
        return unet

    def switch(self, pipe, unet, load_base):
        return lambda on: unet.enable_adapters() if on else unet.disable_adapters()


# ====================================================================================================== full
@register_adapter_method("full")
class FullMethod(AdapterMethod):
    """Every UNet weight trained; saves ``unet/`` (a diffusers ``UNet2DConditionModel`` folder)."""

    supports_ema = True
    artefact = "unet/"
    detect_priority = 10

    def apply(self, unet, cfg):
        self.cfg = cfg
        unet.requires_grad_(True)
        return unet

    def state_dict(self, unet):
        return unet.state_dict()

    def load_state_dict(self, unet, state):
        unet.load_state_dict(state)

    def save(self, unet, output_dir):
        out = Path(output_dir) / "unet"
        unet.save_pretrained(str(out), safe_serialization=True)
        return out

    @classmethod
    def detect(cls, path):
        return path.is_dir() and ((path / "config.json").is_file() or (path / "unet" / "config.json").is_file())

    @classmethod
    def load(cls, pipe, path):
        from diffusers import UNet2DConditionModel

        from zoo.diffusion.pipeline import dtype_kwargs

        p = Path(path)
        base = pipe.unet
        folder = p / "unet" if (p / "unet" / "config.json").is_file() else p
        tuned = UNet2DConditionModel.from_pretrained(str(folder), **dtype_kwargs(base.dtype)).to(base.device)

        def set_enabled(on: bool) -> None:
            pipe.unet = tuned if on else base

        set_enabled(True)
        return set_enabled

    def merge(self, unet):
        return unet

    def switch(self, pipe, unet, load_base):
        if load_base is None:
            return None
        base = load_base()

        def set_enabled(on: bool) -> None:
            pipe.unet = unet if on else base

        return set_enabled


def detect_adapter_method(path: str | os.PathLike) -> str:
    """The name of the method whose output ``path`` (a file or folder) holds; raises naming what was expected."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"adapter not found: {p}")
    if p.is_file() and p.suffix != ".safetensors":
        raise ValueError(f"{p}: adapter files are .safetensors (SaRA or diffusers LoRA)")
    methods = sorted((get_adapter_method(n) for n in adapter_method_names()), key=lambda c: c.detect_priority)
    for cls in methods:
        if cls.detect(p):
            return cls.name
    expected = ", ".join(dict.fromkeys(f"{c.artefact} ({c.name})" for c in methods if c.artefact))
    if p.is_dir():
        raise ValueError(f"{p}: a folder with none of: a UNet (config.json or unet/), {LORA_FILE}, {SARA_FILE} "
                         f"(expected one of {expected})")
    raise ValueError(f"{p}: neither a SaRA weights file nor a diffusers LoRA file")
