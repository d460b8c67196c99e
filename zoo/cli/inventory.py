"""``zoo list WHAT`` and ``zoo config show NAME``: what the zoo has, and what a config or a recipe's keys are.

    zoo list models 'pointramba*'      # registered models (fnmatch pattern)
    zoo list pretrained                # weights that load with create_model(name, pretrained=True), and pipelines
    zoo list configs vida/*            # packaged configs, with their recipe (or "pipeline")
    zoo list recipes | adapters | tta | datasets
    zoo config show classify           # every key of a recipe: type, default, one-line doc
    zoo config show adapter:lora       # an adapter method's keys (the adapter: section); also tta:NAME, recipe:NAME
    zoo config show vida/mnist_c       # a config file's merged keys (--all: with the recipe's defaults filled in)
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from zoo.cli._common import fail
from zoo.errors import USER_ERRORS, ConfigError

__all__ = ["list_main", "config_main", "LISTINGS"]


def _first_line(doc: str | None) -> str:
    """The first sentence of a docstring, on one line."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = text.find(". ")
    return text[: end + 1] if end >= 0 else text


def _list_models(pattern: str) -> list[str]:
    from zoo.registry import list_models

    return list_models(pattern or "")


def _metrics(values: Any) -> str:
    if not values:
        return ""
    return ", ".join(f"{k} {v}" for k, v in dict(values).items())


def _list_pretrained(pattern: str) -> list[str]:
    from zoo.pretrained_cfg import pipeline_cfgs
    from zoo.registry import get_pretrained_cfg, list_models, list_pipelines

    rows = []
    for name in list_models(pattern or "", pretrained=True):
        cfg = get_pretrained_cfg(name)
        also = f"alias {', '.join(cfg.aliases)}; " if cfg.aliases else ""
        rows.append((name, "model", _metrics(cfg.metrics), f"{also}{cfg.dataset or ''}".strip("; ")))
    for name in list_pipelines(pattern or ""):
        cfg = pipeline_cfgs()[name]
        module, _, function = cfg.loader.rpartition(".")
        rows.append((name, "pipeline", _metrics(cfg.metrics), f"{function}('{name}') from {module}"))
    width = max((len(r[0]) for r in rows), default=0)
    return [f"{n:<{width}}  {kind:<8}  {metrics}" + (f"  [{more}]" if more else "") for n, kind, metrics, more in rows]


def _list_configs(pattern: str) -> list[str]:
    import fnmatch

    from zoo.config import load_raw_config
    from zoo.resources import list_configs

    rows = []
    for name in list_configs():
        if pattern and not fnmatch.fnmatch(name, pattern):
            continue
        try:
            raw = load_raw_config(name)
            kind = "pipeline" if "pipeline" in raw else str(raw.get("recipe") or "(fragment)")
        except USER_ERRORS as exc:  # a broken packaged config still lists, with why
            kind = f"(unreadable: {exc})"
        rows.append((name, kind))
    width = max((len(n) for n, _ in rows), default=0)
    return [f"{n:<{width}}  {kind}" for n, kind in rows]


def _list_registry(names: Callable[[], list[str]], get: Callable[[str], Any],
                   doc: Callable[[Any], str | None] = lambda entry: entry.__doc__) -> Callable[[str], list[str]]:
    def listing(pattern: str) -> list[str]:
        import fnmatch

        chosen = [n for n in names() if not pattern or fnmatch.fnmatch(n, pattern)]
        width = max((len(n) for n in chosen), default=0)
        return [f"{n:<{width}}  {_first_line(doc(get(n)))}".rstrip() for n in chosen]

    return listing


def _recipes(pattern: str) -> list[str]:
    from zoo.recipes.base import RECIPES, get_recipe

    return _list_registry(RECIPES.names, get_recipe,
                          lambda cls: f"[{cls.run_shape}] {_first_line(cls.__doc__)}")(pattern)


def _adapters(pattern: str) -> list[str]:
    from zoo.adapters.base import adapter_names, get_adapter

    return _list_registry(adapter_names, get_adapter)(pattern)


def _tta(pattern: str) -> list[str]:
    from zoo.tta.base import get_tta, tta_names

    return _list_registry(tta_names, get_tta)(pattern)


