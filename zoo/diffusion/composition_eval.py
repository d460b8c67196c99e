"""Scoring content + style compositions on the MNIST text-to-image model (the ``b4m_eval`` recipe): what to
generate, the metric objects over the generated images, and the trade-off comparison at equal prompt fidelity.

Generation is an evaluation step over a loader of *what to generate* (:func:`generation_items`: prompt and
sampling seed per image; a batch is rendered together, each image from the noise its own seed draws, so the images
do not depend on the batching or the number of processes), returning ``{"images": (B, 3, 32, 32)}`` (generated images
resized to 32 when smaller) and, for digit prompts, ``{"digit": (B,)}``. The metrics see all images of a row:

* :class:`CompositeMetrics` — ``content_fidelity`` (% of images whose nearest centroid in the digit classifier's
  64-d penultimate feature space is the subject's, :func:`nearest_centroid_fidelity`), ``style_stroke``
  (:func:`zoo.metrics.generation.stroke_style_distance` to the style images), ``style_gram`` / ``style_colour``
  (:func:`zoo.metrics.generation.style_distance`);
* :class:`PromptFidelityMetric` — ``prompt_fidelity``, the classifier's accuracy on the digit prompts.

With ``shape`` = :func:`zoo.metrics.generation.stroke_mask` the classifier sees white-on-black stroke masks (a
shape judged apart from its style).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.diffusion.generate import collate_items, generate_step, item_latents
from zoo.metrics.base import Metric

__all__ = ["nearest_centroid_fidelity", "score_at_fidelity", "equal_fidelity_comparison", "images_to_tensor",
           "folder_images", "add_composition_rows", "measured_rows", "digit_and_subject_centroids",
           "generation_items", "collate_items", "item_latents", "generate_step", "CompositeMetrics",
           "PromptFidelityMetric", "hit_step", "StrokeStyleMetric", "curve_at", "results_table"]


def nearest_centroid_fidelity(features: torch.Tensor, centroids: torch.Tensor, target: int) -> float:
    """% of ``features (N, D)`` whose nearest (Euclidean) row of ``centroids (C, D)`` is row ``target``."""
    return 100.0 * (torch.cdist(features.double(), centroids.double()).argmin(1) == target).double().mean().item()


def score_at_fidelity(points: list[tuple[float, float]], fidelity: float) -> float | None:
    """A composition's ``score`` at prompt fidelity ``fidelity``, read off its measured trade-off curve ``points``
    (``(prompt fidelity, score)`` pairs, e.g. one per adapter scale) by piecewise-linear interpolation between
    the two nearest measured fidelities; ``None`` outside their range (no extrapolation). Equal fidelities keep
    the best score."""
    by_pf: dict[float, float] = {}
    for pf, score in points:
        by_pf[pf] = max(score, by_pf.get(pf, score))
    xs = sorted(by_pf)
    if not xs or not xs[0] <= fidelity <= xs[-1]:
        return None
    for lo, hi in zip(xs, xs[1:] + xs[-1:]):
        if lo <= fidelity <= hi:
            if hi == lo:
                return by_pf[lo]
            t = (fidelity - lo) / (hi - lo)
            return (1 - t) * by_pf[lo] + t * by_pf[hi]
    return None


def equal_fidelity_comparison(results: dict[str, dict[str, float]], composition: str, baseline: str
                              ) -> list[dict[str, float | str | None]]:
    """For every measured scale of ``composition`` (rows ``composition`` and ``composition ×s``): its prompt
    fidelity and score, and ``baseline``'s score at that prompt fidelity (:func:`score_at_fidelity` on
    ``baseline``'s rows; ``None`` where the baseline's curve does not reach it)."""
    def rows(name):
        return [(label, r) for label, r in results.items() if label == name or label.startswith(f"{name} ×")]

    curve = [(r["prompt_fidelity"], r["score"]) for _, r in rows(baseline)]
    return [{"row": label, "prompt_fidelity": r["prompt_fidelity"], "score": r["score"],
             "baseline_score": score_at_fidelity(curve, r["prompt_fidelity"])} for label, r in rows(composition)]


def images_to_tensor(images: list[Any], size: int = 32) -> torch.Tensor:
    """PIL images -> ``(N, 3, size, size)`` floats in [0, 1] (bilinear resize when the size differs)."""
    import numpy as np

    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                     for im in images])
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return x.clamp(0, 1)


def folder_images(root: str | Path) -> torch.Tensor:
    """The ``.png`` / ``.jpg`` images of a folder (sorted by name) as :func:`images_to_tensor`."""
    from PIL import Image

    files = sorted(p for p in Path(root).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"no images in {root}")
    return images_to_tensor([Image.open(p) for p in files])


def add_composition_rows(unet: nn.Module, content: str, style: str, weights: Sequence[float],
                         plp: Mapping[str, Any] | None = None, trained: Mapping[str, str | None] | None = None
                         ) -> dict[str, str | None]:
    """Add every compared composition to ``unet`` as an adapter; returns ``{row label: adapter name}`` (``base``:
    None): ``content`` / ``style`` (the stage-1 LoRA files or run directories), ``weighted_sum`` of the two
    (``weights``), ``b4m_merge_only`` (their Break-for-Make merge before stage 2; only with ``plp``, the stage-1
    runs' PLP settings, which split the files back into frozen and learnable parts) and each of ``trained``
    (``{label: run directory or LoRA file}``, e.g. the merge stage's, ZipLoRA's; None entries are left out)."""
    from zoo.adapters.lora_formats import import_lora
    from zoo.adapters.merge import merge_b4m, weighted_sum
    from zoo.adapters.plp import load_plp

    rows: dict[str, str | None] = {"base": None}
    for label, path in (("content", content), ("style", style)):
        import_lora(unet, path, adapter=label, freeze=True)
        rows[label] = label
    rows["weighted_sum"] = weighted_sum(unet, "content", "style", name="weighted_sum", weights=weights)
    if plp is not None:
        load_plp(unet, content, plp, name="plp_content")
        load_plp(unet, style, plp, name="plp_style")
        rows["b4m_merge_only"] = merge_b4m(unet, "plp_content", "plp_style", name="b4m_merge_only", weights=weights,
                                           remove_sources=True)
    for label, path in (trained or {}).items():
        if path:
            import_lora(unet, path, adapter=label, freeze=True)
            rows[label] = label
    return rows


def measured_rows(rows: Mapping[str, str | None], scales: Sequence[float], scaled_rows: Sequence[str]
                  ) -> list[tuple[str, str | None, float]]:
    """``(label, adapter, scale)``: every row at scale 1, then the ``scaled_rows`` at each other scale (labelled
    ``"<row> ×<scale>"``)."""
    out = [(label, adapter, 1.0) for label, adapter in rows.items()]
    for s in scales:
        out += [(f"{label} ×{s:g}", rows[label], float(s)) for label in scaled_rows
                if label in rows and rows[label] is not None and s != 1.0]
    return out


def digit_and_subject_centroids(classifier: nn.Module, shape: Callable[[torch.Tensor], torch.Tensor], split: str,
                                mnist_root: str | None, subject_root: str | Path) -> torch.Tensor:
    """``(11, D)`` centroids in the classifier's penultimate feature space: the 10 digits' mean features (MNIST
    ``split``, padded to 32×32 RGB) and, as row 10, the subject's (the images of ``subject_root``)."""
    from zoo.data.images.mnist import MNIST
    from zoo.data.images.style_digits import pad_digit
    from zoo.metrics.generation import classifier_logits_features

    ds = MNIST(root=mnist_root, split=split)
    digits = pad_digit(ds.data.float().div(255.0)[:, None]).expand(-1, 3, -1, -1)
    feats = classifier_logits_features(classifier, shape(digits))[1]
    centroids = [feats[ds.targets == d].mean(0) for d in range(10)]
    centroids.append(classifier_logits_features(classifier, shape(folder_images(subject_root)))[1].mean(0))
    return torch.stack(centroids)


def generation_items(prompts: Sequence[str], num_seeds: int, seed: int, labels: Sequence[int] | None = None
                     ) -> list[dict[str, Any]]:
    """What to generate: for ``s`` in ``range(num_seeds)``, for prompt ``i``: ``{"prompt", "seed": seed + 1000·s
    + i, "example": its position in the list[, "digit": labels[i]]}`` (the seeds
    :func:`zoo.diffusion.sampling.sample_images` gives prompt ``i`` of a call with ``seed + 1000·s``)."""
    items = [{"prompt": p, "seed": seed + 1000 * s + i, **({} if labels is None else {"digit": int(labels[i])})}
             for s in range(num_seeds) for i, p in enumerate(prompts)]
    return [{**item, "example": k} for k, item in enumerate(items)]


class CompositeMetrics(Metric):
    """Content fidelity and style distances of the images of one composition row (see the module doc).

    Args:
        classifier: the digit classifier; ``shape``: what it sees of an image batch (stroke masks or identity).
        centroids: ``(C, D)`` feature centroids; ``subject``: the subject's row.
        style_images: ``(M, 3, 32, 32)`` the style set.
    """

    keys = ("images",)

    def __init__(self, classifier: nn.Module, shape: Callable[[torch.Tensor], torch.Tensor], centroids: torch.Tensor,
                 subject: int, style_images: torch.Tensor):
        self.classifier, self.shape, self.centroids, self.subject = classifier, shape, centroids, subject
        self.style_images = style_images
        super().__init__()

    def compute_from(self, images: torch.Tensor) -> dict[str, Any]:
        from zoo.metrics.generation import classifier_logits_features, stroke_style_distance, style_distance

        f = classifier_logits_features(self.classifier, self.shape(images))[1]
        sd = style_distance(images, self.style_images)
        return {"content_fidelity": nearest_centroid_fidelity(f, self.centroids, self.subject),
                "style_stroke": stroke_style_distance(images, self.style_images),
                "style_gram": sd["gram"], "style_colour": sd["colour"]}


class PromptFidelityMetric(Metric):
    """``prompt_fidelity`` (%): the classifier's accuracy on images generated for digit prompts (``shape``: as
    :class:`CompositeMetrics`)."""

    keys = ("images", "digit")

    def __init__(self, classifier: nn.Module, shape: Callable[[torch.Tensor], torch.Tensor]):
        self.classifier, self.shape = classifier, shape
        super().__init__()

    def compute_from(self, images: torch.Tensor, digit: torch.Tensor) -> dict[str, Any]:
        from zoo.metrics.generation import prompt_fidelity

        return {"prompt_fidelity": prompt_fidelity(self.classifier, self.shape(images), digit.tolist())["fidelity"]}


def hit_step(generate: Callable[[Any, dict[str, Any]], dict[str, torch.Tensor]], classifier: nn.Module,
             shape: Callable[[torch.Tensor], torch.Tensor], centroids: torch.Tensor, subject: int
             ) -> Callable[[Any, dict[str, Any]], dict[str, torch.Tensor]]:
    """Wrap a generation step with per-image scores (100 or 0) for a study's paired bootstrap: ``content_hit`` —
    the image's nearest centroid (``centroids (C, D)`` in the classifier's features of ``shape(image)``) is row
    ``subject``; ``digit_hit`` (digit items) — the classifier reads the prompted digit on ``shape(image)``; and
    ``example`` (the item's index)."""
    from zoo.metrics.generation import classifier_logits_features

    def step(pipe: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = generate(pipe, batch)
        logits, feats = classifier_logits_features(classifier, shape(out["images"]))
        nearest = torch.cdist(feats.double(), centroids.double()).argmin(1)
        out["content_hit"] = 100.0 * (nearest == subject).double()
        if "digit" in out:
            out["digit_hit"] = 100.0 * (logits.argmax(1) == out["digit"]).double()
        out["example"] = torch.as_tensor(batch["example"])
        return out

    return step


class StrokeStyleMetric(Metric):
    """``{"style_stroke": d}``: :func:`zoo.metrics.generation.stroke_style_distance` of all images of the
    evaluation to ``style_images (M, 3, 32, 32)``."""

    keys = ("images",)

    def __init__(self, style_images: torch.Tensor):
        self.style_images = style_images
        super().__init__()

    def compute_from(self, images: torch.Tensor) -> dict[str, Any]:
        from zoo.metrics.generation import stroke_style_distance

        return {"style_stroke": stroke_style_distance(images, self.style_images)}


def curve_at(points: Sequence[tuple[float, Mapping[str, Any], Mapping[str, Any]]], target: float,
             key: str = "prompt_fidelity") -> dict[str, Any]:
    """A composition's scores at ``key == target`` on its scale curve ``points`` — ``(adapter scale, metrics,
    per-example arrays)``, scale 0 being the base model: the first adjacent pair of scales (in increasing scale)
    whose ``key`` brackets ``target`` is interpolated linearly (:func:`zoo.diffusion.style_eval.interpolate_at`,
    per-image arrays too). Where no pair brackets it, the point of the largest scale is returned (``reached`` 0:
    the composition never gets to ``target``). Returns ``{"metrics", "per_example", "scale", "reached"}``."""
    from zoo.diffusion.style_eval import interpolate_at

    pts = sorted(points, key=lambda p: p[0])
    for (s_a, m_a, e_a), (s_b, m_b, e_b) in zip(pts, pts[1:]):
        a, b = float(m_a[key]), float(m_b[key])
        if a != b and min(a, b) <= target <= max(a, b):
            values, arrays, t = interpolate_at(m_a, m_b, target, key, e_a, e_b)
            return {"metrics": values, "per_example": arrays, "scale": (1 - t) * s_a + t * s_b, "reached": 1.0}
    s_last, m_last, e_last = pts[-1]
    numeric = {k: float(v) for k, v in m_last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"metrics": numeric, "per_example": dict(e_last), "scale": float(s_last), "reached": 0.0}


def results_table(results: dict[str, dict[str, float]], equal: list[dict[str, Any]], header: str) -> str:
    """``results.md``: one row per composition, then the comparison at equal prompt fidelity (if any)."""
    lines = [header, "", "| composition | content fidelity % | stroke style (lower) | style gain | content × style | "
             "prompt fidelity % | image gram (lower) | image colour (lower) |", "|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['content_fidelity']:.1f} | {r['style_stroke']:.4f} | {r['style_gain']:.3f} | "
                     f"{r['score']:.3f} | {r['prompt_fidelity']:.1f} | {r['style_gram']:.4f} | "
                     f"{r['style_colour']:.4f} |")
    if equal:
        lines += ["", "At equal prompt fidelity (the weighted sum's content × style interpolated on its scale curve):",
                  "", "| B4M row | prompt fidelity % | B4M content × style | weighted sum at that fidelity |",
                  "|---|---|---|---|"]
        for q in equal:
            base = "out of its range" if q["baseline_score"] is None else f"{q['baseline_score']:.3f}"
            lines.append(f"| {q['row']} | {q['prompt_fidelity']:.1f} | {q['score']:.3f} | {base} |")
    return "\n".join(lines) + "\n"
