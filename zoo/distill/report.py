"""A distillation's report: the results table (CSV), the image sets side by side, and held-out top-1 / label
storage against images per class for each label kind (matplotlib, imported only when a figure is drawn)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import torch

from zoo.distill.labels import LABEL_KINDS

__all__ = ["RESULT_COLUMNS", "write_results_csv", "save_image_grid", "plot_results"]

#: the columns of ``results.csv``, one row per (IPC, image set, label kind)
RESULT_COLUMNS = ["ipc", "images", "labels", "top1", "top1_std", "seeds", "val_top1", "ce_weight", "label_bytes",
                  "stored_epochs", "label_bytes_vs_stored", "hlr", "ior", "lrs"]


def write_results_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` (see :func:`zoo.metrics.distill.score_rows`) as CSV with :data:`RESULT_COLUMNS` (floats to 4
    significant digits, missing scores empty)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items() if k in RESULT_COLUMNS})


def save_image_grid(sets: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, per_class: int = 10) -> None:
    """One panel per named image set (e.g. distilled vs random): up to ``per_class`` images ``(N, C, H, W)`` of each
    class in a row, classes ``0..K-1`` top to bottom (grey or RGB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 4.4), squeeze=False)
    for ax, (name, (images, labels)) in zip(axes[0], sets.items()):
        rows = []
        for c in range(int(labels.max()) + 1):
            x = images[labels == c][:per_class]
            x = torch.cat([x, x.new_zeros(per_class - len(x), *x.shape[1:])]) if len(x) < per_class else x
            rows.append(torch.cat(list(x), dim=-1))
        grid = torch.cat(rows, dim=-2)
        ax.imshow(grid[0] if grid.shape[0] == 1 else grid.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_results(rows: list[dict], path: Path, real_top1: tuple[float, float] | None = None) -> None:
    """Held-out top-1 vs IPC for each label kind and image set (random real images dashed), with the label bytes
    of each point on a second panel. ``rows``: dicts with ``ipc, images (an image set name or random), labels, top1,
    top1_std, label_bytes``; ``real_top1``: (mean, std) of students on the whole training split, a line if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    kinds = list(dict.fromkeys(r["images"] for r in rows))
    for labels in LABEL_KINDS:
        for kind in kinds:
            style = "s--" if kind == "random" else ("o-" if kind == kinds[0] else "^-.")
            pts = sorted((r["ipc"], r["top1"], r["top1_std"], r["label_bytes"]) for r in rows
                         if r["labels"] == labels and r["images"] == kind)
            if not pts:
                continue
            ipcs, top1, std, nbytes = zip(*pts)
            ax.errorbar(ipcs, top1, yerr=std, fmt=style, capsize=3, label=f"{labels} labels, {kind} images")
            if kind != "random" and labels != "hard":
                bx.plot(ipcs, nbytes, style, label=f"{labels} labels ({kind})")
    if real_top1 is not None:
        ax.axhline(real_top1[0], color="0.5", lw=1, label="whole training split, hard labels")
    ax.set_xscale("log")
    ax.set_xlabel("images per class")
    ax.set_ylabel("held-out top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("images per class")
    bx.set_ylabel("label storage (bytes)")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
