"""Part-segmentation metrics, computed the standard ShapeNetPart way (PointNet++ / Point-BERT / PoinTramba ``main.py``).

* Prediction: the argmax over the shape's *own* category's parts only (``logits[..., parts].argmax() + parts[0]``
  in the official code; here any part list, contiguous or not).
* Shape IoU: the mean over the category's parts of ``|pred == l & target == l| / |pred == l | target == l|``; a
  part absent from both the prediction and the truth counts IoU 1.
* Instance mIoU: the mean shape IoU over all shapes. Class mIoU: the mean over categories of the mean shape IoU of
  that category's shapes (categories without a shape in the evaluated set are left out; the official code, which
  always evaluates all 16, would give NaN). Accuracy: correct points / points. Class-average accuracy: the mean over
  the part labels that occur in the truth of per-part point accuracy.

Values are fractions in [0, 1] (the official log prints them the same way; multiply by 100 for the usual table).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.metrics.base import Metric

__all__ = ["PartSegmentationMeter", "PartSegmentationMetric", "majority_part_by_category", "restricted_argmax",
           "keep_shapes", "shape_iou", "part_ious", "part_figure", "save_part_figure"]


def restricted_argmax(logits: torch.Tensor, categories: torch.Tensor, parts_of: Sequence[Sequence[int]]
                      ) -> torch.Tensor:
    """Per-point part predictions ``(B, N)`` from ``logits (B, N, P)``, each shape's argmax taken over the parts of
    its category only: ``parts_of[categories[b]]`` (global part labels)."""
    if logits.ndim != 3:
        raise ValueError(f"restricted_argmax: logits must be (B, N, P), got {tuple(logits.shape)}.")
    P = logits.shape[-1]
    allowed = torch.zeros(len(parts_of), P, dtype=torch.bool, device=logits.device)
    for c, parts in enumerate(parts_of):
        allowed[c, list(parts)] = True
    mask = allowed[categories.long().to(logits.device)]  # (B, P)
    masked = logits.masked_fill(~mask[:, None, :], float("-inf"))
    return masked.argmax(dim=-1)


def part_ious(pred: np.ndarray, target: np.ndarray, parts: Sequence[int]) -> np.ndarray:
    """IoU of every part in ``parts`` for one shape (``pred``, ``target`` ``(N,)`` global labels); a part absent from
    both counts 1."""
    out = np.empty(len(parts), dtype=np.float64)
    for j, label in enumerate(parts):
        p, t = pred == label, target == label
        union = np.logical_or(p, t).sum()
        out[j] = 1.0 if union == 0 else np.logical_and(p, t).sum() / union
    return out


def shape_iou(pred: np.ndarray, target: np.ndarray, parts: Sequence[int]) -> float:
    """The mean part IoU of one shape (see :func:`part_ious`)."""
    return float(part_ious(pred, target, parts).mean())


class PartSegmentationMeter:
    """Accumulates predictions shape by shape; :meth:`compute` gives the ShapeNetPart metrics.

    Args:
        seg_classes: ``{category name: [global part labels]}`` in category-index order (ShapeNetPart:
            ``zoo.data.pointcloud.shapenetpart.SEG_CLASSES`` ordered by ``CATEGORIES``).
    """

    def __init__(self, seg_classes: Mapping[str, Sequence[int]]):
        self.names = list(seg_classes)
        self.parts_of = [list(seg_classes[n]) for n in self.names]
        self.num_parts = max(max(p) for p in self.parts_of) + 1
        self.reset()

    def reset(self) -> None:
        self.shape_ious: list[list[float]] = [[] for _ in self.names]
        self.correct = 0
        self.seen = 0
        self.part_seen = np.zeros(self.num_parts, dtype=np.int64)
        self.part_correct = np.zeros(self.num_parts, dtype=np.int64)

    def update(self, logits_or_pred: torch.Tensor, categories: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add a batch: ``logits (B, N, P)`` (restricted argmax applied here) or predictions ``(B, N)``,
        ``categories (B,)``, ``target (B, N)``. Returns the ``(B, N)`` predictions used."""
        pred = logits_or_pred
        if pred.ndim == 3:
            pred = restricted_argmax(pred, categories, self.parts_of)
        if pred.shape != target.shape:
            raise ValueError(f"PartSegmentationMeter: predictions {tuple(pred.shape)} and targets "
                             f"{tuple(target.shape)} differ in shape.")
        p, t, c = pred.cpu().numpy(), target.cpu().numpy(), categories.cpu().numpy()
        self.correct += int((p == t).sum())
        self.seen += int(t.size)
        np.add.at(self.part_seen, t.reshape(-1), 1)
        np.add.at(self.part_correct, t[p == t].reshape(-1), 1)
        for b in range(len(c)):
            self.shape_ious[int(c[b])].append(shape_iou(p[b], t[b], self.parts_of[int(c[b])]))
        return pred

    def compute(self) -> dict[str, float | dict[str, float]]:
        """``instance_miou``, ``class_miou``, ``accuracy``, ``class_avg_accuracy``, ``num_shapes`` and
        ``per_category`` ``{name: mean shape IoU}`` (categories with shapes only)."""
        per_cat = {n: float(np.mean(v)) for n, v in zip(self.names, self.shape_ious) if v}
        every = [iou for v in self.shape_ious for iou in v]
        seen = self.part_seen > 0
        return {
            "instance_miou": float(np.mean(every)) if every else float("nan"),
            "class_miou": float(np.mean(list(per_cat.values()))) if per_cat else float("nan"),
            "accuracy": self.correct / self.seen if self.seen else float("nan"),
            "class_avg_accuracy": float((self.part_correct[seen] / self.part_seen[seen]).mean()) if seen.any()
            else float("nan"),
            "num_shapes": len(every),
            "per_category": per_cat,
        }

    def table(self) -> str:
        """The per-category IoU table (percent), one ``name  mIoU  shapes`` row per evaluated category."""
        m = self.compute()
        rows = [f"{'category':<12} {'mIoU':>6} {'shapes':>6}"]
        for n, v in zip(self.names, self.shape_ious):
            if v:
                rows.append(f"{n:<12} {100 * m['per_category'][n]:6.2f} {len(v):6d}")
        rows.append(f"{'instance':<12} {100 * m['instance_miou']:6.2f} {m['num_shapes']:6d}")
        rows.append(f"{'class':<12} {100 * m['class_miou']:6.2f}")
        return "\n".join(rows)


