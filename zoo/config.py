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

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from omegaconf import DictConfig, OmegaConf

from zoo._registry_base import close_matches

__all__ = ["ConfigError", "load_config", "apply_overrides", "parse_override", "validate_config", "dump_config", "to_container"]

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"


def _register_resolvers() -> None:
    """``${data:modelnet10}`` resolves to the sample-data folder (``$ZOO_DATA`` or ``../shared/data``)."""
    if not OmegaConf.has_resolver("data"):
        from zoo.data.paths import data_dir

        # omegaconf >= 2.4 renamed register_new_resolver to register_resolver
        register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
        register("data", lambda *parts: str(data_dir(*parts)))


_register_resolvers()


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key/file and the fix."""


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


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> DictConfig:
    """Load the YAML config at ``path`` with its ``_base_`` chain and ``overrides`` applied.

    Returns an OmegaConf ``DictConfig`` (``${...}`` interpolations resolved). Raises ``FileNotFoundError`` for a
    missing file and :class:`ConfigError` for bad YAML, ``_base_`` cycles or malformed overrides.
    """
    data = apply_overrides(_load_tree(Path(path).resolve(), ()), overrides)
    cfg = OmegaConf.create(data)
    OmegaConf.resolve(cfg)
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


def _check_keys(data: Mapping, schema: type, prefix: str) -> None:
    hints = typing.get_type_hints(schema)
    fields = {f.name for f in dataclasses.fields(schema)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            hint = close_matches(str(key), fields, n=1)
            raise ConfigError(
                f"Unknown config key '{path}'."
                + (f" Did you mean '{prefix}{hint[0]}'?" if hint else "")
                + f" Valid keys{' under ' + prefix[:-1] if prefix else ''}: {', '.join(sorted(fields))}"
            )
        sub = _dataclass_type(hints[key])
        if sub is not None and isinstance(value, Mapping):
            _check_keys(value, sub, f"{path}.")


def validate_config(cfg: Mapping | DictConfig, schema: type) -> Any:
    """Check ``cfg`` against the dataclass ``schema`` and return a populated ``schema`` instance.

    Unknown keys raise :class:`ConfigError` naming the key and the closest valid one; wrong value types raise
    :class:`ConfigError` naming the key and the expected type. Missing keys take the schema's defaults.
    """
    data = to_container(cfg)
    _check_keys(data, schema, "")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
        return OmegaConf.to_object(merged)
    except Exception as exc:  # omegaconf's ValidationError / MissingMandatoryValue carry the key path
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"Invalid value for config key '{key}': {getattr(exc, 'msg', exc)}") from None


def dump_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write ``cfg`` (DictConfig, dataclass or dict) as YAML to ``path``; loading it back gives the same config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(to_container(cfg), f, sort_keys=False)
    os.replace(tmp, path)
    return path
