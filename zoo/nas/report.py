"""What a search leaves behind: the log of scored candidates (CSV) and the accuracy-vs-MFLOPs figure."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["write_candidates_csv", "read_candidates_csv", "pareto_figure", "plot_pareto"]

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


def pareto_figure(results: Sequence[dict], candidates: Sequence[dict], title: str = "") -> Any:
    """The figure of ``pareto.png``: top-1 accuracy (%) against MFLOPs of the searched children evaluated without
    retraining (``results``: ``mflops``, ``top1_supernet``, optionally ``top1_scratch`` and ``budget``, each winner
    annotated with its budget), their from-scratch twins, and every candidate scored during the search (faint;
    ``mflops``, ``search_top1``, on the search split). Titled, both axes labelled with units, a legend naming each
    series and its split. Returns the matplotlib figure."""
    from zoo.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    if candidates:
        ax.scatter([c["mflops"] for c in candidates], [c["search_top1"] for c in candidates], s=9, c="0.75",
                   label=f"candidates scored in the search ({len(candidates)}, search split)", zorder=1)
    xs = [r["mflops"] for r in results]
    ax.plot(xs, [r["top1_supernet"] for r in results], "o-", color="#1f77b4", zorder=3,
            label="searched child, supernet weights, no retraining (eval split)")
    if results and all("top1_scratch" in r for r in results):
        ax.plot(xs, [r["top1_scratch"] for r in results], "s--", color="#d62728", zorder=2,
                label="same architecture trained from scratch (eval split)")
    for r in results:
        if "budget" in r:
            ax.annotate(f"budget {r['budget']}", (r["mflops"], r["top1_supernet"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=7, color="#1f77b4")
    ax.set_xlabel("compute of the child (MFLOPs, multiply-adds per image)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "Supernet search: accuracy vs compute of the chosen children", fontsize=10)
    ax.margins(x=0.08, y=0.12)  # room for the budget labels
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    return fig


def plot_pareto(results: Sequence[dict], candidates: Sequence[dict], path: str | os.PathLike,
                title: str = "") -> None:
    """Write :func:`pareto_figure` to ``path`` (PNG, 720 x 480 pixels). Needs matplotlib."""
    from zoo.plotting import save_figure

    save_figure(pareto_figure(results, candidates, title), path, dpi=100)
