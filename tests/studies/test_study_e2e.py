"""Studies end to end through ``tools/train.py``: the test-sized study ``configs/studies/tiny.yaml`` (two variants
× three seeds of pointnet_tiny, seconds) down to its results file and generated table; and (slow) a two-stage toy
study with per-example scores run two cells at a time, cells referring to the cells of the stage before, the paired
bootstrap, ``--list-cells`` and ``--cell``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import toys
from zoo.studies.report import check_markdown, render_table, update_markdown

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TINY = REPO / "configs" / "studies" / "tiny.yaml"


def _train(*args, cwd, script=REPO / "tools" / "train.py", threads=1, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def _final(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["complete"], run_dir
    return summary["final"]


def test_tiny_study_runs_summarises_and_regenerates_its_table(tmp_path):
    out = tmp_path / "study"
    proc = _train(TINY, "--output", out, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = {(v, s): _final(out / "train" / v / f"seed{s}") for v in ("lr_low", "lr_high") for s in (0, 1, 2)}
    for (variant, seed), final in cells.items():  # each cell ran with its variant's lr and its seed
        config = (out / "train" / variant / f"seed{seed}" / "config.yaml").read_text()
        assert f"seed: {seed}\n" in config and ("lr: 0.001\n" if variant == "lr_low" else "lr: 0.01\n") in config
        assert 0.0 <= final["top1"] <= 100.0

    results = json.loads((out / "summary" / "results.json").read_text())
    assert results["missing_cells"] == [] and set(results["variants"]) == {"train/lr_low", "train/lr_high"}
    for variant in ("lr_low", "lr_high"):
        top1 = [cells[(variant, s)]["top1"] for s in (0, 1, 2)]
        got = results["variants"][f"train/{variant}"]["metrics"]["top1"]
        assert got["values"] == top1 and got["n"] == 3
        assert got["mean"] == pytest.approx(np.mean(top1)) and got["std"] == pytest.approx(np.std(top1, ddof=1))
        if got["std"] > 0:
            assert (got["ci_low"], got["ci_high"]) == pytest.approx(
                stats.t.interval(0.95, 2, loc=np.mean(top1), scale=stats.sem(top1)))
    diffs = [cells[("lr_high", s)]["loss"] - cells[("lr_low", s)]["loss"] for s in (0, 1, 2)]
    loss_cmp = next(c for c in results["comparisons"] if c["metric"] == "loss")
    assert loss_cmp["differences"] == pytest.approx(diffs) and loss_cmp["seeds_better"] == sum(d < 0 for d in diffs)
    assert len((out / "summary" / "results.csv").read_text().splitlines()) == 1 + 4 + 2

    # the table a README holds between markers is generated from the results file, and checked against it
    readme = tmp_path / "README.md"
    readme.write_text(f"# tiny\n\n<!-- results:{out / 'summary' / 'results.json'}:variants -->\n<!-- /results -->\n")
    assert update_markdown(readme) and check_markdown(readme) == []
    low = results["variants"]["train/lr_low"]["metrics"]["top1"]
    row = f"| lr_low | 3 | {np.mean(low['values']):.1f} ± {np.std(low['values'], ddof=1):.1f} "
    assert row in readme.read_text()
    assert render_table(results, "variants", str(out / "summary" / "results.json")) in readme.read_text()

    # a second run skips every finished cell and writes the same results
    again = _train(TINY, "--output", out, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("is finished") == 6 and "running cell" not in again.stderr
    rerun = json.loads((out / "summary" / "results.json").read_text())
    assert rerun["variants"] == results["variants"] and rerun["comparisons"] == results["comparisons"]


TOY_STUDY = """\
pipeline:
  - name: train
    config: toy.yaml
    seeds: [0, 1]
    variants:
      fast: {optim.lr: 0.1}
      slow: {optim.lr: 0.01}
  - name: tune
    config: toy.yaml
    seeds: [0, 1]
    variants: {fast: {}, slow: {}}
    overrides: {model.checkpoint_path: "${stage:train}/last.pt", trainer.epochs: 1}
  - name: summary
    summarise:
      stages: [tune]
      metrics: {top1: higher}
      compare: [[fast, slow]]
      bootstrap: {resamples: 500, seed: 1}
"""


@pytest.mark.slow
def test_toy_study_in_parallel_with_per_example_bootstrap_cell_list_and_one_cell(tmp_path):
    (tmp_path / "toy.yaml").write_text(toys.TOY_CONFIG.replace("recipe: classify", "recipe: classify_per_example")
                                       .replace("epochs: 4", "epochs: 2"))
    (tmp_path / "study.yaml").write_text(TOY_STUDY)
    out = tmp_path / "out"
    cli = HERE / "study_cli.py"

    listed = _train("study.yaml", "--list-cells", "--output", "out", cwd=tmp_path, script=cli)
    assert listed.returncode == 0, listed.stderr[-2000:]
    commands = listed.stdout.splitlines()
    assert len(commands) == 8 and commands[0] == "python tools/train.py study.yaml --cell train/fast/seed0 --output out"

    proc = _train("study.yaml", "--output", out, "--jobs", "2", cwd=tmp_path, script=cli, threads=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "running 4 cells, 2 at a time, 1 thread(s) each" in proc.stderr
    for cell in ("train/fast/seed0", "tune/slow/seed1"):
        log = (out / cell).with_suffix(".log")
        assert log.is_file() and f"--cell {cell}" in log.read_text().splitlines()[0]
    # a cell of 'tune' started from the 'train' cell of the same variant and seed
    tune_cfg = (out / "tune" / "slow" / "seed1" / "config.yaml").read_text()
    assert str((out / "train" / "slow" / "seed1" / "last.pt").resolve()) in tune_cfg

    results = json.loads((out / "summary" / "results.json").read_text())
    finals = {(v, s): _final(out / "tune" / v / f"seed{s}")["top1"] for v in ("fast", "slow") for s in (0, 1)}
    cmp = results["comparisons"][0]
    assert cmp["differences"] == pytest.approx([finals[("fast", s)] - finals[("slow", s)] for s in (0, 1)])
    boot = cmp["bootstrap"]
    assert boot is not None and boot["n_examples"] == 96 and boot["resamples"] == 500
    per = {(v, s): np.load(out / "tune" / v / f"seed{s}" / "per_example.npz")["top1"]
           for v in ("fast", "slow") for s in (0, 1)}
    assert boot["mean"] == pytest.approx(np.mean([per[("fast", s)] - per[("slow", s)] for s in (0, 1)]))
    assert boot["ci_low"] <= boot["mean"] <= boot["ci_high"]

    # one cell again, from scratch: only that cell's directory is replaced
    before = (out / "tune" / "fast" / "seed0" / "metrics.json").stat().st_mtime_ns
    keep = (out / "tune" / "fast" / "seed1" / "metrics.json").stat().st_mtime_ns
    one = _train("study.yaml", "--cell", "tune/fast/seed0", "--overwrite", "--output", out, cwd=tmp_path, script=cli)
    assert one.returncode == 0, one.stderr[-3000:]
    assert (out / "tune" / "fast" / "seed0" / "metrics.json").stat().st_mtime_ns != before
    assert (out / "tune" / "fast" / "seed1" / "metrics.json").stat().st_mtime_ns == keep
    assert _final(out / "tune" / "fast" / "seed0")["top1"] == finals[("fast", 0)]  # the same seed, the same result
