"""Markdown tables from results files and the README blocks that hold them: rendering, rewriting, detecting a
table that no longer matches its results file, marker errors, and the tools/report.py command line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.errors import ConfigError
from zoo.studies.report import benchmark_csv, check_markdown, find_blocks, load_results, render_table, update_markdown

REPO = Path(__file__).resolve().parents[2]


def _results() -> dict:
    """A small results tree as a summarise stage writes it (two variants, one comparison, one bootstrap)."""
    def stats(values, mean, std, low, high, boot=None):
        return {"n": len(values), "mean": mean, "std": std, "ci_low": low, "ci_high": high, "values": values,
                "bootstrap": boot}

    return {
        "format": 1, "confidence": 0.95, "bootstrap": {"resamples": 1000, "seed": 0}, "missing_cells": [],
        "metrics": {"top1": {"direction": "higher", "digits": 2, "scale": 1.0, "label": "top-1 (%)"},
                    "err": {"direction": "lower", "digits": 1, "scale": 100.0, "label": "error (%)"}},
        "variants": {
            "train/base": {"stage": "train", "variant": "base", "label": "base", "seeds": [0, 1, 2],
                           "train_time_s": 75.0,
                           "metrics": {"top1": stats([80.0, 82.0, 81.0], 81.0, 1.0, 78.5159, 83.4841),
                                       "err": stats([0.2, 0.18, 0.19], 0.19, 0.01, 0.1652, 0.2148)}},
            "train/new": {"stage": "train", "variant": "new", "label": "new", "seeds": [0], "train_time_s": 80.0,
                          "metrics": {"top1": stats([85.0], 85.0, None, None, None),
                                      "err": stats([0.15], 0.15, None, None, None)}},
        },
        "comparisons": [
            {"method": "train/new", "baseline": "train/base", "metric": "top1", "n": 1, "mean": 5.0, "std": None,
             "ci_low": None, "ci_high": None, "seeds_better": 1, "seeds_worse": 0, "seeds_tied": 0,
             "bootstrap": {"mean": 5.0, "ci_low": 1.25, "ci_high": 8.75, "n_examples": 100}},
            {"method": "train/new", "baseline": "train/base", "metric": "err", "n": 1, "mean": -0.05, "std": None,
             "ci_low": None, "ci_high": None, "seeds_better": 1, "seeds_worse": 0, "seeds_tied": 0, "bootstrap": None},
        ],
        "tables": {
            "variants": {"kind": "variants", "rows": ["train/base", "train/new"], "metrics": ["top1", "err"],
                         "labels": {"train/base": "base", "train/new": "new"}},
            "comparisons": {"kind": "comparisons", "rows": [["train/new", "train/base"]], "metrics": ["top1", "err"],
                            "labels": {"train/base": "base", "train/new": "new"}},
            "main": {"kind": "variants", "rows": ["train/new"], "metrics": ["err"],
                     "labels": {"train/new": "New | method"}},
        },
    }


def test_variants_table_text():
    text = render_table(_results(), "variants", "x/results.json")
    lines = text.splitlines()
    assert lines[0] == "| variant | seeds | top-1 (%) ↑ | error (%) ↓ | train time / seed |"
    assert lines[2] == "| base | 3 | 81.00 ± 1.00 [78.52, 83.48] | 19.0 ± 1.0 [16.5, 21.5] | 1.2 min |"
    assert lines[3] == "| new | 1 | 85.00 | 15.0 | 1.3 min |"  # one seed: no spread, no interval
    assert "from `x/results.json` (table `variants`)" in lines[-1] and "Student-t" in lines[-1]


def test_comparisons_and_custom_tables():
    lines = render_table(_results(), "comparisons").splitlines()
    assert lines[2] == "| new | base | top-1 (%) ↑ | +5.00 | – | [1.25, 8.75] | 1/1 seeds |"
    assert lines[3] == "| new | base | error (%) ↓ | -5.0 | – | – | 1/1 seeds |"
    assert "percentile bootstrap" in lines[-1]
    main = render_table(_results(), "main").splitlines()
    assert main[0] == "| variant | seeds | error (%) ↓ | train time / seed |"
    assert main[2].startswith("| New \\| method | 1 | 15.0 |")  # a '|' in a label is escaped
    with pytest.raises(ConfigError, match="no table 'nope'.*tables: variants, comparisons, main"):
        render_table(_results(), "nope")


def _readme(tmp_path: Path, body: str = "stale\n") -> Path:
    (tmp_path / "results.json").write_text(json.dumps(_results()))
    path = tmp_path / "README.md"
    path.write_text("# Study\n\nIntro.\n\n<!-- results:results.json:variants -->\n" + body + "<!-- /results -->\n\n"
                    "```markdown\n<!-- results:example.json:variants -->\n```\n\nMore text.\n"
                    "<!-- results:results.json:comparisons -->\n<!-- /results -->\n")
    return path


def test_update_rewrites_only_the_marked_blocks_and_check_then_passes(tmp_path):
    path = _readme(tmp_path)
    problems = check_markdown(path)
    assert len(problems) == 2 and "README.md:5: the table 'variants' differs" in problems[0]
    assert "tools/report.py --update" in problems[0]
    assert update_markdown(path) is True
    text = path.read_text()
    assert text.startswith("# Study\n\nIntro.\n\n<!-- results:results.json:variants -->\n| variant |")
    assert "```markdown\n<!-- results:example.json:variants -->\n```\n\nMore text.\n" in text  # examples untouched
    assert render_table(_results(), "comparisons", "results.json") in text
    assert check_markdown(path) == [] and update_markdown(path) is False
    # a hand edit of a number inside the block is caught
    path.write_text(text.replace("81.00 ± 1.00", "81.50 ± 1.00"))
    assert len(check_markdown(path)) == 1


def test_results_path_falls_back_to_the_repository_root(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "configs" / "fam").mkdir(parents=True)
    (tmp_path / "configs" / "fam" / "results.json").write_text(json.dumps(_results()))
    top = tmp_path / "README.md"
    top.write_text("<!-- results:configs/fam/results.json:main -->\n<!-- /results -->\n")
    assert update_markdown(top) and check_markdown(top) == []
    local = tmp_path / "configs" / "fam" / "README.md"
    local.write_text("<!-- results:results.json:main -->\n<!-- /results -->\n"
                     "<!-- results:gone.json:main -->\n<!-- /results -->\n")
    with pytest.raises(FileNotFoundError, match="the results file 'gone.json' of a marked table was not found"):
        update_markdown(local)


@pytest.mark.parametrize("text, message", [
    ("<!-- results:a.json:variants -->\nno end\n", r"md:1: .* is not closed"),
    ("x\n<!-- /results -->\n", r"md:2: '<!-- /results -->' without an opening"),
    ("<!-- results:a.json:t -->\n<!-- results:b.json:t -->\n<!-- /results -->\n", r"md:1: .* before the next"),
])
def test_broken_markers_name_the_line(text, message):
    with pytest.raises(ConfigError, match=message):
        find_blocks(text, "README.md")


def _report_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("report_tool", REPO / "tools" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_report_command_line(tmp_path, capsys):
    path = _readme(tmp_path)
    main = _report_main()
    assert main(["--check", str(path)]) == 1 and "differs from what results.json generates" in capsys.readouterr().out
    assert main(["--update", str(path)]) == 0 and "updated" in capsys.readouterr().out
    assert main(["--check", str(path)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main([str(tmp_path / "results.json"), "--table", "main"]) == 0
    assert capsys.readouterr().out.startswith("| variant | seeds | error (%) ↓ |")
    assert main([str(tmp_path / "results.json"), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("kind,variant,baseline,metric") and len(lines) == 7
    assert main([str(tmp_path / "nope.json")]) == 2 and "results file not found" in capsys.readouterr().err
    # the script itself runs as a program
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "report.py"), str(tmp_path / "results.json")],
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0 and "### variants" in proc.stdout and "### main" in proc.stdout


# ----------------------------------------------------------------------------------------------------- benchmarks
def _benchmark_results() -> dict:
    """A results file as ``tools/benchmark.py NAME --json PATH`` writes it (zoo.benchmarks._common.BenchmarkResults)."""
    rows = [{"name": "reference", "time_ms": 29700.0, "peak_mb": 7929.0, "same": True, "time_ms_x": 1.0,
             "peak_mb_frac": 1.0},
            {"name": "zoo_cpu", "time_ms": 4125.0, "peak_mb": 296.4, "same": True, "time_ms_x": 7.2,
             "peak_mb_frac": 0.0374},
            {"name": "slow", "time_ms": 85.5, "peak_mb": 12.25, "same": False, "time_ms_x": 347.4,
             "peak_mb_frac": None}]
    return {"kind": "benchmark", "benchmark": "scan", "command": "python tools/benchmark.py scan --threads 1",
            "machine": "torch 2.x, 1 CPU threads, no GPU", "load_average": 1.5, "created": "2026-12-07 07:00 UTC",
            "details": {}, "tables": {"cpu_2x8": {"kind": "benchmark", "title": "scan, cpu", "baseline": "reference",
                                                  "columns": {"time_ms": "fwd+bwd", "peak_mb": "peak | memory",
                                                              "same": "same result"},
                                                  "rows": rows}}}


def test_benchmark_table_text_and_csv(tmp_path):
    text = render_table(_benchmark_results(), "cpu_2x8", "b.json")
    lines = text.splitlines()
    assert lines[0] == "| row | fwd+bwd | peak \\| memory | same result |"
    assert lines[2] == "| `reference` (baseline) | 29.7 s | 7929 MB | yes |"  # the baseline shows no ratio
    assert lines[3] == "| `zoo_cpu` | 4.12 s (7.2×) | 296 MB (0.037×) | yes |"
    assert lines[4] == "| `slow` | 85.5 ms (347×) | 12.2 MB | no |"  # ratio >= 10 without decimals; none -> none
    caption = lines[-1]
    assert "from `b.json` (table `cpu_2x8`): scan, cpu" in caption
    assert "baseline / row for fwd+bwd; row / baseline for peak | memory" in caption
    assert "`python tools/benchmark.py scan --threads 1`" in caption and "load average 1.5" in caption
    path = tmp_path / "b.json"
    path.write_text(json.dumps(_benchmark_results()))
    assert load_results(path)["kind"] == "benchmark"
    csv = benchmark_csv(load_results(path)).splitlines()
    assert csv[0] == "table,row,column,value" and "cpu_2x8,zoo_cpu,time_ms,4125.0" in csv
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:b.json:cpu_2x8 -->\n<!-- /results -->\n")
    assert update_markdown(readme) and check_markdown(readme) == []
    readme.write_text(readme.read_text().replace("4.12 s", "4.00 s"))  # a typed-over figure is caught
    assert len(check_markdown(readme)) == 1


def test_a_file_that_is_neither_study_nor_benchmark_results_is_refused(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(ConfigError, match="nor a benchmark's.*--json PATH"):
        load_results(path)
