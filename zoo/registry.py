"""Model registry in the style of timm: ``@register_model`` entry points, ``create_model``, ``list_models``.

An entry point is a function ``name(pretrained=False, **kwargs) -> nn.Module`` decorated with
``@register_model``; the module that defines it may hold a ``default_cfgs`` dict mapping the same name to a
:class:`zoo.pretrained_cfg.PretrainedCfg` (weights file, sha256, num_classes, input spec, metrics, ...), and
``"<name>.<tag>"`` to the cfg of each set of weights for it (timm's tags: ``pointramba_small.modelnet10``). They
are stored in ``zoo.pretrained_cfg`` (the leaf module ``zoo.hub`` reads it from: no hub <-> registry import cycle).

Names ``create_model`` takes: a registered model (``pointramba_small``), tagged weights
(``pointramba_small.modelnet10``; with ``pretrained=True`` an untagged name without weights of its own loads its
first tag, as in timm), an alias of tagged weights (``pointramba_small_modelnet10``), ``timm/<name>`` (any timm
model) and timm's ``hf-hub:ORG/NAME`` / ``local-dir:PATH``. A shipped pipeline's name (``tiny_t2i_mnist``) is refused
with the function that loads it (:func:`list_pipelines`).
"""
from __future__ import annotations

import fnmatch
import logging
import sys
from typing import Any, Callable

from torch import nn

from zoo._introspect import call_with_checked_kwargs
from zoo._registry_base import Registry
from zoo.errors import UnknownNameError
from zoo.pretrained_cfg import (PretrainedCfg, default_tag, has_pretrained_cfg, lookup_pretrained_cfg, pipeline_cfgs,
                                pretrained_tags, set_pretrained_cfg, split_model_name, weights_cfgs)

__all__ = ["register_model", "create_model", "list_models", "list_pipelines", "model_info", "is_model",
           "get_pretrained_cfg", "RECIPES"]

_logger = logging.getLogger(__name__)

_MODELS = Registry("model", populate=("zoo.models",))
#: recipe classes by the ``recipe:`` name of a config (filled by ``zoo.recipes``; ``zoo.recipes.base.register_recipe``
#: registers). It lives here, below the engine, so that the engine can look recipes up without importing them.
RECIPES = Registry("recipe", populate=("zoo.recipes",))

