"""``b4m_eval``: the comparison stage of the Break-for-Make run on the MNIST text-to-image model — every
composition of the content and style adapters, the same prompts and seeds, three measured scores and one grid.

Rows (each an adapter in the pipeline's UNet, switched on alone): ``base`` (no adapter), ``content`` and
``style`` (the stage-1 adapters alone), ``weighted_sum`` (:func:`zoo.adapters.merge.weighted_sum` of the two,
``eval.weights``), ``b4m_merge_only`` (:func:`zoo.adapters.merge.merge_b4m` of the two, before stage 2; the
stage-1 runs' ``model.plp`` is read from the content run's ``config.yaml`` unless ``model.plp`` is set), and the trained compositions given as run directories: ``b4m`` (the merge
stage), ``ziplora`` and ``joint`` (baselines). The rows of ``eval.scaled_rows`` are measured again with the
whole adapter scaled by each of ``eval.scales`` (the ``lora_scale`` knob, e.g. ``b4m ×0.5``): the trade-off
curve that compares methods at equal prompt fidelity. Scores on 32×32 images (generated images are resized to
32 if smaller):

* **content fidelity** (%) — images of ``eval.content_prompt + eval.style_suffix`` ("a handwritten glyph sks in
  brick style") recognised as the subject by a nearest-centroid classifier in the shipped digit classifier's
  64-d penultimate feature space: 11 centroids, the 10 digits (MNIST ``eval.digit_split``) and the subject (the
  held-out ``content_eval`` glyph variants); an image counts when its nearest centroid is the subject's. With
  ``eval.stroke_masks`` (default) the classifier sees :func:`zoo.metrics.generation.stroke_mask` of every
  generated image (white-on-black strokes whatever the colours), so a shape is judged apart from its style;
* **style** — :func:`zoo.metrics.generation.stroke_style_distance` (``style_stroke``: the strokes' colour and
  texture statistics, whatever their shape; lower is closer) of the same images to the style images, and
  ``style_gain = 1 − d / d_base`` (the share of the base model's distance to the style that the method closes;
  1: the style's own statistics, < 0: further than the base model). Also reported, not scored:
  :func:`zoo.metrics.generation.style_distance` (``gram``, ``colour`` of the whole image: they move with the
  shape and area of the strokes, i.e. with the content, too);
* **prompt fidelity** (%) — the digit classifier's accuracy on ``"a handwritten digit <word>"`` for
  ``eval.digits`` with the composition active (the prior kept; stroke masks as above);

and ``score = content_fidelity/100 × style_gain`` (the issue's "content fidelity × style score"); B4M's score at
each scale against the weighted sum's at the same prompt fidelity (:func:`equal_fidelity_comparison`). Writes
``grid.png`` (rows: methods, columns: the composite, content-only and one digit prompt), ``results.md`` (a table)
and the metrics.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zoo.config import ConfigError
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe

__all__ = ["B4MEvalSection", "B4MEvalModel", "B4MEvalConfig", "B4MEvalRecipe", "nearest_centroid_fidelity",
           "score_at_fidelity", "equal_fidelity_comparison"]

_logger = logging.getLogger("zoo")


@dataclass
class B4MEvalModel:
    """Config section ``model``."""

    pretrained: str | None = None  # diffusers folder or a shipped pipeline name (tiny_t2i_mnist)
    plp: dict[str, Any] = field(default_factory=dict)  # the stage-1 runs' model.plp (b4m_merge_only); default:
    # the content run's config.yaml


@dataclass
class B4MEvalSection:
    """Config section ``eval``."""

    content_adapter: str | None = None  # run dirs / LoRA files
    style_adapter: str | None = None
    b4m_adapter: str | None = None
    ziplora_adapter: str | None = None
    joint_adapter: str | None = None
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0])  # weighted_sum's (content, style)
    merge_only: bool = True  # the b4m_merge_only row (the stage-1 adapters merged, no stage 2)
    scales: list[float] = field(default_factory=list)  # extra adapter scales for the scaled_rows (e.g. [0.75, 0.5])
    scaled_rows: list[str] = field(default_factory=lambda: ["weighted_sum", "b4m"])
    stroke_masks: bool = True  # classify stroke masks of the generated images (shape apart from style)
    content_prompt: str = "a handwritten glyph sks"
    style_suffix: str = " in brick style"
    content_eval_root: str | None = None  # the held-out subject images (the subject's centroid)
    style_root: str | None = None  # the style images
    digits: list[int] = field(default_factory=lambda: list(range(10)))
    digit_split: str = "test[8000:]"  # the digit centroids (held out from everything trained)
    mnist_root: str | None = None
    classifier: str | None = None  # default: the shipped convnet_small_mnist32
    num_seeds: int = 8  # images per digit prompt (prompt fidelity)
    content_seeds: int | None = None  # images of the composite prompt (content, style); default: num_seeds
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.weights) != 2:
            raise ConfigError(f"eval.weights must be [content, style], got {self.weights}")
        if self.num_seeds < 1:
            raise ConfigError(f"eval.num_seeds must be >= 1, got {self.num_seeds}")
        if self.content_seeds is not None and self.content_seeds < 2:
            raise ConfigError(f"eval.content_seeds must be >= 2 (the style statistics need two images), got "
                              f"{self.content_seeds}")
        if any(not s > 0 for s in self.scales):
            raise ConfigError(f"eval.scales must be > 0, got {self.scales}")


@dataclass
class B4MEvalConfig(RecipeConfig):
    recipe: str = "b4m_eval"
    model: B4MEvalModel = field(default_factory=B4MEvalModel)
    eval: B4MEvalSection = field(default_factory=B4MEvalSection)
    b4m: dict[str, Any] = field(default_factory=dict)  # not used (one command line serves every stage)


def nearest_centroid_fidelity(features: torch.Tensor, centroids: torch.Tensor, target: int) -> float:
    """% of ``features (N, D)`` whose nearest (Euclidean) row of ``centroids (C, D)`` is row ``target``."""
    return 100.0 * (torch.cdist(features.double(), centroids.double()).argmin(1) == target).double().mean().item()


def score_at_fidelity(points: list[tuple[float, float]], fidelity: float) -> float | None:
    """A method's ``score`` at prompt fidelity ``fidelity``, read off its measured trade-off curve ``points``
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


