"""Model registry in the style of timm: ``@register_model`` entry points, ``create_model``, ``list_models``.

An entry point is a function ``name(pretrained=False, **kwargs) -> nn.Module`` decorated with
``@register_model``; the module that defines it may hold a ``default_cfgs`` dict mapping the same name to a
:class:`zoo.pretrained_cfg.PretrainedCfg` (weights file, sha256, num_classes, input spec, metrics, ...), which
is stored in ``zoo.pretrained_cfg`` (the leaf module ``zoo.hub`` reads it from: no hub <-> registry import cycle).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from torch import nn

from zoo._introspect import call_with_checked_kwargs
from zoo._registry_base import Registry
from zoo.pretrained_cfg import PretrainedCfg, has_pretrained_cfg, lookup_pretrained_cfg, set_pretrained_cfg

__all__ = ["register_model", "create_model", "list_models", "model_info", "is_model", "get_pretrained_cfg"]

_MODELS = Registry("model", populate=("zoo.models",))

TIMM_PREFIX = "timm/"


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` as model ``fn.__name__``; picks up ``default_cfgs[name]`` from ``fn``'s module."""
    name = fn.__name__
    _MODELS.register(name)(fn)
    module_cfgs = getattr(sys.modules[fn.__module__], "default_cfgs", {})
    cfg = module_cfgs.get(name)
    if cfg is not None:
        set_pretrained_cfg(name, cfg)
    return fn


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered zoo model (``timm/`` names are not checked)."""
    return name in _MODELS


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The pretrained cfg of model ``name`` (an empty cfg with ``architecture=name`` if it declares none)."""
    _MODELS.get(name)  # raise the helpful unknown-name error first
    return lookup_pretrained_cfg(name)


def list_models(filter: str | list[str] = "", pretrained: bool = False, exclude_filters: str | list[str] = ()) -> list[str]:
    """Names of registered models matching the fnmatch ``filter`` (e.g. ``"pointramba*"``).

    With ``pretrained=True`` only models whose cfg names a weights file or url are listed.
    """
    names = _MODELS.names(filter, exclude_filters)
    if pretrained:
        names = [n for n in names if has_pretrained_cfg(n) and lookup_pretrained_cfg(n).has_weights]
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
    allow_head_reinit: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``model_name`` and optionally load weights.

    Args:
        model_name: a registered name (see :func:`list_models`) or ``"timm/<name>"`` for any timm model.
        pretrained: load the weights named by the model's pretrained cfg. They are looked up, in order, in
            ``$ZOO_HOME/<file>``, the shipped weights (``zoo.resources.checkpoint_dirs()``: the installed package
            data, or ``checkpoints/`` of a source checkout), then the cfg's url; the sha256 is verified.
        checkpoint_path: a local weights file to load instead (safetensors or a torch checkpoint, possibly
            from the official code base: the model's ``checkpoint_filter_fn`` converts its keys). Implies loading.
        pretrained_cfg_overlay: fields replacing those of the pretrained cfg (e.g. ``dict(file=..., sha256=...)``).
        allow_head_reinit: when weights are loaded and ``num_classes`` differs from the checkpoint's, re-initialise
            the classifier with a warning (``True``, for fine-tuning) or raise ``RuntimeError`` (``False``, for
            evaluation, where a random head is meaningless). For ``timm/`` models the check runs after timm built
            the model (its pretrained cfg's ``num_classes`` against the model's).
        **kwargs: model constructor arguments (e.g. ``num_classes``). ``None`` values are dropped so that unset
            command-line options keep the model's defaults.

    Raises:
        KeyError: unknown model name (the message lists the closest names).
        TypeError: unknown constructor argument (the message lists the accepted ones).
        FileNotFoundError: weights requested but no file found (the message lists the paths tried), or the model
            has no pretrained weights (the message lists the models that have).
        RuntimeError: the weights file is truncated/corrupt or holds pickled objects (see ``zoo.files``), the
            checkpoint does not match the model, or a head re-init that ``allow_head_reinit=False`` forbids.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if model_name.startswith(TIMM_PREFIX):
        model = _create_timm_model(model_name[len(TIMM_PREFIX):], pretrained, checkpoint_path, pretrained_cfg_overlay,
                                   **kwargs)
        if not allow_head_reinit and pretrained and checkpoint_path is None:
            _check_timm_head(model_name, model)
        return model
    entry = _MODELS.get(model_name)
    return call_with_checked_kwargs(
        entry,
        f"model '{model_name}'",
        pretrained=pretrained,
        checkpoint_path=checkpoint_path,
        pretrained_cfg_overlay=pretrained_cfg_overlay,
        allow_head_reinit=allow_head_reinit,
        **kwargs,
    )


def _check_timm_head(model_name: str, model: nn.Module) -> None:
    """Raise when timm re-initialised the head of pretrained ``model`` (its cfg's class count differs)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    ckpt_classes, model_classes = cfg.get("num_classes"), getattr(model, "num_classes", None)
    if ckpt_classes and model_classes is not None and ckpt_classes != model_classes:
        raise RuntimeError(
            f"'{model_name}': the pretrained weights have a {ckpt_classes}-class classifier but the model was built "
            f"with num_classes={model_classes}, so its head is randomly initialised and allow_head_reinit=False "
            f"forbids that. Evaluate on a dataset with the checkpoint's {ckpt_classes} classes, or fine-tune first."
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
