"""Any adaptation method on any classifier is a config change: ``recipe: classify`` with an ``adapter:`` section
trains only what the method trains, keeps checkpoints small, saves the adapter and evaluates it again."""
from __future__ import annotations

import json

import torch

from zoo.adapters.base import ADAPTER_CONFIG_FILE, AdapterMethod
from zoo.cli import build_recipe, run_training

SHAPES = ["data.kwargs={num_points: 128, samples_per_class: 4}", "data.batch_size=8", "trainer.epochs=1",
          "trainer.tensorboard=false", "schedule.warmup_epochs=0", "model.num_classes=10"]


def test_vida_on_a_point_cloud_model_trains_and_saves(tmp_path):
    """ViDA's two adapters on PoinTramba's attention layers (its default targets), the base frozen."""
    overrides = [*SHAPES, "model.name=pointramba_tiny", "adapter={name: vida, low_rank: 1, high_rank: 4, seed: 0}"]
    summary = run_training("pointnet/synthetic_shapes", overrides, tmp_path / "run")
    assert summary["complete"] and 0 <= summary["final"]["top1"] <= 100
    run = tmp_path / "run"
    saved = json.loads((run / "adapter" / ADAPTER_CONFIG_FILE).read_text())
    assert saved["name"] == "vida" and saved["high_rank"] == 4
    last = torch.load(run / "last.pt", weights_only=True)["model"]
    assert last and all(".vida_low." in k or ".vida_high." in k for k in last), "checkpoints hold only the adapters"

    # the saved folder holds the same adapter tensors as the checkpoint, and tools/eval.py's model takes both
    recipe, _, _ = build_recipe("pointnet/synthetic_shapes", overrides)
    method = AdapterMethod.from_saved(run / "adapter")
    fresh = method.load(recipe._create_model(dict(recipe.cfg.model)), run / "adapter")
    saved_state = method.state_dict(fresh)
    assert set(saved_state) == set(last) and all(torch.equal(saved_state[k], last[k]) for k in last)
    evaluated = recipe.build_eval_model(checkpoint_path=str(run / "last.pt"))
    assert all(torch.equal(method.state_dict(evaluated)[k], last[k]) for k in last)
    assert evaluated.eval()(torch.randn(2, 128, 3)).shape == (2, 10)


def test_lora_on_a_pointnet_head_trains_only_the_adapter(tmp_path):
    overrides = [*SHAPES, "adapter={name: lora, rank: 2, target_modules: [head.fc1, head.fc2]}"]
    run_training("pointnet/synthetic_shapes", overrides, tmp_path / "run")
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert sorted({k.rsplit(".", 2)[0] for k in last}) == ["head.fc1", "head.fc2"]