class PartSegmentationMetric(Metric):
    """The ShapeNetPart metrics of an evaluation in **percent** (``instance_miou``, ``class_miou``, ``accuracy``,
    ``class_avg_accuracy``, ``per_category/<name>``) and ``num_shapes``, from the per-example outputs
    ``pred (N, P)`` (part labels per point, see :func:`restricted_argmax`), ``category (N,)``, ``target (N, P)``.

    Reduced batch by batch (a :class:`PartSegmentationMeter`), so the per-point outputs are not kept.

    Args:
        seg_classes: ``{category name: [global part labels]}`` in category-index order.
        majority: ``{category: part}``: score the per-category majority-part baseline instead of ``pred``
            (names get the ``prefix``).
        prefix: put before every name (e.g. ``"baseline_"``).
    """

    keys = ("pred", "category", "target")

    def __init__(self, seg_classes: Mapping[str, Sequence[int]], majority: Mapping[int, int] | None = None,
                 prefix: str = ""):
        self.seg_classes = dict(seg_classes)
        self.majority = dict(majority) if majority is not None else None
        self.prefix = prefix
        super().__init__()

    def reset(self) -> None:
        self.meter = PartSegmentationMeter(self.seg_classes)

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        pred, category, target = outputs["pred"].cpu(), outputs["category"].cpu(), outputs["target"].cpu()
        if self.majority is not None:
            pred = torch.tensor([self.majority[int(c)] for c in category.tolist()])[:, None].expand_as(target)
        self.meter.update(pred, category, target)

    @property
    def num_examples(self) -> int:
        return sum(len(v) for v in self.meter.shape_ious)

    def compute(self) -> dict[str, float]:
        m = self.meter.compute()
        out: dict[str, float] = {k: 100.0 * v for k, v in m.items() if k not in ("per_category", "num_shapes")}
        out["num_shapes"] = m["num_shapes"]
        out.update({f"per_category/{k}": 100.0 * v for k, v in m["per_category"].items()})
        return {f"{self.prefix}{k}": v for k, v in out.items()}

    def per_example(self) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError("PartSegmentationMetric keeps no resumable state (evaluations are not resumed)")


