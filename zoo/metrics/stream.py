"""Online classification error of a test stream (test-time adaptation), overall and per group of examples.

Reference: the online error of the CTTA protocol (Wang et al., CoTTA, CVPR 2022; Liu et al., ViDA, ICLR 2024): every
batch is scored before the model adapts on it, and the error is counted over every example of a domain once.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from zoo.metrics.base import Metric

__all__ = ["OnlineErrorMetric", "errors_figure", "save_domain_errors"]


class OnlineErrorMetric(Metric):
    """``error`` (percent of examples wrongly classified), ``correct`` and ``count`` over the examples of one stream
    domain, from the per-example output ``correct`` ``(N,)`` (1 right, 0 wrong).

    With ``group_names`` (the domains of a stream that mixes them) it also reads ``group`` ``(N,)`` (each
    example's index into ``group_names``) and adds ``error/<name>`` and ``count/<name>`` for every group present.

    The errors are ``100 · (1 − correct / count)`` on integer counts, so the numbers do not depend on how the
    examples were batched or split across processes.
    """

    def __init__(self, group_names: Sequence[str] | None = None):
        self.group_names = list(group_names) if group_names else None
        self.keys = ("correct", "group") if self.group_names else ("correct",)
        super().__init__()

    def compute_from(self, correct: torch.Tensor, group: torch.Tensor | None = None) -> dict[str, Any]:
        right, count = int(correct.sum()), int(correct.numel())
        out: dict[str, Any] = {"error": 100.0 * (1 - right / count), "correct": right, "count": count}
        for i, name in enumerate(self.group_names or ()):
            selected = group == i
            n = int(selected.sum())
            if n:
                out[f"error/{name}"] = 100.0 * (1 - int(correct[selected].sum()) / n)
                out[f"count/{name}"] = n
        return out


def errors_figure(errors: Mapping[str, float], mean: float, title: str = "") -> Any:
    """The figure of ``errors.png``: one bar per domain in stream order (its error printed on it), the mean as a
    dashed line with a legend, axes labelled, titled "Online error per domain" plus ``title`` (e.g. the algorithm
    and protocol). Returns the matplotlib figure (:func:`zoo.plotting.save_figure` writes it)."""
    from zoo.plotting import pyplot

    plt = pyplot()
    names, values = list(errors), [float(v) for v in errors.values()]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.55 * len(names) + 2.5), 4.2))
    bars = ax.bar(range(len(names)), values, color="#4c72b0", label="error of the domain")
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=1)
    ax.axhline(mean, color="#c44e52", ls="--", label=f"mean over the stream: {mean:.2f} %")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=45, ha="right", fontsize=9)
    ax.set_xlabel("domain, in stream order")
    ax.set_ylabel("online error (%), lower is better")
    ax.set_ylim(0, max([100.0 if max(values, default=0) > 60 else 0.0, *values, mean]) * 1.08 or 1.0)
    ax.set_title("Online error per domain" + (f": {title}" if title else "") + " (each batch scored before the "
                 "update)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def save_domain_errors(errors: Mapping[str, float], mean: float, out_dir: str | Path, title: str = "") -> list[Path]:
    """Write ``errors.csv`` (``domain,error`` rows in the order of ``errors``, then ``mean``; percent, 2 decimals) and
    ``errors.png`` (:func:`errors_figure`) into ``out_dir``. Returns both paths."""
    from zoo.plotting import save_figure

    out_dir = Path(out_dir)
    csv_path, png_path = out_dir / "errors.csv", out_dir / "errors.png"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["domain", "error"])
        for name, value in errors.items():
            w.writerow([name, f"{value:.2f}"])
        w.writerow(["mean", f"{mean:.2f}"])
    save_figure(errors_figure(errors, mean, title), png_path, dpi=110)
    return [csv_path, png_path]
