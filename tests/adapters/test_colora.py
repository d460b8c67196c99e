"""CoLoRA: FAIG contributions on a toy network where only one layer changed (that layer gets the top contribution and
the largest rank), FAIG against the closed-form path integral and through a caller's backward, the parameter budget
respected exactly, the uniform baseline, the registered method (calibrate -> apply -> train -> save / load / merge) on
NAFNet and on a conv + linear model selected by patterns, and its config errors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zoo.adapters.base import AdapterMethod, build_adapter
from zoo.adapters.colora import (CoLoRAMethod, allocate_ranks, colora_ranks, faig, layer_contributions,
                                 lora_cost_per_rank, lora_param_count, max_lora_rank, resolve_budget,
                                 shuffle_contributions, split_examples, target_layers, uniform_ranks)
from zoo.errors import ConfigError
from zoo.registry import create_model


class Toy(nn.Module):
    """Four 3x3 convs of the same shape (so ranks compare directly), residual output."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(8 if i else 3, 8 if i < 3 else 3, 3, padding=1) for i in range(4))

    def forward(self, x):
        h = x
        for i, c in enumerate(self.convs):
            h = c(h)
            if i < 3:
                h = torch.tanh(h)
        return x + h


class ConvLinear(nn.Module):
    """A conv stem and a token MLP (Linear layers on channels), like a UNet's mix of convs and attention projections."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mlp = nn.ModuleDict({"fc1": nn.Linear(8, 16), "fc2": nn.Linear(16, 8)})
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        h = torch.tanh(self.stem(x)).permute(0, 2, 3, 1)
        h = h + self.mlp["fc2"](torch.tanh(self.mlp["fc1"](h)))
        return x + self.head(h.permute(0, 3, 1, 2))


def _toy_pair(changed: int):
    torch.manual_seed(0)
    base = Toy().eval()
    target = copy.deepcopy(base)
    with torch.no_grad():
        target.convs[changed].weight.add_(torch.randn_like(target.convs[changed].weight) * 0.3)
    return base, target


def _batches(target, n=2):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        lq = torch.rand(2, 3, 12, 12, generator=g)
        with torch.no_grad():
            gt = target(lq)  # the target model solves the "task" exactly
        out.append((lq, gt))
    return out


@pytest.mark.parametrize("changed", [1, 2])
def test_only_changed_layer_gets_contribution_and_largest_rank(changed):
    base, target = _toy_pair(changed)
    scores = faig(base, base.state_dict(), target.state_dict(), _batches(target), steps=8)
    assert set(scores) == {f"convs.{i}" for i in range(4)}
    assert scores[f"convs.{changed}"].shape == target.convs[changed].weight.shape[:2]  # one score per filter
    contrib = layer_contributions(scores)
    assert max(contrib, key=contrib.get) == f"convs.{changed}"
    assert contrib[f"convs.{changed}"] > 0
    assert all(v == 0 for n, v in contrib.items() if n != f"convs.{changed}")
    budget = 1000
    ranks = colora_ranks(base, contrib, budget, beta=0.2)
    assert max(ranks, key=ranks.get) == f"convs.{changed}"
    assert all(ranks[f"convs.{changed}"] > r for n, r in ranks.items() if n != f"convs.{changed}")
    convs = target_layers(base)
    used = lora_param_count(convs, ranks)
    assert used <= budget
    # exactly used: no further rank unit fits anywhere that is not saturated
    assert all(lora_cost_per_rank(convs[n]) > budget - used for n in ranks if ranks[n] < max_lora_rank(convs[n]))


def test_faig_uses_the_path_integral():
    """Linear model y = W x with MSE-sum loss: the IG of W along the path has a closed form."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False))
    w0 = torch.randn(2, 2, 1, 1)
    w1 = w0 + torch.randn(2, 2, 1, 1)
    x = torch.randn(1, 2, 4, 4)
    gt = torch.nn.functional.conv2d(x, w1)
    steps = 50
    s = faig(m, {"0.weight": w0}, {"0.weight": w1}, [(x, gt)], steps=steps)["0"]
    # grad of ||conv(x, W) - gt||^2 at W = a w0 + (1-a) w1 is 2 a (w0 - w1) X X^T ...
    X = x.flatten(2)[0]  # (2, 16)
    total = torch.zeros(2, 2)
    for k in range(steps):
        a = k / steps
        W = (a * w0 + (1 - a) * w1).view(2, 2)
        total += 2 * (W @ X - w1.view(2, 2) @ X) @ X.T
    want = ((w0 - w1).view(2, 2) * total / steps).abs()
    torch.testing.assert_close(s, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("aggregate", ["per_example", "batch"])
def test_faig_goes_through_the_given_backward_and_a_constant_scale_keeps_the_ranks(aggregate):
    base, target = _toy_pair(2)
    batches = _batches(target)
    calls = []

    def scaled_backward(loss):  # what an fp16 loss scaler or gradient-accumulation division does: a constant factor
        calls.append(float(loss.detach()))
        (loss * 8.0).backward()

    plain = layer_contributions(faig(base, base.state_dict(), target.state_dict(), batches, steps=4,
                                     aggregate=aggregate))
    scaled = layer_contributions(faig(base, base.state_dict(), target.state_dict(), batches, steps=4,
                                      backward=scaled_backward, aggregate=aggregate))
    # every path point x every example (per_example: one backward per example) or x every batch went through it
    units = sum(len(b[0]) for b in batches) if aggregate == "per_example" else len(batches)
    assert len(calls) == 4 * units
    for n in plain:
        assert scaled[n] == pytest.approx(8.0 * plain[n], rel=1e-5, abs=1e-9)
    assert colora_ranks(base, scaled, 800, beta=0.2) == colora_ranks(base, plain, 800, beta=0.2)
    assert all(p.grad is None for p in base.parameters())  # the model given is not touched


def test_per_example_faig_is_the_mean_of_each_example_scored_alone_as_the_official_code():
    """The official faig.py scores one image at a time (|·| of that image's path gradient) and averages the scores
    over the images; ``aggregate="per_example"`` does that for the examples of every batch."""
    base, target = _toy_pair(1)
    batches = _batches(target)
    got = faig(base, base.state_dict(), target.state_dict(), batches, steps=3)
    singles = [(lq[i:i + 1], gt[i:i + 1]) for lq, gt in batches for i in range(len(lq))]
    each = [faig(base, base.state_dict(), target.state_dict(), [one], steps=3, aggregate="batch") for one in singles]
    for name, score in got.items():
        torch.testing.assert_close(score, sum(e[name] for e in each) / len(each), rtol=1e-5, atol=1e-8)


def test_batch_aggregation_lets_opposite_gradients_cancel_and_per_example_does_not():
    """Two examples whose path gradients are exact opposites: y = w x, loss (w - g)^2 per example, so the path
    gradient of example e is 2 M (w̄ - g_e) with w̄ the mean weight on the path (1.55 for w from 2 to 1, M = 10);
    with g = w̄ ± 1 they cancel. Summing the gradients first (ours before) scores the weight 0; the official
    per-image |·| gives each example |(w0 - w1) · 2 (w̄ - g_e)| = 2, mean 2."""
    m = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False))
    w0, w1 = torch.full((1, 1, 1, 1), 1.0), torch.full((1, 1, 1, 1), 2.0)
    x = torch.ones(2, 1, 1, 1)
    gt = torch.tensor([2.55, 0.55]).view(2, 1, 1, 1)
    args = (m, {"0.weight": w0}, {"0.weight": w1}, [(x, gt)])
    summed = faig(*args, steps=10, aggregate="batch")["0"]
    per_example = faig(*args, steps=10, aggregate="per_example")["0"]
    assert float(summed.sum()) == pytest.approx(0.0, abs=1e-5)
    assert float(per_example.sum()) == pytest.approx(2.0, rel=1e-5)


