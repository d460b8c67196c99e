"""BigNAS recipes: the sandwich step's gradients, in-place distillation targets, one graph at a time, the lr
option, and tiny end-to-end supernet -> search -> export runs on MNIST-format files (FLOPs and latency budgets);
the search's scoring goes through the one evaluation loop. The search itself is tested in tests/nas."""
from __future__ import annotations

import json
import random
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo
import zoo.nas.supernet as sn
from zoo.config import ConfigError
from zoo.models.bignas import load_child, resize_input
from zoo.nas import sandwich_archs
from zoo.recipes.supernet import SupernetConfig, SupernetRecipe

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs" / "bignas")


class FakeCtx:
    """What train_step uses of StepContext: backward (plain autograd), step, batch_index, optimizer, log."""

    def __init__(self, step=0):
        self.step, self.batch_index, self.optimizer, self.num_backward, self.logged = step, 0, None, 0, {}
        self.graphs_alive_at_backward = []

    def backward(self, loss):
        loss.backward()
        self.num_backward += 1

    def log(self, **kw):
        self.logged.update(kw)


def _recipe(**supernet) -> SupernetRecipe:
    cfg = SupernetConfig()
    for k, v in supernet.items():
        setattr(cfg.supernet, k, v)
    return SupernetRecipe(cfg)


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _model():
    torch.manual_seed(0)
    model = zoo.create_model("bignas_mnist")
    with torch.no_grad():  # non-zero residual branches so every child's gradient differs
        for b in model.residual_blocks():
            b.project.bn.weight.fill_(0.5)
    return model.train()


def _grads(model):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def _archs_of_step(model, recipe, ctx):
    rng = random.Random(hash((recipe.cfg.seed, ctx.step, ctx.batch_index)) & 0xFFFFFFFF)
    return sandwich_archs(model, recipe.cfg.supernet.num_random, rng)


def test_sandwich_gradient_is_the_sum_of_per_child_gradients():
    recipe, model, batch = _recipe(num_random=2, label_smoothing=0.1), _model(), _batch()
    ctx = FakeCtx(step=3)
    archs = _archs_of_step(model, recipe, ctx)
    assert archs[0] == model.max_subnet() and archs[-1] == model.min_subnet() and len(archs) == 4
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = recipe.train_step(model, batch, ctx)
    assert ctx.num_backward == 4 and set(out) >= {"loss", "loss_max", "loss_min"}
    got = _grads(model)

    # reference: each child on its own, the same loss, gradients summed by hand
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    x, y = batch
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    per_child = []
    soft = None
    for i, arch in enumerate(archs):
        model.set_subnet(arch)
        logits = model(resize_input(x, arch["resolution"]))
        if i == 0:
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            soft = logits.detach().softmax(-1)
        else:
            loss = -(soft * F.log_softmax(logits, -1)).sum(-1).mean()
        loss.backward()
        g = _grads(model)
        per_child.append({n: g[n] - total[n] for n in g})
        total = g
    for n in got:
        torch.testing.assert_close(got[n], total[n], rtol=1e-5, atol=1e-6, msg=n)
    # every child reaches the shared weights (the stem conv and the classifier are in all children)
    for child in per_child:
        assert child["stem.conv.weight"].abs().sum() > 0 and child["head.fc.weight"].abs().sum() > 0
    # the smallest child's gradient lives in the prefix slice only
    assert per_child[-1]["stages.3.0.project.conv.weight"][32:].abs().sum() == 0
    assert model.active_arch == archs[-1]  # the reference loop left the smallest child active


def test_distillation_targets_come_from_the_largest_child_without_grad(monkeypatch):
    recipe, model, batch = _recipe(num_random=1), _model(), _batch()
    seen = []
    real = sn.soft_cross_entropy

    def spy(logits, soft):
        seen.append(soft)
        return real(logits, soft)

    monkeypatch.setattr(sn, "soft_cross_entropy", spy)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    recipe.train_step(model, batch, FakeCtx())
    assert len(seen) == 2  # one random child + the smallest
    assert all(not s.requires_grad and s.grad_fn is None for s in seen)
    assert all(s is seen[0] for s in seen)  # one teacher prediction for the whole step
    model.load_state_dict(state)
    model.set_subnet(model.max_subnet())
    with torch.no_grad():
        teacher = model(batch[0]).softmax(-1)
    torch.testing.assert_close(seen[0], teacher, rtol=1e-5, atol=1e-6)
    # no distillation: the children learn from the labels
    seen.clear()
    _recipe(num_random=1, distill=False).train_step(model, batch, FakeCtx())
    assert seen == []


class _LiveSaved:
    """Bytes of autograd-saved tensors alive at once (peak), through saved_tensors_hooks."""

    def __init__(self):
        self.live = self.peak = 0

    def _free(self, n):
        self.live -= n

    def pack(self, t):
        holder = type("H", (), {})()
        holder.t = t
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._free, n)
        return holder

    @staticmethod
    def unpack(holder):
        return holder.t


