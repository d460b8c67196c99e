"""What a search leaves behind: the log of scored candidates (CSV) and the accuracy-vs-MFLOPs figure."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["write_candidates_csv", "read_candidates_csv", "plot_pareto"]

_COLUMNS = ["arch", "mflops", "ms", "search_top1"]


def write_candidates_csv(path: str | os.PathLike, candidates: Sequence[dict[str, Any]]) -> None:
    """One row per scored candidate: ``arch`` (JSON), ``mflops``, ``ms`` (empty when not measured) and
    ``search_top1`` (``candidates``: dicts with those keys, ``arch`` a dict)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_COLUMNS)
        for rec in candidates:
            w.writerow([json.dumps(rec["arch"]), f"{rec['mflops']:.4f}", rec.get("ms", ""), f"{rec['search_top1']:.2f}"])


def read_candidates_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows :func:`write_candidates_csv` wrote (``mflops`` / ``search_top1`` as floats); ``[]`` if no file."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{"arch": json.loads(r["arch"]), "mflops": float(r["mflops"]), "search_top1": float(r["search_top1"])}
                for r in csv.DictReader(f)]


def plot_pareto(results: Sequence[dict], candidates: Sequence[dict], path: str | os.PathLike) -> None:
    """Accuracy vs MFLOPs: searched children without retraining (``results``: ``mflops``, ``top1_supernet``,
    optionally ``top1_scratch``), their from-scratch twins, candidates scored on the search split (faint;
    ``mflops``, ``search_top1``). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if candidates:
        ax.scatter([c["mflops"] for c in candidates], [c["search_top1"] for c in candidates], s=8, c="0.8",
                   label="candidates (search split)")
    xs = [r["mflops"] for r in results]
    ax.plot(xs, [r["top1_supernet"] for r in results], "o-", label="searched child, no retraining")
    if all("top1_scratch" in r for r in results) and results:
        ax.plot(xs, [r["top1_scratch"] for r in results], "s--", label="same arch from scratch")
    ax.set_xlabel("MFLOPs (multiply-adds)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
