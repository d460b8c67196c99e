"""Online classification error of a test stream (test-time adaptation), overall and per group of examples.

Reference: the online error of the CTTA protocol (Wang et al., CoTTA, CVPR 2022; Liu et al., ViDA, ICLR 2024): every
batch is scored before the model adapts on it, and the error is counted over every example of a domain once.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from zoo.metrics.base import Metric

__all__ = ["OnlineErrorMetric", "per_example_errors", "mean_over_domains", "errors_figure", "save_domain_errors"]


class OnlineErrorMetric(Metric):
    """``error`` (percent of examples wrongly classified), ``correct`` and ``count`` over the examples of one stream
    domain, from the per-example output ``correct`` ``(N,)`` (1 right, 0 wrong).

    With ``group_names`` (the domains of a stream that mixes them) it also reads ``group`` ``(N,)`` (each
    example's index into ``group_names``) and adds ``error/<name>`` and ``count/<name>`` for every group present.
    ``extra``: names of other predictions of each example (per-example output ``correct_<name>``, e.g. CoTTA's plain
    teacher beside its augmentation average), scored as ``error_<name>`` (and ``error_<name>/<group>``). ``keep``:
    called by :meth:`compute` with the domain's per-example outputs (``keep(outputs)``; a recipe stores them for
    ``per_example.npz``).

    The errors are ``100 · (1 − correct / count)`` on integer counts, so the numbers do not depend on how the
    examples were batched or split across processes.
    """

    def __init__(self, group_names: Sequence[str] | None = None, extra: Sequence[str] = (),
                 keep: Callable[[dict[str, torch.Tensor]], None] | None = None):
        self.group_names = list(group_names) if group_names else None
        self.extra, self.keep = tuple(extra), keep
        self.keys = (("correct", "group") if self.group_names else ("correct",)) + tuple(f"correct_{n}"
                                                                                          for n in self.extra)
        super().__init__()

    def _errors(self, correct: torch.Tensor, group: torch.Tensor | None, name: str) -> dict[str, Any]:
        """``name`` and ``name/<group>`` errors of the 0 / 1 ``correct`` ``(N,)``."""
        out = {name: 100.0 * (1 - int(correct.sum()) / int(correct.numel()))}
        for i, g in enumerate(self.group_names or ()):
            selected = group == i
            if int(selected.sum()):
                out[f"{name}/{g}"] = 100.0 * (1 - int(correct[selected].sum()) / int(selected.sum()))
        return out

    def compute_from(self, correct: torch.Tensor, group: torch.Tensor | None = None,
                     **extra: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {**self._errors(correct, group, "error"), "correct": int(correct.sum()),
                               "count": int(correct.numel())}
        for i, g in enumerate(self.group_names or ()):
            if f"error/{g}" in out:
                out[f"count/{g}"] = int((group == i).sum())
        for name in self.extra:
            out.update(self._errors(extra[f"correct_{name}"], group, f"error_{name}"))
        if self.keep is not None:
            self.keep({"correct": correct, **({"group": group} if group is not None else {}), **extra})
        return out


def per_example_errors(domains: dict[str, dict[str, torch.Tensor]],
                       extra: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-example errors whose plain mean is the stream's mean error over corruptions: ``({"error": (N,),
    "error_<name>": (N,)}, example_id (N,))`` from each domain's per-example outputs ``{"correct": (n_d,),
    "correct_<name>": ..., "group": ...}`` (domains in stream order; a mixed stream is one domain whose examples'
    corruption is ``group``).

    An example of corruption ``c`` (``n_c`` examples, ``C`` corruptions, ``N`` in all) counts
    ``100 · wrong · N / (C · n_c)``, so equal domain sizes give plain 0 / 100 scores. ``example_id`` is
    ``corruption index · 10^6 + position in its corruption`` (the order the examples were scored)."""
    parts: dict[str, list[torch.Tensor]] = {"error": [], **{f"error_{n}": [] for n in extra}}
    ids, labels = [], []
    for d, (name, out) in enumerate(domains.items()):
        n = int(out["correct"].numel())
        label = out["group"].long() if "group" in out else torch.full((n,), d, dtype=torch.long)
        labels.append(label)
        for key in parts:
            parts[key].append(1 - out["correct" if key == "error" else f"correct_{key[len('error_'):]}"].double())
        position = torch.zeros(n, dtype=torch.long)
        for g in label.unique():
            sel = label == g
            position[sel] = torch.arange(int(sel.sum()))
        ids.append(label * 1_000_000 + position)
    label = torch.cat(labels)
    counts = torch.bincount(label).double()
    present = counts > 0
    weight = label.numel() / (int(present.sum()) * counts[label])
    return {k: 100.0 * torch.cat(v) * weight for k, v in parts.items()}, torch.cat(ids)


def mean_over_domains(per_domain: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """A stream's final metrics from each domain's: every metric's mean over the domains that have it, divided by
    the number of domains (``<name>``), each domain's value (``<domain>/<name>``) and ``domains`` (all of them)."""
    keys = list(dict.fromkeys(k for m in per_domain.values() for k in m))
    out: dict[str, Any] = {k: sum(m[k] for m in per_domain.values() if k in m) / len(per_domain) for k in keys}
    out.update({f"{d}/{k}": v for d, m in per_domain.items() for k, v in m.items()})
    out["domains"] = dict(per_domain)
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