def _peak(fn):
    meter = _LiveSaved()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        fn()
    return meter.peak


def test_peak_graph_memory_does_not_grow_with_the_number_of_children():
    model, batch = _model(), _batch(16)
    peaks = {n: _peak(lambda: _recipe(num_random=n).train_step(model, batch, FakeCtx())) for n in (0, 4)}
    assert peaks[4] <= 1.05 * peaks[0], peaks

    def one_graph():  # what the step must not do: all children in one graph, one backward
        archs = sandwich_archs(model, 4, random.Random(0))
        loss = 0
        for arch in archs:
            model.set_subnet(arch)
            loss = loss + model(resize_input(batch[0], arch["resolution"])).logsumexp(-1).mean()
        loss.backward()

    assert _peak(one_graph) > 1.5 * peaks[0]  # the meter can tell the difference


def test_regularisation_only_on_the_largest_child(monkeypatch):
    model, batch = _model(), _batch()
    drops = []
    real = model.forward

    def spy(x):
        drops.append(model.head.drop.p)
        return real(x)

    monkeypatch.setattr(model, "forward", spy)
    out = _recipe(num_random=1, drop_rate=0.3, weight_decay=1e-2, label_smoothing=0.1).train_step(model, batch,
                                                                                                   FakeCtx())
    assert drops == [0.3, 0.0, 0.0] and model.head.drop.p == 0.0
    plain = _recipe(num_random=1, drop_rate=0.0, weight_decay=0.0, label_smoothing=0.1)
    monkeypatch.setattr(model, "forward", real)
    model.eval()  # no dropout: the only difference left is the L2 term on the largest child
    out_wd = _recipe(num_random=1, weight_decay=1e-2, label_smoothing=0.1).train_step(model, batch, FakeCtx())
    out_plain = plain.train_step(model, batch, FakeCtx())
    l2 = sum(0.5 * (p ** 2).sum() for p in model.parameters() if p.ndim > 1).item()
    assert out_wd["loss_max"].item() == pytest.approx(out_plain["loss_max"].item() + 1e-2 * l2, rel=1e-4)
    assert out_wd["loss_min"].item() == pytest.approx(out_plain["loss_min"].item(), rel=1e-5)
    assert out["loss"].item() > 0


# ------------------------------------------------------------------------------------------------ end to end
def _write_mnist(root, n=96):
    from zoo.data.images.mnist import write_idx

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
    for i, y in enumerate(labels):  # a class-dependent bright bar, learnable in a few steps
        images[i, 2 + 2 * y: 4 + 2 * y, 4:24] = 255
    write_idx(root / "t10k-images-idx3-ubyte", images)
    write_idx(root / "t10k-labels-idx1-ubyte", labels)


def test_supernet_then_search_then_export_end_to_end(tmp_path):
    from zoo.cli import run_training

    data = tmp_path / "mnist"
    data.mkdir()
    _write_mnist(data)
    common = [f"data.root={data}", "data.train_split=test[:64]", "data.eval_split=test[64:]", "data.batch_size=16",
              "data.eval_batch_size=32", "trainer.epochs=1", "trainer.progress=false"]
    sup = run_training(CONFIGS + "/mnist_supernet.yaml", common + [
        "supernet.bn_calibration_batches=2", "schedule.name=exponential", "schedule.decay_rate=0.5",
        "schedule.warmup_epochs=0", "trainer.log_every=1"], tmp_path / "supernet")
    rows = (tmp_path / "supernet" / "metrics.csv").read_text().splitlines()
    lr = float(rows[1].split(",")[rows[0].split(",").index("lr")])
    assert lr == pytest.approx(3e-3 * 0.5, rel=1e-6)  # BigNAS's exponential schedule: one epoch of decay 0.5
    final = sup["final"]
    assert {"top1", "top1_min", "mflops", "mflops_min"} <= set(final) and final["mflops_min"] < final["mflops"]
    search = run_training(CONFIGS + "/mnist_search.yaml", common + [
        f"model.checkpoint_path={tmp_path / 'supernet' / 'last.pt'}", "data.search_split=test[32:64]",
        "search.budgets_mflops=[0.5,2.0]", "search.coarse_top=2", "search.rounds=1", "search.mutations=2",
        "search.calib_batches=1", "search.coarse_levels=[0.0,1.0]", "scratch.enabled=true"], tmp_path / "search")
    results = search["final"]["results"]
    assert [r["tag"] for r in results] == ["mflops_0p5", "mflops_2"]  # no "." in a tag: summaries read dotted keys
    per_example = np.load(tmp_path / "search" / "per_example.npz")
    for r in results:
        budget = float(r["tag"].split("_")[1].replace("p", "."))
        assert r["mflops"] <= budget and 0 <= r["top1_supernet"] <= 100 and 0 <= r["top1_scratch"] <= 100
        assert r["gap"] == pytest.approx(r["top1_supernet"] - r["top1_scratch"])
        for key in ("top1_supernet", "top1_scratch", "gap"):  # per evaluation digit, averaging to the metric
            assert search["final"][f"{r['tag']}/{key}"] == pytest.approx(r[key])
            assert per_example[f"{r['tag']}/{key}"].shape == (96 - 64,)
            assert per_example[f"{r['tag']}/{key}"].mean() == pytest.approx(r[key])
        child = load_child(tmp_path / "search" / "children" / r["tag"])
        assert child.arch == r["arch"]
        cfg = json.loads((tmp_path / "search" / "children" / r["tag"] / "config.json").read_text())
        assert cfg["mflops"] == pytest.approx(r["mflops"])
    assert (tmp_path / "search" / "pareto.png").stat().st_size > 1000
    assert (tmp_path / "search" / "search.csv").read_text().count("\n") >= 3
    assert json.loads((tmp_path / "search" / "results.json").read_text()) == json.loads(json.dumps(results))
    # the old key is an error that names the new one
    with pytest.raises(ConfigError, match="search.supernet_checkpoint.*model.checkpoint_path"):
        run_training(CONFIGS + "/mnist_search.yaml", common + [f"search.supernet_checkpoint={tmp_path}"],
                     tmp_path / "old_key")


