"""The CTTA recipes on a tiny ViT and a tiny -C directory: online scoring before each update, protocols, resume,
HKA variants in the loop, starting weights (source, our ViDA warm-up, the official layout), the warm-up as a
``ctta_source`` run with ``adapter: {name: vida}``, bf16 autocast, the run report and config errors."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.config import ConfigError, validate_config
from zoo.engine.interrupt import TrainingInterrupted
from zoo.engine.trainer import Trainer
from zoo.errors import CheckpointError
from zoo.recipes.ctta import CTTAConfig, CTTARecipe, CTTASourceConfig, CTTASourceRecipe

REPO = Path(__file__).resolve().parents[2]
DOMAINS = ["gaussian_noise", "fog", "contrast"]
N = 16  # images per severity block
VIT = {"name": "timm/vit_tiny_patch16_224", "img_size": 32, "patch_size": 16, "embed_dim": 16, "depth": 1,
       "num_heads": 2, "num_classes": 3}


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


def _vit():
    from zoo.registry import create_model

    return create_model(VIT["name"], **{k: v for k, v in VIT.items() if k != "name"})


def make_raw(root, name="vida", *, protocol="continual", adapter=None, model=None, trainer=None, **tta) -> dict:
    if name in ("cotta", "vida"):
        tta.setdefault("num_aug", 2)
    raw = {
        "recipe": "ctta",
        "model": {**VIT, **(model or {})},
        "data": {"name": "cifar10_c", "root": str(root), "corruptions": DOMAINS, "batch_size": 8},
        "protocol": protocol,
        "tta": {"name": name, **tta},
        "trainer": {"tensorboard": False, "cpu": True, **(trainer or {})},
    }
    if name == "vida":
        raw["adapter"] = {"name": "vida", "high_rank": 8, **(adapter or {})}
    return raw


def make_cfg(root, name="vida", **kwargs) -> CTTAConfig:
    return validate_config(make_raw(root, name, **kwargs), CTTAConfig)


def run(cfg, out, recipe=None, resume=None):
    torch.manual_seed(0)
    recipe = recipe or CTTARecipe(cfg)
    trainer = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, out, seed=cfg.seed, resume=resume)
    return trainer, trainer.fit()


class Recording(CTTARecipe):
    """Keeps, per batch, copies of the student and teacher taken before the algorithm adapts, the batch and the
    logits it was scored with."""

    def train_step(self, model, batch, ctx):
        self.stream.ensure_ready(ctx.accelerator.unwrap_model(model))
        self.log = getattr(self, "log", [])
        teacher = getattr(self.algorithm, "teacher", None)
        self.log.append({"student": copy.deepcopy(model), "teacher": copy.deepcopy(teacher), "x": batch[0]})
        original = self.algorithm.adapt

        def adapt(m, x, step):
            out = original(m, x, step)
            self.log[-1]["scored"] = out.detach().clone()
            self.log[-1]["scales"] = getattr(self.algorithm, "scales", None)
            return out

        self.algorithm.adapt = adapt
        try:
            return super().train_step(model, batch, ctx)
        finally:
            self.algorithm.adapt = original


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _plain_errors(model, recipe):
    errors = {}
    for name in DOMAINS:
        data = recipe.cfg.data.domain(name)
        x = torch.stack([data[i][0] for i in range(len(data))])
        y = torch.tensor([data[i][1] for i in range(len(data))])
        with torch.no_grad():
            errors[name] = 100.0 * (model(x).argmax(1) != y).float().mean().item()
    return errors


def test_source_errors_equal_a_plain_evaluation(c_dir, tmp_path):
    trainer, summary = run(make_cfg(c_dir, "source"), tmp_path / "run")
    for name, err in _plain_errors(trainer.model.eval(), trainer.recipe).items():
        assert summary["final"][f"error/{name}"] == pytest.approx(err)
    assert summary["final"]["error"] == pytest.approx(np.mean([summary["final"][f"error/{d}"] for d in DOMAINS]))
    rows = (tmp_path / "run" / "stream.csv").read_text().splitlines()
    assert rows[0] == "domain,error,correct,count" and [r.split(",")[0] for r in rows[1:]] == DOMAINS
    assert all(int(r.split(",")[3]) == N for r in rows[1:])


@pytest.mark.parametrize("name", ["source", "bn_adapt", "tent", "cotta", "vida"])
def test_each_batch_is_scored_before_its_update(c_dir, tmp_path, name):
    """All five algorithms: the logits a batch is scored with are those of the model as it was before the batch
    (the student for source / BN-adapt / Tent; the teacher for CoTTA, and for ViDA with the HKA scales its
    augmented views of this batch gave), and the algorithms that adapt have moved after it."""
    settings = {"cotta": {"aug_threshold": 0.0}, "vida": {"lr": 1e-3, "adapter_lr": 1e-3}}.get(name, {})
    cfg = make_cfg(c_dir, name, **settings)  # cotta: no augmentation (the average is checked in tests/tta)
    recipe = Recording(cfg)
    run(cfg, tmp_path / "run", recipe)
    assert len(recipe.log) == 3 * (N // 8)
    for i, entry in enumerate(recipe.log):
        scorer = entry["teacher"] if name in ("cotta", "vida") else entry["student"]
        if name == "vida":
            scorer.train(False)
            recipe.algorithm.adapter.set_scales(scorer, *entry["scales"])
        with torch.no_grad():
            expected = scorer(entry["x"])
        assert torch.allclose(entry["scored"], expected, atol=1e-5), f"batch {i} was not scored before its update"
        if i + 1 < len(recipe.log):
            moved = not torch.equal(_params(entry["student"]), _params(recipe.log[i + 1]["student"]))
            assert moved == (name in ("tent", "cotta", "vida")), f"batch {i}: moved={moved}"


def test_continual_and_reset_each_shift_differ_as_they_should(c_dir, tmp_path):
    continual = Recording(make_cfg(c_dir, "tent", lr=0.05))
    run(continual.cfg, tmp_path / "a", continual)
    episodic = Recording(make_cfg(c_dir, "tent", lr=0.05, protocol="reset_each_shift"))
    run(episodic.cfg, tmp_path / "b", episodic)
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


@pytest.mark.parametrize("name", ["vida", "cotta"])
def test_an_interrupted_stream_resumes_where_it_stopped(c_dir, tmp_path, name):
    extra = {"per_sample_uncertainty": True} if name == "vida" else {"aug_threshold": 1.0}
    cfg = make_cfg(c_dir, name, **extra)
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
    assert torch.equal(_params(full.recipe.algorithm.teacher), _params(resumed.recipe.algorithm.teacher))


def test_mixed_domains_count_every_corruption(c_dir, tmp_path):
    _, summary = run(make_cfg(c_dir, "tent", protocol="mixed_domains"), tmp_path / "run")
    final = summary["final"]
    assert set(f"error/{d}" for d in DOMAINS) <= set(final)
    assert final["error"] == pytest.approx(np.mean([final[f"error/{d}"] for d in DOMAINS]))
    assert summary["steps"] == 3 * N // 8
    row = dict(zip(*[r.split(",") for r in (tmp_path / "run" / "stream.csv").read_text().splitlines()]))
    assert row["domain"] == "mixed" and int(row["count"]) == 3 * N
    assert all(int(row[f"count/{d}"]) == N for d in DOMAINS)


@pytest.mark.parametrize("hka", ["paper", "official"])
def test_hka_variants_in_the_loop(c_dir, tmp_path, hka):
    from zoo.adapters.model import iter_lora_layers
    from zoo.adapters.vida import VIDA_HIGH, VIDA_LOW

    trainer, _ = run(make_cfg(c_dir, "vida", hka=hka), tmp_path / "run")
    layers = [l for _, l in iter_lora_layers(trainer.model)]
    assert layers
    highs = {float(l.deltas[VIDA_HIGH].scale) for l in layers}
    lows = {float(l.deltas[VIDA_LOW].scale) for l in layers}
    assert lows != {1.0}
    assert len(highs) == 1 and len(lows) == 1
    assert highs.pop() == (1.0 if hka == "official" else pytest.approx(2.0 - lows.pop(), abs=1e-6))
    assert "uncertainty" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")  # logged


def test_report_writes_errors_csv_and_png(c_dir, tmp_path):
    recipe = CTTARecipe(make_cfg(c_dir, "bn_adapt"))
    _, summary = run(recipe.cfg, tmp_path / "run", recipe)
    recipe.report(summary, tmp_path / "run")
    rows = (tmp_path / "run" / "errors.csv").read_text().splitlines()
    assert rows[0] == "domain,error" and [r.split(",")[0] for r in rows[1:]] == DOMAINS + ["mean"]
    assert float(rows[-1].split(",")[1]) == pytest.approx(summary["final"]["error"], abs=0.01)
    assert (tmp_path / "run" / "errors.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["loop"] == "stream"


def test_a_stream_step_under_bf16_autocast(c_dir, tmp_path):
    """trainer.mixed_precision=bf16: the student's forward runs under autocast (bf16 Linear outputs), the algorithms
    back-propagate through the accelerator and still update the weights."""
    for name in ("tent", "vida"):
        cfg = make_cfg(c_dir, name, trainer={"mixed_precision": "bf16"})
        recipe = CTTARecipe(cfg)
        dtypes = []
        torch.manual_seed(0)
        trainer = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, tmp_path / name, seed=cfg.seed)
        original = recipe.build_model

        def build_model():
            model = original()
            before.append(_params(model).clone())
            model.head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
            return model

        before = []
        recipe.build_model = build_model
        summary = trainer.fit()
        assert torch.bfloat16 in dtypes, f"{name}: no forward ran under bf16 autocast ({set(dtypes)})"
        assert not torch.equal(before[0], _params(trainer.accelerator.unwrap_model(trainer.model))), name
        assert all(np.isfinite(summary["final"][f"error/{d}"]) for d in DOMAINS)


# ------------------------------------------------------------------------------------------------ starting weights
def test_model_checkpoint_path_loads_the_source_weights(c_dir, tmp_path):
    torch.manual_seed(5)
    source = _vit()
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "best.pt")  # a run's checkpoint
    trainer, summary = run(make_cfg(c_dir, "source", model={"checkpoint_path": str(tmp_path)}), tmp_path / "run")
    assert torch.equal(_params(trainer.model), _params(source))  # a run directory: its best.pt
    assert summary["final"]["error/fog"] == pytest.approx(_plain_errors(source.eval(), trainer.recipe)["fog"])


def test_vida_warm_up_is_a_ctta_source_run_whose_weights_the_stream_loads(c_dir, tmp_path):
    """The warm-up: ``ctta_source`` with ``adapter: {name: vida}`` trains only the adapters on top of
    ``model.checkpoint_path``; its best.pt (the whole model) is ``ctta``'s ``model.checkpoint_path`` for vida."""
    from zoo.adapters.vida import vida_parameters

    torch.manual_seed(5)
    torch.save({"model": _vit().state_dict()}, tmp_path / "source.pt")
    raw = {"recipe": "ctta_source", "model": {**VIT, "checkpoint_path": str(tmp_path / "source.pt")},
           "data": {"name": "cifar10_c", "root": str(c_dir), "train_split": "fog", "eval_split": "contrast",
                    "batch_size": 8, "kwargs": {"severity": 5}},
           "adapter": {"name": "vida", "high_rank": 8}, "augment": {"tta": True, "flip": False},
           "optim": {"lr": 0.05}, "eval": {"topk": [1]},
           "trainer": {"epochs": 1, "tensorboard": False, "cpu": True}}
    cfg = validate_config(raw, CTTASourceConfig)
    recipe = CTTASourceRecipe(cfg)
    torch.manual_seed(0)
    warm = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, tmp_path / "warmup", seed=0)
    warm.fit()
    warmed = warm.accelerator.unwrap_model(warm.model)
    trained = {id(p) for p in warmed.parameters() if p.requires_grad}
    assert trained == {id(p) for _, p in vida_parameters(warmed)}  # only the adapters trained
    source = _vit()
    source.load_state_dict(torch.load(tmp_path / "source.pt", weights_only=True)["model"])
    assert torch.equal(warmed.blocks[0].attn.qkv.base.weight, source.blocks[0].attn.qkv.weight)  # backbone frozen
    assert warmed.blocks[0].attn.qkv.deltas["vida_low"].up.abs().sum() > 0  # adapters moved

    stream = CTTARecipe(make_cfg(c_dir, "vida", lr=0.0, adapter_lr=0.0, restore_prob=0.0,
                                 model={"checkpoint_path": str(tmp_path / "warmup" / "best.pt")}))
    model = stream.build_model()
    best = torch.load(tmp_path / "warmup" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())


