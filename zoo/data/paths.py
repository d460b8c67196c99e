"""Where sample data lives: ``$ZOO_DATA`` or the ``shared/data`` folder beside the repo."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir"]

_REPO = Path(__file__).resolve().parents[2]


def data_dir(*parts: str) -> Path:
    """``$ZOO_DATA/<parts>`` if ``$ZOO_DATA`` is set, else ``<repo>/../shared/data/<parts>`` (may not exist)."""
    base = Path(os.environ["ZOO_DATA"]) if os.environ.get("ZOO_DATA") else _REPO.parent / "shared" / "data"
    return base.joinpath(*parts)
