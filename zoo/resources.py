"""Files shipped with zoo: the pretrained weights (``checkpoints/``) and the run configs (``configs/``).

In a source checkout (run in place or installed with ``pip install -e .``) they are the repo's top-level
``checkpoints/`` and ``configs/`` folders. A wheel (``pip install .``) ships the same trees as package data,
``zoo/_checkpoints/`` and ``zoo/_configs/`` (pyproject.toml maps the packages ``zoo._checkpoints`` and
``zoo._configs`` onto those folders), so the relative ``_base_`` paths between configs keep working.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from zoo._registry_base import close_matches

__all__ = ["source_checkout", "checkpoint_dirs", "config_dirs", "list_configs", "find_config"]

_PACKAGE_DIR = Path(__file__).resolve().parent
_CONFIG_SUFFIXES = (".yaml", ".yml")


@functools.lru_cache(maxsize=None)
def source_checkout() -> Path | None:
    """The root of the source checkout zoo runs from (the folder holding ``pyproject.toml`` and ``zoo/``), or
    ``None`` when zoo is installed from a wheel (then the package's parent is ``site-packages``)."""
    root = _PACKAGE_DIR.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "zoo"' in pyproject.read_text(errors="replace"):
        return root
    return None


def _data_dirs(packaged: str, checkout_name: str) -> list[Path]:
    """Existing folders holding one kind of shipped file: the package data of a wheel, then the checkout's."""
    dirs = [_PACKAGE_DIR / packaged]
    root = source_checkout()
    if root is not None:
        dirs.append(root / checkout_name)
    return [d for d in dirs if d.is_dir()]


def checkpoint_dirs() -> list[Path]:
    """Folders holding the shipped weights files and ``manifest.yaml``, in lookup order (usually one:
    ``<site-packages>/zoo/_checkpoints`` for a wheel, ``<repo>/checkpoints`` for a checkout)."""
    return _data_dirs("_checkpoints", "checkpoints")


def config_dirs() -> list[Path]:
    """Folders holding the packaged run configs, in lookup order (``zoo/_configs`` of a wheel, or the
    checkout's ``configs/``)."""
    return _data_dirs("_configs", "configs")


def list_configs() -> list[str]:
    """Names of the packaged run configs, e.g. ``"pointramba/modelnet10_small"`` (relative path without
    ``.yaml``); ``_base_`` fragments (any folder or file whose name starts with ``_``) are left out."""
    names = set()
    for base in config_dirs():
        for path in base.rglob("*"):
            rel = path.relative_to(base)
            if path.suffix in _CONFIG_SUFFIXES and not any(part.startswith("_") for part in rel.parts):
                names.add(rel.with_suffix("").as_posix())
    return sorted(names)


def _config_name(name: str) -> str:
    """``configs/pointramba/x.yaml`` / ``pointramba/x.yaml`` / ``pointramba/x`` -> ``pointramba/x``."""
    name = name.replace(os.sep, "/").strip("/")
    if name.startswith("configs/"):
        name = name[len("configs/"):]
    for suffix in _CONFIG_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_config(name_or_path: str | os.PathLike) -> Path:
    """The config file for ``name_or_path``.

    An existing file is returned as it is (relative paths stay relative). Otherwise it is read as the name of a
    packaged config, with or without ``.yaml`` and an optional leading ``configs/`` (``pointramba/modelnet10_small``,
    ``configs/pointramba/modelnet10_small.yaml``), and the installed file is returned.

    Raises:
        FileNotFoundError: neither; the message names the path and the packaged file tried and the closest
            packaged config names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = _config_name(str(name_or_path))
    tried = [str(path)]
    for base in config_dirs():
        for suffix in _CONFIG_SUFFIXES:
            candidate = base / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
        tried.append(str(base / f"{name}.yaml"))
    available = list_configs()
    hint = close_matches(name, available)
    where = ", ".join(str(d) for d in config_dirs()) or "none found: this zoo install ships no configs"
    raise FileNotFoundError(
        f"Config '{name_or_path}' not found. Tried:\n  " + "\n  ".join(tried) + "\n"
        + (f"Did you mean: {', '.join(hint)}?\n" if hint else "")
        + f"Give a path to a YAML file or a packaged config name (packaged configs in {where}: "
        + (", ".join(available) if available else "none") + ")."
    )