def test_official_vida_layout_is_a_starting_point(c_dir, tmp_path):
    from tta.official_vida import official_vida_model

    torch.manual_seed(3)
    official = official_vida_model(_vit(), 1, 8)
    state = {"model": {f"module.{k}": v for k, v in official.state_dict().items()}}
    torch.save(state, tmp_path / "vit_1_8_vida.t7")
    recipe = CTTARecipe(make_cfg(c_dir, "vida", model={"checkpoint_path": str(tmp_path / "vit_1_8_vida.t7")}))
    model = recipe.build_model().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), official.eval()(x), atol=1e-5)


def test_a_vida_model_is_refused_as_a_plain_source(c_dir, tmp_path):
    from zoo.adapters.vida import apply_vida

    torch.save({"model": apply_vida(_vit(), 1, 8).state_dict()}, tmp_path / "warm.pt")
    recipe = CTTARecipe(make_cfg(c_dir, "tent", model={"checkpoint_path": str(tmp_path / "warm.pt")}))
    with pytest.raises(CheckpointError, match="adapter"):
        recipe.build_model()


# ------------------------------------------------------------------------------------------------ study scores
def test_per_example_scores_average_to_the_stream_errors_and_cotta_scores_both_predictions(c_dir, tmp_path):
    """``per_example.npz`` holds each example's error (and ``error_teacher``: CoTTA's plain teacher logits beside
    its augmentation average), averaging to the run's metrics; a ``score: teacher`` run of the same seed adapts
    identically, so its ``error`` is the first run's ``error_teacher``, per example."""
    from zoo.studies.per_example import load_per_example

    finals, arrays = {}, {}
    for score in ("augmented", "teacher"):
        cfg = make_cfg(c_dir, "cotta", score=score, aug_threshold=1.1, num_aug=2, aug_flip=False, aug_soft=True)
        out = tmp_path / score
        trainer, summary = run(cfg, out)
        trainer.recipe.report(summary, out)
        finals[score], arrays[score] = summary["final"], load_per_example(out)
    other = {"augmented": "teacher", "teacher": "augmented"}
    for score, final in finals.items():
        a = arrays[score]
        assert set(a) == {"error", f"error_{other[score]}", "example_id"} and a["error"].shape == (3 * N,)
        assert a["error"].mean() == pytest.approx(final["error"])
        assert a[f"error_{other[score]}"].mean() == pytest.approx(final[f"error_{other[score]}"])
        assert f"error_{other[score]}/fog" in final and f"error/fog" in final
    assert np.array_equal(arrays["augmented"]["error_teacher"], arrays["teacher"]["error"])
    assert np.array_equal(arrays["teacher"]["error_augmented"], arrays["augmented"]["error"])
    assert np.array_equal(arrays["augmented"]["example_id"], arrays["teacher"]["example_id"])
    assert "augmented" in (tmp_path / "teacher" / "metrics.csv").read_text().splitlines()[0]  # the gate, logged


