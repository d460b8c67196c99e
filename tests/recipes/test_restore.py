"""The restore recipe: tiled inference equals whole-image inference when the receptive field fits in the overlap,
the PSNR loss, config errors (old keys name the new ones), the recipe's steps and evaluation through metric objects,
LoRA on NAFNet as a config change that trains and saves, CoLoRA's calibration under bf16 autocast, a 2-process
evaluation equal to one process, and tiny end-to-end runs (pre-train, then full / uniform LoRA / CoLoRA adaptation
and the no-adaptation evaluation) through tools/train.py on images written to a temporary folder."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zoo.cli import load_run_config, train_main
from zoo.config import ConfigError
from zoo.metrics.image import psnr
from zoo.restoration.evaluate import RestoreEvalConfig
from zoo.restoration.losses import psnr_loss
from zoo.restoration.tiling import tile_starts, tiled_forward

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parents[1] / "configs" / "colora"
TINY = str(CONFIGS / "tiny.yaml")


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


def test_config_errors_name_the_key_and_old_keys_name_the_new_ones():
    with pytest.raises(ConfigError, match="eval.tile_overlap"):
        RestoreEvalConfig(tile=16, tile_overlap=16)
    with pytest.raises(ConfigError, match="model.checkpoint_path"):
        load_run_config(TINY, ["init_checkpoint=x.pt"])
    with pytest.raises(ConfigError, match="adapter.name=colora"):
        load_run_config(TINY, ["method.name=colora"])
    with pytest.raises(ConfigError, match="adapter.budgett"):
        load_run_config(TINY, ["adapter.name=colora", "adapter.budgett=0.1"])
    with pytest.raises(ConfigError, match="adapter.name"):
        load_run_config(TINY, ["adapter.name=colorra"])
    with pytest.raises(ConfigError, match="restore_eval"):  # it trains nothing: an adapter would be ignored
        load_run_config(TINY, ["recipe=restore_eval", "adapter.name=colora"])
    # every shipped adaptation config names a registered method with valid keys
    for name in ("adapt", "adapt_lora", "adapt_colora"):
        _, cfg, _ = load_run_config(str(CONFIGS / f"{name}.yaml"), ["model.checkpoint_path=x.pt"])
        assert cfg.adapter["name"] == ("full" if name == "adapt" else "colora")


# ------------------------------------------------------------------------------------------ data, runs
@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    """3 training images (40 x 40) and 3 evaluation images of different sizes (an odd count: an uneven last batch
    over 2 processes)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, sizes in (("train", [(40, 40)] * 3), ("eval", [(40, 40), (32, 48), (24, 40)])):
        d = root / split
        d.mkdir()
        for i, (h, w) in enumerate(sizes):
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            img = np.stack([yy, xx, (yy + xx) / 2], -1) * 200 + rng.integers(0, 40, (h, w, 3))
            Image.fromarray(np.uint8(np.clip(img, 0, 255))).save(d / f"{i}.png")
    return root


def _data(image_dirs, degradation="camera_noise"):
    return [f"data.train.root=[{image_dirs / 'train'}]", f"data.eval.root=[{image_dirs / 'eval'}]",
            "data.eval.kwargs.max_side=40", f"data.train.kwargs.degradation={degradation}",
            f"data.eval.kwargs.degradation={degradation}"]


def _run(out: Path, config: str, *overrides: str) -> dict:
    rc = train_main([config, *overrides, "--output", str(out)])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory):
    """A seeded nafnet_tiny (the tiny config's sizes) saved as safetensors: the ``model.checkpoint_path`` to adapt.
    Its blocks' residual scales are non-zero, as after training (at their zero init every block is the identity and
    its convs get no gradient)."""
    from zoo.files import write_safetensors_file
    from zoo.registry import create_model

    torch.manual_seed(0)
    model = create_model("nafnet_tiny", width=4, enc_blk_nums=[1], dec_blk_nums=[1])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(std=0.5)
    path = tmp_path_factory.mktemp("start") / "start.safetensors"
    write_safetensors_file(model.state_dict(), path)
    return path


