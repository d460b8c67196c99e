"""Search-space walks of a BigNAS supernet: the sandwich children, the coarse grid, mutations that stay in the space."""
from __future__ import annotations

import json
import random

import pytest
import torch

import zoo
from zoo.nas import coarse_skeletons, mutate_arch, sandwich_archs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zoo.create_model("bignas_mnist")


def test_sandwich_children_are_largest_random_smallest(model):
    archs = sandwich_archs(model, 3, random.Random(0))
    assert len(archs) == 5 and archs[0] == model.max_subnet() and archs[-1] == model.min_subnet()
    assert archs == sandwich_archs(model, 3, random.Random(0))  # a function of the generator
    assert archs[1:-1] != sandwich_archs(model, 3, random.Random(1))[1:-1]
    assert sandwich_archs(model, 0, random.Random(0)) == [model.max_subnet(), model.min_subnet()]


def test_coarse_grid_is_stage_uniform_and_deduplicated(model):
    # resolutions x levels of (width, depth, kernel, expand); every width has 2 choices, so its 0.5 level is a duplicate
    assert len(coarse_skeletons(model)) == 3 * 2 * 3 ** 3
    skeletons = coarse_skeletons(model, levels=(0.0, 1.0))
    assert len(skeletons) == len({json.dumps(s, sort_keys=True) for s in skeletons}) == 3 * 2 ** 4
    assert model.max_subnet() in skeletons and model.min_subnet() in skeletons
    for s in skeletons:  # one relative level for every stage: the grid has no per-stage variation
        levels = {st.kernels.index(k) / (len(st.kernels) - 1) for st, k in zip(model.space.stages, s["kernels"])
                  if len(st.kernels) > 1}
        assert len(levels) == 1
        assert model.validate_arch(s) == s


def test_mutations_stay_in_the_space_and_respect_the_probability(model):
    rng = random.Random(0)
    base = model.min_subnet()
    assert mutate_arch(model, base, 0.0, rng) == base
    mutants = [mutate_arch(model, base, 1.0, rng) for _ in range(20)]
    assert all(model.validate_arch(m) == m for m in mutants)
    assert any(m != base for m in mutants)
    assert base == model.min_subnet()  # the input is not modified
