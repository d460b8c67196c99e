"""Every table between ``<!-- results:PATH:TABLE -->`` markers in the repository's markdown files is exactly what
its results file generates: a number typed or edited by hand, or a results file updated without regenerating the
table, fails here. Fix with ``python tools/report.py --update FILE.md``."""
from __future__ import annotations

from pathlib import Path

from zoo.studies.report import check_markdown, marked_markdown_files

REPO = Path(__file__).resolve().parents[2]


def test_every_marked_table_matches_its_results_file():
    problems = [p for path in marked_markdown_files(REPO) for p in check_markdown(path)]
    assert not problems, "\n".join(problems)


def test_the_scan_finds_marked_files_and_skips_virtualenvs_and_runs(tmp_path):
    for folder in ("docs", ".venv/lib", "runs/x", "node_modules/y"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "README.md").write_text("<!-- results:r.json:variants -->\n<!-- /results -->\n")
    (tmp_path / "plain.md").write_text("# no tables\n")
    assert marked_markdown_files(tmp_path) == [tmp_path / "docs" / "README.md"]
