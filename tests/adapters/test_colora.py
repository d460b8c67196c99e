"""CoLoRA: FAIG contributions on a toy network where only one layer changed (that layer gets the top contribution and
the largest rank), the parameter budget respected exactly, the uniform baseline, adapters on NAFNet (counts,
training only the adapters, merge)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zoo.adapters.colora import (adapter_count, add_colora, allocate_ranks, colora_ranks, conv_layers, faig,
                                 layer_contributions, lora_cost_per_rank, lora_param_count, max_lora_rank,
                                 merge_colora, resolve_budget, uniform_ranks)
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
    convs = conv_layers(base)
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
    convs = conv_layers(model)
    ratio = uniform_ranks(model, None, budget)
    assert set(ratio) == set(convs) and lora_param_count(convs, ratio) <= budget
    assert budget - lora_param_count(convs, ratio) < min(lora_cost_per_rank(c) for c in convs.values())
    rank = uniform_ranks(model, None, budget, mode="rank")
    assert len({min(r, 1000) for n, r in rank.items() if r < max_lora_rank(convs[n])}) == 1  # one rank everywhere
    assert lora_param_count(convs, rank) <= budget
    with pytest.raises(ValueError, match="budget"):
        resolve_budget(model, -3)


def test_adapters_on_nafnet_train_only_adapters_and_merge():
    torch.manual_seed(0)
    model = create_model("nafnet_tiny").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("beta", "gamma")):
                p.normal_(std=0.5)
    x = torch.rand(1, 3, 16, 16)
    ref = model(x).detach()
    budget = resolve_budget(model, 0.07)
    contrib = {n: float(i + 1) for i, n in enumerate(conv_layers(model))}
    ranks = colora_ranks(model, contrib, budget, beta=0.3)
    add_colora(model, ranks)
    assert adapter_count(model) == lora_param_count(conv_layers(model), ranks) <= budget
    assert [n for n, p in model.named_parameters() if p.requires_grad and ".deltas." not in n] == []
    torch.testing.assert_close(model(x), ref)  # up = 0: starts as the pre-trained model
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (model(x) - x).abs().mean().backward()
        opt.step()
    adapted = model(x).detach()
    assert (adapted - ref).abs().max() > 1e-4
    merged = merge_colora(model)
    assert not any(".deltas." in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(x), adapted, rtol=1e-4, atol=1e-5)