def test_split_examples_keeps_the_structure():
    batch = {"lq": torch.rand(3, 2, 4, 4), "gt": torch.rand(3, 2, 4, 4), "name": ["a", "b", "c"]}
    parts = split_examples(batch)
    assert len(parts) == 3 and parts[1]["name"] == ["b"] and parts[1]["lq"].shape == (1, 2, 4, 4)
    torch.testing.assert_close(parts[2]["gt"][0], batch["gt"][2])
    pairs = split_examples((torch.rand(2, 3), torch.rand(2, 1)))
    assert isinstance(pairs[0], tuple) and pairs[0][0].shape == (1, 3)
    with pytest.raises(ValueError, match="no tensor"):
        split_examples(["a", "b"])


def test_controls_shuffled_and_equal_contributions():
    """faig_shuffled: the same contribution values, permuted across layers (seeded); equal: the rule with every
    contribution equal, without a probe; both at the same budget as CoLoRA."""
    contributions = {f"convs.{i}": float(10 ** i) for i in range(4)}
    shuffled = shuffle_contributions(contributions, seed=3)
    assert sorted(shuffled.values()) == sorted(contributions.values()) and set(shuffled) == set(contributions)
    assert shuffled == shuffle_contributions(contributions, seed=3)
    assert any(shuffle_contributions(contributions, seed=k) != contributions for k in range(5))

    base, target = _toy_pair(2)
    method = build_adapter({"name": "colora", "rank_rule": "faig_shuffled", "shuffle_seed": 3, "budget": 800,
                            "probe_steps": 2, "faig_steps": 2, "faig_batches": 1})
    assert method.needs_calibration
    method.contributions = contributions  # as calibrate would leave them
    model = copy.deepcopy(base)
    method.apply(model)
    assert method.allocation["rule_contributions"] == shuffled
    assert method.allocation["ranks"] == colora_ranks(base, shuffled, 800, beta=0.2)

    equal = build_adapter({"name": "colora", "rank_rule": "equal", "budget": 800})
    assert not equal.needs_calibration
    model = copy.deepcopy(base)
    equal.apply(model)
    assert equal.allocation["ranks"] == colora_ranks(base, {n: 1.0 for n in contributions}, 800, beta=0.2)
    assert equal.allocation["lora_params"] <= 800
    with pytest.raises(ConfigError, match="faig_aggregate"):
        build_adapter({"name": "colora", "faig_aggregate": "median"})


