"""The ``b4m_eval`` stage: the comparison of the Break-for-Make run on the MNIST text-to-image model — every
composition of the content and style adapters, the same prompts and seeds, three measured scores and one grid.

Rows (each an adapter in the pipeline's UNet, switched on alone): ``base`` (no adapter), ``content`` and
``style`` (the stage-1 adapters alone), ``weighted_sum`` (:func:`zoo.adapters.merge.weighted_sum` of the two,
``eval.weights``), ``b4m_merge_only`` (:func:`zoo.adapters.merge.merge_b4m` of the two, before stage 2; the
stage-1 runs' ``adapter`` section is read from the content run's ``config.yaml`` unless ``adapter`` is set), and
the trained compositions given as run directories: ``b4m`` (the merge stage), ``ziplora`` and ``joint``
(baselines). The rows of ``eval.scaled_rows`` are measured again with the
whole adapter scaled by each of ``eval.scales`` (the ``lora_scale`` knob, e.g. ``b4m ×0.5``): the trade-off
curve that compares compositions at equal prompt fidelity. Scores on 32×32 images (generated images are resized to
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
each scale against the weighted sum's at the same prompt fidelity
(:func:`zoo.diffusion.composition_eval.equal_fidelity_comparison`). Each row is scored by the one evaluation loop
over what to generate (:mod:`zoo.diffusion.composition_eval`: generation steps and metric objects). Writes
``grid.png`` (rows: compositions, columns: the composite, content-only and one digit prompt), ``results.md`` (a table)
and the metrics.

Reference: Xu et al., "Break-for-Make: Modular Low-Rank Adaptations for Composable Content-Style Customization",
arXiv 2403.19456 (ACM TOG 2025): content fidelity × style score; ZipLoRA (Shah et al. 2023) as a baseline row.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo.adapters.plp import run_plp_config
from zoo.diffusion.pretrained import load_named_pipeline
from zoo.errors import ConfigError

__all__ = ["B4MEvalSection", "stage1_plp", "compare_compositions"]

_logger = logging.getLogger("zoo")


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
    batch_size: int = 8  # images generated per evaluation step

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

    def check(self) -> None:
        """The adapters and folders it names exist (``ConfigError`` naming the key otherwise)."""
        for key in ("content_adapter", "style_adapter", "content_eval_root", "style_root"):
            if not getattr(self, key):
                raise ConfigError(f"eval.{key} is required (configs/b4m/pipeline_t2i_mnist.yaml sets it with "
                                  "${stage:NAME})")
        for key in ("content_adapter", "style_adapter", "b4m_adapter", "ziplora_adapter", "joint_adapter",
                    "content_eval_root", "style_root"):
            value = getattr(self, key)
            if value and not Path(value).exists():
                raise ConfigError(f"eval.{key}: {value} does not exist")



def stage1_plp(adapter: dict[str, Any], content_adapter: str) -> dict[str, Any] | None:
    """The stage-1 runs' PLP settings: ``adapter`` (the config's section) when set, else the content run's own
    (:func:`~zoo.adapters.plp.run_plp_config`); ``None`` (the merge-only row is skipped, with a warning) when
    neither is there."""
    if adapter:
        return dict(adapter)
    plp = run_plp_config(content_adapter)
    if plp is not None:
        return asdict(plp)
    _logger.warning("b4m_eval: no adapter section and no config.yaml in %s: the b4m_merge_only row is skipped "
                    "(set adapter to the stage-1 runs')", content_adapter)
    return None


def compare_compositions(pretrained: str, settings: B4MEvalSection, plp: dict[str, Any] | None, seed: int,
                         out_dir: Path) -> dict[str, Any]:
    """Score every composition row (see the module doc) of ``pretrained`` with ``settings``; ``plp``: the stage-1
    runs' PLP settings for the ``b4m_merge_only`` row (:func:`stage1_plp`; None: no such row). Writes ``grid.png``
    and ``results.md`` to ``out_dir``; returns ``{"methods": {row: metrics}, "equal_fidelity", "grid"}``."""
    from zoo.adapters.model import set_active_adapters, set_adapter_scale
    from zoo.diffusion import composition_eval as ce
    from zoo.diffusion.captions import prompt
    from zoo.diffusion.sampling import composition_grid
    from zoo.engine.accel import RunAccelerator
    from zoo.data.loader import build_loader
    from zoo.engine.evaluate import evaluation_loop
    from zoo.metrics.generation import load_digit_classifier, stroke_mask

    torch.manual_seed(seed)
    e = settings
    pipe = load_named_pipeline(pretrained)
    rows = ce.add_composition_rows(pipe.unet, e.content_adapter, e.style_adapter, e.weights,
                                   plp=plp if e.merge_only else None,
                                   trained={"b4m": e.b4m_adapter, "ziplora": e.ziplora_adapter,
                                            "joint": e.joint_adapter})
    classifier = load_digit_classifier(e.classifier)
    shape = stroke_mask if e.stroke_masks else (lambda x: x)  # what the classifier sees
    composite = e.content_prompt + e.style_suffix
    centroids = ce.digit_and_subject_centroids(classifier, shape, e.digit_split, e.mnist_root, e.content_eval_root)
    composite_metrics = ce.CompositeMetrics(classifier, shape, centroids, 10, ce.folder_images(e.style_root))
    fidelity_metric = ce.PromptFidelityMetric(classifier, shape)
    kw = dict(num_inference_steps=e.num_inference_steps, guidance_scale=e.guidance_scale)
    step = ce.generate_step(**kw)

    def loader(items: list[dict[str, Any]]) -> Any:
        return build_loader(items, e.batch_size, shuffle=False, collate_fn=ce.collate_items)

    handle = RunAccelerator(cpu=True)  # the pipeline and the classifier stay on the CPU
    results: dict[str, dict[str, float]] = {}
    with handle.active() as accelerator:
        composite_loader = accelerator.prepare(loader(ce.generation_items([composite], e.content_seeds or e.num_seeds,
                                                                          e.seed)))
        digit_loader = accelerator.prepare(loader(ce.generation_items([prompt(d) for d in e.digits], e.num_seeds,
                                                                      e.seed, labels=e.digits)))
        for label, adapter, scale in ce.measured_rows(rows, e.scales, e.scaled_rows):
            set_active_adapters(pipe.unet, [] if adapter is None else [adapter])
            if adapter is not None:
                set_adapter_scale(pipe.unet, adapter, scale)
            r = evaluation_loop(pipe, composite_loader, accelerator, step, composite_metrics, desc=label).compute()
            r.update(evaluation_loop(pipe, digit_loader, accelerator, step, fidelity_metric, desc=label).compute())
            if adapter is not None:
                set_adapter_scale(pipe.unet, adapter, 1.0)
            results[label] = {**r, "scale": scale}
            _logger.info("b4m_eval %s: %s", label, results[label])
    base_style = results["base"]["style_stroke"]
    for r in results.values():
        r["style_gain"] = 1.0 - r["style_stroke"] / base_style if base_style > 0 else 0.0
        r["score"] = r["content_fidelity"] / 100.0 * r["style_gain"]
    grid = composition_grid(pipe, rows, [composite, e.content_prompt, prompt(e.digits[0])], seed=e.seed, **kw)
    grid.save(out_dir / "grid.png")
    equal = ce.equal_fidelity_comparison(results, "b4m", "weighted_sum") if "b4m" in results else []
    header = (f"prompt: '{composite}', {e.content_seeds or e.num_seeds} seeds from {e.seed}; prompt fidelity on "
              f"digits {e.digits}, {e.num_seeds} seeds")
    (out_dir / "results.md").write_text(ce.results_table(results, equal, header))
    # "methods": the rows (base, the adapters alone and the compositions), under the key earlier runs wrote
    return {"methods": results, "equal_fidelity": equal, "grid": str(out_dir / "grid.png")}
