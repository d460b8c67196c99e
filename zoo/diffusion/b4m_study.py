"""The Break-for-Make study's scoring stages on the MNIST text-to-image model (``configs/b4m/study.yaml``): the
stage-2 step chosen on validation, and each composition scored *at equal prompt fidelity* with per-image scores
(the ``b4m_select`` and ``b4m_compose`` recipes wire these to their config sections, one study cell each).

* :func:`select_step` — the stage-2 step of a ``merge`` run (``select.run``; written every ``b4m.snapshot_every``
  steps to ``steps/step<N>/``, the last step being the run's own file, as the official saves every 50 steps): each
  is scored at adapter scale 1 on the *validation* prompts and seeds (another sampling seed, the digit centroids of
  ``test[7000:8000]``; :class:`B4MScoreSettings`), and the step with the highest ``score`` = content fidelity ×
  style gain is copied to ``selected/`` (ties: the earlier step);
* :func:`score_composition` — one composition (``compose.kind``) of one replicate: ``base`` (the model alone: the
  reference every other cell reads through ``compose.reference``), ``weighted_sum`` (the stage-1 adapters summed,
  ``compose.weights``), or a trained one (``b4m``, ``ziplora``, ``joint``: ``compose.adapter``). It is scored at
  each adapter scale of ``compose.scales`` (the ``lora_scale`` knob), which with the base model (scale 0) traces
  its trade-off curve; the final metrics are read off that curve at prompt fidelity ``compose.target``
  (:func:`zoo.diffusion.composition_eval.curve_at`, per-image scores too), so compositions compare *at equal
  prompt fidelity*; ``reached`` = 0 when the composition keeps more fidelity than the target even at the largest
  scale (its largest-scale scores are reported then), and ``at_1`` holds the scale-1 scores.

Scores (:mod:`zoo.diffusion.composition_eval`): ``content_fidelity`` (% of the ``eval.composite_images`` images of
"a handwritten glyph sks in brick style" whose stroke mask's nearest centroid in the digit classifier's features is
the glyph's — 10 digit centroids of ``eval.digit_split`` + the held-out glyph variants), ``style_gain`` (``1 −
d / d_base``, ``d`` the stroke style distance to the style set), ``score`` = content fidelity / 100 × style gain,
``prompt_fidelity`` (% of ``10 · eval.digit_seeds`` plain digit-prompt images classified as their digit on their
stroke masks: the prior kept). Per-image ``content_fidelity`` and ``prompt_fidelity`` (100 or 0) are saved for the
summary's paired bootstrap, so the two counts must be equal.

Reference: Xu et al., "Break-for-Make: Modular Low-Rank Adaptations for Composable Content-Style Customization",
arXiv 2403.19456 (ACM TOG 2025): content fidelity × style score; the official saves a stage-2 checkpoint every 50
steps (ICTMCG/Break-for-make).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.config import require_paths
from zoo.diffusion.b4m import LORA_FILE
from zoo.diffusion.pretrained import load_named_pipeline
from zoo.engine.rundir import read_final
from zoo.errors import ConfigError

__all__ = ["COMPOSITIONS", "B4MScoreSettings", "B4MDataPaths", "CompositionScorer", "score_pipe", "merge_snapshots",
           "B4MSelectSection", "select_step", "B4MComposeSection", "check_composition", "score_composition"]

_logger = logging.getLogger("zoo")
COMPOSITIONS = ("base", "weighted_sum", "b4m", "ziplora", "joint")


@dataclass
class B4MScoreSettings:
    """Config section ``eval``: what is generated and how it is judged."""

    content_prompt: str = "a handwritten glyph sks"
    style_suffix: str = " in brick style"
    composite_images: int = 130  # images of the composite prompt (content fidelity, style)
    digit_seeds: int = 13  # images per digit prompt (prompt fidelity: 10 x digit_seeds images)
    seed: int = 0  # sampling seeds: seed + 1000 k + i
    digit_split: str = "test[8000:]"  # the digit centroids (validation: test[7000:8000])
    stroke_masks: bool = True
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    batch_size: int = 50
    mnist_root: str | None = None
    classifier: str | None = None  # default: the shipped convnet_small_mnist32

    def __post_init__(self) -> None:
        if self.composite_images < 2 or self.digit_seeds < 1 or self.batch_size < 1:
            raise ConfigError(f"eval.composite_images must be >= 2, eval.digit_seeds and eval.batch_size >= 1; got "
                              f"{self.composite_images} / {self.digit_seeds} / {self.batch_size}")


@dataclass
class B4MDataPaths:
    """Config section ``data``: the replicate's folders (studies: ``${stage:data}/content_eval`` and ``/style``)."""

    content_eval_root: str | None = None  # held-out glyph variants (the subject's centroid)
    style_root: str | None = None  # the style images

    def check(self) -> None:
        require_paths(self, "data", ("content_eval_root", "style_root"), directory=True, what="a folder of images",
                      hint="studies: ${stage:data}/...")