def _datasets(pattern: str) -> list[str]:
    from zoo.data.registry import DATASETS

    return _list_registry(DATASETS.names, DATASETS.get)(pattern)


#: ``zoo list WHAT`` -> (function of the fnmatch pattern returning the lines, what it lists)
LISTINGS: dict[str, tuple[Callable[[str], list[str]], str]] = {
    "models": (_list_models, "registered model names (create_model)"),
    "pretrained": (_list_pretrained, "models with shipped weights (create_model(name, pretrained=True)) and pipelines"),
    "configs": (_list_configs, "packaged run configs (zoo train NAME) and their recipe"),
    "recipes": (_recipes, "recipes (a config's recipe: key) and their run shape"),
    "adapters": (_adapters, "adaptation methods (a config's adapter.name)"),
    "tta": (_tta, "test-time adaptation algorithms (a ctta config's tta.name)"),
    "datasets": (_datasets, "registered datasets (data.name)"),
}


def list_main(argv: Sequence[str] | None = None) -> int:
    """``zoo list WHAT [PATTERN]``: one name a line (with a short description), filtered by an fnmatch pattern."""
    parser = argparse.ArgumentParser(description="List what the zoo has.",
                                     epilog="\n".join(f"{k}: {v[1]}" for k, v in LISTINGS.items()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=list(LISTINGS), help="what to list")
    parser.add_argument("pattern", nargs="?", default="", help="fnmatch filter, e.g. 'pointramba*' or 'vida/*'")
    args = parser.parse_args(argv)
    try:
        lines = LISTINGS[args.what][0](args.pattern)
    except USER_ERRORS as exc:
        return fail(exc)
    if not lines and args.pattern:
        print(f"error: no {args.what} match '{args.pattern}' (zoo list {args.what} shows them all)", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------------------- config show
_KINDS = ("recipe", "adapter", "tta")


def _config_class(kind: str, name: str) -> tuple[type, str, dict[str, str]]:
    """(config dataclass, title, keys the owner does not read -> why) of a recipe / adapter method / TTA algorithm."""
    if kind == "recipe":
        from zoo.recipes.base import get_recipe

        cls = get_recipe(name)
        return cls.Config, f"recipe '{name}' ({cls.__module__}.{cls.__name__}, run shape {cls.run_shape})", \
            dict(cls.unread_keys)
    if kind == "adapter":
        from zoo.adapters.base import get_adapter

        cls = get_adapter(name)
        return cls.config_class, f"adapter method '{name}': the adapter: section (adapter.name={name})", {}
    from zoo.tta.base import get_tta

    cls = get_tta(name)
    return cls.config_class, f"test-time adaptation algorithm '{name}': the tta: section (tta.name={name})", {}


def _registered(kind: str) -> list[str]:
    if kind == "recipe":
        from zoo.recipes.base import RECIPES

        return RECIPES.names()
    if kind == "adapter":
        from zoo.adapters.base import adapter_names

        return adapter_names()
    from zoo.tta.base import tta_names

    return tta_names()


def show_class(kind: str, name: str) -> str:
    """The key reference of a recipe / adapter method / TTA algorithm: a title, then ``key type default doc`` rows
    (keys the recipe declares unread left out, and listed with the reason)."""
    from zoo.cli.config_reference import config_keys, format_keys

    cls, title, unread = _config_class(kind, name)
    rows = [r for r in config_keys(cls) if not any(r.key == k or r.key.startswith(k + ".") for k in unread)]
    prefix = "" if kind == "recipe" else f"{kind}."
    rows = [type(r)(prefix + r.key, r.type, r.default, r.doc) for r in rows]
    lines = [f"{title}: {_first_line(cls.__doc__)}", "", format_keys(rows)]
    if unread:
        lines += ["", "not read by this recipe (setting one is an error):"]
        lines += [f"  {k}: {why}" for k, why in unread.items()]
    if kind == "recipe" and any(r.key == "adapter" for r in rows):
        lines += ["", "adapter.*: the keys of the method adapter.name names: zoo config show adapter:NAME "
                      f"({', '.join(_registered('adapter'))})"]
    if kind == "recipe" and any(r.key == "tta" for r in rows):
        lines += ["tta.*: the keys of the algorithm tta.name names: zoo config show tta:NAME "
                  f"({', '.join(_registered('tta'))})"]
    return "\n".join(lines)


def show_config_file(name: str, overrides: Sequence[str] = (), all_keys: bool = False) -> str:
    """A config file's merged keys (``_base_`` chain and ``overrides`` applied) as YAML; ``all_keys``: validated
    against its recipe, every key with the value the run would use (defaults filled in)."""
    import yaml

    from zoo.config import load_config, load_raw_config, to_container
    from zoo.resources import find_config

    path = find_config(name)
    raw = load_raw_config(path)
    if "pipeline" in raw:
        header = f"# {path}: a pipeline (stages run by zoo train; STAGE:key=value overrides one stage)"
        return header + "\n" + yaml.safe_dump(raw, sort_keys=False).rstrip()
    if all_keys:
        from zoo.cli.train import load_run_config

        _, cfg, _ = load_run_config(str(path), list(overrides))
        data, what = to_container(cfg), "every key the run uses, defaults filled in"
    else:
        data, what = to_container(load_config(path, list(overrides))), "the keys the file and its _base_ files set"
    return f"# {path} ({what})\n" + yaml.safe_dump(data, sort_keys=False).rstrip()


def _resolve(name: str) -> tuple[str, str]:
    """``(kind, name)`` for ``zoo config show NAME``: ``kind:NAME`` explicitly, else a config file / packaged
    config, else a recipe, adapter method or TTA algorithm name (in that order); ``ConfigError`` otherwise."""
    kind, sep, rest = name.partition(":")
    if sep and kind in _KINDS:
        return kind, rest
    from zoo.resources import find_config

    try:
        find_config(name)
        return "file", name
    except FileNotFoundError:
        pass
    matches = [k for k in _KINDS if name in _registered(k)]
    if len(matches) == 1:
        return matches[0], name
    if matches:
        raise ConfigError(f"'{name}' is a {' and a '.join(matches)}; say which: "
                          + " or ".join(f"zoo config show {k}:{name}" for k in matches))
    from zoo._registry_base import close_matches
    from zoo.resources import list_configs

    candidates = list_configs() + [f"{k}:{n}" for k in _KINDS for n in _registered(k)]
    hint = close_matches(name, candidates, n=4)
    raise ConfigError(f"'{name}' is neither a config file, a packaged config (zoo list configs) nor a recipe, "
                      f"adapter method or tta algorithm (zoo list recipes | adapters | tta)"
                      + (f"; did you mean: {', '.join(hint)}?" if hint else ""))


def config_main(argv: Sequence[str] | None = None) -> int:
    """``zoo config show NAME [key=value ...] [--all]`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="Show a config file's merged keys, or every key of a recipe / adapter method / tta algorithm with "
                    "its type, default and one-line doc.")
    parser.add_argument("action", choices=["show"], help="show: a config's merged keys or a recipe's keys")
    parser.add_argument("name", help="a config file or packaged config (vida/mnist_c), a recipe (classify), "
                        "adapter:NAME, tta:NAME or recipe:NAME")
    parser.add_argument("overrides", nargs="*", help="config files: key=value overrides applied first")
    parser.add_argument("--all", action="store_true", help="config files: every key the run uses, defaults filled in")
    argv = list(sys.argv[1:] if argv is None else argv)
    if len([a for a in argv if not a.startswith("-")]) < 2 and not {"-h", "--help"} & set(argv):
        parser.error("give what to show: zoo config show NAME (a config, a recipe, adapter:NAME or tta:NAME)")
    args = parser.parse_intermixed_args(argv)
    try:
        kind, name = _resolve(args.name)
        if kind != "file" and (args.overrides or args.all):
            raise ConfigError(f"overrides and --all are for config files; '{args.name}' is a {kind}")
        try:
            text = show_config_file(name, args.overrides, args.all) if kind == "file" else show_class(kind, name)
        except KeyError as exc:  # a registry: unknown name, with the closest ones
            raise ConfigError(str(exc.args[0])) from None
    except USER_ERRORS as exc:
        return fail(exc)
    print(text)
    return 0