def _recipe(*overrides):
    from zoo.cli import build_recipe

    return build_recipe(TINY, list(overrides))[0]


def _built(recipe, mixed_precision="no"):
    """What the Trainer does before it prepares the model: ``build_model``, then ``calibrate`` with the run's
    accelerator (here a CPU one with ``mixed_precision``)."""
    from zoo.engine.accel import RunAccelerator

    handle = RunAccelerator(cpu=True, mixed_precision=mixed_precision)
    with handle.active() as accelerator:
        return recipe.calibrate(recipe.build_model(), accelerator)


def test_colora_recipe_calibrates_steps_and_evaluates_through_metric_objects(image_dirs, start_weights, tmp_path):
    """The recipe without the Trainer (fast): probe + FAIG ranks under the budget, a loss, gathered metrics, files."""
    from zoo.engine.evaluate import evaluate_model

    recipe = _recipe(*_data(image_dirs), f"model.checkpoint_path={start_weights}", "adapter.name=colora",
                     "adapter.budget=0.2", "adapter.probe_steps=1", "adapter.faig_steps=2", "adapter.faig_batches=1",
                     "eval.save_images=1")
    rng = torch.get_rng_state()
    model = _built(recipe)
    alloc = recipe.adapter.allocation
    assert alloc["lora_params"] <= alloc["budget"] == int(0.2 * alloc["model_params"])
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == alloc["lora_params"]
    assert set(alloc["contributions"]) == set(alloc["ranks"])
    train, _ = recipe.build_dataloaders()
    loss = recipe.training_step(model, next(iter(train)))["loss"]
    assert loss.ndim == 0 and loss.requires_grad
    metrics = evaluate_model(recipe, model, output_dir=tmp_path)
    assert metrics["images"] == 3 and 0 < metrics["tuned_percent"] <= 20 and math.isfinite(metrics["psnr"])
    assert (tmp_path / "colora_allocation.json").is_file() and (tmp_path / "images" / "0.png").is_file()
    assert (tmp_path / "images" / "triptychs.png").is_file()   # the labelled figure beside the pixel-exact PNGs
    # the per-image scores are the functions' own, averaged image by image
    from zoo.metrics.image import image_quality

    loader = recipe.build_eval_loader()
    scores = [image_quality(model(lq[None]).clamp(0, 1).detach(), gt[None], quantize=True)["psnr"].item()
              for b in loader for lq, gt in zip(b["lq"], b["gt"])]
    assert metrics["psnr"] == pytest.approx(sum(scores) / 3, abs=1e-9)
    # the adapter's initialisation does not depend on the probe (its own seeded loader, forked RNG): with the same
    # ranks given (no probe), the same global RNG draws and the same initial deltas
    torch.set_rng_state(rng)
    again = _recipe(*_data(image_dirs), f"model.checkpoint_path={start_weights}", "adapter.name=colora",
                    "adapter.budget=0.2", "adapter.probe_steps=2", "adapter.faig_steps=2")
    first = _built(again)
    after_probe = torch.get_rng_state()
    torch.set_rng_state(rng)
    known = _recipe(*_data(image_dirs), f"model.checkpoint_path={start_weights}", "adapter.name=colora",
                    "adapter.budget=0.2")
    known.adapter.config.ranks = dict(again.adapter.allocation["ranks"])
    second = _built(known)
    assert not known.adapter.contributions and torch.equal(after_probe, torch.get_rng_state())
    for (n, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), n


