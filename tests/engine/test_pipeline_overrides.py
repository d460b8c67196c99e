"""Per-stage command-line overrides of pipelines: ``STAGE:key=value`` reaches one stage only; a plain override must
fit every stage's config, and each mistake is one error naming the stages, before anything runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import toys
from zoo.config import load_raw_config
from zoo.engine.pipeline import load_pipeline, route_overrides, split_stage_override
from zoo.engine.stage_overrides import config_accepts
from zoo.errors import ConfigError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BIGNAS = REPO / "configs" / "bignas" / "mnist_pipeline.yaml"


def _bignas_stages():
    return load_pipeline(BIGNAS, load_raw_config(BIGNAS))


def test_split_stage_override():
    assert split_stage_override("search:search.rounds=1") == ("search", "search.rounds=1")
    assert split_stage_override("trainer.epochs=1") == (None, "trainer.epochs=1")
    # a colon in the value is not a stage prefix
    assert split_stage_override("model.checkpoint_path=${stage:train}/last.pt") == (
        None, "model.checkpoint_path=${stage:train}/last.pt")
    with pytest.raises(ConfigError, match="STAGE:key=value"):
        split_stage_override(":trainer.epochs=1")


def test_config_accepts_walks_the_recipes_config_class():
    from zoo.recipes.base import get_recipe

    search, supernet = get_recipe("supernet_search"), get_recipe("supernet")
    assert config_accepts(search, "search.rounds") and not config_accepts(supernet, "search.rounds")
    assert config_accepts(supernet, "trainer.epochs") and not config_accepts(supernet, "trainer.epoch")
    assert config_accepts(supernet, "model.anything.below.a.dict")  # model is a free dict of create_model kwargs
    assert not config_accepts(supernet, "adapter.name")  # declared unread by the supernet recipe


def test_stage_override_goes_to_its_stage_only():
    routed = route_overrides(_bignas_stages(), ["search:search.rounds=1", "trainer.epochs=1"], BIGNAS)
    assert routed == {"supernet": ["trainer.epochs=1"], "search": ["search.rounds=1", "trainer.epochs=1"]}


def test_plain_override_that_only_some_stages_have_names_them_and_the_fix():
    with pytest.raises(ConfigError) as err:
        route_overrides(_bignas_stages(), ["search.rounds=1"], BIGNAS)
    msg = str(err.value)
    assert "only stage(s) search" in msg and "not supernet" in msg and "search:search.rounds=1" in msg


def test_override_that_fits_no_stage_names_the_stages_and_the_closest_key():
    with pytest.raises(ConfigError) as err:
        route_overrides(_bignas_stages(), ["trainer.epoch=1"], BIGNAS)
    msg = str(err.value)
    assert "fits no stage" in msg and "supernet (recipe supernet)" in msg and "search (recipe supernet_search)" in msg
    assert "Did you mean: trainer.epochs" in msg


def test_unknown_stage_prefix_names_the_stages():
    with pytest.raises(ConfigError) as err:
        route_overrides(_bignas_stages(), ["serch:search.rounds=1"], BIGNAS)
    assert "has no stage 'serch'" in str(err.value) and "its stages: supernet, search" in str(err.value)


def test_stage_prefix_with_a_key_that_stage_lacks_names_the_stage_that_has_it():
    with pytest.raises(ConfigError) as err:
        route_overrides(_bignas_stages(), ["supernet:search.rounds=1"], BIGNAS)
    assert "stage 'supernet' (recipe supernet) has no config key 'search.rounds'" in str(err.value)
    assert "write search:search.rounds=1" in str(err.value)


def test_summarise_stage_takes_no_overrides(tmp_path):
    (tmp_path / "toy.yaml").write_text(toys.TOY_CONFIG)
    path = tmp_path / "study.yaml"
    path.write_text("pipeline:\n  - {name: train, config: toy.yaml, seeds: [0, 1]}\n"
                    "  - {name: summary, summarise: {metrics: {top1: {direction: higher}}}}\n")
    stages = load_pipeline(path, load_raw_config(path))
    assert route_overrides(stages, ["train:optim.lr=0.05"], path) == {"train": ["optim.lr=0.05"]}
    with pytest.raises(ConfigError, match="'summary' is a summarise stage"):
        route_overrides(stages, ["summary:optim.lr=0.05"], path)


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(HERE / "toy_cli.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


def _two_stage_pipeline(tmp_path: Path) -> Path:
    (tmp_path / "toy.yaml").write_text(toys.TOY_CONFIG)
    (tmp_path / "refine.yaml").write_text("_base_: [toy.yaml]\nmodel:\n  name: toy_mlp\n  checkpoint_path: ???\n")
    path = tmp_path / "pipe.yaml"
    path.write_text("pipeline:\n  - {name: train, config: toy.yaml}\n  - name: refine\n    config: refine.yaml\n"
                    "    overrides: {model.checkpoint_path: '${stage:train}/last.pt'}\n")
    return path


def test_stage_override_end_to_end(tmp_path):
    pipe = _two_stage_pipeline(tmp_path)
    proc = _cli(pipe, "trainer.epochs=1", "refine:optim.lr=0.01", "--output", tmp_path / "p", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = yaml.safe_load((tmp_path / "p" / "train" / "config.yaml").read_text())
    refine = yaml.safe_load((tmp_path / "p" / "refine" / "config.yaml").read_text())
    assert train["trainer"]["epochs"] == refine["trainer"]["epochs"] == 1
    assert refine["optim"]["lr"] == 0.01 and train["optim"]["lr"] != 0.01


def test_bad_stage_override_fails_before_any_stage_runs(tmp_path):
    pipe = _two_stage_pipeline(tmp_path)
    proc = _cli(pipe, "trainer.epochs=1", "refin:optim.lr=0.01", "--output", tmp_path / "p", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: override 'refin:")
    assert "its stages: train, refine" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p" / "train").exists()


def test_stage_override_reaches_a_study_cell_and_its_listed_command(tmp_path):
    (tmp_path / "toy.yaml").write_text(toys.TOY_CONFIG)
    study = tmp_path / "study.yaml"
    study.write_text("pipeline:\n  - {name: train, config: toy.yaml, seeds: [0, 1]}\n")
    listed = _cli(study, "train:optim.lr=0.05", "trainer.epochs=1", "--list-cells", "--output", "out", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    line = listed.stdout.splitlines()[0]
    assert "train:optim.lr=0.05" in line and "--cell train/default/seed0" in line
    one = _cli(study, "train:optim.lr=0.05", "trainer.epochs=1", "--cell", "train/default/seed1", "--output", "out",
               cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    cfg = yaml.safe_load((tmp_path / "out" / "train" / "default" / "seed1" / "config.yaml").read_text())
    assert cfg["optim"]["lr"] == 0.05 and cfg["seed"] == 1 and cfg["trainer"]["epochs"] == 1
