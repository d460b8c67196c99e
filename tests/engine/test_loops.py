"""The loops beyond epochs, the step context, nested runs and recipes that drive their own run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import final_weights, run_toy, write_toy_config

import toys
from zoo.cli import build_recipe
from zoo.engine.interrupt import TrainingInterrupted
from zoo.engine.trainer import Trainer
from zoo.recipes.classify import ClassifyRecipe


def _trainer(folder: Path, run_dir: Path, overrides=(), recipe_cls=None, resume=None, **kwargs) -> Trainer:
    recipe, cfg, _ = build_recipe(str(write_toy_config(folder)), list(overrides))
    if recipe_cls is not None:
        recipe = recipe_cls(cfg)
    return Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, run_dir, seed=cfg.seed, resume=resume, **kwargs)


class _StopAt:
    """A recipe mix-in that presses Ctrl-C (sets the trainer's stop flag) once the run reaches ``stop_step``."""

    stop_step: int | None = None
    trainer: Trainer | None = None

    def train_step(self, model, batch, ctx):
        out = super().train_step(model, batch, ctx)
        if self.stop_step is not None and ctx.step + 1 == self.stop_step:
            self.trainer.stop.requested = True
        return out


def _run_until(trainer: Trainer, stop_step: int):
    trainer.recipe.stop_step, trainer.recipe.trainer = stop_step, trainer
    with pytest.raises(TrainingInterrupted):
        trainer.fit()


class StoppableClassify(_StopAt, ClassifyRecipe):
    pass


# ------------------------------------------------------------------------------------------------ iteration loop
def test_iteration_loop_runs_max_steps_across_epochs_with_step_evaluations(tmp_path):
    # 96 samples / batch 16 = 6 batches an epoch: 15 steps cross two epoch boundaries
    trainer = _trainer(tmp_path, tmp_path / "run", ["trainer.max_steps=15", "trainer.eval_every_steps=5",
                                                    "trainer.log_every=5", "schedule.warmup_steps=3"])
    summary = trainer.fit()
    assert trainer.loop_name == "iteration" and summary["steps"] == 15 and summary["epochs"] == 2
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:]]
    assert steps == [5, 10, 15] and all(r.split(",")[header.index("eval_top1")] for r in rows[1:])
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)  # cosine over max_steps ended
    assert summary["final"]["top1"] > 80


def test_iteration_loop_resumes_mid_epoch_bitwise(tmp_path):
    overrides = ["trainer.max_steps=14", "trainer.eval_every_steps=7"]
    full = _trainer(tmp_path, tmp_path / "full", overrides)
    full.fit()
    cut = _trainer(tmp_path, tmp_path / "cut", overrides, recipe_cls=StoppableClassify)
    _run_until(cut, 9)  # step 9: epoch 2, batch 3 of 6
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (9, 1, 3)
    resumed = _trainer(tmp_path, tmp_path / "cut", overrides, resume="auto")
    resumed.fit()
    a, b = final_weights(full), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Stream(torch.utils.data.IterableDataset):
    """An iterable dataset without ``__len__`` (a stream): the toy blobs, endlessly."""

    def __iter__(self):
        data = toys.ToyBlobs(n=96)
        while True:
            for i in range(len(data)):
                yield data[i]


class IterableClassify(ClassifyRecipe):
    def build_dataloaders(self):
        train = torch.utils.data.DataLoader(_Stream(), batch_size=16)
        return train, super().build_eval_loader()


def test_iterable_loader_without_length_trains_by_steps(tmp_path):
    with pytest.raises(ValueError, match="trainer.max_steps"):
        _trainer(tmp_path, tmp_path / "a", recipe_cls=IterableClassify).fit()
    summary = _trainer(tmp_path, tmp_path / "b", ["trainer.max_steps=12", "schedule.warmup_steps=2"], recipe_cls=IterableClassify).fit()
    assert summary["steps"] == 12 and summary["final"]["top1"] > 50


# ------------------------------------------------------------------------------------------------ step context
class TwoBackwards(ClassifyRecipe):
    """Each half of the batch gets its own forward and backward (one graph alive at a time)."""

    def train_step(self, model, batch, ctx):
        x, y = batch
        total = 0.0
        for part in (slice(0, 8), slice(8, 16)):
            loss = 0.5 * F.cross_entropy(model(x[part]), y[part])
            ctx.backward(loss)
            total += float(loss.detach())
        ctx.log(halves=ctx.num_backward)
        return {"loss": total}


def test_several_backward_passes_per_step_accumulate(tmp_path):
    one = final_weights(run_toy(tmp_path, tmp_path / "one", ["trainer.epochs=2"]))
    two = _trainer(tmp_path, tmp_path / "two", ["trainer.epochs=2"], recipe_cls=TwoBackwards)
    two.fit()
    for k, v in final_weights(two).items():
        torch.testing.assert_close(v, one[k], rtol=1e-5, atol=1e-6)
    header, first = (tmp_path / "two" / "metrics.csv").read_text().splitlines()[:2]
    assert float(first.split(",")[header.split(",").index("train_halves")]) == 2.0


