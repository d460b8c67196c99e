"""Model registry in the style of timm: ``@register_model`` entry points, ``create_model``, ``list_models``.

An entry point is a function ``name(pretrained=False, **kwargs) -> nn.Module`` decorated with
``@register_model``; the module that defines it may hold a ``default_cfgs`` dict mapping the same name to a
:class:`zoo.hub.PretrainedCfg` (weights file, sha256, num_classes, input spec, metrics, ...).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from torch import nn

from zoo._introspect import call_with_checked_kwargs
from zoo._registry_base import Registry
from zoo.hub import PretrainedCfg

__all__ = ["register_model", "create_model", "list_models", "model_info", "is_model", "get_pretrained_cfg"]

_MODELS = Registry("model", populate=("zoo.models",))
_PRETRAINED_CFGS: dict[str, PretrainedCfg] = {}

TIMM_PREFIX = "timm/"


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` as model ``fn.__name__``; picks up ``default_cfgs[name]`` from ``fn``'s module."""
    name = fn.__name__
    _MODELS.register(name)(fn)
    module_cfgs = getattr(sys.modules[fn.__module__], "default_cfgs", {})
    cfg = module_cfgs.get(name)
    if cfg is not None:
        if isinstance(cfg, dict):
            cfg = PretrainedCfg(**cfg)
        _PRETRAINED_CFGS[name] = cfg.replace(architecture=name)
    return fn


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered zoo model (``timm/`` names are not checked)."""
    return name in _MODELS


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The pretrained cfg of model ``name`` (an empty cfg with ``architecture=name`` if it declares none)."""
    _MODELS.get(name)  # raise the helpful unknown-name error first
    return _PRETRAINED_CFGS.get(name, PretrainedCfg(architecture=name))


def list_models(filter: str | list[str] = "", pretrained: bool = False, exclude_filters: str | list[str] = ()) -> list[str]:
    """Names of registered models matching the fnmatch ``filter`` (e.g. ``"pointramba*"``).

    With ``pretrained=True`` only models whose cfg names a weights file or url are listed.
    """
    names = _MODELS.names(filter, exclude_filters)
    if pretrained:
        names = [n for n in names if n in _PRETRAINED_CFGS and _PRETRAINED_CFGS[n].has_weights]
    return names


def model_info(name: str) -> dict[str, Any]:
    """A summary of model ``name``: entry point, module, docstring, and its pretrained cfg as a dict."""
    fn = _MODELS.get(name)
    cfg = get_pretrained_cfg(name)
    return {
        "name": name,
        "module": fn.__module__,
        "description": (fn.__doc__ or "").strip(),
        "has_weights": cfg.has_weights,
        "pretrained_cfg": cfg.to_dict(),
    }


def create_model(
    model_name: str,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``model_name`` and optionally load weights.

    Args:
        model_name: a registered name (see :func:`list_models`) or ``"timm/<name>"`` for any timm model.
        pretrained: load the weights named by the model's pretrained cfg. They are looked up, in order, in
            ``$ZOO_HOME/<file>``, the repo's ``checkpoints/<file>``, then the cfg's url; the sha256 is verified.
        checkpoint_path: a local weights file to load instead (safetensors or a torch checkpoint, possibly
            from the official code base: the model's ``checkpoint_filter_fn`` converts its keys). Implies loading.
        pretrained_cfg_overlay: fields replacing those of the pretrained cfg (e.g. ``dict(file=..., sha256=...)``).
        **kwargs: model constructor arguments (e.g. ``num_classes``). ``None`` values are dropped so that unset
            command-line options keep the model's defaults. A ``num_classes`` that differs from the checkpoint's
            re-initialises the classifier with a warning.

    Raises:
        KeyError: unknown model name (the message lists the closest names).
        TypeError: unknown constructor argument (the message lists the accepted ones).
        FileNotFoundError: weights requested but no file found (the message lists the paths tried).
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if model_name.startswith(TIMM_PREFIX):
        return _create_timm_model(model_name[len(TIMM_PREFIX):], pretrained, checkpoint_path, pretrained_cfg_overlay, **kwargs)
    entry = _MODELS.get(model_name)
    return call_with_checked_kwargs(
        entry,
        f"model '{model_name}'",
        pretrained=pretrained,
        checkpoint_path=checkpoint_path,
        pretrained_cfg_overlay=pretrained_cfg_overlay,
        **kwargs,
    )


def _create_timm_model(name: str, pretrained: bool, checkpoint_path: str | None, overlay: dict | None, **kwargs: Any) -> nn.Module:
    """Delegate to ``timm.create_model`` (any timm backbone as a source/teacher/student)."""
    import timm

    if not timm.is_model(name):
        from zoo._registry_base import close_matches

        hint = close_matches(name, timm.list_models())
        raise KeyError(f"Unknown timm model '{name}'." + (f" Did you mean: {', '.join(TIMM_PREFIX + h for h in hint)}?" if hint else ""))
    return timm.create_model(
        name, pretrained=pretrained, checkpoint_path=checkpoint_path or "", pretrained_cfg_overlay=overlay, **kwargs
    )
