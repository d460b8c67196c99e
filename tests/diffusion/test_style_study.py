"""The SaRA study's pieces (zoo/diffusion/style_eval.py, zoo/diffusion/memory.py, zoo/recipes/style_study.py): the
paired generation items, reading metrics at equal style, picking the learning rates on a sweep, the exact
training-state bytes of full / LoRA / SaRA, the study configs against the shipped model, and (slow) the whole
sweep -> choice -> equal-style pipeline on a tiny Stable Diffusion."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from zoo.diffusion.style_eval import (bracketing_learning_rates, generation_items, interpolate_at,  # noqa: E402
                                      relative_to_base)

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ generation items
def test_styled_and_plain_items_share_noise_and_example_ids():
    styled = generation_items(" in brick style", per_digit=3, seed=7)
    plain = generation_items("", per_digit=3, seed=7)
    assert len(styled) == len(plain) == 30
    assert [x["seed"] for x in styled] == [x["seed"] for x in plain]
    assert [x["example"] for x in styled] == list(range(30))
    assert styled[13] == {"prompt": "a handwritten digit three in brick style", "seed": 7 + 1000 + 3, "digit": 3,
                          "example": 13}
    assert len({x["seed"] for x in plain}) == 30


def test_relative_to_base_gain_and_leak():
    out = relative_to_base({"style_gram": 4.0, "plain_gram": 9.0, "fid_plain": 80.0},
                           {"style_gram": 16.0, "plain_gram": 12.0})
    assert out["style_gain"] == pytest.approx(0.75) and out["leak"] == pytest.approx(0.25)
    assert out["fid_plain"] == 80.0


# ------------------------------------------------------------------------------------------ equal style
def test_interpolate_at_reads_the_line_and_keeps_per_example_means():
    lo = {"style_gain": 0.2, "fid_plain": 90.0, "fd_plain": 10.0, "method": "lora", "flag": True}
    hi = {"style_gain": 0.6, "fid_plain": 50.0, "fd_plain": 50.0, "method": "lora", "flag": True}
    rng = np.random.default_rng(0)
    a, b = rng.choice([0.0, 100.0], 40), rng.choice([0.0, 100.0], 40)
    ids = np.arange(40)
    values, arrays, t = interpolate_at(lo, hi, 0.5, per_example_lo={"fid_plain": a, "example_id": ids},
                                       per_example_hi={"fid_plain": b, "example_id": ids})
    assert t == pytest.approx(0.75)
    assert values == {"style_gain": pytest.approx(0.5), "fid_plain": pytest.approx(60.0),
                      "fd_plain": pytest.approx(40.0)}  # strings and booleans are not interpolated
    assert arrays["fid_plain"].mean() == pytest.approx(0.25 * a.mean() + 0.75 * b.mean())
    assert np.array_equal(arrays["example_id"], ids)
    # outside the two runs: extrapolated, t says so
    assert interpolate_at(lo, hi, 0.8)[2] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="different examples"):
        interpolate_at(lo, hi, 0.5, per_example_lo={"fid_plain": a, "example_id": ids},
                       per_example_hi={"fid_plain": b, "example_id": ids[::-1]})
    with pytest.raises(ValueError, match="no line"):
        interpolate_at(lo, dict(hi, style_gain=0.2), 0.5)


def test_bracketing_learning_rates_picks_adjacent_pair_and_log_interpolates():
    points = [(4e-4, 0.55), (1e-4, 0.05), (2e-4, 0.3), (8e-4, 0.9)]
    got = bracketing_learning_rates(points, 0.5)
    assert (got["lo"], got["hi"]) == (2e-4, 4e-4)
    t = (0.5 - 0.3) / (0.55 - 0.3)
    assert got["lr_at_target"] == pytest.approx(math.exp((1 - t) * math.log(2e-4) + t * math.log(4e-4)))
    with pytest.raises(ValueError, match="widen the sweep"):
        bracketing_learning_rates(points, 0.95)


# ------------------------------------------------------------------------------------------ memory
def _step(model, opt, x):
    model(x).pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_training_state_bytes_full_lora_and_sara_exactly():
    from zoo.adapters.base import build_adapter
    from zoo.adapters.sara import SaRAOptimizer
    from zoo.diffusion.memory import model_tensor_bytes, training_state_bytes

    x = torch.randn(4, 32)

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 8))

    n = 32 * 16 + 16 + 16 * 8 + 8
    full = net()
    frozen = model_tensor_bytes(full)
    opt = torch.optim.AdamW(full.parameters(), lr=1e-3)
    _step(full, opt, x)
    got = training_state_bytes(full, opt, frozen)
    # AdamW: two fp32 moments per entry and one fp32 step counter per tensor (4 tensors)
    assert got == {"trainable": n, "adapter_bytes": 0, "grad_bytes": 4 * n, "optimizer_bytes": 8 * n + 4 * 4,
                   "state_bytes": 12 * n + 16}

    lora = net()
    frozen = model_tensor_bytes(lora)
    method = build_adapter({"name": "lora", "rank": 2, "target_modules": ["0", "1"]})
    method.apply(lora)
    params = [p for p in lora.parameters() if p.requires_grad]
    r = 2 * (32 + 16) + 2 * (16 + 8)
    assert sum(p.numel() for p in params) == r
    opt = torch.optim.AdamW(params, lr=1e-3)
    _step(lora, opt, x)
    got = training_state_bytes(lora, opt, frozen)
    assert got["trainable"] == r and got["grad_bytes"] == 4 * r and got["optimizer_bytes"] == 8 * r + 4 * len(params)
    assert got["adapter_bytes"] >= 4 * r  # A and B (plus any buffers the adapter keeps)

    sara = net()
    frozen = model_tensor_bytes(sara)
    threshold = float(torch.cat([p.detach().abs().flatten() for p in sara.parameters()]).quantile(0.1))
    k = sum(int((p.detach().abs() < threshold).sum()) for p in sara.parameters())
    opt = SaRAOptimizer(sara, threshold, lr=1e-3, weight_decay=0.0)
    _step(sara, opt, x)
    got = training_state_bytes(sara, opt, frozen)
    tensors = len(opt.param_groups[0]["params"])
    # per selected entry: int32 position + original value + trained value (adapter), its gradient, two moments
    assert got["trainable"] == k
    assert got["adapter_bytes"] == 12 * k and got["grad_bytes"] == 4 * k
    assert got["optimizer_bytes"] == 8 * k + 4 * tensors


class _TinyRecipe:
    """The four recipe methods :func:`zoo.diffusion.memory.measure_recipe_step` calls, on a two-layer net."""

    class cfg:
        optim = {"lr": 1e-3}

    def build_dataloaders(self):
        return [{"x": torch.randn(4, 32)}], None

    def build_model(self):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 8))

    def configure_optimizer(self, model, optim):
        return torch.optim.AdamW(model.parameters(), lr=optim["lr"])

    def training_step(self, model, batch):
        return {"loss": model(batch["x"]).pow(2).mean()}


def test_measure_recipe_step_counts_a_built_recipe_and_imports_no_cli():
    import zoo.diffusion.memory as memory
    from zoo.diffusion.memory import measure_recipe_step

    n = 32 * 16 + 16 + 16 * 8 + 8
    got = measure_recipe_step(_TinyRecipe(), repeat=2)
    assert got["trainable"] == n and got["grad_bytes"] == 4 * n and got["state_bytes"] == 12 * n + 16
    assert got["step_ms"] > 0
    assert got["peak_step_bytes"] is None or got["peak_step_bytes"] >= 0
    assert "zoo.cli" not in Path(memory.__file__).read_text()  # built from zoo.config + the recipe registry


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("study_file", ["study.yaml", "study_all_methods.yaml"])
def test_study_configs_match_the_shipped_model_and_the_sweep_choice(study_file):
    """The SaRA threshold of the study trains the stated share of the shipped UNet; LoRA's rank trains as many
    parameters (within 10 %); the learning rates of each study config (configs/sara/study*.yaml) are those the
    validation sweep chose (configs/sara/lr_choice.json, the sweep's style_lr_choice output) at the target style gain
    the equal stage uses, and SaRA's two settings differ only in the official weight decay and moment reset."""
    pytest.importorskip("diffusers")
    import yaml

    from zoo.adapters.base import build_adapter
    from zoo.diffusion.pretrained import pretrained_pipeline_dir
    from diffusers import UNet2DConditionModel

    study = yaml.safe_load((REPO / "configs/sara" / study_file).read_text())
    stages = {s["name"]: s for s in study["pipeline"]}
    variants = stages["finetune"]["variants"]
    unet_dir = pretrained_pipeline_dir("tiny_t2i_mnist") / "unet"

    def count(adapter):
        unet = UNet2DConditionModel.from_pretrained(str(unet_dir), torch_dtype=torch.float32)
        method = build_adapter(adapter)
        return method.num_trainable(method.apply(unet))

    sara = variants["sara.lo"]["adapter"]
    unet = UNet2DConditionModel.from_pretrained(str(unet_dir), torch_dtype=torch.float32)
    w = torch.cat([p.detach().abs().flatten().float() for p in unet.parameters()])
    share = (w < sara["threshold"]).double().mean().item()
    assert share == pytest.approx(0.05, abs=0.002)
    n_sara, n_lora = count(sara), count(variants["lora.lo"]["adapter"])
    assert abs(n_lora - n_sara) <= 0.1 * n_sara
    choice = json.loads((REPO / "configs/sara/lr_choice.json").read_text())["final"]
    assert stages["equal"]["overrides"]["equal.target"] == choice["target"]
    methods = {v.split(".")[0] for v in variants}
    assert {"lora", "sara"} <= methods <= set(choice["chosen"])
    for method in methods:
        for side in ("lo", "hi"):
            lr = choice["chosen"][method][side]
            assert variants[f"{method}.{side}"]["optim.lr"] == pytest.approx(lr, rel=1e-5), (method, side)
    assert set(stages["equal"]["variants"]) == methods
    if "sara_official" in methods:
        official = variants["sara_official.lo"]
        assert {k: v for k, v in official["adapter"].items() if k != "reselect_reset_state"} == \
            {k: v for k, v in sara.items() if k != "reselect_reset_state"}
        assert official["adapter"]["reselect_reset_state"] and not sara["reselect_reset_state"]
        assert official["optim.weight_decay"] == 1e-2 and "optim.weight_decay" not in variants["sara.lo"]


# ------------------------------------------------------------------------------------------ end to end
def _train(*args, cwd=REPO, timeout=900):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=timeout)