def test_faig_scores_linear_layers_per_weight():
    torch.manual_seed(0)
    base = ConvLinear().eval()
    target = copy.deepcopy(base)
    with torch.no_grad():
        target.mlp["fc1"].weight.add_(0.2)
    x = torch.rand(2, 3, 6, 6)
    with torch.no_grad():
        gt = target(x)
    layers = target_layers(base, layer_types=(nn.Conv2d, nn.Linear))
    assert list(layers) == ["stem", "mlp.fc1", "mlp.fc2", "head"]
    scores = faig(base, base.state_dict(), target.state_dict(), [(x, gt)], steps=4, layers=list(layers))
    assert scores["mlp.fc1"].shape == (16, 8) and scores["stem"].shape == (8, 3)
    contrib = layer_contributions(scores)
    assert max(contrib, key=contrib.get) == "mlp.fc1"


def test_allocate_ranks_follows_shares_caps_and_budget():
    costs = {"a": 10, "b": 10, "c": 7}
    caps = {"a": 100, "b": 3, "c": 100}
    r = allocate_ranks(costs, caps, {"a": 1.0, "b": 1.0, "c": 0.0}, budget=205)
    assert r["b"] == 3 and r["c"] in (0, 1)  # b capped, its excess to a; c only gets leftovers
    used = sum(costs[n] * r[n] for n in r)
    assert used <= 205 and 205 - used < 7
    r2 = allocate_ranks(costs, caps, {"a": 3.0, "b": 1.0, "c": 0.0}, budget=40)
    assert r2["a"] == 3 and r2["b"] == 1
    with pytest.raises(ValueError, match="smaller than min_rank"):
        allocate_ranks(costs, caps, {"a": 1, "b": 1, "c": 1}, budget=20, min_rank=1)


def test_uniform_baseline_same_budget_and_rank_mode():
    model = create_model("nafnet_tiny")
    budget = resolve_budget(model, 0.05)
    assert budget == int(0.05 * sum(p.numel() for p in model.parameters()))
    convs = target_layers(model)
    ratio = uniform_ranks(model, None, budget)
    assert set(ratio) == set(convs) and lora_param_count(convs, ratio) <= budget
    assert budget - lora_param_count(convs, ratio) < min(lora_cost_per_rank(c) for c in convs.values())
    rank = uniform_ranks(model, None, budget, mode="rank")
    assert len({min(r, 1000) for n, r in rank.items() if r < max_lora_rank(convs[n])}) == 1  # one rank everywhere
    assert lora_param_count(convs, rank) <= budget
    with pytest.raises(ValueError, match="budget"):
        resolve_budget(model, -3)


def _nafnet_with_scales():
    torch.manual_seed(0)
    model = create_model("nafnet_tiny").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("beta", "gamma")):
                p.normal_(std=0.5)
    return model


