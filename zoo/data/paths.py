"""Where sample data lives: the one resolver of the data root (``$ZOO_DATA`` > checkout's ``shared/data`` > ``./data``).

1. ``$ZOO_DATA``, when set (``~`` expanded), wherever zoo is installed;
2. otherwise, when zoo runs from a source checkout (in place or ``pip install -e .``), the ``shared/data``
   folder beside the checkout: ``<repo>/../shared/data``;
3. otherwise (a wheel install: there is no checkout to sit beside), ``data/`` under the current folder.

Datasets take an explicit ``root=`` (``data.root=`` on the command line) that overrides all of these.
"""
from __future__ import annotations

import os
from pathlib import Path

from zoo.resources import source_checkout

__all__ = ["data_dir", "data_root", "default_data_dir"]


def default_data_dir() -> Path:
    """The data root by the rules above, whether or not the folder exists (e.g. for messages and resolvers)."""
    env = os.environ.get("ZOO_DATA")
    if env:
        return Path(env).expanduser()
    checkout = source_checkout()
    if checkout is not None:
        return checkout.parent / "shared" / "data"
    return Path.cwd() / "data"


def data_root() -> Path | None:
    """The data root to search when a dataset gets no ``root``: ``$ZOO_DATA`` if set (even if absent, so that a
    wrong value shows in the error), else the default folder (rules 2-3) when it exists, else ``None``."""
    path = default_data_dir()
    return path if os.environ.get("ZOO_DATA") or path.is_dir() else None


def data_dir(*parts: str) -> Path:
    """``<data root>/<parts>`` by the rules above (may not exist); e.g. ``data_dir("modelnet10")``."""
    return default_data_dir().joinpath(*parts)