def test_per_example_errors_weight_unequal_domains_to_the_mean_over_domains():
    from zoo.metrics.stream import per_example_errors

    domains = {"a": {"correct": torch.tensor([1, 0, 0, 1]), "correct_t": torch.tensor([1, 1, 1, 1])},
               "b": {"correct": torch.tensor([0, 1]), "correct_t": torch.tensor([0, 0])}}
    arrays, ids = per_example_errors(domains, ("t",))
    assert float(arrays["error"].mean()) == pytest.approx((50.0 + 50.0) / 2)
    assert float(arrays["error_t"].mean()) == pytest.approx((0.0 + 100.0) / 2)
    assert ids.tolist() == [0, 1, 2, 3, 1_000_000, 1_000_001]


def test_a_batchnorm_source_runs_bn_adapt_and_tent_on_its_batchnorm_layers(c_dir, tmp_path):
    """The WRN backbone (zoo/models/wide_resnet.py) in the stream: BN-adapt normalises with the test batch (its
    scores are the train-mode forward of the source), Tent trains exactly the BatchNorm affine parameters."""
    raw = make_raw(c_dir, "tent")
    raw["model"] = {"name": "wrn16_1", "num_classes": 3}
    trainer, _ = run(validate_config(raw, CTTAConfig), tmp_path / "tent")
    model = trainer.accelerator.unwrap_model(trainer.model)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {f"{n}.{w}" for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                       for w in ("weight", "bias")}
    raw["tta"] = {"name": "bn_adapt"}
    cfg = validate_config(raw, CTTAConfig)
    recipe = Recording(cfg)
    run(cfg, tmp_path / "bn", recipe)
    from zoo.registry import create_model

    adapted, x, scored = recipe.log[0]["student"], recipe.log[0]["x"], recipe.log[0]["scored"]
    assert all(m.running_mean is None for m in adapted.modules() if isinstance(m, torch.nn.BatchNorm2d))
    source = create_model("wrn16_1", num_classes=3)
    source.load_state_dict(adapted.state_dict(), strict=False)  # the source weights, with running statistics
    with torch.no_grad():
        assert torch.allclose(scored, source.train()(x), atol=1e-5)  # the test batch's statistics
        assert not torch.allclose(scored, source.eval()(x), atol=1e-3)