def test_method_on_nafnet_trains_only_adapters_saves_loads_and_merges(tmp_path):
    model = _nafnet_with_scales()
    x = torch.rand(1, 3, 16, 16)
    ref = model(x).detach()
    method = build_adapter({"name": "colora", "budget": 0.07, "beta": 0.3})
    assert isinstance(method, CoLoRAMethod) and method.needs_calibration
    with pytest.raises(ConfigError, match="calibrate"):
        method.apply(copy.deepcopy(model))
    method.contributions = {n: float(i + 1) for i, n in enumerate(target_layers(model))}  # as calibrate sets them
    budget = resolve_budget(model, 0.07)
    want = colora_ranks(model, method.contributions, budget, beta=0.3)
    method.apply(model)
    assert method.config.ranks == want and not method.needs_calibration
    assert method.allocation["lora_params"] == method.num_trainable(model) <= budget == method.allocation["budget"]
    assert [n for n, p in model.named_parameters() if p.requires_grad and ".deltas.colora." not in n] == []
    torch.testing.assert_close(model(x), ref)  # up = 0: starts as the pre-trained model
    opt = torch.optim.Adam(method.param_groups(model, lr=1e-2)[0]["params"], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (model(x) - x).abs().mean().backward()
        opt.step()
    adapted = model(x).detach()
    assert (adapted - ref).abs().max() > 1e-4
    # saved: adapter_config.json holds the ranks, so loading needs no calibration
    method.save(model, tmp_path / "adapter")
    loaded = AdapterMethod.from_saved(tmp_path / "adapter")
    assert isinstance(loaded, CoLoRAMethod) and loaded.config.ranks == want and not loaded.needs_calibration
    fresh = loaded.load(_nafnet_with_scales(), tmp_path / "adapter")
    torch.testing.assert_close(fresh(x), adapted)
    merged = method.merge_and_unload(model)
    assert not any(".deltas." in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(x), adapted, rtol=1e-4, atol=1e-5)


def test_calibrate_then_apply_on_a_conv_linear_model_selected_by_patterns():
    """Not a NAFNet: the targets are patterns and layer types from the config; calibrate runs the probe and FAIG
    through the given backward / optimizer step, leaves the model as it was, and the ranks go to matching layers."""
    torch.manual_seed(0)
    model = ConvLinear()
    before = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(2, 3, 6, 6, generator=g), torch.rand(2, 3, 6, 6, generator=g)) for _ in range(3)]
    method = build_adapter({"name": "colora", "layer_types": ["Conv2d", "Linear"], "target_modules": ["mlp.*", "head"],
                            "budget": 120, "beta": 0.0, "probe_steps": 4, "probe_lr": 1e-2, "faig_steps": 3,
                            "faig_batches": 2})
    backward_calls, steps = [], []

    def backward(loss):
        backward_calls.append(loss.detach())
        loss.backward()

    def optimizer_step(opt):
        steps.append(1)
        opt.step()

    def loss_fn(m, batch):
        return (m(batch[0]) - batch[1]).abs().mean()

    method.calibrate(model, data, loss_fn, backward, optimizer_step=optimizer_step)
    assert len(steps) == 4  # probe steps (the 3 batches re-iterated)
    assert len(backward_calls) == 4 + 3 * 2 * 2  # probe + FAIG (path points x examples of the kept batches)
    assert set(method.contributions) == {"mlp.fc1", "mlp.fc2", "head"}  # the stem is not a target
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is unchanged
    method.apply(model)
    lora = {n for n, _ in model.named_parameters() if ".deltas.colora." in n}
    assert lora and all(n.startswith(("mlp.", "head.")) for n in lora)
    assert method.num_trainable(model) == method.allocation["lora_params"] <= 120


def test_uniform_rule_needs_no_calibration_and_names_its_deltas_lora():
    model = create_model("nafnet_tiny")
    method = build_adapter({"name": "colora", "rank_rule": "uniform", "budget": 0.05})
    assert not method.needs_calibration and method.delta_names == ("lora",)
    method.apply(model)
    assert method.config.ranks == uniform_ranks(create_model("nafnet_tiny"), None, 0.05)
    assert {n.split(".deltas.")[1].split(".")[0] for n, _ in model.named_parameters() if ".deltas." in n} == {"lora"}
    assert "contributions" not in method.allocation


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="adapter.rank_rule"):
        build_adapter({"name": "colora", "rank_rule": "random"})
    with pytest.raises(ConfigError, match="adapter.beta"):
        build_adapter({"name": "colora", "beta": 2.0})
    with pytest.raises(ConfigError, match="adapter.layer_types"):
        build_adapter({"name": "colora", "layer_types": ["Conv4d"]})
    with pytest.raises(ConfigError, match="adapter.probe_stepz"):
        build_adapter({"name": "colora", "probe_stepz": 3})
    method = build_adapter({"name": "colora", "rank_rule": "uniform", "target_modules": ["nothing_here"]})
    with pytest.raises(ConfigError, match="adapter.target_modules"):
        method.apply(create_model("nafnet_tiny"))
    tight = build_adapter({"name": "colora", "rank_rule": "uniform", "uniform_mode": "rank", "budget": 10})
    with pytest.raises(ConfigError, match="adapter.budget"):
        tight.apply(create_model("nafnet_tiny"))