def equal_fidelity_comparison(results: dict[str, dict[str, float]], method: str, baseline: str
                              ) -> list[dict[str, float | str | None]]:
    """For every measured scale of ``method`` (rows ``method`` and ``method ×s``): its prompt fidelity and
    score, and ``baseline``'s score at that prompt fidelity (:func:`score_at_fidelity` on ``baseline``'s rows;
    ``None`` where the baseline's curve does not reach it)."""
    def rows(name):
        return [(label, r) for label, r in results.items() if label == name or label.startswith(f"{name} ×")]

    curve = [(r["prompt_fidelity"], r["score"]) for _, r in rows(baseline)]
    return [{"row": label, "prompt_fidelity": r["prompt_fidelity"], "score": r["score"],
             "baseline_score": score_at_fidelity(curve, r["prompt_fidelity"])} for label, r in rows(method)]


def _to_tensor(images: list[Any], size: int = 32) -> torch.Tensor:
    import numpy as np

    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                     for im in images])
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return x.clamp(0, 1)


def _folder_images(root: str | Path) -> torch.Tensor:
    from PIL import Image

    files = sorted(p for p in Path(root).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"no images in {root}")
    return _to_tensor([Image.open(p) for p in files])


@register_recipe("b4m_eval")
class B4MEvalRecipe(Recipe):
    """Compare the compositions (see the module doc); owns its run."""

    Config = B4MEvalConfig

    def __init__(self, cfg: B4MEvalConfig):
        super().__init__(cfg)
        e = cfg.eval
        for key in ("content_adapter", "style_adapter", "content_eval_root", "style_root"):
            if not getattr(e, key):
                raise ConfigError(f"eval.{key} is required (configs/b4m/pipeline_t2i_mnist.yaml sets it with "
                                  "${stage:NAME})")
        for key in ("content_adapter", "style_adapter", "b4m_adapter", "ziplora_adapter", "joint_adapter",
                    "content_eval_root", "style_root"):
            value = getattr(e, key)
            if value and not Path(value).exists():
                raise ConfigError(f"eval.{key}: {value} does not exist")

    def _pipeline(self) -> Any:
        from zoo.diffusion.pipeline import load_pipeline
        from zoo.diffusion.pretrained import PRETRAINED_PIPELINES, pretrained_pipeline_dir

        path = self.cfg.model.pretrained
        if path in PRETRAINED_PIPELINES:
            path = str(pretrained_pipeline_dir(path))
        pipe = load_pipeline(path, torch_dtype=torch.float32)  # the shipped folder stores fp16: evaluate in fp32
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _add_adapters(self, unet: Any) -> dict[str, str | None]:
        from zoo.adapters.lora_formats import import_lora
        from zoo.adapters.merge import load_plp, merge_b4m, weighted_sum

        e = self.cfg.eval
        rows: dict[str, str | None] = {"base": None}
        for label, path in (("content", e.content_adapter), ("style", e.style_adapter)):
            import_lora(unet, path, adapter=label, freeze=True)
            rows[label] = label
        rows["weighted_sum"] = weighted_sum(unet, "content", "style", name="weighted_sum", weights=e.weights)
        plp_cfg = self._stage1_plp() if e.merge_only else None
        if plp_cfg is not None:  # the PLP split needs the stage-1 runs' model.plp
            load_plp(unet, e.content_adapter, plp_cfg, name="plp_content")
            load_plp(unet, e.style_adapter, plp_cfg, name="plp_style")
            rows["b4m_merge_only"] = merge_b4m(unet, "plp_content", "plp_style", name="b4m_merge_only",
                                               weights=e.weights, remove_sources=True)
        for label, path in (("b4m", e.b4m_adapter), ("ziplora", e.ziplora_adapter), ("joint", e.joint_adapter)):
            if path:
                import_lora(unet, path, adapter=label, freeze=True)
                rows[label] = label
        return rows

    def _stage1_plp(self) -> dict[str, Any] | None:
        """The stage-1 runs' ``model.plp``: ``model.plp`` when set, else the content run's ``config.yaml``'s;
        ``None`` (the merge-only row is skipped, with a warning) when neither is there."""
        if self.cfg.model.plp:
            return dict(self.cfg.model.plp)
        saved = Path(self.cfg.eval.content_adapter) / "config.yaml"
        if saved.is_file():
            import yaml

            plp = (yaml.safe_load(saved.read_text()) or {}).get("model", {}).get("plp")
            if plp:
                return plp
        _logger.warning("b4m_eval: no model.plp and no config.yaml in %s: the b4m_merge_only row is skipped (set "
                        "model.plp to the stage-1 runs')", self.cfg.eval.content_adapter)
        return None

    def _measured_rows(self, rows: dict[str, str | None]) -> list[tuple[str, str | None, float]]:
        """``(label, adapter, scale)``: every row at scale 1, then the ``eval.scaled_rows`` at each extra scale."""
        e = self.cfg.eval
        out = [(label, adapter, 1.0) for label, adapter in rows.items()]
        for s in e.scales:
            out += [(f"{label} ×{s:g}", rows[label], float(s)) for label in e.scaled_rows
                    if label in rows and rows[label] is not None and s != 1.0]
        return out

    def run(self, ctx: Any) -> dict[str, Any]:
        from zoo.adapters.merge import composition_grid
        from zoo.data.images.mnist import MNIST
        from zoo.data.images.style_digits import pad_digit
        from zoo.diffusion.captions import prompt
        from zoo.diffusion.sampling import sample_images
        from zoo.adapters.model import set_active_adapters, set_adapter_scale
        from zoo.metrics.generation import (
            classifier_logits_features, load_digit_classifier, prompt_fidelity, stroke_mask, stroke_style_distance,
            style_distance,
        )

        torch.manual_seed(self.cfg.seed)
        e = self.cfg.eval
        pipe = self._pipeline()
        rows = self._add_adapters(pipe.unet)
        classifier = load_digit_classifier(e.classifier)
        shape = stroke_mask if e.stroke_masks else (lambda x: x)  # what the classifier sees
        # centroids: 10 digits (held-out split) + the subject (held-out glyph variants)
        ds = MNIST(root=e.mnist_root, split=e.digit_split)
        digits_img = pad_digit(ds.data.float().div(255.0)[:, None]).expand(-1, 3, -1, -1)
        feats = classifier_logits_features(classifier, shape(digits_img))[1]
        centroids = [feats[ds.targets == d].mean(0) for d in range(10)]
        centroids.append(classifier_logits_features(classifier, shape(_folder_images(e.content_eval_root)))[1].mean(0))
        centroids = torch.stack(centroids)
        style_images = _folder_images(e.style_root)
        kw = dict(num_inference_steps=e.num_inference_steps, guidance_scale=e.guidance_scale)
        composite = e.content_prompt + e.style_suffix
        results: dict[str, dict[str, float]] = {}
        for label, adapter, scale in self._measured_rows(rows):
            set_active_adapters(pipe.unet, [] if adapter is None else [adapter])
            if adapter is not None:
                set_adapter_scale(pipe.unet, adapter, scale)
            imgs = _to_tensor([im for s in range(e.content_seeds or e.num_seeds)
                               for im in sample_images(pipe, [composite], seed=e.seed + 1000 * s, **kw)])
            f = classifier_logits_features(classifier, shape(imgs))[1]
            digit_imgs, labels = [], []
            for s in range(e.num_seeds):
                digit_imgs += sample_images(pipe, [prompt(d) for d in e.digits], seed=e.seed + 1000 * s, **kw)
                labels += list(e.digits)
            if adapter is not None:
                set_adapter_scale(pipe.unet, adapter, 1.0)
            sd = style_distance(imgs, style_images)
            pf = prompt_fidelity(classifier, shape(_to_tensor(digit_imgs)), labels)["fidelity"]
            results[label] = {"content_fidelity": nearest_centroid_fidelity(f, centroids, 10),
                              "style_stroke": stroke_style_distance(imgs, style_images),
                              "style_gram": sd["gram"], "style_colour": sd["colour"], "prompt_fidelity": pf,
                              "scale": scale}
            _logger.info("b4m_eval %s: %s", label, results[label])
        base_style = results["base"]["style_stroke"]
        for r in results.values():
            r["style_gain"] = 1.0 - r["style_stroke"] / base_style if base_style > 0 else 0.0
            r["score"] = r["content_fidelity"] / 100.0 * r["style_gain"]
        grid = composition_grid(pipe, rows, [composite, e.content_prompt, prompt(e.digits[0])], seed=e.seed, **kw)
        grid.save(ctx.output_dir / "grid.png")
        equal = equal_fidelity_comparison(results, "b4m", "weighted_sum") if "b4m" in results else []
        (ctx.output_dir / "results.md").write_text(self._table(results, equal))
        return {"methods": results, "equal_fidelity": equal, "grid": str(ctx.output_dir / "grid.png")}

    def _table(self, results: dict[str, dict[str, float]], equal: list[dict[str, Any]]) -> str:
        e = self.cfg.eval
        lines = [f"prompt: '{e.content_prompt}{e.style_suffix}', {e.content_seeds or e.num_seeds} seeds from {e.seed}; "
                 f"prompt fidelity on digits {e.digits}, {e.num_seeds} seeds",
                 "", "| method | content fidelity % | stroke style (lower) | style gain | content × style | "
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
