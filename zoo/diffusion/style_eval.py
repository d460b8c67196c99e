"""Scoring a style fine-tune of the MNIST text-to-image model: how much of the style it learnt, how much of its
prior it kept; and the two steps of the SaRA study that compare methods *at equal style*.

**What is generated.** For ``per_digit`` sampling seeds and the ten digits, the styled prompt ("a handwritten
digit seven in brick style") and the plain prompt ("a handwritten digit seven") from the *same* initial noise
(:func:`generation_items`: item ``(k, d)`` has seed ``seed + 1000 k + d``; every method, every replicate and the
base model draw the same images' noise, so per-image scores pair). Generation is an evaluation step over a loader
of those items (:func:`~zoo.diffusion.generate.generate_step`: batched, each image's noise from its own
seed), scored by metric objects:

* ``style_gram`` — :func:`zoo.metrics.generation.style_distance` ``gram`` of the styled images to the style set
  (lower = more of the style); ``style_gain = 1 − style_gram / style_gram(base)``: the share of the base model's
  distance to the style that the fine-tune closed (0: the base model, 1: the style set's own statistics);
* ``fid_style`` — prompt fidelity (%) of the styled images, classified through
  :func:`~zoo.metrics.generation.stroke_mask` (the digit is still drawn, in the style);
* **the prior kept** — ``fid_plain``: the digit classifier's accuracy (%) on the plain-prompt images as they are
  (a plain prompt must still give a white-on-black MNIST digit); ``fid_plain_mask``: the same through the stroke
  mask (the digit's shape, whatever its colours); ``fd_plain``: Fréchet distance of the plain images' classifier
  features to ``real`` held-out digits (:func:`~zoo.metrics.generation.frechet_distance`); ``plain_gram`` and
  ``leak = 1 − plain_gram / plain_gram(base)``: how far the style leaked into the plain prompts.

The per-image scores (``fid_style``, ``fid_plain``, ``fid_plain_mask``: 100 or 0 per image) are returned for a
study's paired bootstrap (:func:`zoo.studies.save_per_example`).

**Equal style** (:func:`interpolate_at`): a method's metrics at a target ``style_gain`` read off the straight line
through two of its runs (two learning rates bracketing the target), per metric and per image — the reading of a
trade-off curve at a common abscissa that :func:`zoo.diffusion.composition_eval.score_at_fidelity` does for
Break-for-Make. :func:`bracketing_learning_rates` picks, on a validation sweep, the two learning rates of each
method whose mean ``style_gain`` brackets the target.

Reference: style distance and prompt fidelity as :mod:`zoo.metrics.generation`; the protocol (equal style, then
the prior kept) is the fair comparison of SaRA (Hu et al., ICLR 2025) against LoRA that issue 30 asks for.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from zoo.metrics.base import MeanMetric, Metric

__all__ = ["StyleEvalSettings", "style_suffix", "generation_items", "classify_step", "KeepOutputs",
           "StyleDistanceMetric", "FrechetMetric", "real_digit_features", "evaluate_style", "samples_strip",
           "strips_figure", "relative_to_base", "PER_EXAMPLE_METRICS", "interpolate_at", "bracketing_learning_rates"]

#: per-image metrics (100 or 0 per image) saved for the paired bootstrap
PER_EXAMPLE_METRICS = ("fid_style", "fid_plain", "fid_plain_mask")


@dataclass
class StyleEvalSettings:
    """What a style evaluation generates and compares with (config section ``eval`` of the ``style_data`` and
    ``style_eval`` recipes; the two must agree, since the base model's scores are measured once per replicate)."""

    per_digit: int = 20  # sampling seeds per digit, for each of the styled and the plain prompt
    seed: int = 0  # item (k, d) is generated from seed + 1000 k + d
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    batch_size: int = 50  # images per generation batch (the images do not depend on it)
    real_split: str = "test[8000:]"  # MNIST digits of fd_plain (a validation sweep: test[7000:8000])
    real_images: int = 1000
    mnist_root: str | None = None
    classifier: str | None = None  # default: the shipped convnet_small_mnist32

    def __post_init__(self) -> None:
        from zoo.errors import ConfigError

        if self.per_digit < 1 or self.batch_size < 1 or self.real_images < 2:
            raise ConfigError(f"eval.per_digit / batch_size must be >= 1 and eval.real_images >= 2; got "
                              f"{self.per_digit} / {self.batch_size} / {self.real_images}")

    def as_dict(self) -> dict[str, Any]:
        """Plain data (stored with the base model's scores and compared by every evaluation of the replicate)."""
        return asdict(self)


def style_suffix(style: str) -> str:
    """The caption suffix of a style: ``" in brick style"``."""
    return f" in {style} style"


def generation_items(suffix: str, per_digit: int, seed: int) -> list[dict[str, Any]]:
    """Items ``{"prompt", "seed", "digit", "example"}`` for ``k < per_digit`` and digits 0-9 (digit-minor order):
    the canonical prompt of the digit + ``suffix``, seed ``seed + 1000 k + d``; ``example`` = ``10 k + d`` (the
    same for the styled and the plain prompt of one noise)."""
    from zoo.diffusion.captions import prompt

    return [{"prompt": prompt(d) + suffix, "seed": seed + 1000 * k + d, "digit": d, "example": 10 * k + d}
            for k in range(per_digit) for d in range(10)]


def classify_step(generate: Callable[[Any, dict[str, Any]], dict[str, torch.Tensor]], classifier: nn.Module
                  ) -> Callable[[Any, dict[str, Any]], dict[str, torch.Tensor]]:
    """Wrap a generation step: adds per image ``correct_raw`` / ``correct_mask`` (100 when the classifier reads
    the prompted digit on the image / on its stroke mask, else 0), ``features`` (the classifier's ``(B, 64)``
    penultimate features of the image) and ``example``."""
    from zoo.metrics.generation import classifier_logits_features, stroke_mask

    def step(pipe: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = generate(pipe, batch)
        logits, feats = classifier_logits_features(classifier, out["images"])
        masked = classifier_logits_features(classifier, stroke_mask(out["images"]))[0]
        digit = out["digit"]
        out.update(correct_raw=100.0 * (logits.argmax(1) == digit).double(),
                   correct_mask=100.0 * (masked.argmax(1) == digit).double(), features=feats,
                   example=torch.as_tensor(batch["example"]))
        return out

    return step


class KeepOutputs(Metric):
    """Keeps the per-example outputs ``keys`` (for :meth:`~zoo.metrics.base.MetricSet.per_example`); computes
    nothing."""

    def __init__(self, *keys: str):
        self.keys = tuple(keys)
        super().__init__()

    def compute_from(self, **outputs: torch.Tensor) -> dict[str, Any]:
        return {}


class StyleDistanceMetric(Metric):
    """``{prefix + "gram", prefix + "colour"}``: :func:`~zoo.metrics.generation.style_distance` of all images of the
    evaluation to ``style_images (M, 3, 32, 32)``."""

    keys = ("images",)

    def __init__(self, style_images: torch.Tensor, prefix: str):
        self.style_images, self.prefix = style_images, prefix
        super().__init__()

    def compute_from(self, images: torch.Tensor) -> dict[str, Any]:
        from zoo.metrics.generation import style_distance

        d = style_distance(images, self.style_images)
        return {f"{self.prefix}gram": d["gram"], f"{self.prefix}colour": d["colour"]}


class FrechetMetric(Metric):
    """``{name: FD}`` between the classifier features of all images of the evaluation and ``real_features``
    ``(M, D)`` (:func:`~zoo.metrics.generation.frechet_distance`)."""

    keys = ("features",)

    def __init__(self, real_features: torch.Tensor, name: str):
        self.real_features, self.name = real_features, name
        super().__init__()

    def compute_from(self, features: torch.Tensor) -> dict[str, Any]:
        from zoo.metrics.generation import frechet_distance

        return {self.name: frechet_distance(features, self.real_features)}


def real_digit_features(classifier: nn.Module, split: str, n: int, root: str | None) -> torch.Tensor:
    """``(n, D)`` classifier features of the first ``n`` MNIST digits of ``split`` (padded to 32×32 RGB)."""
    from zoo.data.images.mnist import MNIST
    from zoo.data.images.style_digits import pad_digit
    from zoo.metrics.generation import classifier_logits_features

    ds = MNIST(root=root, split=split)
    x = pad_digit(ds.data[:n].float().div(255.0)[:, None]).expand(-1, 3, -1, -1)
    return classifier_logits_features(classifier, x)[1]


def evaluate_style(pipe: Any, style: str, style_images: torch.Tensor, settings: StyleEvalSettings,
                   classifier: nn.Module | None = None, real_features: torch.Tensor | None = None
                   ) -> tuple[dict[str, float], dict[str, np.ndarray], torch.Tensor]:
    """Generate and score (see the module doc) with ``pipe`` as it is: ``(metrics, per-example arrays, samples)``,
    the arrays ``{name: (10 · per_digit,)}`` for :data:`PER_EXAMPLE_METRICS` plus ``example_id``, ``samples``
    ``(2, 10, 3, 32, 32)``: the first styled and the first plain image of each digit (for a figure).
    ``classifier`` / ``real_features``: computed from ``settings`` when not given."""
    from zoo.diffusion.generate import collate_items, generate_step
    from zoo.engine.accel import RunAccelerator
    from zoo.data.loader import build_loader
    from zoo.engine.evaluate import evaluation_loop
    from zoo.metrics.generation import load_digit_classifier

    s = settings
    classifier = classifier if classifier is not None else load_digit_classifier(s.classifier)
    if real_features is None:
        real_features = real_digit_features(classifier, s.real_split, s.real_images, s.mnist_root)
    step = classify_step(generate_step(num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale),
                         classifier)
    kinds = {
        "styled": (style_suffix(style), [MeanMetric("correct_mask", "fid_style"), KeepOutputs("example", "images"),
                                         StyleDistanceMetric(style_images, "style_")]),
        "plain": ("", [MeanMetric("correct_raw", "fid_plain"), MeanMetric("correct_mask", "fid_plain_mask"),
                       FrechetMetric(real_features, "fd_plain"), StyleDistanceMetric(style_images, "plain_"),
                       KeepOutputs("example", "images")]),
    }
    metrics: dict[str, float] = {}
    per_example: dict[str, np.ndarray] = {}
    samples = []
    handle = RunAccelerator(cpu=True)  # the pipeline and the classifier stay on the CPU
    with handle.active() as accelerator:
        for kind, (suffix, metric_list) in kinds.items():
            items = generation_items(suffix, s.per_digit, s.seed)
            loader = accelerator.prepare(build_loader(items, s.batch_size, shuffle=False, collate_fn=collate_items))
            result = evaluation_loop(pipe, loader, accelerator, step, metric_list, desc=kind)
            computed = result.compute()
            metrics.update(computed)
            seen = result.per_example()
            order = np.argsort(seen["example"].numpy(), kind="stable")  # example order, whatever the sharding
            for name in [m for m in PER_EXAMPLE_METRICS if m in computed]:  # this prompt kind's metrics only
                key = {"fid_style": "correct_mask", "fid_plain": "correct_raw", "fid_plain_mask": "correct_mask"}[name]
                per_example[name] = seen[key].numpy()[order]
            per_example["example_id"] = seen["example"].numpy()[order]
            samples.append(seen["images"][torch.from_numpy(order[:10])])  # examples 0-9: digits 0-9, first seed
    return metrics, per_example, torch.stack(samples)


def samples_strip(samples: torch.Tensor) -> Any:
    """A PIL image of :func:`evaluate_style`'s ``samples (2, 10, 3, H, W)``: one row, the ten styled images then
    the ten plain ones."""
    from PIL import Image

    row = samples.flatten(0, 1)  # (20, 3, H, W)
    arr = (row.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()  # (20, H, W, 3)
    return Image.fromarray(np.concatenate(list(arr), axis=1))


def relative_to_base(metrics: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    """``style_gain = 1 − style_gram / base style_gram`` and ``leak = 1 − plain_gram / base plain_gram`` (see the
    module doc) added to a copy of ``metrics``."""
    out = dict(metrics)
    out["style_gain"] = 1.0 - metrics["style_gram"] / base["style_gram"]
    out["leak"] = 1.0 - metrics["plain_gram"] / base["plain_gram"]
    return out


def interpolate_at(lo: Mapping[str, Any], hi: Mapping[str, Any], target: float, key: str = "style_gain",
                   per_example_lo: Mapping[str, np.ndarray] | None = None,
                   per_example_hi: Mapping[str, np.ndarray] | None = None
                   ) -> tuple[dict[str, float], dict[str, np.ndarray], float]:
    """The metrics of a method at ``key == target`` on the straight line through two of its runs ``lo`` and
    ``hi`` (their numeric metrics): ``(metrics, per-example arrays, t)`` with ``value = (1 − t)·lo + t·hi``,
    ``t = (target − lo[key]) / (hi[key] − lo[key])`` (``t`` outside [0, 1]: extrapolated; the caller says so).
    Per-example arrays are interpolated with the same ``t`` (so they still average to their metric); their
    ``example_id`` must agree. Raises ``ValueError`` when the two runs have the same ``key``."""
    span = float(hi[key]) - float(lo[key])
    if span == 0 or not math.isfinite(span):
        raise ValueError(f"interpolate_at: both runs have {key} = {lo[key]}; no line through them")
    t = (target - float(lo[key])) / span
    out = {k: (1 - t) * float(lo[k]) + t * float(hi[k]) for k in lo
           if k in hi and isinstance(lo[k], (int, float)) and not isinstance(lo[k], bool)}
    arrays: dict[str, np.ndarray] = {}
    if per_example_lo is not None and per_example_hi is not None:
        ids_lo, ids_hi = per_example_lo.get("example_id"), per_example_hi.get("example_id")
        if ids_lo is not None and ids_hi is not None and not np.array_equal(ids_lo, ids_hi):
            raise ValueError("interpolate_at: the two runs scored different examples (example_id differs)")
        for name, a in per_example_lo.items():
            if name != "example_id" and name in per_example_hi:
                arrays[name] = (1 - t) * np.asarray(a, np.float64) + t * np.asarray(per_example_hi[name], np.float64)
        if ids_lo is not None:
            arrays["example_id"] = ids_lo
    return out, arrays, t


def bracketing_learning_rates(points: Sequence[tuple[float, float]], target: float) -> dict[str, Any]:
    """From a method's sweep ``points`` ``(learning rate, mean style_gain)``: ``{"lo", "hi"}`` — the adjacent
    learning rates (sorted) whose gains bracket ``target`` (the first such pair; the gain need not be monotone
    elsewhere), and ``"lr_at_target"`` — the learning rate interpolated linearly in log-lr between them. Raises
    ``ValueError`` naming the gains reached when no pair brackets the target (widen the sweep)."""
    pts = sorted((float(lr), float(g)) for lr, g in points)
    for (lr_a, g_a), (lr_b, g_b) in zip(pts, pts[1:]):
        if min(g_a, g_b) <= target <= max(g_a, g_b) and g_a != g_b:
            t = (target - g_a) / (g_b - g_a)
            return {"lo": lr_a, "hi": lr_b, "lr_at_target": math.exp((1 - t) * math.log(lr_a) + t * math.log(lr_b))}
    reached = ", ".join(f"{lr:.3g}: {g:.3f}" for lr, g in pts)
    raise ValueError(f"no two adjacent learning rates bracket style_gain {target} (lr: gain = {reached}); widen the "
                     "sweep")


def strips_figure(rows: Sequence[tuple[str, str | Path]], out: str | Path, min_size: int = 32) -> Path:
    """A labelled figure of :func:`samples_strip` PNGs (one per run, e.g. each cell's ``samples.png``): ``rows`` are
    ``(label, path)``; the columns are the ten styled then the ten plain images of each run. Returns ``out``."""
    from PIL import Image

    from zoo.diffusion.sampling import make_grid

    grid_rows = []
    for _, path in rows:
        strip = Image.open(path).convert("RGB")
        h = strip.size[1]
        grid_rows.append([strip.crop((i * h, 0, (i + 1) * h, h)) for i in range(strip.size[0] // h)])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(grid_rows[0]) // 2
    make_grid(grid_rows, [label for label, _ in rows], [str(d) for d in range(n)] * 2, min_size=min_size,
              col_groups=[("style prompt", n), ("plain prompt", n)]).save(out)
    return out
