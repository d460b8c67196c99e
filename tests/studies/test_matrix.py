"""Study matrices in pipeline configs: cells, their directories and overrides, ``${stage:...}`` between cells
(checked before anything runs), the cell list for a scheduler. Nothing is trained here."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import toys
from zoo.engine.pipeline import cell_commands, list_cells, load_pipeline, plan_stage
from zoo.errors import ConfigError
from zoo.studies.matrix import Cell, parse_cell_id, parse_matrix, reference_dirs


def _write(tmp_path: Path, pipeline: dict) -> tuple[Path, dict]:
    (tmp_path / "toy.yaml").write_text(toys.TOY_CONFIG)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path, pipeline


def _list(value, where):
    from zoo.engine.pipeline import _overrides_list

    return _overrides_list(value, where)


def test_cells_are_seed_major_with_variant_overrides_then_seed():
    matrix = parse_matrix([0, 1], {"sgd": {}, "adam": {"optim.name": "adamw", "optim.lr": 1e-3}}, "x", _list)
    cells = matrix.cells("train")
    assert [c.id for c in cells] == ["train/sgd/seed0", "train/adam/seed0", "train/sgd/seed1", "train/adam/seed1"]
    assert matrix.overrides(Cell("train", "adam", 1)) == ["optim.name=adamw", "optim.lr=0.001", "seed=1"]
    assert Cell("train", "adam", 1).run_dir("/r") == Path("/r/train/adam/seed1")
    assert Cell("train", "adam", 1).log_file("/r") == Path("/r/train/adam/seed1.log")
    assert parse_matrix([3], None, "x", _list).cells("s") == [Cell("s", "default", 3)]
    assert parse_matrix(None, None, "x", _list) is None


@pytest.mark.parametrize("seeds, variants, message", [
    (None, {"a": {}}, "'variants' needs 'seeds'"),
    ([], None, "non-empty list of integers"),
    ([0, 0], None, "lists a seed twice"),
    ([0, "1"], None, "non-empty list of integers"),
    ([0], {"a/b": {}}, "must be a plain name"),
    ([0], {"a": {"seed": 3}}, "sets 'seed'"),
    ([0], [], "non-empty mapping"),
])
def test_bad_matrices_are_config_errors(seeds, variants, message):
    with pytest.raises(ConfigError, match=message):
        parse_matrix(seeds, variants, "study.yaml: pipeline[0]", _list)


def test_cell_ids_parse_and_bad_ones_say_the_form():
    assert parse_cell_id("train/adam/seed12") == Cell("train", "adam", 12)
    with pytest.raises(ConfigError, match=r"<stage>/<variant>/seed<k>"):
        parse_cell_id("train/adam/12")


def test_references_from_a_cell_pick_the_same_variant_and_seed():
    source = parse_matrix([0, 1], None, "x", _list)
    adapt = parse_matrix([0, 1], {"tent": {}, "vida": {}}, "x", _list)
    earlier = [("data", None), ("source", source), ("adapt", adapt)]
    dirs = reference_dirs(earlier, Path("/r"), Cell("eval", "vida", 1))
    assert dirs["data"] == Path("/r/data")
    assert dirs["source"] == Path("/r/source/default/seed1")  # the only variant, same seed
    assert dirs["adapt"] == Path("/r/adapt/vida/seed1")  # same variant, same seed
    assert dirs["adapt/tent"] == Path("/r/adapt/tent/seed1")
    assert dirs["adapt/tent/seed0"] == Path("/r/adapt/tent/seed0")
    plain = reference_dirs(earlier, Path("/r"), None)
    assert "source" not in plain and "adapt" not in plain
    assert plain["source/default/seed0"] == Path("/r/source/default/seed0")


def test_study_pipeline_loads_and_plans_one_step_per_cell(tmp_path):
    path, raw = _write(tmp_path, {"seeds": [0, 1], "pipeline": [
        {"name": "pre", "config": "toy.yaml", "variants": {"a": {}, "b": {"optim.lr": 0.05}}},
        {"name": "tune", "config": "toy.yaml", "overrides": {"model.checkpoint_path": "${stage:pre}/last.pt"},
         "variants": {"a": {}, "b": {}}},
        {"name": "once", "config": "toy.yaml", "seeds": None,
         "overrides": {"model.checkpoint_path": "${stage:tune/b/seed1}/last.pt"}},
        {"name": "summary", "summarise": {"metrics": {"top1": "higher"}, "compare": [["tune/b", "tune/a"]]}},
    ]})
    stages = load_pipeline(path, raw)
    assert [s.name for s in stages] == ["pre", "tune", "once", "summary"]
    assert stages[2].matrix is None and stages[3].summarise.stages == ["pre", "tune"]
    steps = plan_stage(stages[1], stages[:1], tmp_path / "out")
    assert [s.label for s in steps] == ["tune/a/seed0", "tune/b/seed0", "tune/a/seed1", "tune/b/seed1"]
    b1 = steps[3]
    assert b1.run_dir == (tmp_path / "out" / "tune" / "b" / "seed1").resolve()
    assert b1.references["pre"] == (tmp_path / "out").resolve() / "pre" / "b" / "seed1"
    assert b1.overrides == ["model.checkpoint_path=${stage:pre}/last.pt", "seed=1"]
    assert plan_stage(stages[3], stages[:3], tmp_path) == []
    assert [c.id for c in list_cells(path, raw, only="pre")] == [
        "pre/a/seed0", "pre/b/seed0", "pre/a/seed1", "pre/b/seed1"]
    assert len(list_cells(path, raw)) == 8
    lines = cell_commands(path, raw, "study.yaml", "runs/s", ["trainer.epochs=1"], only="tune")
    assert lines[0] == "python tools/train.py study.yaml trainer.epochs=1 --cell tune/a/seed0 --output runs/s"


@pytest.mark.parametrize("stages, message", [
    ([{"name": "pre", "config": "toy.yaml", "seeds": [0, 1]},
      {"name": "ft", "config": "toy.yaml", "overrides": {"model.checkpoint_path": "${stage:pre}/last.pt"}}],
     r"'pre' is a matrix stage .* name one cell, e\.g\. \$\{stage:pre/default/seed0\}"),
    ([{"name": "pre", "config": "toy.yaml", "seeds": [0], "variants": {"a": {}, "b": {}}},
      {"name": "ft", "config": "toy.yaml", "seeds": [0], "variants": {"c": {}},
       "overrides": {"model.checkpoint_path": "${stage:pre}/last.pt"}}],
     r"cell ft/c/seed0 .* 'pre' has no variant 'c' and more than one variant"),
    ([{"name": "pre", "config": "toy.yaml", "seeds": [0]},
      {"name": "ft", "config": "toy.yaml", "seeds": [0, 1], "overrides": {"model.checkpoint_path": "${stage:pre}/x"}}],
     r"cell ft/default/seed1 .* 'pre' has no seed 1"),
    ([{"name": "ft", "config": "toy.yaml", "overrides": {"model.checkpoint_path": "${stage:later}/x"}},
      {"name": "later", "config": "toy.yaml"}],
     r"no earlier stage is called 'later'"),
    ([{"name": "pre", "config": "toy.yaml"},
      {"name": "s", "summarise": {"metrics": {"top1": "higher"}}}],
     r"no earlier matrix stage to summarise"),
    ([{"name": "pre", "config": "toy.yaml", "seeds": [0]},
      {"name": "s", "summarise": {"metrics": {"top1": "best"}}}],
     r"direction must be 'higher' or 'lower'"),
    ([{"name": "pre", "config": "toy.yaml", "seeds": [0], "overrides": {"seed": 4}}],
     r"the overrides set 'seed'"),
    ([{"name": "pre", "config": "toy.yaml", "seeds": [0], "varaints": {}}],
     r"unknown key\(s\) \['varaints'\]"),
])
def test_bad_study_configs_fail_before_anything_runs(tmp_path, stages, message):
    path, raw = _write(tmp_path, {"pipeline": stages})
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path, raw)


def test_command_line_flags_of_studies(tmp_path, capsys):
    from zoo.cli import train_main

    path, _ = _write(tmp_path, {"pipeline": [
        {"name": "train", "config": "toy.yaml", "seeds": [0, 1], "variants": {"a": {}, "b": {"optim.lr": 0.01}}},
        {"name": "summary", "summarise": {"metrics": {"top1": "higher"}}}]})
    out = str(tmp_path / "out")
    assert train_main([str(path), "trainer.epochs=1", "--list-cells", "--output", out]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"python tools/train.py {path} trainer.epochs=1 --cell train/{v}/seed{s} --output {out}"
                     for s in (0, 1) for v in ("a", "b")]
    assert train_main([str(path), "seed=3", "--output", out]) == 2
    assert "matrix stages set seed=<k> per cell" in capsys.readouterr().err
    assert train_main([str(path), "--cell", "train/c/seed0", "--output", out]) == 2
    assert "stage 'train' has variants a, b and seeds [0, 1]" in capsys.readouterr().err
    assert train_main([str(path), "--cell", "summary/a/seed0", "--output", out]) == 2
    assert "'summary' is not a matrix stage" in capsys.readouterr().err
    for argv in ([str(path), "--jobs", "0"], [str(tmp_path / "toy.yaml"), "--cell", "train/a/seed0"],
                 [str(tmp_path / "toy.yaml"), "--jobs", "2"]):
        with pytest.raises(SystemExit) as exc:
            train_main(argv)
        assert exc.value.code == 2
    assert "--cell is for pipeline configs" in capsys.readouterr().err
