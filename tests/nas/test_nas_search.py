"""Coarse-to-fine search: stays inside the budget, its mutations beat the grid when the best child is not
stage-uniform, a budget nothing fits is a config error, and the memo computes each measure once per arch."""
from __future__ import annotations

import random

import pytest
import torch

import zoo
from zoo.errors import ConfigError
from zoo.nas import CandidateMemo, coarse_skeletons, coarse_to_fine_search, mutate_arch


def _cost(a):  # a cheap monotone stand-in for FLOPs (the search only compares costs with the budget)
    r = a["resolution"] / 28
    return r * r * sum(w * d * e * k for w, d, e, k in zip(a["widths"], a["depths"], a["expands"], a["kernels"])) / 2e3


def _score(a):  # prefers a non-uniform child (stage 1 kernel 7, stage 2 kernel 3): no skeleton has it
    return 10 * a["kernels"][1] - 10 * a["kernels"][2] + a["resolution"] / 100


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zoo.create_model("bignas_mnist")


def test_search_stays_in_budget_and_mutations_improve_on_the_grid(model):
    skeletons = coarse_skeletons(model, levels=(0.0, 1.0))
    budget = sorted(_cost(s) for s in skeletons)[len(skeletons) // 2]
    rng = random.Random(0)
    best = coarse_to_fine_search(skeletons, _cost, _score, budget, lambda a: mutate_arch(model, a, 0.3, rng),
                                 coarse_top=4, rounds=6, mutations=10)
    assert _cost(best) <= budget
    assert _score(best) > max(_score(s) for s in skeletons if _cost(s) <= budget)
    # no fine rounds: the best of the coarse_top most expensive skeletons inside the budget
    coarse = coarse_to_fine_search(skeletons, _cost, _score, budget, lambda a: a, coarse_top=4, rounds=0)
    inside = sorted((s for s in skeletons if _cost(s) <= budget), key=_cost, reverse=True)[:4]
    assert coarse == max(inside, key=_score)
    with pytest.raises(ConfigError, match="no skeleton fits the budget"):
        coarse_to_fine_search(skeletons, _cost, _score, 1e-3, lambda a: a)


def test_memo_computes_each_measure_once_per_arch(model):
    calls = []

    def flops(arch):
        calls.append(arch["resolution"])
        return 1.0

    memo = CandidateMemo({"mflops": flops, "top1": lambda arch: 50.0})
    a, b = model.max_subnet(), model.min_subnet()
    for _ in range(3):
        assert memo.value("mflops", a) == 1.0 and memo.fn("mflops")(dict(b)) == 1.0
    assert len(calls) == 2
    memo.value("top1", b)
    assert [r["arch"] for r in memo.scored("top1")] == [b] and len(memo.scored("mflops")) == 2
