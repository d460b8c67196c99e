"""Every shipped config loads and validates against its recipe's schema (no data or model files read)."""
from __future__ import annotations

from pathlib import Path

import pytest

from zoo.cli import load_run_config

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml") if "_base_" not in p.parts)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_config_validates(path):
    recipe_cls, cfg, _ = load_run_config(str(path))
    assert isinstance(cfg, recipe_cls.Config)
    if cfg.recipe == "classify":
        import zoo

        assert cfg.model["name"] in zoo.list_models(), f"{path}: unknown model {cfg.model['name']}"