class CompositionScorer:
    """Everything a scoring cell needs once: the digit classifier, the 11 centroids (10 digits + the subject), the
    style images and what to generate (the composite prompt's and the digit prompts' items), from ``settings`` and
    the replicate's folders ``data``; :meth:`score` judges a pipeline."""

    def __init__(self, settings: B4MScoreSettings, data: B4MDataPaths):
        from zoo.diffusion import composition_eval as ce
        from zoo.diffusion.captions import prompt
        from zoo.metrics.generation import load_digit_classifier, stroke_mask

        e = settings
        self.settings = e
        self.classifier = load_digit_classifier(e.classifier)
        self.shape = stroke_mask if e.stroke_masks else (lambda x: x)
        self.centroids = ce.digit_and_subject_centroids(self.classifier, self.shape, e.digit_split, e.mnist_root,
                                                        data.content_eval_root)
        self.style_images = ce.folder_images(data.style_root)
        composite = e.content_prompt + e.style_suffix
        self.composite_items = ce.generation_items([composite], e.composite_images, e.seed)
        self.digit_items = ce.generation_items([prompt(d) for d in range(10)], e.digit_seeds, e.seed,
                                               labels=list(range(10)))

    def score(self, pipe: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """``(metrics, per-image arrays)`` of ``pipe`` with its adapters as they are set."""
        from zoo.diffusion import composition_eval as ce
        from zoo.diffusion.style_eval import KeepOutputs
        from zoo.engine.accel import RunAccelerator
        from zoo.data.loader import build_loader
        from zoo.engine.evaluate import evaluation_loop
        from zoo.metrics.base import MeanMetric

        e = self.settings
        step = ce.hit_step(ce.generate_step(num_inference_steps=e.num_inference_steps, guidance_scale=e.guidance_scale),
                           self.classifier, self.shape, self.centroids, subject=10)
        runs = {"composite": (self.composite_items, [MeanMetric("content_hit", "content_fidelity"),
                                                     ce.StrokeStyleMetric(self.style_images), KeepOutputs("example")],
                              "content_hit", "content_fidelity"),
                "digits": (self.digit_items, [MeanMetric("digit_hit", "prompt_fidelity"), KeepOutputs("example")],
                           "digit_hit", "prompt_fidelity")}
        metrics: dict[str, float] = {}
        arrays: dict[str, np.ndarray] = {}
        with RunAccelerator(cpu=True).active() as accelerator:
            for name, (items, metric_list, hit, key) in runs.items():
                loader = accelerator.prepare(build_loader(items, e.batch_size, shuffle=False,
                                                          collate_fn=ce.collate_items))
                result = evaluation_loop(pipe, loader, accelerator, step, metric_list, desc=name)
                metrics.update(result.compute())
                seen = result.per_example()
                order = np.argsort(seen["example"].numpy(), kind="stable")
                arrays[key] = seen[hit].numpy()[order]
        return metrics, arrays


def score_pipe(pipe: Any, scorer: Any, base_style: float | None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """:meth:`CompositionScorer.score` plus ``style_gain = 1 − style_stroke / base_style`` (0 when ``base_style`` is
    None: the base model itself) and ``score = content_fidelity / 100 × style_gain``."""
    metrics, arrays = scorer.score(pipe)
    gain = 0.0 if base_style is None else 1.0 - metrics["style_stroke"] / base_style
    metrics.update(style_gain=gain, score=metrics["content_fidelity"] / 100.0 * gain)
    return metrics, arrays


# ====================================================================================================== select
@dataclass
class B4MSelectSection:
    """Config section ``select``."""

    run: str | None = None  # a b4m merge run directory (studies: ${stage:merge})
    criterion: str = "score"  # the validation metric maximised


def merge_snapshots(run_dir: str | Path) -> dict[int, Path]:
    """``{step: LoRA file}`` of a ``b4m`` run: its ``steps/step<N>/`` snapshots and the run's final file (at the
    step its ``metrics.json`` records)."""
    run_dir = Path(run_dir)
    out = {int(p.name.removeprefix("step")): p / LORA_FILE for p in sorted((run_dir / "steps").glob("step*"))
           if (p / LORA_FILE).is_file()}
    summary = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    if (run_dir / LORA_FILE).is_file() and summary.get("steps"):
        out[int(summary["steps"])] = run_dir / LORA_FILE
    return dict(sorted(out.items()))


def select_step(pretrained: str, select: B4MSelectSection, data: B4MDataPaths, settings: B4MScoreSettings,
                out_dir: Path) -> dict[str, Any]:
    """Score every stage-2 snapshot of the merge run ``select.run`` (:func:`merge_snapshots`) with ``settings`` and
    copy the one with the highest ``select.criterion`` (ties: the earlier step) to ``out_dir/selected/``; returns
    ``{"step", <criterion>, "base", "steps": {step: metrics}, "selected", "wall_time_s"}``."""
    from zoo.adapters.lora_formats import import_lora
    from zoo.adapters.model import set_active_adapters

    start = time.perf_counter()
    c = select
    data.check()
    require_paths(c, "select", ("run",), directory=True, what="a b4m merge run directory", hint=None)
    snapshots = merge_snapshots(c.run)
    if not snapshots:
        raise ConfigError(f"select.run: no {LORA_FILE} in {c.run} or its steps/ (set b4m.snapshot_every)")
    pipe = load_named_pipeline(pretrained)
    scorer = CompositionScorer(settings, data)
    set_active_adapters(pipe.unet, [])
    base, _ = score_pipe(pipe, scorer, None)
    scores: dict[str, dict[str, float]] = {}
    for step, path in snapshots.items():
        name = f"step{step}"
        import_lora(pipe.unet, path, adapter=name, freeze=True)
        set_active_adapters(pipe.unet, [name])
        scores[str(step)] = score_pipe(pipe, scorer, base["style_stroke"])[0]
        _logger.info("b4m_select %s step %d: %s", c.run, step, scores[str(step)])
    best = max(snapshots, key=lambda s: (scores[str(s)][c.criterion], -s))
    out = out_dir / "selected"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(snapshots[best], out / LORA_FILE)
    return {"step": float(best), c.criterion: scores[str(best)][c.criterion], "base": base, "steps": scores,
            "selected": str(out), "wall_time_s": time.perf_counter() - start}


# ====================================================================================================== compose
@dataclass
class B4MComposeSection:
    """Config section ``compose``."""

    kind: str = "base"  # base | weighted_sum | b4m | ziplora | joint
    reference: str | None = None  # the replicate's base cell (studies: ${stage:reference}); not for kind=base
    content_adapter: str | None = None  # stage-1 run directories (weighted_sum; every kind loads them)
    style_adapter: str | None = None
    adapter: str | None = None  # the trained composition (b4m: ${stage:select/...}/selected; ziplora; joint)
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0])  # weighted_sum's (content, style)
    scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0])
    target: float = 80.0  # prompt fidelity (%) the compositions are compared at

    def __post_init__(self) -> None:
        if self.kind not in COMPOSITIONS:
            raise ConfigError(f"compose.kind must be one of {', '.join(COMPOSITIONS)}, got '{self.kind}'")
        if any(not s > 0 for s in self.scales) or (self.kind != "base" and not self.scales):
            raise ConfigError(f"compose.scales must be a non-empty list of scales > 0, got {self.scales}")