def majority_part_by_category(samples) -> dict[int, int]:
    """The most frequent part label of every category over ``samples`` (an iterable of ``(category, part labels
    (N,))``), ``{category: part}``; ties go to the lower label. Predicting it for every point of a shape is the
    per-category majority-part baseline."""
    counts: dict[int, np.ndarray] = {}
    for category, labels in samples:
        lab = np.asarray(labels).reshape(-1)
        c = counts.setdefault(int(category), np.zeros(0, dtype=np.int64))
        binc = np.bincount(lab, minlength=len(c))
        if len(binc) > len(c):
            c = np.pad(c, (0, len(binc) - len(c)))
        counts[int(category)] = c + binc
    return {c: int(v.argmax()) for c, v in counts.items()}


def keep_shapes(shown: list, limit: int, num_categories: int, points: torch.Tensor, category: torch.Tensor,
                target: torch.Tensor, pred: torch.Tensor) -> None:
    """Append to ``shown`` (CPU copies of ``(points (N, 3), category, truth (N,), prediction (N,))``) shapes of the
    batch ``points (B, N, C)``, ``category (B,)``, ``target`` / ``pred (B, N)`` until it holds ``limit``, at most
    ``ceil(limit / num_categories)`` of each category: a few of every category for :func:`part_figure`."""
    per_cat_max = max(1, -(-limit // max(num_categories, 1)))
    for b in range(len(category)):
        c = int(category[b])
        if len(shown) < limit and sum(1 for s in shown if s[1] == c) < per_cat_max:
            shown.append((points[b, :, :3].cpu(), c, target[b].cpu(), pred[b].cpu()))


def part_figure(shapes: list, category_names: list[str], per_row: int = 2) -> Any:
    """A figure of ``shapes`` (``(points (N, 3), category, truth (N,), prediction (N,))``): per shape, the ground
    truth beside the prediction (points coloured by part label, y up), titled with the category and the shape's IoU,
    a legend of the shape's part colours; ``per_row`` shapes a row. Returns the matplotlib figure."""
    import math

    from matplotlib.lines import Line2D

    from zoo.data.pointcloud.shapenetpart import SEG_CLASSES
    from zoo.plotting import pyplot

    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    per_row = max(1, min(per_row, len(shapes)))
    rows, cols = math.ceil(len(shapes) / per_row), 2 * per_row
    fig = plt.figure(figsize=(2.7 * cols, 3.0 * rows + 1.1))
    for i, (pts, cat, truth, pred) in enumerate(shapes):
        name = category_names[cat]
        parts = list(SEG_CLASSES.get(name, sorted(set(truth.tolist()))))
        iou = 100 * shape_iou(pred.numpy(), truth.numpy(), parts)
        r, c = divmod(i, per_row)
        for k, (labels, title) in enumerate(((truth, f"{name}: ground truth"), (pred, f"prediction (IoU {iou:.1f} %)"))):
            ax = fig.add_subplot(rows, cols, r * cols + 2 * c + k + 1, projection="3d")
            colours = [cmap(parts.index(int(v)) % 10) if int(v) in parts else (0, 0, 0, 1) for v in labels.tolist()]
            ax.scatter(pts[:, 0], pts[:, 2], pts[:, 1], c=colours, s=3, depthshade=False)
            ax.set_title(title, fontsize=10)
            ax.set_axis_off()
            ax.set_box_aspect((1, 1, 1))
            lim = float(pts.abs().max())
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_zlim(-lim, lim)
            if k == 1:
                handles = [Line2D([], [], marker="o", linestyle="", color=cmap(j % 10)) for j in range(len(parts))]
                ax.legend(handles, [f"part {p}" for p in parts], loc="lower center", fontsize=8, ncol=min(4, len(parts)),
                          frameon=False, bbox_to_anchor=(0.5, -0.12), handletextpad=0.1, columnspacing=0.6)
    height = fig.get_figheight()
    fig.suptitle("Part segmentation: ground truth vs prediction (colour = part label, black = a part of another "
                 "category; y up)", fontsize=11, y=1 - 0.1 / height, va="top")
    # 3-D axes draw their titles above the axes box: leave room for them under the figure title
    fig.subplots_adjust(left=0.02, right=0.96, top=1 - 0.95 / height, bottom=0.45 / height, wspace=0.02, hspace=0.3)
    return fig


def save_part_figure(shapes: list, category_names: list[str], path: Path) -> Path:
    """:func:`part_figure` written to ``path`` (PNG)."""
    from zoo.plotting import save_figure

    return save_figure(part_figure(shapes, category_names), path, dpi=100)