def test_colora_calibration_under_bf16_autocast(image_dirs, start_weights):
    """trainer.mixed_precision=bf16: the probe and FAIG run under autocast through the accelerator's backward."""
    recipe = _recipe(*_data(image_dirs), f"model.checkpoint_path={start_weights}", "trainer.mixed_precision=bf16",
                     "adapter.name=colora", "adapter.budget=0.2", "adapter.probe_steps=2", "adapter.faig_steps=2",
                     "adapter.faig_batches=1")
    dtypes = set()
    build = recipe._model

    def model_with_hook(*args, **kwargs):  # records the dtype of the first conv's outputs (the probe's copies too)
        model = build(*args, **kwargs)
        model.intro.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
        return model

    recipe._model = model_with_hook
    model = _built(recipe, mixed_precision="bf16")
    assert dtypes == {torch.bfloat16}
    contributions = recipe.adapter.allocation["contributions"]
    assert all(math.isfinite(v) and v >= 0 for v in contributions.values()) and sum(contributions.values()) > 0
    assert 0 < recipe.adapter.num_trainable(model) <= recipe.adapter.allocation["budget"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_lora_on_nafnet_is_a_config_change_that_trains_and_saves(image_dirs, start_weights, tmp_path):
    """``adapter.name=lora`` on the restore config: LoRA on the 1x1 convs of a NAFNet trains, its checkpoint reloads
    through tools/eval.py's path with the same numbers, and the adapter saves / loads / switches off in the adapter
    format (off: the starting weights' outputs)."""
    from zoo.adapters.base import AdapterMethod
    from zoo.engine.evaluate import evaluate_model
    from zoo.hub import load_checkpoint
    from zoo.registry import create_model

    def start_model():
        model = create_model("nafnet_tiny", width=4, enc_blk_nums=[1], dec_blk_nums=[1])
        load_checkpoint(model, start_weights)
        return model.eval()

    lora = ["adapter.name=lora", "adapter.target_modules=[conv1,conv3,conv4,conv5]", "adapter.rank=2",
            "adapter.init=lora", "trainer.max_steps=2", "optim.lr=1e-2"]
    final = _run(tmp_path / "lora", TINY, *_data(image_dirs), f"model.checkpoint_path={start_weights}", *lora)["final"]
    lora_params = sum((c.in_channels + c.out_channels) * 2 for n, c in start_model().named_modules()
                      if n.endswith(("conv1", "conv3", "conv4", "conv5")))
    assert final["trainable_params"] == lora_params and final["images"] == 3
    recipe = _recipe(*_data(image_dirs), *lora)
    model = recipe.build_eval_model(checkpoint_path=str(tmp_path / "lora" / "last.pt")).eval()
    again = evaluate_model(recipe, model)
    assert again["psnr"] == pytest.approx(final["psnr"], abs=1e-9) and again["trainable_params"] == lora_params
    recipe.adapter.save(model, tmp_path / "adapter")
    loaded = AdapterMethod.from_saved(tmp_path / "adapter")
    adapted = loaded.load(start_model(), tmp_path / "adapter")
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), model(x))
        assert (adapted(x) - start_model()(x)).abs().max() > 1e-6  # LoRA changed the outputs...
        loaded.disable(adapted)
        torch.testing.assert_close(adapted(x), start_model()(x))  # ...and switches off


@pytest.mark.ddp
def test_two_process_evaluation_equals_one_process(image_dirs, start_weights, tmp_path):
    """2 gloo processes, 3 evaluation images of different sizes (the last batch uneven): the evaluation of a
    checkpoint (tools/eval.py's path) and a short training's final evaluation give one process's numbers."""
    from zoo.cli import build_recipe
    from zoo.engine.evaluate import evaluate_model
    from zoo.engine.trainer import Trainer

    overrides = [*_data(image_dirs), "trainer.max_steps=2", "data.batch_size=2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": str(HERE.parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "restore_ddp_worker.py"), str(tmp_path / "ddp"), TINY, str(start_weights), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    recipe, cfg, _ = build_recipe(TINY, overrides)
    single_eval = evaluate_model(recipe, recipe.build_eval_model(checkpoint_path=str(start_weights)))
    recipe, cfg, _ = build_recipe(TINY, [*overrides, f"model.checkpoint_path={start_weights}"])
    single_train = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, tmp_path / "single", seed=cfg.seed).fit()
    for got in ranks:
        for kind, want in (("evaluate", single_eval), ("train", single_train["final"])):
            assert got[kind]["images"] == want["images"] == 3
            for key in ("psnr", "ssim", "input_psnr", "input_ssim"):
                assert got[kind][key] == pytest.approx(want[key], abs=1e-9 if kind == "evaluate" else 1e-4), (kind, key)
    assert ranks[0] == ranks[1]


