"""DD-Ranking's scores (HLR, IOR, LRS), their table over result rows, and the storage report against real files."""
from __future__ import annotations

import math
import os

import pytest

from zoo.distill.report import RESULT_COLUMNS, write_results_csv
from zoo.metrics.distill import (hard_label_recovery, improvement_over_random, label_robust_score, score_rows,
                                 storage_report)


def test_dd_ranking_scores():
    assert hard_label_recovery(98.0, 80.0) == pytest.approx(18.0)
    assert improvement_over_random(85.0, 80.0) == pytest.approx(5.0)
    # a = 0.5 * 0.05 - 0.5 * 0.18 = -0.065
    a = -0.065
    assert label_robust_score(18.0, 5.0) == pytest.approx((math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert label_robust_score(0.0, 100.0, weight=1.0) == pytest.approx(1.0)
    assert label_robust_score(100.0, 0.0, weight=0.0) == pytest.approx(0.0)


def _row(images, labels, top1, label_bytes):
    return {"ipc": 10, "images": images, "labels": labels, "top1": top1, "top1_std": 0.5, "seeds": 2,
            "label_bytes": label_bytes, "per_seed": [top1, top1]}


def test_score_rows_adds_the_scores_to_the_rows_and_flattens_them(tmp_path):
    rows = [_row("rded", "hard", 60.0, 0), _row("rded", "stored", 70.0, 400), _row("rded", "projector", 80.0, 4),
            _row("random", "projector", 85.0, 4), _row("label_gap", "hard", 50.0, 0),
            _row("label_gap", "projector", 75.0, 4)]
    m = score_rows(rows, real_hard_top1=96.0)
    assert m["ipc10/rded/projector/hlr"] == rows[2]["hlr"] == pytest.approx(36.0)  # the hard row of its image set
    assert m["ipc10/label_gap/projector/hlr"] == pytest.approx(46.0)
    assert m["ipc10/rded/projector/ior"] == pytest.approx(-5.0) and "ipc10/rded/stored/ior" not in m  # no random row
    assert m["ipc10/label_gap/projector/ior"] == pytest.approx(-10.0)
    assert m["ipc10/rded/projector/lrs"] == pytest.approx(label_robust_score(36.0, -5.0))
    assert m["ipc10/rded/projector/label_bytes_vs_stored"] == pytest.approx(0.01)
    assert "ipc10/label_gap/projector/label_bytes_vs_stored" not in m  # no stored row on that image set
    assert m["ipc10/random/projector/top1"] == 85.0 and m["ipc10/rded/hard/top1_std"] == 0.5
    assert "ipc10/rded/hard/hlr" not in score_rows([dict(rows[0])])  # no real-data reference: no HLR
    write_results_csv(tmp_path / "r.csv", rows)
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].split(",") == RESULT_COLUMNS and len(lines) == 7
    assert lines[3].split(",")[RESULT_COLUMNS.index("hlr")] == "36"


def test_storage_report_is_the_size_of_the_files(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "b").write_bytes(b"y" * 5)
    assert storage_report({"a": tmp_path / "a", "ab": [tmp_path / "a", tmp_path / "b"]}) == {"a": 10, "ab": 15}
    assert os.path.getsize(tmp_path / "a") == 10
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage_report({"x": tmp_path / "nope.safetensors"})
