"""Every shipped config loads, validates against its recipe's schema, and builds its recipe (no data read)."""
from __future__ import annotations

from pathlib import Path

import pytest

from zoo.cli import build_recipe

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml") if "_base_" not in p.parts)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_config_validates(path):
    recipe, cfg, _ = build_recipe(str(path))
    assert cfg.recipe and recipe.cfg is cfg
    if cfg.recipe == "classify":
        import zoo

        assert cfg.model["name"] in zoo.list_models(), f"{path}: unknown model {cfg.model['name']}"
