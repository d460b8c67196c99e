"""BigNAS's coarse-to-fine architecture selection under a cost budget, and a memo of what each candidate costs.

The search needs two functions of an arch: ``cost`` (MFLOPs, or a latency prediction) and ``score`` (accuracy
without retraining, e.g. on a held-back split after BatchNorm recalibration). Both are expensive and asked again
for the same arch, so :class:`CandidateMemo` computes each at most once per arch and keeps the records (what a
search log / Pareto plot shows).

Reference: Yu et al., "BigNAS: Scaling Up Neural Architecture Search with Big Single-Stage Models", ECCV 2020,
§3.4 (coarse: a grid of stage-uniform skeletons; fine: random per-stage mutations around the best skeleton).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from zoo.errors import ConfigError
from zoo.models.bignas import arch_key

__all__ = ["coarse_to_fine_search", "CandidateMemo"]

Arch = dict[str, Any]


def coarse_to_fine_search(skeletons: Sequence[Arch], cost: Callable[[Arch], float], score: Callable[[Arch], float],
                          budget: float, mutate: Callable[[Arch], Arch], *, coarse_top: int = 6, rounds: int = 2,
                          mutations: int = 8) -> Arch:
    """The best-scoring arch with ``cost(arch) <= budget``.

    Coarse: of the ``skeletons`` inside the budget, the ``coarse_top`` most expensive ones are scored and the best
    kept. Fine: ``rounds`` times, ``mutations`` mutants of the best (``mutate(best)``) are drawn, those inside the
    budget scored, and the best of them replaces the incumbent if it scores strictly higher.

    Raises :class:`~zoo.errors.ConfigError` when no skeleton fits the budget (naming the cheapest skeleton's cost).
    """
    inside = sorted((a for a in skeletons if cost(a) <= budget), key=cost, reverse=True)
    if not inside:
        cheapest = min((cost(a) for a in skeletons), default=float("nan"))
        raise ConfigError(f"no skeleton fits the budget {budget:g}; the cheapest one costs {cheapest:.3f} -- raise "
                          "the budget")
    best = max(inside[:coarse_top], key=score)
    for _ in range(rounds):
        candidates = [mutate(best) for _ in range(mutations)]
        candidates = [c for c in candidates if cost(c) <= budget]
        if candidates:
            top = max(candidates, key=score)
            if score(top) > score(best):
                best = top
    return best


class CandidateMemo:
    """Costs and scores of archs, each computed at most once per arch (keyed by :func:`arch_key`).

    Args:
        measures: ``{name: fn(arch) -> float}``, e.g. ``{"mflops": ..., "ms": ..., "search_top1": ...}``.

    ``memo.value(name, arch)`` (or ``memo.fn(name)``, a one-argument function for :func:`coarse_to_fine_search`)
    returns the memoised value; :meth:`scored` the records of every arch that got a value of a given measure.
    """

    def __init__(self, measures: dict[str, Callable[[Arch], float]]):
        self.measures = dict(measures)
        self.records: dict[str, dict[str, Any]] = {}

    def value(self, name: str, arch: Arch) -> float:
        """``measures[name](arch)``, computed on the first request for this arch."""
        rec = self.records.setdefault(arch_key(arch), {"arch": arch})
        if name not in rec:
            rec[name] = self.measures[name](arch)
        return rec[name]

    def fn(self, name: str) -> Callable[[Arch], float]:
        """``lambda arch: self.value(name, arch)``."""
        return lambda arch: self.value(name, arch)

    def scored(self, name: str) -> list[dict[str, Any]]:
        """The records (``{"arch": ..., measure: value, ...}``) that have a value of ``name``, in first-seen order."""
        return [r for r in self.records.values() if name in r]
