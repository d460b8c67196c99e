"""Every shipped config loads and validates against its recipe's schema (no data or model files read); pipelines
are checked stage by stage, with earlier stages' directories standing in for ``${stage:NAME}``."""
from __future__ import annotations

from pathlib import Path

import pytest

from zoo.cli import load_run_config
from zoo.config import load_raw_config
from zoo.config import stage_scope
from zoo.engine.pipeline import is_pipeline, load_pipeline, plan_stage

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml") if "_base_" not in p.parts)


def _required(tree, prefix=""):
    """Overrides giving a stand-in value to every key a config marks required ('???')."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _required(value, f"{prefix}{key}.")
        elif value == "???":
            out.append(f"{prefix}{key}=required_value")
    return out


def _check(path: Path, overrides=()):
    overrides = [*_required(load_raw_config(path)), *overrides]
    recipe_cls, cfg, _ = load_run_config(str(path), overrides)
    assert isinstance(cfg, recipe_cls.Config)
    if cfg.recipe == "classify":
        import zoo

        assert cfg.model["name"] in zoo.list_models(), f"{path}: unknown model {cfg.model['name']}"


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_config_validates(path, tmp_path):
    raw = load_raw_config(path)
    if not is_pipeline(raw):
        _check(path)
        return
    stages = load_pipeline(path, raw)
    for index, stage in enumerate(stages):
        for step in plan_stage(stage, stages[:index], tmp_path):  # one per cell of a study stage, none for a summary
            with stage_scope(step.references):
                _check(stage.config, step.overrides)