# ------------------------------------------------------------------------------------------------ CIFAR-10-C
def test_the_cifar10_c_config_runs_on_a_tiny_file_in_the_released_layout(tmp_path):
    """configs/vida/cifar10_c.yaml as shipped (ViDA, official HKA settings, the official checkpoint layout as
    model.checkpoint_path, 15 corruptions at severity 5 of a CIFAR-10-C directory), with a tiny ViT-B/16 stand-in
    (depth 1, width 16, 32 px) so that it runs in seconds: every corruption is scored."""
    from tta.official_vida import official_vida_model

    from zoo.cli import load_run_config
    from zoo.data.images.corruptions import CORRUPTIONS
    from zoo.registry import create_model

    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    rng = np.random.default_rng(0)
    n = 4
    for name in CORRUPTIONS:  # the released layout: (5 * n, 32, 32, 3) uint8 per corruption, severities stacked
        np.save(root / f"{name}.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    np.save(root / "labels.npy", np.tile(rng.integers(0, 10, n), 5).astype(np.uint8))
    tiny = dict(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2)
    torch.manual_seed(0)
    official = official_vida_model(create_model("timm/vit_base_patch16_384", num_classes=10, **tiny), 1, 128)
    torch.save({"model": {f"module.{k}": v for k, v in official.state_dict().items()}}, tmp_path / "vit_1_128_vida.t7")
    overrides = [f"model.checkpoint_path={tmp_path / 'vit_1_128_vida.t7'}", f"data.root={root}",
                 "data.input_size=32", "data.batch_size=2", "trainer.cpu=true",
                 *(f"model.{k}={v}" for k, v in tiny.items())]
    recipe_cls, cfg, _ = load_run_config(str(REPO / "configs" / "vida" / "cifar10_c.yaml"), overrides)
    assert (cfg.tta["name"], cfg.data.severity, cfg.protocol) == ("vida", 5, "continual")
    _, summary = run(cfg, tmp_path / "run", recipe=recipe_cls(cfg))
    assert [k for k in summary["final"] if k.startswith("error/")] == [f"error/{c}" for c in CORRUPTIONS]
    assert 0 <= summary["final"]["error"] <= 100
    final = summary["final"]
    assert final["family/noise"] == pytest.approx(np.mean([final[f"error/{c}"] for c in CORRUPTIONS[:3]]))
    assert {k for k in final if k.startswith("family/")} == {f"family/{f}" for f in ("noise", "blur", "weather",
                                                                                    "digital")}


# ------------------------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize("change,match", [
    ({"tta": {"name": "memo"}}, "tta.name"),
    ({"protocol": "episodic"}, "protocol"),
    ({"tta": {"name": "vida", "hka": "both"}}, "tta.hka"),
    ({"tta": {"name": "vida", "num_aug": 1}}, "tta.num_aug"),
    ({"tta": {"name": "tent", "ema": 0.9}}, "tta.ema"),  # a teacher setting for an algorithm without a teacher
    ({"tta": {"name": "tent"}, "adapter": {"name": "vida"}}, "adapter"),
    ({"adapter": {"name": "lora"}}, "adapter.name"),
    ({"adapter": {"name": "vida", "low_rank": 0}}, "adapter.low_rank"),
    ({"source_checkpoint": "x.pt"}, "model.checkpoint_path"),
    ({"method": {"name": "tent"}}, "'tta'"),
])
def test_bad_settings_name_the_key(c_dir, change, match):
    with pytest.raises(ConfigError, match=match):
        CTTARecipe(validate_config({**make_raw(c_dir), **change}, CTTAConfig))


