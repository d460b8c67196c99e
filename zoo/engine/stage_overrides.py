"""Command-line overrides of a pipeline, routed to its stages: ``STAGE:key=value`` for one stage, a plain
``key=value`` for every stage that runs a config (see :mod:`zoo.engine.pipeline`).

Each override is checked against the config class of each stage's recipe before anything runs, so a key that only
one stage has (``search.rounds`` of a BigNAS pipeline's ``search`` stage) fails at once with the fix
(``search:search.rounds=1``) instead of stopping the first stage with "Unknown config key".
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Sequence

from zoo.errors import ConfigError

__all__ = ["split_stage_override", "config_accepts", "route_overrides"]


def split_stage_override(text: str) -> tuple[str | None, str]:
    """``"search:search.rounds=1"`` -> ``("search", "search.rounds=1")``; ``"trainer.epochs=1"`` -> ``(None, ...)``.
    Only a ``:`` in the key (before the first ``=``) makes a stage prefix: values may hold ``:`` (``${stage:x}``)."""
    key, sep, value = text.partition("=")
    stage, colon, rest = key.partition(":")
    if not colon:
        return None, text
    if not stage.strip() or not rest.strip():
        raise ConfigError(f"Bad override '{text}': expected STAGE:key=value (e.g. search:search.rounds=1) or key=value")
    return stage.strip(), f"{rest.strip()}{sep}{value}"


def _field_type(schema: type, name: str) -> tuple[bool, Any]:
    fields = {f.name for f in dataclasses.fields(schema)}
    if name not in fields:
        return False, None
    return True, typing.get_type_hints(schema)[name]


def _dataclass_of(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)


def config_accepts(recipe_cls: type, key: str) -> bool:
    """Whether the dotted ``key`` is a config key of ``recipe_cls`` (its ``Config`` dataclass; below a field that is
    not a dataclass, e.g. ``model`` or ``adapter`` dicts, anything goes) and not one the recipe declares unread."""
    parts = key.split(".")
    if any(key == k or key.startswith(k + ".") for k in getattr(recipe_cls, "unread_keys", {})):
        return False
    schema: type | None = recipe_cls.Config
    for part in parts:
        if schema is None:
            return True
        present, tp = _field_type(schema, part)
        if not present:
            return False
        schema = _dataclass_of(tp)
    return True


def _stage_recipe(config_path: Any) -> type | None:
    """The recipe class a stage's config names, or ``None`` when that is not known yet (the run reports it)."""
    from zoo.config import load_raw_config
    from zoo.registry import RECIPES

    try:
        name = load_raw_config(config_path).get("recipe")
        return RECIPES.get(str(name)) if name else None
    except (KeyError, ConfigError, FileNotFoundError):
        return None


def _close_keys(key: str, recipes: Sequence[type]) -> list[str]:
    from zoo._registry_base import close_matches
    from zoo.config import schema_keys

    keys = sorted({k for r in recipes for k in schema_keys(r.Config)})
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    return same_leaf[:3] or close_matches(key, keys, n=3)


def route_overrides(stages: Sequence[Any], overrides: Sequence[str], where: Any = "the pipeline") -> dict[str, list[str]]:
    """``{stage name: [key=value, ...]}`` for the stages that run a config (``stages``: :class:`zoo.engine.pipeline.
    Stage` objects, summarise stages skipped), in command-line order, each override checked (see the module doc).

    Raises:
        ConfigError: a ``STAGE:`` prefix naming no stage that runs a config (naming those stages); a key the named
            stage's config lacks; a plain key that not every stage's config has (naming the stages that have it and
            the ``STAGE:key=value`` form), or that none has (naming the stages and the closest keys).
    """
    from zoo.config import parse_override

    runs = [s for s in stages if getattr(s, "config", None) is not None]
    names = [s.name for s in runs]
    recipes = {s.name: _stage_recipe(s.config) for s in runs}

    def describe(stage_names: Sequence[str]) -> str:
        return ", ".join(f"{n} (recipe {_recipe_name(recipes[n])})" for n in stage_names)

    routed: dict[str, list[str]] = {n: [] for n in names}
    for text in overrides:
        stage, body = split_stage_override(text)
        key = ".".join(parse_override(body)[0])
        if stage is not None:
            if stage not in routed:
                summaries = [s.name for s in stages if getattr(s, "config", None) is None]
                extra = f" ('{stage}' is a summarise stage: it runs no config)" if stage in summaries else ""
                raise ConfigError(f"override '{text}': {where} has no stage '{stage}' that runs a config{extra}; its "
                                  f"stages: {', '.join(names)}. Write STAGE:key=value with one of them")
            recipe = recipes[stage]
            if recipe is not None and not config_accepts(recipe, key):
                have = [n for n in names if recipes[n] is not None and config_accepts(recipes[n], key)]
                hint = f"; stage(s) {', '.join(have)} have it: write " + " ".join(f"{n}:{body}" for n in have) \
                    if have else _did_you_mean(key, [recipe])
                raise ConfigError(f"override '{text}': stage '{stage}' (recipe {_recipe_name(recipe)}) has no config "
                                  f"key '{key}'{hint}")
            routed[stage].append(body)
            continue
        known = [n for n in names if recipes[n] is not None]
        have = [n for n in known if config_accepts(recipes[n], key)]
        lack = [n for n in known if n not in have]
        if known and not have:
            raise ConfigError(f"override '{text}' fits no stage of {where}: no stage's config has '{key}' (stages: "
                              f"{describe(names)}){_did_you_mean(key, [recipes[n] for n in known])}")
        if lack:
            forms = " ".join(f"{n}:{text}" for n in have)
            raise ConfigError(f"override '{text}': only stage(s) {', '.join(have)} of {where} have the key '{key}' "
                              f"(not {', '.join(lack)}); apply it to those with {forms}")
        for n in names:
            routed[n].append(text)
    return routed


def _recipe_name(recipe: type | None) -> str:
    from zoo.registry import RECIPES

    if recipe is None:
        return "?"
    return next((n for n in RECIPES.names() if RECIPES.get(n) is recipe), recipe.__name__)


def _did_you_mean(key: str, recipes: Sequence[type]) -> str:
    hint = _close_keys(key, recipes)
    return f". Did you mean: {', '.join(hint)}?" if hint else ""
