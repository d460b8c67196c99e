"""Statistics of a study: mean, std and Student-t interval over seeds, paired differences between two variants over
the seeds they share, and a seeded percentile bootstrap over examples.

All functions take plain numbers / numpy arrays and return plain dicts of floats (``None`` where a quantity is not
defined, e.g. the std of one seed), so that results files are valid JSON.

Reference: the t interval is ``mean ± t_{(1+c)/2, n-1} · s / sqrt(n)`` with ``s`` the sample std (ddof=1) and the
quantile from ``scipy.stats.t.ppf``; the bootstrap is Efron & Tibshirani's percentile interval ("An Introduction
to the Bootstrap", 1993, ch. 13), resampling examples with replacement (the same indices for both arms of a paired
comparison).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["t_interval", "describe", "paired_difference", "bootstrap_mean"]


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Student-t interval for the mean of ``values`` (``(n,)``, treated as i.i.d. normal draws).

    Returns ``(low, high)``; ``(None, None)`` when ``n < 2`` (the spread is unknown). ``n >= 2`` with zero spread
    gives ``(mean, mean)``.
    """
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = x.size
    if n < 2:
        return None, None
    from scipy import stats

    mean = float(x.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def describe(values: Sequence[float], confidence: float = 0.95) -> dict[str, float | int | None]:
    """``{n, mean, std, ci_low, ci_high}`` of ``values`` (``(n,)``): sample std with ddof=1 and the Student-t
    interval of :func:`t_interval`; ``std``/``ci_*`` are ``None`` for one value, everything but ``n`` for none."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError(f"values must be finite, got {x.tolist()}")
    low, high = t_interval(x, confidence)
    return {"n": int(x.size), "mean": float(x.mean()) if x.size else None,
            "std": float(x.std(ddof=1)) if x.size >= 2 else None, "ci_low": low, "ci_high": high}


def paired_difference(method: Mapping[int, float], baseline: Mapping[int, float], *, higher_is_better: bool,
                      confidence: float = 0.95) -> dict[str, object]:
    """Paired difference ``method - baseline`` over the seeds both have (``{seed: value}`` each).

    Returns ``describe`` of the per-seed differences (``n`` = shared seeds, ``mean``, ``std``, ``ci_low``,
    ``ci_high``) plus ``seeds`` (the shared seeds, sorted), ``differences`` (per seed, same order),
    ``seeds_better`` / ``seeds_worse`` / ``seeds_tied`` (how many seeds the method beats / trails / ties the
    baseline on, by the metric's direction) and ``seeds_agree`` (how many differences have the sign of the mean
    difference; zero differences never agree).
    """
    seeds = sorted(set(method) & set(baseline))
    diffs = np.array([float(method[s]) - float(baseline[s]) for s in seeds], dtype=np.float64)
    out: dict[str, object] = describe(diffs, confidence)
    signed = diffs if higher_is_better else -diffs
    mean_sign = np.sign(diffs.mean()) if diffs.size else 0.0
    out.update(seeds=seeds, differences=diffs.tolist(), seeds_better=int((signed > 0).sum()),
               seeds_worse=int((signed < 0).sum()), seeds_tied=int((signed == 0).sum()),
               seeds_agree=int((np.sign(diffs) == mean_sign).sum()) if mean_sign != 0 else 0)
    return out


def bootstrap_mean(values: np.ndarray, confidence: float = 0.95, *, resamples: int = 10_000, seed: int = 0,
                   max_elements: int = 1 << 22) -> dict[str, float | int]:
    """Percentile bootstrap interval of the mean of per-example ``values`` (``(N,)``).

    Draws ``resamples`` index vectors of length ``N`` with replacement from ``numpy.random.default_rng(seed)``
    (in chunks of at most ``max_elements`` indices, so memory stays bounded for large ``N``); the interval is the
    ``(1-c)/2`` and ``(1+c)/2`` quantiles of the resampled means. For a paired comparison pass the per-example
    differences (already averaged over seeds): resampling them resamples the same examples in both arms.

    Returns ``{mean, ci_low, ci_high, n_examples, resamples, seed}``.
    """
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = x.size
    if n == 0:
        raise ValueError("bootstrap_mean: no examples (an empty per-example array)")
    if resamples < 1:
        raise ValueError(f"bootstrap resamples must be >= 1, got {resamples}")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_mean: the per-example values contain NaN or inf")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, max_elements // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.quantile(means, [0.5 - confidence / 2.0, 0.5 + confidence / 2.0])
    return {"mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n_examples": int(n),
            "resamples": int(resamples), "seed": int(seed)}
