"""Run configs: YAML files with ``_base_`` inheritance, ``key.sub=value`` overrides and schema validation.

A config file may name one or more base files (paths relative to itself)::

    _base_: [../_base_/runtime.yaml, ../_base_/optim_adamw.yaml]
    model: {name: pointnet, num_classes: 10}

Bases are merged in order, then the file itself on top (dicts merge key by key, anything else is replaced;
a dict with ``_delete_: true`` replaces its base instead of merging). Command-line overrides
``trainer.epochs=3 optim.betas=[0.9,0.95]`` are applied last; values are parsed as YAML.
:func:`validate_config` checks the result against a recipe's dataclass schema: an unknown key is an error that
names the key and the closest valid one.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml
from omegaconf import DictConfig, OmegaConf

from zoo._registry_base import close_matches
from zoo.errors import ConfigError

__all__ = ["ConfigError", "load_config", "load_raw_config", "apply_overrides", "parse_override", "validate_config",
           "dump_config", "to_container", "schema_keys", "stage_dir", "stage_scope", "refuse_unread_keys",
           "refuse_replaced_keys", "load_run_config"]

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"


def _register_resolvers() -> None:
    """``${data:modelnet10}`` resolves to the sample-data folder (``$ZOO_DATA`` or ``../shared/data``);
    ``${stage:NAME}`` to the run directory of an earlier stage of the pipeline being run."""
    # omegaconf >= 2.4 renamed register_new_resolver to register_resolver
    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
    if not OmegaConf.has_resolver("data"):
        from zoo.data.paths import data_dir

        register("data", lambda *parts: str(data_dir(*parts)))
    if not OmegaConf.has_resolver("stage"):
        register("stage", stage_dir)


_STAGE_DIRS: contextvars.ContextVar[dict[str, Path] | None] = contextvars.ContextVar("zoo_stage_dirs", default=None)


def stage_dir(name: str) -> str:
    """``${stage:NAME}``: the run directory of stage ``NAME`` of the pipeline being run (see
    :mod:`zoo.engine.pipeline`, which sets the known stages with :func:`stage_scope`)."""
    dirs = _STAGE_DIRS.get()
    if dirs is None:
        raise ConfigError(f"${{stage:{name}}} refers to a pipeline stage, but this config is not run as a stage of "
                          "a pipeline; give the path explicitly")
    if name not in dirs:
        raise ConfigError(f"${{stage:{name}}}: no earlier stage is called '{name}'; earlier stages: "
                          f"{', '.join(dirs) or 'none'}")
    return str(dirs[name])


@contextlib.contextmanager
def stage_scope(dirs: Mapping[str, Path]) -> Iterator[None]:
    """Within this block ``${stage:NAME}`` resolves to ``dirs[NAME]`` (the stages that ran before)."""
    token = _STAGE_DIRS.set(dict(dirs))
    try:
        yield
    finally:
        _STAGE_DIRS.reset(token)


_register_resolvers()




def _read_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: dict, top: Mapping) -> dict:
    """Recursive merge of plain dicts: ``top`` wins; a ``_delete_: true`` dict in ``top`` replaces its base."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping):
            value = dict(value)
            if value.pop(DELETE_KEY, False) or not isinstance(out.get(key), dict):
                out[key] = _merge({}, value)
            else:
                out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _load_tree(path: Path, chain: tuple[Path, ...]) -> dict:
    if not path.is_file():
        where = f" (named as _base_ by {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"Config file not found: {path}{where}")
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(f"_base_ cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = _merge(merged, _load_tree((path.parent / base).resolve(), chain + (path,)))
    return _merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into (``["a", "b", "c"]``, value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p.strip() for p in parts):
        raise ConfigError(
            f"Bad override '{text}': expected KEY=VALUE with a dotted key, e.g. 'trainer.epochs=10' or 'optim.lr=3e-4'"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Bad override '{text}': value is not valid YAML ({exc})") from exc
    return [p.strip() for p in parts], value


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Return a copy of ``cfg`` with each ``key.sub=value`` override set (intermediate dicts are created)."""
    cfg = _merge({}, cfg)
    for text in overrides:
        parts, value = parse_override(text)
        node = cfg
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                section = ".".join(parts[: i + 1])
                raise ConfigError(f"Bad override '{text}': '{section}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return cfg


def load_raw_config(path: str | os.PathLike) -> dict:
    """The merged ``_base_`` tree of the config ``path`` (a file or a packaged name such as
    ``pointramba/modelnet10_small``) as plain data, interpolations left unresolved (pipelines read it so)."""
    from zoo.resources import find_config

    return _load_tree(find_config(path).resolve(), ())


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> DictConfig:
    """Load the YAML config at ``path`` with its ``_base_`` chain and ``overrides`` applied.

    ``path`` is a file, or the name of a config shipped with zoo (``pointramba/modelnet10_small``; see
    :func:`zoo.resources.list_configs`). Returns an OmegaConf ``DictConfig`` (``${...}`` interpolations
    resolved). Raises ``FileNotFoundError`` for a missing file and :class:`ConfigError` for bad YAML, ``_base_``
    cycles, malformed overrides or interpolations that cannot be resolved.
    """
    data = apply_overrides(load_raw_config(path), overrides)
    cfg = OmegaConf.create(data)
    try:
        OmegaConf.resolve(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # omegaconf's InterpolationResolutionError etc.; a ConfigError inside keeps its text
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else exc
        raise ConfigError(f"{path}: {cause}") from None
    return cfg


def to_container(cfg: Any) -> Any:
    """Plain Python containers (dict/list) from a DictConfig, a dataclass or plain data."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    return cfg


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass in annotation ``tp`` (unwrapping ``Optional[...]``), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def schema_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key a dataclass schema accepts (nested sections expanded), e.g. ``trainer.epochs``."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        sub = _dataclass_type(hints[f.name])
        out += schema_keys(sub, f"{prefix}{f.name}.") if sub is not None else [f"{prefix}{f.name}"]
    return out


def _suggest(path: str, root: type) -> str | None:
    """The valid key closest to the unknown ``path``: one ending in the same name (``epochs`` ->
    ``trainer.epochs``), else the closest dotted key."""
    keys = schema_keys(root)
    sections = sorted({k.rsplit(".", 1)[0] for k in keys if "." in k})
    leaf = path.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return same_leaf[0]
    hint = close_matches(path, keys + sections, n=1)
    if hint:
        return hint[0]
    leaves = close_matches(leaf, [k.rsplit(".", 1)[-1] for k in keys], n=1)
    return next((k for k in keys if leaves and k.rsplit(".", 1)[-1] == leaves[0]), None)


def _check_keys(data: Mapping, schema: type, prefix: str, root: type | None = None, shown: str = "",
                what: str | None = None) -> None:
    """Raise for a key of ``data`` that ``schema`` lacks; messages name keys as ``shown + dotted path``."""
    root = root or schema
    hints = typing.get_type_hints(schema)
    fields = {f.name for f in dataclasses.fields(schema)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            hint = _suggest(path, root)
            where = shown + prefix[:-1] if prefix or shown else ""
            raise ConfigError(
                f"Unknown config key '{shown}{path}'{f' for {what}' if what else ''}."
                + (f" Did you mean '{shown}{hint}'?" if hint else "")
                + f" Valid keys{' under ' + where.rstrip('.') if where else ''}: {', '.join(sorted(fields))}"
            )
        sub = _dataclass_type(hints[key])
        if sub is not None and isinstance(value, Mapping):
            _check_keys(value, sub, f"{path}.", root, shown, what)


def _leaves(tree: Any, prefix: str = ""):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], tree


def refuse_unread_keys(raw: Mapping[str, Any], unread: Mapping[str, str], reader: str) -> None:
    """Raise :class:`ConfigError` when the merged config ``raw`` sets a key of ``unread`` (``{key: why}``; a section
    such as ``optim`` or a dotted key such as ``trainer.epochs``) that ``reader`` (e.g. "recipe 'ctta'") declares it
    does not read, naming the key, the reader and why: such a key would otherwise be silently ignored."""
    for key, why in unread.items():
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                node = None
                break
            node = node[part]
        if node is None:
            continue
        set_keys = sorted(k for k, _ in _leaves(node, key + ".")) if isinstance(node, Mapping) else [key]
        if set_keys:
            raise ConfigError(f"config key '{set_keys[0]}' is not read by {reader} ({why}); remove it")


def refuse_replaced_keys(section: Any, replaced: Mapping[str, str]) -> None:
    """A key of an older config that ``section`` keeps as a field only so that the message can name its
    replacement (``{key: what replaces it}``) is an error when set (not ``None``)."""
    for key, instead in replaced.items():
        if getattr(section, key) is not None:
            raise ConfigError(f"config key '{key}' of recipe '{section.recipe}' was replaced: {instead}")


def require_paths(section: Any, prefix: str, keys: Iterable[str], *, directory: bool = False,
                  what: str | None = None, hint: str | None = "studies set it with ${stage:NAME}") -> None:
    """Raise :class:`ConfigError` unless every ``section.<key>`` of ``keys`` names an existing path (a directory
    with ``directory``), naming the key as ``<prefix>.<key>``, ``what`` it must be and ``hint`` (how to set it)."""
    what = what or ("a directory" if directory else "an existing path")
    for key in keys:
        value = getattr(section, key)
        if not value or not (Path(value).is_dir() if directory else Path(value).exists()):
            raise ConfigError(f"{prefix}.{key} must be {what}" + (f" ({hint})" if hint else "") + f", got {value!r}")


def load_run_config(config: str, overrides: Iterable[str] = ()) -> tuple[type, Any, dict[str, Any]]:
    """(recipe class, validated config, merged raw config) of a run from a config file and ``key=value``
    overrides; a key the recipe declares unread (``Recipe.unread_keys``) is an error naming it."""
    from zoo.registry import RECIPES

    raw = load_config(config, list(overrides))
    name = raw.get("recipe")
    if not name:
        raise ConfigError(f"{config}: the config names no recipe; add e.g. 'recipe: classify'")
    try:
        recipe_cls = RECIPES.get(name)
    except KeyError as exc:
        raise ConfigError(f"{config}: recipe: {exc.args[0]}") from None
    refuse_unread_keys(raw, recipe_cls.unread_keys, f"recipe '{name}'")
    return recipe_cls, validate_config(raw, recipe_cls.Config), raw


def validate_config(cfg: Mapping | DictConfig, schema: type, *, prefix: str = "", what: str | None = None) -> Any:
    """Check ``cfg`` against the dataclass ``schema`` and return a populated ``schema`` instance.

    Unknown keys raise :class:`ConfigError` naming the key and the closest valid one; wrong value types raise
    :class:`ConfigError` naming the key and the expected type. Missing keys take the schema's defaults.
    ``prefix`` (e.g. ``"adapter."``) is put before every key named in a message, for a config that is one section
    of a larger one; ``what`` names what the schema describes (e.g. ``"adapter method 'lora'"``).
    """
    data = to_container(cfg)
    missing = [k for k, v in _leaves(data) if v == "???"]
    if missing:
        raise ConfigError(f"config key(s) {', '.join(missing)} must be set (the config marks them '???'): "
                          f"add e.g. {missing[0]}=VALUE to the command line")
    _check_keys(data, schema, "", shown=prefix, what=what)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise  # a section's own check (__post_init__) names its key already
    except Exception as exc:  # omegaconf's ValidationError / MissingMandatoryValue carry the key path
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, ConfigError):
            raise inner from None
        key = getattr(exc, "full_key", None)
        message = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(f"Invalid value for config key '{prefix}{key}'{f' ({what})' if what else ''}: {message}") from None


def dump_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write ``cfg`` (DictConfig, dataclass or dict) as YAML to ``path``; loading it back gives the same config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(to_container(cfg), f, sort_keys=False)
    os.replace(tmp, path)
    return path