def _final(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["complete"], run_dir
    return summary["final"]


@pytest.mark.slow
def test_sweep_choice_and_equal_style_on_a_tiny_pipeline(tmp_path):
    """A sweep-shaped study on a tiny random Stable Diffusion and fake MNIST: replicates over two styles (seed % 2),
    LoRA and SaRA at two learning rates each, scored against the base model of their replicate (per-image scores
    saved and summarised with a bootstrap), memory counted; then the learning-rate choice at a gain both LoRA runs
    bracket and the equal-style interpolation of one replicate."""
    pytest.importorskip("diffusers")
    pytest.importorskip("skimage")
    import yaml

    from fake_data import fake_mnist
    from zoo.diffusion.tiny import save_tiny_pipeline

    mnist = fake_mnist(tmp_path / "mnist", n=60)
    pipe = save_tiny_pipeline(tmp_path / "pipe")
    scoring = {"model.pretrained": str(pipe), "eval.per_digit": 2, "eval.num_inference_steps": 2,
               "eval.batch_size": 8, "eval.real_split": "test[40:]", "eval.real_images": 20,
               "eval.mnist_root": str(mnist)}
    lora = {"name": "lora", "rank": 2, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    study = {"pipeline": [
        {"name": "data", "config": str(REPO / "configs/sara/study_data.yaml"), "seeds": [0, 1],
         "overrides": {**scoring, "sets.styles": ["cells", "brick"], "sets.mnist_root": str(mnist),
                       "sets.split": "test[:40]", "sets.num_images": 10}},
        {"name": "finetune", "config": str(REPO / "configs/sara/tiny.yaml"), "seeds": [0, 1],
         "overrides": {"model.pretrained": str(pipe), "data.root": "${stage:data}/style", "sample.enabled": False},
         "variants": {"lora.a": {"adapter": lora, "optim.lr": 1.0e-4}, "lora.b": {"adapter": lora, "optim.lr": 3.0e-2},
                      "sara.a": {"optim.lr": 1.0e-4}, "sara.b": {"optim.lr": 3.0e-2}}},
        {"name": "eval", "config": str(REPO / "configs/sara/study_eval.yaml"), "seeds": [0, 1],
         "overrides": {**scoring, "runs.finetune": "${stage:finetune}", "runs.data": "${stage:data}"},
         "variants": {"lora.a": {"runs.memory": True}, "lora.b": {}, "sara.a": {"runs.memory": True}, "sara.b": {}}},
        {"name": "memory", "config": str(REPO / "configs/sara/study_memory.yaml"), "seeds": [0],
         "variants": {"sara": {"memory.finetune": "${stage:finetune/sara.a}", "memory.repeat": 1}}},
        {"name": "summary", "summarise": {
            "stages": ["data", "eval"], "bootstrap": {"resamples": 200},
            "metrics": {"style_gain": "higher", "fid_plain": "higher", "lr": "lower"},
            "compare": [["sara.b", "lora.b"]]}},
    ]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    out = tmp_path / "sweep"
    proc = _train(path, "--output", out)
    assert proc.returncode == 0, proc.stderr[-4000:]

    base = {s: _final(out / "data" / "default" / f"seed{s}") for s in (0, 1)}
    assert [base[0]["style"], base[1]["style"]] == ["cells", "brick"]
    assert len(list((out / "data" / "default" / "seed1" / "style").glob("*.png"))) == 10
    cells = {(v, s): _final(out / "eval" / v / f"seed{s}") for v in ("lora.a", "lora.b", "sara.a", "sara.b")
             for s in (0, 1)}
    for (variant, seed), final in cells.items():
        assert final["method"] == variant.split(".")[0] and final["style"] == base[seed]["style"]
        assert final["lr"] == pytest.approx(1e-4 if variant.endswith(".a") else 3e-2)
        assert final["style_gain"] == pytest.approx(1 - final["style_gram"] / base[seed]["style_gram"])
        arrays = np.load(out / "eval" / variant / f"seed{seed}" / "per_example.npz")
        assert arrays["fid_plain"].shape == (20,) and arrays["fid_plain"].mean() == pytest.approx(final["fid_plain"])
    mem_lora, mem_sara = cells[("lora.a", 0)]["memory"], cells[("sara.a", 0)]["memory"]
    assert mem_lora["grad_bytes"] == 4 * mem_lora["trainable"]
    assert mem_sara["adapter_bytes"] == 12 * mem_sara["trainable"]
    assert mem_lora["step_ms"] > 0
    measured = _final(out / "memory" / "sara" / "seed0")  # the memory stage: once per method, the same counts
    assert measured["method"] == "sara"
    assert {k: measured["memory"][k] for k in ("trainable", "adapter_bytes", "grad_bytes", "optimizer_bytes")} == {
        k: mem_sara[k] for k in ("trainable", "adapter_bytes", "grad_bytes", "optimizer_bytes")}
    results = json.loads((out / "summary" / "results.json").read_text())
    assert results["variants"]["eval/lora.b"]["metrics"]["fid_plain"]["bootstrap"] is not None
    cmp = next(c for c in results["comparisons"] if c["metric"] == "fid_plain")
    assert cmp["bootstrap"] is not None and cmp["n"] == 2

    # the choice: a target both LoRA learning rates bracket on average
    gains = [results["variants"][f"eval/lora.{k}"]["metrics"]["style_gain"]["mean"] for k in "ab"]
    target = float(np.mean(gains))
    choice = _train(REPO / "configs/sara/study_choice.yaml", f"choice.results={out / 'summary' / 'results.json'}",
                    f"choice.target={target}", "choice.methods=[lora]", "--output", tmp_path / "choice")
    assert choice.returncode == 0, choice.stderr[-3000:]
    chosen = _final(tmp_path / "choice")["chosen"]["lora"]
    assert (chosen["lo"], chosen["hi"]) == pytest.approx((1e-4, 3e-2))
    assert "lora.lo" in (tmp_path / "choice" / "chosen.yaml").read_text()

    # equal style on replicate 0: the midpoint of the two runs' gains gives t = 1/2
    lo, hi = cells[("lora.a", 0)], cells[("lora.b", 0)]
    mid = (lo["style_gain"] + hi["style_gain"]) / 2
    eq = _train(REPO / "configs/sara/study_equal.yaml", f"equal.lo={out / 'eval' / 'lora.a' / 'seed0'}",
                f"equal.hi={out / 'eval' / 'lora.b' / 'seed0'}", f"equal.target={mid}", "--output", tmp_path / "eq")
    assert eq.returncode == 0, eq.stderr[-3000:]
    got = _final(tmp_path / "eq")
    assert got["t"] == pytest.approx(0.5) and got["extrapolated"] == 0.0
    assert got["fid_plain"] == pytest.approx((lo["fid_plain"] + hi["fid_plain"]) / 2)
    assert got["lr_equal"] == pytest.approx(math.sqrt(1e-4 * 3e-2))
    assert got["memory"] == lo["memory"]
    arrays = np.load(tmp_path / "eq" / "per_example.npz")
    assert arrays["fid_plain"].mean() == pytest.approx(got["fid_plain"])