@pytest.mark.parametrize("override", ["optim.lr=0.5", "schedule.warmup_epochs=1", "trainer.epochs=3"])
def test_keys_ctta_does_not_read_are_errors(tmp_path, override):
    from zoo.cli import load_run_config

    with pytest.raises(ConfigError, match=f"{override.split('=')[0]}.*not read by recipe 'ctta'"):
        load_run_config(str(REPO / "configs" / "vida" / "mnist_c.yaml"), ["model.checkpoint_path=x.pt", override])


def test_the_old_warm_up_section_names_the_new_keys():
    with pytest.raises(ConfigError, match="adapter"):
        validate_config({"recipe": "ctta_source", "vida": {"low_rank": 1}}, CTTASourceConfig)


# ------------------------------------------------------------------------------------------------ the benchmark
def _bench_args(*argv):
    import argparse

    from zoo.benchmarks import ctta as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--batch", "4", "--embed-dim", "24", "--depth", "1", "--num-aug", "2", "--cotta-aug",
                              "2", "--repeat", "1", "--device", "cpu", *argv])
    args.json = None
    return bench, args


def test_benchmark_times_checked_rows(capsys):
    bench, args = _bench_args("--algorithms", "tent", "vida")
    bench.run(args)
    out = capsys.readouterr().out
    assert "checked: every row" in out and "vida" in out.split("ratios vs 'tent'")[1]


def test_benchmark_refuses_an_algorithm_that_scores_after_its_update(monkeypatch):
    from zoo.benchmarks._common import BenchmarkCheckError

    from zoo.tta.tent import TentAlgorithm

    def late(self, model, x, ctx):  # updates, then scores with the new weights
        with torch.enable_grad():
            self.update(ctx.model(x).logsumexp(1).mean(), ctx)
        return model(x).detach()

    bench, args = _bench_args("--algorithms", "tent")
    monkeypatch.setattr(TentAlgorithm, "adapt", late)
    with pytest.raises(BenchmarkCheckError, match="before the update"):
        bench.run(args)
