"""Part-segmentation metrics against a hand computation (restricted argmax, absent-part rule, instance / class mIoU)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zoo.data.pointcloud.shapenetpart import CATEGORIES, SEG_CLASSES
from zoo.metrics.segmentation import (
    PartSegmentationMeter,
    majority_part_by_category,
    part_ious,
    restricted_argmax,
    shape_iou,
)

TOY = {"A": [0, 1], "B": [2, 3, 4]}


def _logits_for(pred: list[int], num_parts: int = 5, decoy: int | None = None) -> torch.Tensor:
    """(1, N, P) logits whose argmax is ``pred``; ``decoy`` gets an even larger score on every point."""
    x = torch.zeros(1, len(pred), num_parts)
    for n, p in enumerate(pred):
        x[0, n, p] = 5.0
        if decoy is not None:
            x[0, n, decoy] = 9.0
    return x


def test_part_iou_and_absent_part_rule():
    pred, target = np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1])
    np.testing.assert_allclose(part_ious(pred, target, [0, 1]), [1 / 2, 2 / 3])
    # part 1 absent from both prediction and truth: IoU 1; a part predicted but absent from the truth: IoU 0
    np.testing.assert_allclose(part_ious(np.zeros(4, int), np.zeros(4, int), [0, 1]), [1.0, 1.0])
    np.testing.assert_allclose(part_ious(np.array([2, 3, 3, 4]), np.array([2, 2, 3, 3]), [2, 3, 4]),
                               [1 / 2, 1 / 3, 0.0])
    assert shape_iou(pred, target, [0, 1]) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_argmax_is_restricted_to_the_shapes_category():
    logits = torch.cat([_logits_for([2, 3, 3, 4], decoy=0), _logits_for([0, 1, 1, 1], decoy=4)])
    pred = restricted_argmax(logits, torch.tensor([1, 0]), [TOY["A"], TOY["B"]])
    assert pred.tolist() == [[2, 3, 3, 4], [0, 1, 1, 1]]  # the decoys belong to the other category
    assert logits.argmax(-1)[0].tolist() == [0, 0, 0, 0]


def test_meter_matches_the_hand_computation():
    meter = PartSegmentationMeter(TOY)
    meter.update(_logits_for([0, 1, 1, 1]), torch.tensor([0]), torch.tensor([[0, 0, 1, 1]]))  # IoU (1/2 + 2/3)/2
    meter.update(torch.tensor([[0, 0, 0, 0]]), torch.tensor([0]), torch.tensor([[0, 0, 0, 0]]))  # IoU 1 (absent)
    meter.update(_logits_for([2, 3, 3, 4], decoy=0), torch.tensor([1]), torch.tensor([[2, 2, 3, 3]]))  # 5/18
    m = meter.compute()
    s1, s2, s3 = 7 / 12, 1.0, (1 / 2 + 1 / 3 + 0) / 3
    assert m["instance_miou"] == pytest.approx((s1 + s2 + s3) / 3)
    assert m["per_category"] == pytest.approx({"A": (s1 + s2) / 2, "B": s3})
    assert m["class_miou"] == pytest.approx(((s1 + s2) / 2 + s3) / 2)
    assert m["accuracy"] == pytest.approx(9 / 12)
    # per-part accuracy over the parts present in the truth: 0 -> 5/6, 1 -> 2/2, 2 -> 1/2, 3 -> 1/2 (4 never occurs)
    assert m["class_avg_accuracy"] == pytest.approx((5 / 6 + 1 + 0.5 + 0.5) / 4)
    assert m["num_shapes"] == 3
    table = meter.table()
    assert "A" in table and f"{100 * m['instance_miou']:6.2f}" in table


def test_category_without_shapes_is_left_out_of_class_miou():
    meter = PartSegmentationMeter({name: SEG_CLASSES[name] for name in CATEGORIES})
    meter.update(torch.tensor([[47, 47, 48]]), torch.tensor([CATEGORIES.index("Table")]), torch.tensor([[47, 48, 48]]))
    m = meter.compute()
    want = (1 / 2 + 1 / 2 + 1.0) / 3  # Table parts 47, 48 and the absent 49
    assert m["class_miou"] == pytest.approx(want) and m["instance_miou"] == pytest.approx(want)
    assert list(m["per_category"]) == ["Table"]
    assert math.isnan(PartSegmentationMeter(TOY).compute()["instance_miou"])


def test_meter_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"predictions \(1, 4\) and targets \(1, 3\)"):
        PartSegmentationMeter(TOY).update(torch.zeros(1, 4, dtype=torch.long), torch.tensor([0]),
                                          torch.zeros(1, 3, dtype=torch.long))


def test_majority_part_baseline():
    samples = [(0, np.array([0, 1, 1])), (0, np.array([1, 0, 0, 0])), (1, np.array([3, 2, 2])),
               (1, np.array([3, 3, 2]))]
    assert majority_part_by_category(samples) == {0: 0, 1: 2}  # category 1: a 3-3 tie goes to the lower label
    meter = PartSegmentationMeter(TOY)
    meter.update(torch.tensor([[0, 0, 0, 0]]), torch.tensor([0]), torch.tensor([[0, 0, 1, 1]]))
    assert meter.compute()["instance_miou"] == pytest.approx((1 / 2 + 0) / 2)
