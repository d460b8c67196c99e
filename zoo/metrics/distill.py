"""Dataset-distillation scores: DD-Ranking's HLR / IOR / LRS and a storage report of the files a method writes.

DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking, README "Label-Robust Score"; ``ddranking/metrics/soft_label.py``):

* ``HLR = Acc(real, hard) - Acc(syn, hard)`` -- hard label recovery: how far a student trained on the distilled
  images *with hard labels* stays below one trained on the whole real training set (lower is better);
* ``IOR = Acc(syn, any) - Acc(rdm, any)`` -- improvement over random: the method's own labels on its images vs the
  same labelling applied to randomly selected real images of the same images-per-class (higher is better);
* ``LRS = (exp(a) - exp(-1)) / (e - exp(-1))`` with ``a = w * IOR - (1 - w) * HLR`` (``w = 0.5``), accuracies as
  fractions in [0, 1] so that ``a`` lies in [-1, 1] and LRS in [0, 1].

HLR and IOR are returned in percentage points (accuracies given in percent).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["hard_label_recovery", "improvement_over_random", "label_robust_score", "storage_report", "score_rows"]


def hard_label_recovery(real_hard_top1: float, syn_hard_top1: float) -> float:
    """``HLR = Acc(real, hard) - Acc(syn, hard)`` (percent in, percentage points out)."""
    return float(real_hard_top1) - float(syn_hard_top1)


def improvement_over_random(syn_top1: float, random_top1: float) -> float:
    """``IOR = Acc(syn, any) - Acc(rdm, any)`` (percent in, percentage points out)."""
    return float(syn_top1) - float(random_top1)


def label_robust_score(hlr: float, ior: float, weight: float = 0.5) -> float:
    """DD-Ranking's LRS in [0, 1] from HLR / IOR in percentage points (converted to fractions first)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"label_robust_score: weight must be in [0, 1], got {weight}")
    a = weight * ior / 100.0 - (1.0 - weight) * hlr / 100.0
    return (math.exp(a) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def storage_report(files: Mapping[str, str | os.PathLike | list]) -> dict[str, int]:
    """``{name: bytes}`` -- the on-disk size of each named file (or the summed sizes of a list of files).

    Raises ``FileNotFoundError`` naming the entry and the path when a file is missing (a report must describe files
    that exist, not what was meant to be written).
    """
    out: dict[str, int] = {}
    for name, paths in files.items():
        paths = paths if isinstance(paths, (list, tuple)) else [paths]
        total = 0
        for p in paths:
            p = Path(p)
            if not p.is_file():
                raise FileNotFoundError(f"storage_report: '{name}' names {p}, which does not exist")
            total += p.stat().st_size
        out[name] = total
    return out


def score_rows(rows: Sequence[dict[str, Any]], real_hard_top1: float | None = None) -> dict[str, float]:
    """DD-Ranking's scores of a distillation's result rows, added to the rows in place, and as flat metrics.

    ``rows``: dicts ``{"ipc", "images", "labels", "top1", "top1_std", "label_bytes", ...}``; ``images`` names the
    image set: a distilled one (e.g. ``rded``, ``label_gap``) or ``random`` (random real images of the same IPC). A
    distilled row gets ``hlr`` (against ``real_hard_top1`` and the ``hard`` row of its IPC and image set), ``ior``
    (against the ``random`` row of its IPC and labels), ``lrs`` (when both exist) and ``label_bytes_vs_stored`` (its
    label bytes over the ``stored`` row's of its IPC and image set). Returns ``ipc<k>/<images>/<labels>/<name>``
    for ``top1, top1_std, label_bytes`` and those scores, and ``ipc<k>/random/<labels>/top1`` for random rows.
    """
    def find(ipc, kind, labels):
        return next((r for r in rows if r["ipc"] == ipc and r["images"] == kind and r["labels"] == labels), None)

    metrics: dict[str, float] = {}
    for r in rows:
        key = f"ipc{r['ipc']}/{r['images']}/{r['labels']}"
        if r["images"] == "random":
            metrics[f"{key}/top1"] = r["top1"]
            continue
        for name in ("top1", "top1_std", "label_bytes"):
            metrics[f"{key}/{name}"] = r[name]
        hard = find(r["ipc"], r["images"], "hard")
        if real_hard_top1 is not None and hard is not None:
            r["hlr"] = metrics[f"{key}/hlr"] = hard_label_recovery(real_hard_top1, hard["top1"])
        rdm = find(r["ipc"], "random", r["labels"])
        if rdm is not None:
            r["ior"] = metrics[f"{key}/ior"] = improvement_over_random(r["top1"], rdm["top1"])
        if "hlr" in r and "ior" in r:
            r["lrs"] = metrics[f"{key}/lrs"] = label_robust_score(r["hlr"], r["ior"])
        stored = find(r["ipc"], r["images"], "stored")
        if stored is not None and stored["label_bytes"]:
            r["label_bytes_vs_stored"] = metrics[f"{key}/label_bytes_vs_stored"] = r["label_bytes"] / stored["label_bytes"]
    return metrics
