"""The ``segment`` recipe end to end on a tiny synthetic ShapeNetPart-layout set: training (CE + auxiliary losses,
official augmentation), val selection, test evaluation of the selected checkpoint with tools/eval.py, voting."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from zoo.data.pointcloud.synthetic_parts import write_synthetic_shapenetpart
from zoo.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pointramba" / "shapenetpart_small.yaml"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic_shapenetpart(tmp_path_factory.mktemp("syn"), {"train": 2, "val": 1, "test": 1},
                                        num_points=300, seed=0)


def _overrides(root: Path, **extra) -> list[str]:
    base = {"data.root": str(root), "model.name": "pointramba_partseg_tiny", "data.kwargs.num_points": 64,
            "data.batch_size": 4, "trainer.epochs": 1, "trainer.tensorboard": "false", "trainer.log_every": 1}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_train_select_on_val_then_evaluate_test(synth, tmp_path):
    from zoo.cli import eval_main, train_main

    out = tmp_path / "run"
    assert train_main([str(CONFIG), *_overrides(synth), "--output", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    final = summary["final"]
    assert summary["best"]["metric"] == "instance_miou" and final["num_shapes"] == 5  # val: 1 shape x 5 categories
    assert 0 <= final["instance_miou"] <= 100 and 0 <= final["class_miou"] <= 100 and 0 <= final["accuracy"] <= 100  # percent
    assert {f"per_category/{c}" for c in ("Airplane", "Chair", "Lamp", "Mug", "Table")} <= set(final)
    log = (out / "metrics.csv").read_text()
    assert "train_glr" in log and "train_importance" in log and "train_ce" in log
    test_dir = tmp_path / "test"
    assert eval_main(["--config", str(CONFIG), "--checkpoint", str(out / "best.pt"), *_overrides(synth),
                      "data.eval_split=test", "--output", str(test_dir)]) == 0
    test = json.loads((test_dir / "metrics.json").read_text())
    assert test["num_shapes"] == 5 and "Table" in (test_dir / "part_iou_table.txt").read_text()


def _recipe(synth, *extra):
    from zoo.cli import build_recipe

    recipe, _, _ = build_recipe(str(CONFIG), [*_overrides(synth), *extra])
    return recipe


def test_training_step_is_ce_plus_auxiliary_losses(synth):
    recipe = _recipe(synth, "data.augment=false")
    torch.manual_seed(0)
    model = recipe.build_model().train()
    batch = next(iter(recipe.build_dataloaders()[0]))
    points, category, target = batch
    assert points.shape == (4, 64, 3) and category.shape == (4,) and target.shape == (4, 64)
    torch.manual_seed(1)
    losses = recipe.training_step(model, batch)
    torch.manual_seed(1)
    logits = model(points, category)
    aux = model.auxiliary_losses()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), target.reshape(-1))
    torch.testing.assert_close(losses["ce"], ce.detach())
    torch.testing.assert_close(losses["loss"], ce + aux["glr"] + aux["importance"])


def test_augmentation_scales_and_shifts_each_cloud(synth):
    recipe = _recipe(synth)
    pts = torch.randn(3, 20, 3)
    torch.manual_seed(0)
    out = recipe.augment(pts)
    ratio = (out - out.mean(1, keepdim=True)) / (pts - pts.mean(1, keepdim=True))
    per_cloud = ratio.reshape(3, -1)
    assert torch.allclose(per_cloud, per_cloud[:, :1].expand_as(per_cloud), atol=1e-4)  # one scale per cloud
    assert ((per_cloud[:, 0] >= 0.8) & (per_cloud[:, 0] <= 1.2)).all()
    assert torch.equal(_recipe(synth, "data.augment=false").augment(pts), pts)


def test_voting_averages_probabilities(synth):
    recipe = _recipe(synth, "eval.num_votes=3")
    model = recipe.build_model().eval()
    loader = recipe.build_eval_loader()
    acc = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, process_index=0,
                          gather_for_metrics=lambda x: x, unwrap_model=lambda m: m)
    with torch.no_grad():
        m = recipe.evaluate(model, loader, acc)
        points, category, _ = next(iter(loader))
        scores = recipe.predict(model, points, category, torch.Generator().manual_seed(0))
    assert 0 <= m["instance_miou"] <= 100 and "loss" not in m
    torch.testing.assert_close(scores.sum(-1), torch.ones(scores.shape[:2]))


def test_bad_config_values_are_named():
    from zoo.recipes.segment import SegmentDataConfig, SegmentEvalConfig

    with pytest.raises(ConfigError, match="data.batch_size"):
        SegmentDataConfig(batch_size=0)
    with pytest.raises(ConfigError, match="data.scale_low"):
        SegmentDataConfig(scale_low=1.3, scale_high=1.2)
    with pytest.raises(ConfigError, match="eval.num_votes"):
        SegmentEvalConfig(num_votes=0)


def test_majority_baseline_and_figure(synth, tmp_path):
    recipe = _recipe(synth, "eval.majority_baseline=true", "eval.figure_shapes=3")
    model = recipe.build_model().eval()
    acc = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, process_index=0,
                          gather_for_metrics=lambda x: x, unwrap_model=lambda m: m, wait_for_everyone=lambda: None)
    with torch.no_grad():
        m = recipe.evaluate(model, recipe.build_eval_loader(), acc, output_dir=tmp_path)
    assert 0 < m["baseline_instance_miou"] < 100 and 0 < m["baseline_accuracy"] <= 100  # percent
    from zoo.data.pointcloud.shapenetpart import CATEGORIES, SEG_CLASSES

    majority = recipe.majority_parts
    assert set(majority) == {CATEGORIES.index(c) for c in ("Airplane", "Chair", "Lamp", "Mug", "Table")}
    assert all(p in SEG_CLASSES[CATEGORIES[c]] for c, p in majority.items())
    assert majority[CATEGORIES.index("Mug")] == 37  # the body has far more surface than the handle
    assert (tmp_path / "partseg_predictions.png").stat().st_size > 1000
    assert "majority-part baseline" in (tmp_path / "part_iou_table.txt").read_text()
