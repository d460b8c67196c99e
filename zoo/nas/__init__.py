"""Neural architecture search over a weight-sharing supernet (BigNAS), independent of any recipe.

* :mod:`zoo.nas.space` -- walks of a supernet's search space: the children of one sandwich step, the grid of
  stage-uniform skeletons, per-stage mutations;
* :mod:`zoo.nas.latency` -- a per-part latency table measured on this machine and cached in a JSON file;
* :mod:`zoo.nas.search` -- the coarse-to-fine search under a budget, and the memo of each candidate's costs and score;
* :mod:`zoo.nas.report` -- the accuracy-vs-MFLOPs figure of a search (matplotlib, imported only when drawing);
* :mod:`zoo.nas.supernet` -- the settings, the sandwich-rule step and the search of every budget with its report.

The ``supernet`` and ``supernet_search`` recipes wire these to data and training.
"""
from zoo.nas.latency import LatencyTable
from zoo.nas.report import plot_pareto
from zoo.nas.search import CandidateMemo, coarse_to_fine_search
from zoo.nas.space import coarse_skeletons, mutate_arch, sandwich_archs

__all__ = ["sandwich_archs", "coarse_skeletons", "mutate_arch", "LatencyTable", "CandidateMemo",
           "coarse_to_fine_search", "plot_pareto"]