def test_candidate_scores_are_the_top1_of_the_child_after_bn_recalibration(tmp_path):
    """The search scores a child with the one evaluation loop (ClassificationMetric): the same number as
    recalibrating BN on the same batches and counting correct predictions by hand, also with a batch cap."""
    from zoo.engine.batchnorm import recalibrate_batchnorm
    from zoo.nas.supernet import SearchSection
    from zoo.recipes.supernet import SearchConfig, SearchDataConfig, SupernetSearchRecipe

    data = tmp_path / "mnist"
    data.mkdir()
    _write_mnist(data, n=50)
    cfg = SearchConfig(data=SearchDataConfig(name="mnist", root=str(data), train_split="test[:32]",
                                             eval_split="test[32:]", batch_size=8, eval_batch_size=8),
                       search=SearchSection(budgets_mflops=[1.0], calib_batches=2))
    recipe = SupernetSearchRecipe(cfg)
    net = _model()
    arch = net.sample_subnet(random.Random(3))
    for max_batches, n in ((None, 18), (1, 8)):  # 18 = 2 batches of 8 + an uneven last batch of 2
        got = recipe.accuracy(net, arch, recipe.eval_dataset, max_batches)
        net.set_subnet(arch)
        recalibrate_batchnorm(net, recipe.calibration_batches(arch["resolution"], 2))
        net.eval()
        xs = torch.stack([recipe.eval_dataset[i][0] for i in range(n)])
        ys = torch.tensor([recipe.eval_dataset[i][1] for i in range(n)])
        with torch.no_grad():
            want = 100.0 * int((net(resize_input(xs, arch["resolution"])).argmax(1) == ys).sum()) / n
        assert got == pytest.approx(want, abs=1e-9)


def test_search_under_a_measured_latency_budget(tmp_path):
    from zoo.cli import run_training

    data = tmp_path / "mnist"
    data.mkdir()
    _write_mnist(data, n=48)
    torch.save({"model": _model().state_dict()}, tmp_path / "last.pt")
    out = run_training(CONFIGS + "/mnist_search.yaml", [
        f"data.root={data}", "data.train_split=test[:32]", "data.eval_split=test[32:]", "data.search_split=test[:16]",
        "data.batch_size=16", "data.eval_batch_size=16", f"model.checkpoint_path={tmp_path}",
        "search.budgets_mflops=[]", "search.budgets_ms=[1000.0]", "search.coarse_top=2", "search.rounds=1",
        "search.mutations=2", "search.calib_batches=1", "search.latency_repeats=2", "search.coarse_levels=[0.0,1.0]",
        "scratch.enabled=false"],
        tmp_path / "search")
    (rec,) = out["final"]["results"]
    assert rec["tag"] == "ms_1000" and 0 < rec["latency_ms"] <= 1000 and "top1_scratch" not in rec
    table = json.loads((tmp_path / "search" / "latency_table.json").read_text())
    assert table and all(v > 0 for v in table.values())


def test_keys_the_bignas_recipes_do_not_read_are_errors_naming_the_recipe():
    from zoo.cli import load_run_config

    cases = [("mnist_supernet.yaml", "adapter.name=lora", "supernet"),
             ("mnist_search.yaml", "loss.label_smoothing=0.1", "supernet_search"),
             ("mnist_search.yaml", "adapter.name=lora", "supernet_search"),
             ("mnist_search.yaml", "search.supernet_checkpoint=x.pt", "supernet_search")]
    for config, override, recipe in cases:
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=rf"'{key}' is not read by recipe '{recipe}'"):
            load_run_config(f"{CONFIGS}/{config}", ["model.checkpoint_path=x.pt", override])