def check_composition(compose: B4MComposeSection, data: B4MDataPaths, settings: B4MScoreSettings) -> None:
    """The folders and runs a composition cell reads exist, and its two per-image scores have one length each
    (``ConfigError`` naming the key otherwise)."""
    c = compose
    data.check()
    if settings.composite_images != 10 * settings.digit_seeds:
        raise ConfigError(f"eval.composite_images ({settings.composite_images}) must equal 10 x "
                          f"eval.digit_seeds ({settings.digit_seeds}): the per-image scores of both are saved "
                          "side by side")
    if c.kind == "base":
        return
    needed = ("reference", "content_adapter", "style_adapter") + (("adapter",) if c.kind != "weighted_sum" else ())
    require_paths(c, "compose", needed, what=f"an existing path for compose.kind={c.kind}")


def score_composition(pretrained: str, compose: B4MComposeSection, data: B4MDataPaths, settings: B4MScoreSettings,
                      out_dir: Path) -> dict[str, Any]:
    """Score one composition (``compose.kind``) on its scale curve and read it off at prompt fidelity
    ``compose.target`` (see the module doc); ``base`` scores the model alone, the reference of the others.
    Writes ``out_dir/per_example.npz``; returns the metrics (+ ``scale_at_target``, ``reached``, ``curve``,
    ``at_1``)."""
    from zoo.adapters.model import set_active_adapters, set_adapter_scale
    from zoo.diffusion.composition_eval import add_composition_rows, curve_at
    from zoo.studies import load_per_example, save_per_example

    start = time.perf_counter()
    check_composition(compose, data, settings)
    c, e = compose, settings
    pipe = load_named_pipeline(pretrained)
    scorer = CompositionScorer(e, data)
    recorded = asdict(e)  # what the reference was scored with
    ids = np.arange(e.composite_images)
    if c.kind == "base":
        set_active_adapters(pipe.unet, [])
        metrics, arrays = score_pipe(pipe, scorer, None)
        save_per_example(out_dir, arrays, example_id=ids)
        return {**metrics, "eval_settings": recorded, "pretrained": pretrained,
                "wall_time_s": time.perf_counter() - start}
    reference = read_final(c.reference, "compose.reference")
    if reference.get("eval_settings") != recorded or reference.get("pretrained") != pretrained:
        raise ConfigError(f"compose.reference {c.reference} was scored with other settings or another model; give "
                          "the reference and compose stages the same eval section and model")
    rows = add_composition_rows(pipe.unet, c.content_adapter, c.style_adapter, c.weights,
                                trained={c.kind: c.adapter} if c.kind != "weighted_sum" else None)
    name = rows[c.kind]
    points = [(0.0, reference, load_per_example(c.reference))]
    curve: dict[str, dict[str, float]] = {}
    set_active_adapters(pipe.unet, [name])
    for scale in sorted(c.scales):
        set_adapter_scale(pipe.unet, name, scale)
        metrics, arrays = score_pipe(pipe, scorer, reference["style_stroke"])
        points.append((scale, metrics, {**arrays, "example_id": ids}))
        curve[f"{scale:g}"] = metrics
        _logger.info("b4m_compose %s x%g: %s", c.kind, scale, metrics)
    at = curve_at(points, c.target, "prompt_fidelity")
    arrays = {k: v for k, v in at["per_example"].items() if k != "example_id"}
    save_per_example(out_dir, arrays, example_id=ids)
    at["metrics"].pop("wall_time_s", None)
    out: dict[str, Any] = {**at["metrics"], "scale_at_target": at["scale"], "reached": at["reached"],
                           "target": c.target, "kind": c.kind, "curve": curve}
    if "1" in curve:
        out["at_1"] = curve["1"]
    out["wall_time_s"] = time.perf_counter() - start
    return out
