"""The online error of a stream domain: integer counts, per group when domains are mixed, batching-independent."""
from __future__ import annotations

import pytest
import torch

from zoo.metrics.base import MetricSet
from zoo.metrics.stream import OnlineErrorMetric


def test_error_counts_and_groups():
    correct = torch.tensor([1, 0, 1, 1, 0, 1, 0])
    group = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    plain = OnlineErrorMetric()
    plain.update({"correct": correct})
    assert plain.compute() == {"error": pytest.approx(100 * 3 / 7), "correct": 4, "count": 7}
    grouped = MetricSet([OnlineErrorMetric(["a", "b", "c", "absent"])])
    for part in (slice(0, 3), slice(3, 7)):  # batching does not change the numbers
        grouped.update({"correct": correct[part], "group": group[part]})
    values = grouped.compute()
    assert values["error/a"] == pytest.approx(50.0) and values["error/b"] == pytest.approx(100 / 3)
    assert values["error/c"] == pytest.approx(50.0) and values["count/b"] == 3
    assert "error/absent" not in values


def test_an_empty_domain_is_an_error():
    with pytest.raises(RuntimeError, match="no examples"):
        OnlineErrorMetric().compute()


def test_error_files(tmp_path):
    from zoo.metrics.stream import save_domain_errors

    csv_path, png_path = save_domain_errors({"fog": 12.345, "snow": 50.0}, 31.1725, tmp_path, title="tent")
    assert csv_path.read_text().splitlines() == ["domain,error", "fog,12.35", "snow,50.00", "mean,31.17"]
    assert png_path.stat().st_size > 1000
