"""The restore recipe: tiled inference equals whole-image inference when the receptive field fits in the overlap,
the PSNR loss, config errors, and tiny end-to-end runs (pre-train, then full / uniform LoRA / CoLoRA adaptation
and the no-adaptation evaluation) through tools/train.py on images written to a temporary folder."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zoo.cli import train_main
from zoo.config import ConfigError
from zoo.metrics.image import psnr
from zoo.recipes.restore import AdaptMethodConfig, RestoreEvalConfig, psnr_loss, tile_starts, tiled_forward

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "colora"


def _conv_model(layers=3):
    torch.manual_seed(0)
    mods = []
    for i in range(layers):
        mods += [nn.Conv2d(3, 3, 3, padding=1), nn.Tanh()]
    return nn.Sequential(*mods).eval()


def test_tile_starts_cover_with_overlap():
    assert tile_starts(10, 16, 4) == [0]
    s = tile_starts(50, 16, 6)
    assert s[0] == 0 and s[-1] == 34 and all(b - a <= 10 for a, b in zip(s, s[1:]))
    with pytest.raises(ValueError, match="smaller than tile"):
        tile_starts(50, 8, 8)


@pytest.mark.parametrize("shape", [(1, 3, 37, 45), (2, 3, 16, 50)])
def test_tiled_equals_whole_when_receptive_field_fits(shape):
    model = _conv_model(3)  # receptive-field radius 3
    x = torch.rand(*shape)
    with torch.no_grad():
        whole = model(x)
    torch.testing.assert_close(tiled_forward(model, x, tile=16, overlap=6), whole, rtol=1e-6, atol=1e-6)
    # with too little overlap the tile borders show: the test can fail
    assert (tiled_forward(model, x, tile=16, overlap=2) - whole).abs().max() > 1e-3
    torch.testing.assert_close(tiled_forward(model, x, tile=0), whole)


def test_tiled_nafnet_is_close_with_local_statistics():
    from zoo.registry import create_model

    torch.manual_seed(0)
    model = create_model("nafnet_tiny", width=4, enc_blk_nums=(1,), dec_blk_nums=(1,)).eval()
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        whole = model(x)
    out = tiled_forward(model, x, tile=24, overlap=16)
    assert out.shape == whole.shape and (out - whole).abs().mean() < 0.05


def test_psnr_loss_is_minus_psnr():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 3, 16, 16, generator=g)
    pred = (gt + 0.05 * torch.randn(3, 3, 16, 16, generator=g)).clamp(0, 1)
    want = -psnr(pred, gt).mean().item()
    assert psnr_loss(pred, gt).item() == pytest.approx(want, rel=1e-5)
    assert psnr_loss(pred, gt).requires_grad is False
    p = pred.clone().requires_grad_()
    psnr_loss(p, gt).backward()
    assert p.grad.abs().sum() > 0


def test_config_errors():
    with pytest.raises(ConfigError, match="method.name"):
        AdaptMethodConfig(name="adapter")
    with pytest.raises(ConfigError, match="method.beta"):
        AdaptMethodConfig(beta=2.0)
    with pytest.raises(ConfigError, match="eval.tile_overlap"):
        RestoreEvalConfig(tile=16, tile_overlap=16)


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("eval", 1)):
        d = root / split
        d.mkdir()
        for i in range(n):
            yy, xx = np.mgrid[0:40, 0:40] / 40
            img = np.stack([yy, xx, (yy + xx) / 2], -1) * 200 + rng.integers(0, 40, (40, 40, 3))
            Image.fromarray(np.uint8(np.clip(img, 0, 255))).save(d / f"{i}.png")
    return root


def _run(out: Path, config: str, *overrides: str) -> dict:
    rc = train_main([str(CONFIGS / config), *overrides, "--output", str(out)])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def test_colora_recipe_step_and_evaluate_directly(image_dirs, tmp_path):
    """The recipe without the Trainer (fast): probe + FAIG ranks under the budget, a loss, metrics and files."""
    from types import SimpleNamespace

    from zoo.recipes.restore import DatasetSpec, RestoreConfig, RestoreRecipe

    cfg = RestoreConfig(model={"name": "nafnet_tiny", "width": 4, "enc_blk_nums": [1], "dec_blk_nums": [1]})
    cfg.data.batch_size = 2
    cfg.data.train = DatasetSpec("degraded_patches", [str(image_dirs / "train")], "all",
                                 {"patch_size": 16, "degradation": "camera_noise", "num_samples": 4})
    cfg.data.eval = DatasetSpec("degraded_images", [str(image_dirs / "eval")], "all", {"degradation": "camera_noise"})
    cfg.method = AdaptMethodConfig(name="colora", budget=0.2, probe_steps=1, faig_steps=2, faig_batches=1)
    cfg.eval.save_images = 1
    recipe = RestoreRecipe(cfg)
    model = recipe.build_model()
    alloc = recipe.allocation
    assert alloc["lora_params"] <= alloc["budget"] == int(0.2 * alloc["model_params"])
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == alloc["lora_params"]
    train, ev = recipe.build_dataloaders()
    loss = recipe.training_step(model, next(iter(train)))["loss"]
    assert loss.ndim == 0 and loss.requires_grad
    acc = SimpleNamespace(device=torch.device("cpu"), is_main_process=True)
    metrics = recipe.evaluate(model.eval(), ev, acc, output_dir=tmp_path)
    assert metrics["images"] == 1 and 0 < metrics["tuned_percent"] <= 20 and math.isfinite(metrics["psnr"])
    assert (tmp_path / "colora_allocation.json").is_file() and (tmp_path / "images" / "0.png").is_file()


@pytest.mark.slow
def test_pretrain_then_adapt_end_to_end(image_dirs, tmp_path):
    data = [f"data.train.root=[{image_dirs / 'train'}]", f"data.eval.root=[{image_dirs / 'eval'}]",
            "data.eval.kwargs.max_side=40"]
    pre = _run(tmp_path / "pre", "tiny.yaml", *data)
    assert pre["final"]["tuned_percent"] == pytest.approx(100.0) and math.isfinite(pre["final"]["psnr"])
    ckpt = f"init_checkpoint={tmp_path / 'pre' / 'last.pt'}"
    adapt = [*data, ckpt, "data.train.kwargs.degradation=camera_noise", "data.eval.kwargs.degradation=camera_noise"]
    none = _run(tmp_path / "none", "tiny.yaml", *adapt, "recipe=restore_eval", "eval.save_images=1")["final"]
    assert none["trainable_params"] == 0 and (tmp_path / "none" / "images" / "0.png").is_file()
    # the same eval set (camera_noise, fixed seed) on the pre-training's final weights: the same numbers
    assert none["psnr"] == pytest.approx(pre["final"]["psnr"], abs=1e-9)
    results = {}
    for method in ("full", "lora", "colora"):
        extra = ["method.probe_steps=2", "method.faig_steps=2", "method.faig_batches=1"] if method == "colora" else []
        results[method] = _run(tmp_path / method, "tiny.yaml", *adapt, f"method.name={method}",
                               "method.budget=0.3", *extra)["final"]
    assert results["full"]["tuned_percent"] == pytest.approx(100.0)
    for method in ("lora", "colora"):
        alloc = json.loads((tmp_path / method / "colora_allocation.json").read_text())
        assert alloc["lora_params"] == results[method]["trainable_params"] <= alloc["budget"]
        assert 0 < results[method]["tuned_percent"] <= 30.0
    assert "contributions" in json.loads((tmp_path / "colora" / "colora_allocation.json").read_text())
    # the adapted checkpoint reloads through tools/eval.py's path (adapter structure rebuilt, weights strict)
    from zoo.config import load_config, validate_config
    from zoo.recipes.restore import RestoreConfig, RestoreRecipe

    cfg = validate_config(load_config(str(tmp_path / "colora" / "config.yaml")), RestoreConfig)
    recipe = RestoreRecipe(cfg)
    model = recipe.build_eval_model(checkpoint_path=str(tmp_path / "colora" / "best.pt"))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == results["colora"]["trainable_params"]
