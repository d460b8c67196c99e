"""The latency table: each part of a child timed once, cached in its JSON file and reused."""
from __future__ import annotations

import json

import pytest
import torch

import zoo
from zoo.nas import LatencyTable


def test_latency_table_is_measured_once_and_cached(tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model("bignas_mnist")
    table = LatencyTable(tmp_path / "lat.json", repeats=3)
    small, large = model.min_subnet(), model.max_subnet()
    ms = table.predict(model.export_subnet(small), small["resolution"])
    assert ms > 0 and table.measured > 0
    stored = json.loads((tmp_path / "lat.json").read_text())
    assert len(stored) == table.measured and all(v > 0 for v in stored.values())
    # the prediction is the sum of the parts' entries
    assert ms == pytest.approx(sum(stored.values()))
    again = LatencyTable(tmp_path / "lat.json", repeats=3)
    assert again.predict(model.export_subnet(small), small["resolution"]) == pytest.approx(ms)
    assert again.measured == 0
    again.predict(model.export_subnet(large), large["resolution"])  # other parts: measured and added
    assert again.measured > 0 and len(json.loads((tmp_path / "lat.json").read_text())) == len(stored) + again.measured
