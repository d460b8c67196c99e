"""The CTTA recipe on a tiny ViT and a tiny -C directory: online scoring before each update, protocols, resume,
HKA variants in the loop, the run report and config errors."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from zoo.config import ConfigError, validate_config
from zoo.engine.context import RunContext
from zoo.engine.interrupt import TrainingInterrupted
from zoo.engine.trainer import Trainer
from zoo.recipes.ctta import CTTAConfig, CTTARecipe

DOMAINS = ["gaussian_noise", "fog", "contrast"]
N = 16  # images per severity block


@pytest.fixture(scope="module")
def c_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_c")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, N)
    for i, name in enumerate(DOMAINS):
        images = rng.integers(0, 256, (5 * N, 32, 32, 3), dtype=np.uint8)
        images[:, :, :, i] //= 2  # domains differ in colour statistics
        np.save(root / f"{name}.npy", images)
    np.save(root / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    return root


def make_cfg(root, **method) -> CTTAConfig:
    raw = {
        "recipe": "ctta",
        "model": {"name": "timm/vit_tiny_patch16_224", "img_size": 32, "patch_size": 16, "embed_dim": 16, "depth": 1,
                  "num_heads": 2, "num_classes": 3},
        "data": {"name": "cifar10_c", "root": str(root), "corruptions": DOMAINS, "batch_size": 8},
        "method": {"num_aug": 2, "high_rank": 8, **method},
        "trainer": {"tensorboard": False, "cpu": True},
    }
    return validate_config(raw, CTTAConfig)


def run(cfg, out, recipe=None, resume=None):
    torch.manual_seed(0)
    recipe = recipe or CTTARecipe(cfg)
    trainer = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, out, seed=cfg.seed, resume=resume)
    return trainer, trainer.fit()


class Recording(CTTARecipe):
    """Keeps, per batch, copies of the student and teacher taken before the method adapts, the batch and the
    logits it was scored with."""

    def train_step(self, model, batch, ctx):
        self._ensure_ready(model)
        self.log = getattr(self, "log", [])
        teacher = getattr(self.method, "teacher", None)
        self.log.append({"student": copy.deepcopy(model), "teacher": copy.deepcopy(teacher), "x": batch[0]})
        original = self.method.adapt

        def adapt(m, x):
            out = original(m, x)
            self.log[-1]["scored"] = out.detach().clone()
            return out

        self.method.adapt = adapt
        try:
            return super().train_step(model, batch, ctx)
        finally:
            self.method.adapt = original


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_source_errors_equal_a_plain_evaluation(c_dir, tmp_path):
    cfg = make_cfg(c_dir, name="source")
    trainer, summary = run(cfg, tmp_path / "run")
    model = trainer.model.eval()
    for name in DOMAINS:
        data = trainer.recipe._domain_dataset(name)
        x = torch.stack([data[i][0] for i in range(len(data))])
        y = torch.tensor([data[i][1] for i in range(len(data))])
        with torch.no_grad():
            err = 100.0 * (model(x).argmax(1) != y).float().mean().item()
        assert summary["final"][f"error/{name}"] == pytest.approx(err)
    assert summary["final"]["error"] == pytest.approx(np.mean([summary["final"][f"error/{d}"] for d in DOMAINS]))
    assert (tmp_path / "run" / "stream.csv").is_file()


@pytest.mark.parametrize("method", ["tent", "cotta"])
def test_each_batch_is_scored_before_its_update(c_dir, tmp_path, method):
    cfg = make_cfg(c_dir, name=method, aug_threshold=0.0)  # cotta: plain teacher prediction (no augmentation)
    recipe = Recording(cfg)
    run(cfg, tmp_path / "run", recipe)
    assert len(recipe.log) == 3 * (N // 8)
    for i, entry in enumerate(recipe.log):
        scorer = entry["student"] if method == "tent" else entry["teacher"]
        with torch.no_grad():
            expected = scorer(entry["x"])
        assert torch.allclose(entry["scored"], expected, atol=1e-5), f"batch {i} was not scored before its update"
        if i + 1 < len(recipe.log):
            assert not torch.equal(_params(entry["student"]), _params(recipe.log[i + 1]["student"])), "no update"


def test_continual_and_reset_each_shift_differ_as_they_should(c_dir, tmp_path):
    continual = Recording(make_cfg(c_dir, name="tent", lr=0.05))
    run(continual.cfg, tmp_path / "a", continual)
    episodic = Recording(make_cfg(c_dir, name="tent", lr=0.05, protocol="reset_each_shift"))
    _, ep = run(episodic.cfg, tmp_path / "b", episodic)
    per_domain = N // 8
    source = _params(episodic.log[0]["student"])
    for d in range(len(DOMAINS)):  # every domain starts from the source weights when reset each shift
        assert torch.equal(_params(episodic.log[d * per_domain]["student"]), source)
    assert not torch.equal(_params(continual.log[per_domain]["student"]), source)  # continual carries on
    assert torch.allclose(episodic.log[0]["scored"], continual.log[0]["scored"])
    assert not torch.allclose(episodic.log[per_domain]["scored"], continual.log[per_domain]["scored"])


class StopAt(CTTARecipe):
    stop_step = None
    trainer = None

    def train_step(self, model, batch, ctx):
        out = super().train_step(model, batch, ctx)
        if self.stop_step is not None and ctx.step + 1 == self.stop_step:
            self.trainer.stop.requested = True
        return out


@pytest.mark.parametrize("method", ["vida", "cotta"])
def test_an_interrupted_stream_resumes_where_it_stopped(c_dir, tmp_path, method):
    cfg = make_cfg(c_dir, name=method, aug_threshold=1.0, per_sample_uncertainty=method == "vida")
    full, expected = run(cfg, tmp_path / "full")
    cut_recipe = StopAt(cfg)
    torch.manual_seed(0)
    cut = Trainer(cut_recipe, cfg.trainer, cfg.optim, cfg.schedule, tmp_path / "cut", seed=cfg.seed)
    cut_recipe.stop_step, cut_recipe.trainer = 3, cut  # second domain, first batch done
    with pytest.raises(TrainingInterrupted):
        cut.fit()
    resumed, got = run(cfg, tmp_path / "cut", resume="auto")
    assert got["final"] == expected["final"]
    assert torch.equal(_params(full.model), _params(resumed.model))
    assert torch.equal(_params(full.recipe.method.teacher), _params(resumed.recipe.method.teacher))


def test_mixed_domains_count_every_corruption(c_dir, tmp_path):
    _, summary = run(make_cfg(c_dir, name="tent", protocol="mixed_domains"), tmp_path / "run")
    final = summary["final"]
    assert set(f"error/{d}" for d in DOMAINS) <= set(final)
    assert final["error"] == pytest.approx(np.mean([final[f"error/{d}"] for d in DOMAINS]))
    assert summary["steps"] == 3 * N // 8


@pytest.mark.parametrize("hka", ["paper", "official"])
def test_hka_variants_in_the_loop(c_dir, tmp_path, hka):
    trainer, _ = run(make_cfg(c_dir, name="vida", hka=hka), tmp_path / "run")
    from zoo.adapters.vida import VIDA_HIGH, VIDA_LOW
    from zoo.adapters.model import iter_lora_layers

    layers = [l for _, l in iter_lora_layers(trainer.model)]
    assert layers
    highs = {float(l.deltas[VIDA_HIGH].scale) for l in layers}
    lows = {float(l.deltas[VIDA_LOW].scale) for l in layers}
    assert lows != {1.0}
    assert highs == ({1.0} if hka == "official" else {2.0 - next(iter(lows))})


def test_run_writes_the_report(c_dir, tmp_path):
    recipe = CTTARecipe(make_cfg(c_dir, name="bn_adapt"))
    final = recipe.run(RunContext(tmp_path / "run"))
    rows = (tmp_path / "run" / "errors.csv").read_text().splitlines()
    assert rows[0] == "domain,error" and [r.split(",")[0] for r in rows[1:]] == DOMAINS + ["mean"]
    assert float(rows[-1].split(",")[1]) == pytest.approx(final["error"], abs=0.01)
    assert (tmp_path / "run" / "errors.png").stat().st_size > 1000
    assert (tmp_path / "run" / "stream" / "metrics.json").is_file()


@pytest.mark.parametrize("key,value,match", [("name", "memo", "method.name"), ("protocol", "episodic", "method.protocol"),
                                             ("hka", "both", "method.hka"), ("num_aug", 1, "method.num_aug")])
def test_bad_method_settings_name_the_key(c_dir, key, value, match):
    with pytest.raises(ConfigError, match=match):
        make_cfg(c_dir, **{key: value})


# ------------------------------------------------------------------------------------------------ the benchmark
def _bench_args(*argv):
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from benchmarks import ctta as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--batch", "4", "--embed-dim", "24", "--depth", "1", "--num-aug", "2", "--cotta-aug",
                              "2", "--repeat", "1", "--device", "cpu", *argv])
    args.json = None
    return bench, args


def test_benchmark_times_checked_rows(capsys):
    bench, args = _bench_args("--methods", "tent", "vida")
    bench.run(args)
    out = capsys.readouterr().out
    assert "checked: every row" in out and "vida" in out.split("ratios vs 'tent'")[1]


def test_benchmark_refuses_a_method_that_scores_after_its_update(monkeypatch):
    from benchmarks._common import BenchmarkCheckError

    from zoo.recipes.ctta import TentMethod

    def late(self, model, x):  # updates, then scores with the new weights
        with torch.enable_grad():
            self._step(model(x).logsumexp(1).mean())
        return model(x).detach()

    bench, args = _bench_args("--methods", "tent")
    monkeypatch.setattr(TentMethod, "adapt", late)
    with pytest.raises(BenchmarkCheckError, match="before the update"):
        bench.run(args)
