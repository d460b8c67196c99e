"""Classification metrics: top-k accuracy, confusion matrix, per-class and mean-class accuracy, and their files."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import torch

from zoo.metrics.base import Metric

__all__ = ["topk_accuracy", "confusion_matrix", "per_class_accuracy", "classification_metrics", "save_confusion_matrix",
           "ClassificationMetric", "confusion_figure"]


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1,)) -> dict[int, float]:
    """Percent of rows of ``logits`` (N, C) whose true class (N,) is among the top k, for each k (capped at C)."""
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, C) and target (N,), got {tuple(logits.shape)} and {tuple(target.shape)}")
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(target[:, None])
    n = max(target.numel(), 1)
    return {k: 100.0 * hits[:, : min(k, maxk)].any(dim=1).sum().item() / n for k in ks}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows = true class, columns = predicted class."""
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """(C,) percent correct per true class; NaN for classes absent from the targets."""
    support = cm.sum(dim=1).double()
    return 100.0 * cm.diag().double() / support.where(support > 0, torch.full_like(support, float("nan")))


def classification_metrics(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``top{k}`` accuracies, ``mean_class_acc`` (mean over classes present) and ``num_samples``; all in percent."""
    acc = topk_accuracy(logits, target, topk)
    cm = confusion_matrix(logits.argmax(dim=1), target, logits.shape[1])
    pca = per_class_accuracy(cm)
    out = {f"top{k}": v for k, v in acc.items()}
    out["mean_class_acc"] = float(pca[~pca.isnan()].mean()) if (~pca.isnan()).any() else float("nan")
    out["num_samples"] = int(target.numel())
    return out


class ClassificationMetric(Metric):
    """Top-k accuracies, mean-class accuracy (percent), ``num_samples`` and the cross-entropy ``loss`` of an
    evaluation, from the per-example outputs ``logits (N, C)`` and ``target (N,)``
    (:func:`classification_metrics` over every example of the evaluation).

    Args:
        topk: the k of the top-k accuracies (``top{k}``).
        loss: also report the mean cross-entropy as ``loss``.
    """

    keys = ("logits", "target")

    def __init__(self, topk: Sequence[int] = (1, 5), loss: bool = True):
        self.topk = tuple(topk)
        self.loss = loss
        super().__init__()

    def compute_from(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        logits = logits.float()
        out = classification_metrics(logits, target, self.topk)
        if self.loss:
            out["loss"] = torch.nn.functional.cross_entropy(logits, target.long()).item()
        return out

    def confusion_matrix(self) -> torch.Tensor:
        """``(C, C)`` counts over every example seen (rows: true class)."""
        seen = self.per_example()
        return confusion_matrix(seen["logits"].argmax(1), seen["target"], seen["logits"].shape[1])


def confusion_figure(cm: torch.Tensor, class_names: Sequence[str], title: str = "") -> "Any":
    """A figure of the row-normalised confusion matrix ``cm (C, C)`` (rows: true class; counts written in the cells
    up to 20 classes) with a colour bar; ``title`` defaults to the overall accuracy. Returns the matplotlib figure."""
    from zoo.plotting import pyplot

    plt = pyplot()
    names = list(class_names) if class_names else [str(i) for i in range(cm.shape[0])]
    norm = (cm.double() / cm.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    size = max(4.5, 0.35 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(cm.sum())
    ax.set_title(title or f"Confusion matrix: {100.0 * float(cm.diag().sum()) / max(total, 1):.2f} % correct of "
                          f"{total} (colour: share of the true class)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def save_confusion_matrix(cm: torch.Tensor, class_names: Sequence[str], out_dir: str | Path, stem: str = "confusion_matrix") -> list[Path]:
    """Write ``<stem>.csv`` (counts with class names), ``per_class_accuracy.csv`` and ``<stem>.png`` (row-normalised)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(class_names) if class_names else [str(i) for i in range(cm.shape[0])]
    csv_path = out_dir / f"{stem}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true\\pred"] + names)
        for name, row in zip(names, cm.tolist()):
            w.writerow([name] + row)
    pca = per_class_accuracy(cm)
    pca_path = out_dir / "per_class_accuracy.csv"
    with open(pca_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "accuracy", "support"])
        for name, acc, n in zip(names, pca.tolist(), cm.sum(dim=1).tolist()):
            w.writerow([name, f"{acc:.4f}", n])
    png_path = out_dir / f"{stem}.png"
    from zoo.plotting import save_figure

    save_figure(confusion_figure(cm, names), png_path, dpi=100)
    return [csv_path, pca_path, png_path]