TIMM_PREFIX = "timm/"
#: timm's own source prefixes, delegated to timm as they are
TIMM_SOURCES = ("hf-hub:", "local-dir:")
#: modules that declare shipped pipelines (their import registers the cfgs)
_PIPELINE_MODULES = ("zoo.diffusion.pretrained",)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` as model ``fn.__name__``; picks up ``default_cfgs[name]`` and every tagged
    ``default_cfgs["name.<tag>"]`` from ``fn``'s module."""
    name = fn.__name__
    _MODELS.register(name)(fn)
    module_cfgs = getattr(sys.modules[fn.__module__], "default_cfgs", {})
    for key, cfg in module_cfgs.items():
        if split_model_name(key)[0] == name:  # "name" or "name.<tag>"
            set_pretrained_cfg(key, cfg)
    return fn


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered zoo model or tagged weights of one (``timm/`` names are not checked)."""
    try:
        _resolve(name)
        return True
    except KeyError:
        return False


def _check_tag(name: str) -> None:
    """``KeyError`` for an unknown model or an unknown tag of a known one (naming the tags it has)."""
    arch, tag = split_model_name(name)
    _refuse_pipeline(arch)
    _MODELS.get(arch)  # the helpful unknown-name error first
    if tag is not None and not has_pretrained_cfg(name):
        tags = pretrained_tags(arch)
        raise UnknownNameError(f"Unknown weights tag '{tag}' of model '{arch}'; "
                       + (f"its tags: {', '.join(arch + '.' + t for t in tags)}" if tags else
                          f"it has no tagged weights (models with weights: {', '.join(weights_cfgs()) or 'none'})"))


def _resolve(name: str) -> tuple[str, str | None]:
    """``(architecture, tag)`` of a model name: a registered model (tag ``None``), ``arch.tag``, or an alias of
    tagged weights (a name a cfg lists in ``aliases``); ``KeyError`` (closest names, the model's tags) otherwise."""
    _MODELS._ensure_populated()
    if name in _MODELS:
        return name, None
    cfg = lookup_pretrained_cfg(name)
    if has_pretrained_cfg(name) and cfg.tag and cfg.architecture in _MODELS:
        return cfg.architecture, cfg.tag
    _check_tag(name)
    return split_model_name(name)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The pretrained cfg of ``name``: a model, tagged weights (``arch.tag``) or an alias (an empty cfg with
    ``architecture=name`` if the model declares none)."""
    _resolve(name)
    return lookup_pretrained_cfg(name)


def list_models(filter: str | list[str] = "", pretrained: bool = False, exclude_filters: str | list[str] = ()) -> list[str]:
    """Names of registered models matching the fnmatch ``filter`` (e.g. ``"pointramba*"``).

    With ``pretrained=True``: the names of the weights that load with ``create_model(name, pretrained=True)``, as
    timm lists them: ``architecture.tag`` for tagged weights (``pointramba_small.modelnet10``; its older alias
    ``pointramba_small_modelnet10`` still works but is not listed again). Shipped pipelines: :func:`list_pipelines`.
    """
    if not pretrained:
        return _MODELS.names(filter, exclude_filters)
    registered = set(_MODELS.names())
    include = [filter] if isinstance(filter, str) else list(filter)
    exclude = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    names = [n for n, cfg in weights_cfgs().items() if cfg.architecture in registered]
    names = [n for n in names if not any(include) or any(fnmatch.fnmatch(n, p) for p in include if p)]
    return [n for n in names if not any(fnmatch.fnmatch(n, p) for p in exclude)]


def list_pipelines(filter: str = "") -> list[str]:
    """Names of the shipped pipelines (``tiny_t2i_mnist``: a diffusers folder, loaded with the function its cfg
    names, ``zoo.diffusion.load_pretrained_pipeline``), matching the fnmatch ``filter``."""
    import importlib

    for module in _PIPELINE_MODULES:
        importlib.import_module(module)
    return [n for n in pipeline_cfgs() if not filter or fnmatch.fnmatch(n, filter)]


def _refuse_pipeline(name: str) -> None:
    """``KeyError`` saying how to load ``name`` when it is a shipped pipeline, not a model."""
    if name in _MODELS or name not in list_pipelines():
        return
    cfg = pipeline_cfgs()[name]
    module, _, function = cfg.loader.rpartition(".")
    raise UnknownNameError(f"'{name}' is a pipeline ({cfg.pipeline_class or cfg.kind}), not a model: load it with "
                   f"from {module} import {function}; pipe = {function}('{name}') "
                   f"(needs pip install 'zoo[diffusion]'). Models: zoo.list_models(); pipelines: "
                   f"zoo.registry.list_pipelines()")


def model_info(name: str) -> dict[str, Any]:
    """A summary of model ``name`` (or tagged weights ``arch.tag``): entry point, module, docstring, and its
    pretrained cfg as a dict."""
    cfg = get_pretrained_cfg(name)
    fn = _MODELS.get(_resolve(name)[0])
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
        model_name: a registered name (see :func:`list_models`), tagged weights ``"arch.tag"`` or an alias of them,
            ``"timm/<name>"`` for any timm model, or timm's ``"hf-hub:ORG/NAME"``.
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
        KeyError: unknown model name (the message lists the closest names), unknown weights tag (the message lists
            the model's tags), or a pipeline's name (the message names the function that loads it).
        TypeError: unknown constructor argument (the message lists the accepted ones).
        FileNotFoundError: weights requested but no file found (the message lists the paths tried), or the model
            has no pretrained weights (the message lists the models that have); for timm models, weights neither
            cached nor downloadable (offline), at once.
        RuntimeError: the weights file is truncated/corrupt or holds pickled objects (see ``zoo.files``), the
            checkpoint does not match the model, or a head re-init that ``allow_head_reinit=False`` forbids.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if model_name.startswith((TIMM_PREFIX, *TIMM_SOURCES)):
        name = model_name[len(TIMM_PREFIX):] if model_name.startswith(TIMM_PREFIX) else model_name
        model = _create_timm_model(name, pretrained, checkpoint_path, pretrained_cfg_overlay, **kwargs)
        if not allow_head_reinit and pretrained and checkpoint_path is None:
            _check_timm_head(model_name, model)
        return model
    arch, tag = _resolve(model_name)
    if tag is None and pretrained and checkpoint_path is None and default_tag(arch) is not None:
        tag = default_tag(arch)  # timm: an architecture without weights of its own loads its first tag
        _logger.info("%s: pretrained=True loads its default weights %s.%s", arch, arch, tag)
    if tag is not None:
        kwargs["pretrained_cfg"] = lookup_pretrained_cfg(f"{arch}.{tag}")
    return call_with_checked_kwargs(
        _MODELS.get(arch),
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
    """Delegate to ``timm.create_model`` (any timm backbone as a source/teacher/student). ``pretrained=True``
    without ``checkpoint_path`` reads the local Hugging Face / torch hub caches first and fails at once when the
    files are not there and the hub cannot be reached (:func:`zoo.timm_weights.resolve_timm_pretrained`)."""
    import timm

    if not name.startswith(TIMM_SOURCES) and not timm.is_model(name):
        from zoo._registry_base import close_matches

        hint = close_matches(name, timm.list_models())
        raise UnknownNameError(f"Unknown timm model '{name}'."
                               + (f" Did you mean: {', '.join(TIMM_PREFIX + h for h in hint)}?" if hint else ""))
    if pretrained and not checkpoint_path:
        from zoo.timm_weights import resolve_timm_pretrained

        name, cached = resolve_timm_pretrained(name)
        overlay = {**cached, **(overlay or {})} or None
    return timm.create_model(
        name, pretrained=pretrained, checkpoint_path=checkpoint_path or "", pretrained_cfg_overlay=overlay, **kwargs
    )
