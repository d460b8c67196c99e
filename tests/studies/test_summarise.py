"""The summarise stage on hand-made cell directories: statistics per variant, paired comparisons, the paired
bootstrap over per-example arrays, the results files, and the errors for unfinished or inconsistent cells."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from zoo.errors import ConfigError, DataError
from zoo.studies.matrix import Cell, Matrix
from zoo.studies.per_example import load_per_example, save_per_example
from zoo.studies.stats import bootstrap_mean
from zoo.studies.summarise import StudyIncomplete, SummariseSpec, summarise_cells, write_results

MATRIX = Matrix((0, 1, 2), {"base": [], "new": []})
N = 40


def _cell(root: Path, cell: Cell, final: dict, per_example: dict | None = None, complete: bool = True) -> None:
    run_dir = cell.run_dir(root)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"final": final, "complete": complete, "train_time_s": 2.0}))
    if per_example is not None:
        save_per_example(run_dir, per_example, example_id=np.arange(N))


def _correct(seed: int, p: float) -> np.ndarray:
    return (np.random.default_rng(seed).random(N) < p).astype(float) * 100.0


def _study(root: Path, per_example: bool = True) -> dict[str, dict[int, np.ndarray]]:
    scores = {"base": {s: _correct(10 + s, 0.6) for s in MATRIX.seeds},
              "new": {s: _correct(20 + s, 0.8) for s in MATRIX.seeds}}
    for variant, by_seed in scores.items():
        for seed, correct in by_seed.items():
            _cell(root, Cell("train", variant, seed), {"top1": correct.mean(), "err": {"total": 100 - correct.mean()}},
                  {"top1": correct} if per_example else None)
    return scores


def _spec(**extra) -> SummariseSpec:
    return SummariseSpec.from_mapping({"metrics": {"top1": "higher", "err.total": {"direction": "lower", "digits": 1}},
                                       "compare": [["new", "base"]], "bootstrap": {"resamples": 2000, "seed": 3},
                                       **extra}, "study.yaml")


def test_variant_statistics_comparisons_and_paired_bootstrap(tmp_path):
    scores = _study(tmp_path)
    results = summarise_cells(_spec(), [("train", MATRIX)], tmp_path)
    top1 = {v: [scores[v][s].mean() for s in MATRIX.seeds] for v in scores}
    base = results["variants"]["train/base"]
    assert base["seeds"] == [0, 1, 2] and base["label"] == "base" and base["train_time_s"] == 2.0
    got = base["metrics"]["top1"]
    assert got["values"] == pytest.approx(top1["base"]) and got["n"] == 3
    assert got["mean"] == pytest.approx(np.mean(top1["base"]))
    assert got["std"] == pytest.approx(np.std(top1["base"], ddof=1))
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(
        stats.t.interval(0.95, 2, loc=np.mean(top1["base"]), scale=stats.sem(top1["base"])))
    pooled = np.mean([scores["base"][s] for s in MATRIX.seeds], axis=0)
    assert got["bootstrap"] == bootstrap_mean(pooled, 0.95, resamples=2000, seed=3)
    assert base["metrics"]["err.total"]["bootstrap"] is None  # no per-example array for it

    (cmp_top1, cmp_err) = results["comparisons"]
    assert (cmp_top1["method"], cmp_top1["baseline"], cmp_top1["metric"]) == ("train/new", "train/base", "top1")
    diffs = np.subtract(top1["new"], top1["base"])
    assert cmp_top1["differences"] == pytest.approx(diffs) and cmp_top1["mean"] == pytest.approx(diffs.mean())
    assert cmp_top1["seeds_better"] == int((diffs > 0).sum())
    paired = np.mean([scores["new"][s] - scores["base"][s] for s in MATRIX.seeds], axis=0)
    assert cmp_top1["bootstrap"] == bootstrap_mean(paired, 0.95, resamples=2000, seed=3)
    assert cmp_err["metric"] == "err.total" and cmp_err["mean"] == pytest.approx(-diffs.mean())
    assert cmp_err["seeds_better"] == cmp_top1["seeds_better"]  # lower error is better
    assert results["tables"]["comparisons"]["rows"] == [["train/new", "train/base"]]


def test_results_files_round_trip(tmp_path):
    _study(tmp_path)
    results = summarise_cells(_spec(), [("train", MATRIX)], tmp_path)
    json_path, csv_path = write_results(results, tmp_path / "summary")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(results))
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["kind"], r["variant"], r["metric"]) for r in rows] == [
        ("variant", "train/base", "top1"), ("variant", "train/base", "err.total"),
        ("variant", "train/new", "top1"), ("variant", "train/new", "err.total"),
        ("comparison", "train/new", "top1"), ("comparison", "train/new", "err.total")]
    assert float(rows[0]["mean"]) == results["variants"]["train/base"]["metrics"]["top1"]["mean"]
    assert rows[4]["baseline"] == "train/base" and rows[4]["bootstrap_low"] != "" and rows[5]["bootstrap_low"] == ""


def test_unfinished_cells_stop_the_summary_unless_allowed(tmp_path):
    _study(tmp_path, per_example=False)
    metrics = Cell("train", "new", 2).run_dir(tmp_path) / "metrics.json"
    metrics.write_text(json.dumps({"final": {"top1": 1.0}, "complete": False}))
    with pytest.raises(StudyIncomplete, match=r"1 cell\(s\) have not finished: train/new/seed2"):
        summarise_cells(_spec(), [("train", MATRIX)], tmp_path, rerun_hint=" (CMD)")
    results = summarise_cells(_spec(allow_missing=True), [("train", MATRIX)], tmp_path)
    assert results["missing_cells"] == ["train/new/seed2"]
    assert results["variants"]["train/new"]["metrics"]["top1"]["n"] == 2
    assert results["comparisons"][0]["n"] == 2 and results["comparisons"][0]["seeds"] == [0, 1]


def test_a_metric_missing_from_a_cell_names_the_file_and_the_metrics_there(tmp_path):
    _study(tmp_path, per_example=False)
    spec = SummariseSpec.from_mapping({"metrics": {"top5": "higher"}}, "study.yaml")
    with pytest.raises(ConfigError, match=r"seed0/metrics.json: no numeric metric 'top5' .* there: top1"):
        summarise_cells(spec, [("train", MATRIX)], tmp_path)


def test_per_example_arrays_must_average_to_their_metric_and_match_across_cells(tmp_path):
    _study(tmp_path)
    run_dir = Cell("train", "new", 1).run_dir(tmp_path)
    arrays = load_per_example(run_dir)
    save_per_example(run_dir, {"top1": arrays["top1"][::-1]}, example_id=np.arange(N)[::-1])  # same mean, reordered
    with pytest.raises(DataError, match="scored different examples"):
        summarise_cells(_spec(), [("train", MATRIX)], tmp_path)
    save_per_example(run_dir, {"top1": np.zeros(N)}, example_id=np.arange(N))
    with pytest.raises(DataError, match="must average to its metric"):
        summarise_cells(_spec(), [("train", MATRIX)], tmp_path)


def test_metrics_json_may_name_the_per_example_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    np.savez(run_dir / "scores.npz", top1=np.array([100.0, 0.0]))
    assert load_per_example(run_dir, {"per_example": "scores.npz"})["top1"].tolist() == [100.0, 0.0]
    assert load_per_example(run_dir, {}) == {}
    with pytest.raises(FileNotFoundError, match="names the per-example file 'gone.npz'"):
        load_per_example(run_dir, {"per_example": "gone.npz"})
    with pytest.raises(ValueError, match=r"1-D with one value per example"):
        save_per_example(run_dir, {"a": np.zeros(3), "b": np.zeros(4)})


def test_names_in_compare_and_tables_resolve_or_fail_clearly(tmp_path):
    _study(tmp_path, per_example=False)
    other = Matrix((0, 1, 2))
    for seed in other.seeds:
        _cell(tmp_path, Cell("source", "default", seed), {"top1": 50.0 + seed, "err": {"total": 50.0 - seed}})
    spec = _spec(compare=[["new", "source"]],
                 tables={"main": {"rows": ["source", "new"], "metrics": ["top1"], "labels": {"source": "Source only"}}})
    results = summarise_cells(spec, [("source", other), ("train", MATRIX)], tmp_path)
    assert results["variants"]["source/default"]["label"] == "source"
    assert results["comparisons"][0]["baseline"] == "source/default"
    main = results["tables"]["main"]
    assert main["rows"] == ["source/default", "train/new"] and main["labels"]["source/default"] == "Source only"
    with pytest.raises(ConfigError, match="'nope' is not a summarised variant"):
        summarise_cells(_spec(compare=[["nope", "base"]]), [("train", MATRIX)], tmp_path)
    with pytest.raises(ConfigError, match="names \\['top5'\\], not among the summary's metrics"):
        _spec(tables={"t": {"metrics": ["top5"]}})


def test_a_diverged_cell_is_an_error_naming_it(tmp_path):
    _study(tmp_path, per_example=False)
    path = Cell("train", "base", 1).run_dir(tmp_path) / "metrics.json"
    path.write_text(json.dumps({"final": {"top1": float("nan"), "err": {"total": 1.0}}, "complete": True}))
    with pytest.raises(DataError, match=r"base/seed1/metrics.json: 'top1' is nan \(did the run diverge\?\)"):
        summarise_cells(_spec(), [("train", MATRIX)], tmp_path)