@pytest.mark.slow
def test_pretrain_then_adapt_end_to_end(image_dirs, tmp_path):
    data = _data(image_dirs, degradation="prod")[:3]
    pre = _run(tmp_path / "pre", TINY, *data)
    assert pre["final"]["tuned_percent"] == pytest.approx(100.0) and math.isfinite(pre["final"]["psnr"])
    ckpt = f"model.checkpoint_path={tmp_path / 'pre' / 'last.pt'}"
    adapt = [*_data(image_dirs), ckpt]
    none = _run(tmp_path / "none", TINY, *adapt, "recipe=restore_eval", "eval.save_images=1")["final"]
    assert none["trainable_params"] == 0 and none["tuned_percent"] == 0.0
    assert (tmp_path / "none" / "images" / "0.png").is_file() and not (tmp_path / "none" / "last.pt").exists()
    # the same eval set (camera_noise, fixed seed) on the pre-training's final weights: the same numbers
    pre_on_target = _run(tmp_path / "none2", TINY, *_data(image_dirs), "recipe=restore_eval",
                         f"model.checkpoint_path={tmp_path / 'pre'}")["final"]  # a run directory works too
    assert none["psnr"] == pre_on_target["psnr"]
    adapters = {"full": ["adapter.name=full"],
                "lora": ["adapter.name=colora", "adapter.rank_rule=uniform", "adapter.budget=0.3"],
                "colora": ["adapter.name=colora", "adapter.budget=0.3", "adapter.probe_steps=2",
                           "adapter.faig_steps=2", "adapter.faig_batches=1"]}
    results = {name: _run(tmp_path / name, TINY, *adapt, *extra)["final"] for name, extra in adapters.items()}
    assert results["full"]["tuned_percent"] == pytest.approx(100.0)
    for name in ("lora", "colora"):
        alloc = json.loads((tmp_path / name / "colora_allocation.json").read_text())
        assert alloc["lora_params"] == results[name]["trainable_params"] <= alloc["budget"]
        assert 0 < results[name]["tuned_percent"] <= 30.0
    alloc = json.loads((tmp_path / "colora" / "colora_allocation.json").read_text())
    assert "contributions" in alloc and alloc["faig_aggregate"] == "per_example"  # the official FAIG aggregation
    for name in ("none", "full", "colora"):  # per-image scores for a study's paired bootstrap
        per_image = np.load(tmp_path / name / "per_example.npz")
        final = none if name == "none" else results[name]
        assert per_image["psnr"].shape == (final["images"],) and per_image["example_id"].shape == (final["images"],)
        assert per_image["psnr"].mean() == pytest.approx(final["psnr"])
        assert per_image["ssim"].mean() == pytest.approx(final["ssim"])
    # the adapted checkpoint reloads through tools/eval.py's path (ranks from the run, weights strict)
    from zoo.config import load_config, validate_config
    from zoo.recipes.restore import RestoreConfig, RestoreRecipe

    cfg = validate_config(load_config(str(tmp_path / "colora" / "config.yaml")), RestoreConfig)
    recipe = RestoreRecipe(cfg)
    model = recipe.build_eval_model(checkpoint_path=str(tmp_path / "colora" / "last.pt"))
    assert not recipe.adapter.contributions  # no probe ran: the ranks were read back
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == results["colora"]["trainable_params"]
    (tmp_path / "colora" / "colora_allocation.json").unlink()
    with pytest.raises(ConfigError, match="adapter.ranks"):  # no probe is re-run silently
        RestoreRecipe(cfg).build_eval_model(checkpoint_path=str(tmp_path / "colora" / "last.pt"))