class NoBackward(ClassifyRecipe):
    def train_step(self, model, batch, ctx):
        return {"loss": 0.0}


def test_a_step_without_backward_is_an_error_in_training_loops(tmp_path):
    with pytest.raises(RuntimeError, match="without calling ctx.backward"):
        _trainer(tmp_path, tmp_path / "run", ["trainer.epochs=1"], recipe_cls=NoBackward).fit()


def test_non_finite_loss_names_the_step(tmp_path):
    class NaNLoss(ClassifyRecipe):
        def training_step(self, model, batch):
            return {"loss": model(batch[0]).sum() * float("nan")}

    with pytest.raises(FloatingPointError, match="step 0"):
        _trainer(tmp_path, tmp_path / "run", ["trainer.epochs=1"], recipe_cls=NaNLoss).fit()


def test_bf16_autocast_is_active_in_the_step(tmp_path):
    """The forward inside a training step runs under bf16 autocast (accelerate casts the model's *outputs* back to
    float32, so the probe looks at a layer's output inside the forward)."""
    seen = []

    class Probe(ClassifyRecipe):
        def build_model(self):
            model = super().build_model()
            model.body[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
            return model

    trainer = _trainer(tmp_path, tmp_path / "run", ["trainer.mixed_precision=bf16", "trainer.epochs=2"], recipe_cls=Probe)
    trainer.fit()
    assert seen and all(d == torch.bfloat16 for d in seen), seen
    assert trainer.best["value"] > 50


def test_accelerator_options_come_from_the_config(tmp_path):
    trainer = _trainer(tmp_path, tmp_path / "run", ["trainer.ddp_find_unused_parameters=true"])
    assert trainer.accelerator.ddp_handler.find_unused_parameters is True
    assert _trainer(tmp_path, tmp_path / "b").accelerator.ddp_handler.find_unused_parameters is False


# ------------------------------------------------------------------------------------------------ stream loop
class ToyStream(_StopAt, ClassifyRecipe):
    """Test-time adaptation in miniature: three shifted domains; each batch is scored, then entropy is minimised.
    ``scored`` records, per batch, the weights' checksum at scoring time (to show scoring happens before the update)."""

    reset_each_domain = False
    run_shape = "stream"

    def build_stream(self):
        loaders = []
        for i, shift in enumerate((0.0, 1.0, 2.0)):
            data = toys.ToyBlobs(split="test", n=48)
            data.x = data.x + shift
            loaders.append((f"shift{i}", torch.utils.data.DataLoader(data, batch_size=16)))
        return loaders

    def configure_optimizer(self, model, cfg):
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return torch.optim.SGD(model.parameters(), lr=0.05)

    def on_domain_start(self, model, name, index):
        if self.reset_each_domain:
            model.load_state_dict(self.initial)

    def train_step(self, model, batch, ctx):
        x, y = batch
        self.scored = getattr(self, "scored", [])
        self.scored.append(sum(float(p.detach().sum()) for p in model.parameters()))
        logits = model(x)
        ctx.record(wrong=(logits.argmax(1) != y).float())
        probs = logits.softmax(1)
        ctx.backward(-(probs * probs.clamp_min(1e-8).log()).sum(1).mean())
        if self.stop_step is not None and ctx.step + 1 == self.stop_step:
            self.trainer.stop.requested = True
        return {}

    def build_metrics(self, kind="eval"):
        if kind != "stream":
            return super().build_metrics(kind)
        from zoo.metrics.base import Metric, MeanMetric

        class Count(Metric):
            keys = ("wrong",)

            def compute_from(self, wrong):
                return {"count": int(wrong.numel())}

        return [MeanMetric("wrong", "error", scale=100.0), Count()]

    def stream_metrics(self, per_domain):
        err = {d: m["error"] for d, m in per_domain.items()}
        return {"error": sum(err.values()) / len(err), **{f"error/{d}": e for d, e in err.items()}}


STREAM = ["schedule.name=constant", "schedule.warmup_epochs=0"]


def test_stream_loop_scores_online_per_domain(tmp_path):
    trainer = _trainer(tmp_path, tmp_path / "run", STREAM, recipe_cls=ToyStream)
    summary = trainer.fit()
    assert trainer.loop_name == "stream" and summary["steps"] == 9
    assert set(summary["final"]) == {"error", "error/shift0", "error/shift1", "error/shift2"}
    rows = (tmp_path / "run" / "stream.csv").read_text().splitlines()
    assert rows[0].startswith("domain,error,count") and [r.split(",")[0] for r in rows[1:]] == ["shift0", "shift1", "shift2"]
    assert all(float(r.split(",")[2]) == 48 for r in rows[1:])
    scored = trainer.recipe.scored
    assert len(set(scored)) == len(scored), "every batch must be scored with the weights left by the previous update"
    assert not (tmp_path / "run" / "best.pt").exists()


def test_stream_loop_continual_differs_from_reset_each_domain(tmp_path):
    continual = _trainer(tmp_path, tmp_path / "a", STREAM, recipe_cls=ToyStream).fit()

    class Episodic(ToyStream):
        reset_each_domain = True

    episodic = _trainer(tmp_path, tmp_path / "b", STREAM, recipe_cls=Episodic)
    ep = episodic.fit()
    assert ep["final"]["error/shift0"] == continual["final"]["error/shift0"]
    assert ep["final"] != continual["final"]
    assert episodic.recipe.scored[3] == episodic.recipe.scored[0], "domain 2 must start from the source weights"


def test_stream_loop_resumes_mid_domain(tmp_path):
    full = _trainer(tmp_path, tmp_path / "full", STREAM, recipe_cls=ToyStream)
    expected = full.fit()
    cut = _trainer(tmp_path, tmp_path / "cut", STREAM, recipe_cls=ToyStream)
    _run_until(cut, 5)  # second batch of the second domain
    resumed = _trainer(tmp_path, tmp_path / "cut", STREAM, recipe_cls=ToyStream, resume="auto")
    got = resumed.fit()
    assert got["final"] == expected["final"]
    a, b = final_weights(full), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ nested runs
class TrainsInsideEvaluation(ClassifyRecipe):
    """Every evaluation first trains a student from scratch (another precision, accumulation and seed) in its own
    run directory -- as HeLlO's evaluation does -- then evaluates as usual."""

    inner_runs = 0

    def evaluate(self, model, loader, accelerator, output_dir=None):
        TrainsInsideEvaluation.inner_runs += 1
        folder = Path(self.cfg.output_dir or ".").parent
        inner = _trainer(folder, folder / f"student{TrainsInsideEvaluation.inner_runs}",
                         ["trainer.epochs=1", "trainer.mixed_precision=bf16", "trainer.grad_accum_steps=2", "seed=7"])
        inner.fit()
        return super().evaluate(model, loader, accelerator, output_dir)


def test_nested_run_leaves_the_outer_run_bitwise_unchanged(tmp_path):
    plain = final_weights(run_toy(tmp_path, tmp_path / "plain", ["trainer.grad_accum_steps=2"]))
    overrides = ["trainer.grad_accum_steps=2", f"output_dir={tmp_path / 'nested' / 'x'}"]
    nested = _trainer(tmp_path, tmp_path / "nested", overrides, recipe_cls=TrainsInsideEvaluation)
    nested.fit()
    assert TrainsInsideEvaluation.inner_runs == 4
    for k, v in final_weights(nested).items():
        assert torch.equal(v, plain[k]), k

    class Stoppable(_StopAt, TrainsInsideEvaluation):
        pass

    cut = _trainer(tmp_path, tmp_path / "cut", overrides, recipe_cls=Stoppable)
    _run_until(cut, 8)  # mid-epoch 3, after two evaluations with inner runs
    resumed = _trainer(tmp_path, tmp_path / "cut", overrides, recipe_cls=TrainsInsideEvaluation, resume="auto")
    resumed.fit()
    for k, v in final_weights(resumed).items():
        assert torch.equal(v, plain[k]), k


# ------------------------------------------------------------------------------------------------ own runs
class Study(ClassifyRecipe):
    """A recipe that drives its own run: two nested trainings with different learning rates, and their best."""

    run_shape = "study"

    def run(self, ctx):
        results = {}
        for lr in (0.01, 0.1):
            recipe, _, _ = build_recipe(str(write_toy_config(ctx.output_dir)), ["trainer.epochs=2", f"optim.lr={lr}"])
            results[f"lr{lr}"] = ctx.train(recipe, f"lr{lr}")["final"]["top1"]
        return {"best_top1": max(results.values()), **results}


def test_a_recipe_can_own_its_run_with_nested_trainings(tmp_path, monkeypatch):
    from zoo.cli import run_training
    from zoo.recipes.base import RECIPES

    if "toy_study" not in RECIPES._entries:
        RECIPES.register("toy_study")(Study)
    config = write_toy_config(tmp_path)
    summary = run_training(str(config), ["recipe=toy_study"], tmp_path / "study")
    assert summary["final"]["best_top1"] > 80
    assert (tmp_path / "study" / "lr0.1" / "last.pt").is_file() and (tmp_path / "study" / "config.yaml").is_file()
    written = json.loads((tmp_path / "study" / "metrics.json").read_text())
    assert written["complete"] and written["final"] == summary["final"]
    # a second invocation of the study reuses finished sub-runs instead of training them again
    mtime = (tmp_path / "study" / "lr0.1" / "last.pt").stat().st_mtime
    run_training(str(config), ["recipe=toy_study"], tmp_path / "study", resume="auto")
    assert (tmp_path / "study" / "lr0.1" / "last.pt").stat().st_mtime == mtime
