"""Walks of a BigNAS search space: which children one training step visits, the coarse grid of a search, mutations.

An *arch* is a dict ``{"resolution", "stem", "widths", "depths", "kernels", "expands", "head"}`` of the supernet's
space (:class:`zoo.models.bignas.BigNASNet`): one value per stage for the list-valued keys.
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Mapping, Sequence

from zoo.models.bignas import BigNASNet, arch_key

__all__ = ["sandwich_archs", "coarse_skeletons", "mutate_arch"]


def sandwich_archs(model: BigNASNet, num_random: int, rng: random.Random) -> list[dict[str, Any]]:
    """The children of one sandwich-rule step: the largest first (the in-place teacher), then ``num_random``
    random ones drawn with ``rng``, the smallest last (BigNAS §3.1; ``num_random + 2`` archs)."""
    return [model.max_subnet(), *(model.sample_subnet(rng) for _ in range(num_random)), model.min_subnet()]


def coarse_skeletons(model: BigNASNet, levels: Sequence[float] = (0.0, 0.5, 1.0)) -> list[dict[str, Any]]:
    """Stage-uniform skeletons: every resolution x a relative level (0 = smallest, 1 = largest choice of each stage)
    for width (stem and head too), depth, kernel and expand ratio; duplicates removed, in grid order.

    Reference: BigNAS §3.4, "coarse-to-fine architecture selection" (the coarse step)."""
    sp = model.space

    def pick(choices: Sequence, level: float):
        return choices[int(round(level * (len(choices) - 1)))]

    out, seen = [], set()
    for res, lw, ld, lk, le in itertools.product(sp.resolutions, levels, levels, levels, levels):
        arch = {"resolution": res, "stem": pick(sp.stem_widths, lw),
                "widths": [pick(s.widths, lw) for s in sp.stages], "depths": [pick(s.depths, ld) for s in sp.stages],
                "kernels": [pick(s.kernels, lk) for s in sp.stages],
                "expands": [pick(s.expands, le) for s in sp.stages],
                "head": pick(sp.head_widths, lw)}
        key = arch_key(arch)
        if key not in seen:
            seen.add(key)
            out.append(arch)
    return out


def mutate_arch(model: BigNASNet, arch: Mapping[str, Any], prob: float, rng: random.Random) -> dict[str, Any]:
    """A copy of ``arch`` with each per-stage choice (and resolution, stem, head) redrawn with probability ``prob``
    from ``model``'s space (the fine step of the coarse-to-fine search)."""
    sp = model.space
    new = {k: (list(v) if isinstance(v, list) else v) for k, v in arch.items()}
    for key, choices in (("resolution", sp.resolutions), ("stem", sp.stem_widths), ("head", sp.head_widths)):
        if rng.random() < prob:
            new[key] = rng.choice(list(choices))
    for i, st in enumerate(sp.stages):
        for key in ("widths", "depths", "kernels", "expands"):
            if rng.random() < prob:
                new[key][i] = rng.choice(list(getattr(st, key)))
    return new
