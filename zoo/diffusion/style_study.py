"""The SaRA study's stages on the MNIST text-to-image model: style fine-tuning with any adapter method compared *at
equal style* on the prior it keeps (``configs/sara/sweep.yaml``, ``configs/sara/study.yaml``; the ``style_*``
recipes wire these to their config sections, one study cell each).

* :func:`score_base` (``style_data``) — one replicate's data and reference: the style set
  (:func:`zoo.data.images.style_digits.build_style_set`) of style :func:`replicate_style` (seeds 0..8 over three
  styles are three seeds of each style; the digits and texture crops follow the seed) in ``<run>/style/``, and the
  **base model's** scores on it (:func:`zoo.diffusion.style_eval.evaluate_style`: the ``base`` row,
  ``style_gain = leak = lr = 0``) with their per-image values;
* :func:`score_finetuned` (``style_eval``) — a fine-tuned run (``runs.finetune``: an ``sd_finetune`` run directory;
  its method and learning rate are read from its ``config.yaml``) loaded into the pipeline and scored like the base
  model of its replicate (``runs.data``; the eval settings must equal those the base was scored with);
  ``style_gain`` and ``leak`` relative to that base (``samples.png``: the first styled and plain image of each
  digit); with ``runs.memory`` also the counted and measured memory of its training step;
* :func:`measure_memory` (``style_memory``) — the counted and measured memory of one fine-tuning run's training
  step (:func:`zoo.diffusion.memory.measure_training_step`, a fresh process), once per method;
* :func:`equal_style` (``style_equal``) — a method at equal style: its metrics at ``equal.target`` ``style_gain``
  read off the line through two of its evaluations (two learning rates of one replicate;
  :func:`zoo.diffusion.style_eval.interpolate_at`, per-image scores too);
* :func:`choose_learning_rates` (``style_lr_choice``) — per method (variant names ``<method>.<anything>``) the two
  adjacent swept learning rates of a validation sweep's summary whose mean ``style_gain`` brackets the target
  (:func:`zoo.diffusion.style_eval.bracketing_learning_rates`); writes ``chosen.yaml``.

Every scoring stage writes ``per_example.npz`` (:func:`zoo.studies.save_per_example`) for the summary's paired
bootstrap over images. Importing this module does not import diffusers.

Reference: SaRA (Hu et al., "SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank
Adaptation", ICLR 2025, arXiv 2409.06633): style fine-tuning compared on the style gained and the prior kept.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from zoo.config import require_paths
from zoo.diffusion.pretrained import load_named_pipeline
from zoo.diffusion.style_eval import StyleEvalSettings
from zoo.engine.rundir import read_final
from zoo.errors import ConfigError

__all__ = ["StyleSetsSection", "StyleRunsSection", "StyleMemorySection", "StyleEqualSection",
           "StyleChoiceSection", "replicate_style", "score_base", "effective_lr", "score_finetuned", "measure_memory",
           "equal_style", "choose_learning_rates"]

_logger = logging.getLogger("zoo")


# ====================================================================================================== data
@dataclass
class StyleSetsSection:
    """Config section ``sets`` of ``style_data``."""

    styles: list[str] = field(default_factory=lambda: ["brick", "grass", "gravel"])  # replicate k: styles[k % n]
    num_images: int = 20  # 2 per digit
    split: str = "test[:7000]"  # the digits drawn in the style (fine-tuning data: the training split)
    background: str = "style"  # style | black
    mnist_root: str | None = None

    def __post_init__(self) -> None:
        from zoo.data.images.style_digits import BACKGROUNDS, STYLES

        bad = [s for s in self.styles if s not in STYLES]
        if not self.styles or bad:
            raise ConfigError(f"sets.styles must name styles of {', '.join(STYLES)}; got {self.styles}")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"sets.background must be one of {', '.join(BACKGROUNDS)}, got '{self.background}'")
        if self.num_images < 2:
            raise ConfigError(f"sets.num_images must be >= 2, got {self.num_images}")


def replicate_style(styles: Sequence[str], seed: int) -> str:
    """The style of replicate ``seed``: ``styles[seed % len(styles)]``."""
    return styles[seed % len(styles)]


def score_base(pretrained: str, sets: StyleSetsSection, settings: StyleEvalSettings, seed: int,
               out_dir: Path) -> dict[str, Any]:
    """Build replicate ``seed``'s style set in ``out_dir/style`` and score the base pipeline ``pretrained`` on it
    (``samples.png``, ``per_example.npz``); returns the base row (``style_gain = leak = lr = 0``) with what later
    stages check against (``style``, ``style_root``, ``pretrained``, ``eval_settings``)."""
    from zoo.data.images.style_digits import build_style_set, style_images_tensor
    from zoo.diffusion.style_eval import evaluate_style, samples_strip
    from zoo.studies import save_per_example

    start = time.perf_counter()
    style = replicate_style(sets.styles, seed)
    offset = (sets.num_images // 10) * (seed // len(sets.styles))  # other digits for each replicate of a style
    root = build_style_set(out_dir / "style", style, sets.num_images, seed=seed, root=sets.mnist_root,
                           split=sets.split, background=sets.background, offset=offset)
    metrics, per_example, samples = evaluate_style(load_named_pipeline(pretrained), style, style_images_tensor(root),
                                                   settings)
    samples_strip(samples).save(out_dir / "samples.png")
    ids = per_example.pop("example_id")
    save_per_example(out_dir, per_example, example_id=ids)
    _logger.info("style_data seed %d (%s): base %s", seed, style, metrics)
    return {**metrics, "style_gain": 0.0, "leak": 0.0, "lr": 0.0, "style": style, "style_root": str(root),
            "pretrained": pretrained, "eval_settings": settings.as_dict(), "wall_time_s": time.perf_counter() - start}


# ====================================================================================================== eval
@dataclass
class StyleRunsSection:
    """Config section ``runs`` of ``style_eval``."""

    finetune: str | None = None  # the sd_finetune run directory (studies: ${stage:finetune})
    data: str | None = None  # the replicate's style_data run directory (studies: ${stage:data})
    memory: bool = False  # also count and measure the training step's memory (a fresh process, ~20 s)

    def check(self) -> None:
        """Both run directories exist (``ConfigError`` naming the key otherwise)."""
        require_paths(self, "runs", ("finetune", "data"), directory=True, what="a run directory")


def effective_lr(run_cfg: dict[str, Any]) -> float:
    """The learning rate an ``sd_finetune`` run (its merged config) trained with (SaRA's ``lr_rule``:
    ``1e-3 · exp(-350 θ)``)."""
    from zoo.adapters.sara import sara_lr

    adapter = run_cfg.get("adapter") or {}
    if adapter.get("name") == "sara" and adapter.get("lr_rule"):
        return sara_lr(float(adapter["threshold"]))
    return float(run_cfg["optim"]["lr"])


def score_finetuned(pretrained: str, runs: StyleRunsSection, settings: StyleEvalSettings,
                    out_dir: Path) -> dict[str, Any]:
    """Score the fine-tuned run ``runs.finetune`` against its replicate's base (``runs.data``, scored with the same
    ``pretrained`` and ``settings``): the metrics relative to the base, ``lr`` / ``log10_lr``, ``method``,
    ``style`` (and ``memory`` with ``runs.memory``); writes ``samples.png`` and ``per_example.npz``."""
    import yaml

    from zoo.data.images.style_digits import style_images_tensor
    from zoo.diffusion.adapters import load_adapter
    from zoo.diffusion.style_eval import evaluate_style, relative_to_base, samples_strip
    from zoo.studies import save_per_example

    start = time.perf_counter()
    base = read_final(runs.data, "runs.data")
    if base.get("eval_settings") != settings.as_dict():
        raise ConfigError(f"eval settings {settings.as_dict()} differ from those the base model of {runs.data} "
                          f"was scored with ({base.get('eval_settings')}); give both stages the same eval section")
    if base.get("pretrained") != pretrained:
        raise ConfigError(f"model.pretrained '{pretrained}' is not the base model of {runs.data} "
                          f"('{base.get('pretrained')}')")
    run_cfg = yaml.safe_load((Path(runs.finetune) / "config.yaml").read_text())
    method = run_cfg["adapter"]["name"]
    pipe = load_named_pipeline(pretrained)
    load_adapter(pipe, runs.finetune, method)
    style = base["style"]
    metrics, per_example, samples = evaluate_style(pipe, style, style_images_tensor(base["style_root"]), settings)
    samples_strip(samples).save(out_dir / "samples.png")
    if all(metrics[k] == base[k] for k in ("style_gram", "plain_gram", "fd_plain")):
        raise RuntimeError(f"{runs.finetune}: the fine-tuned pipeline scores exactly as the base model (nothing was "
                           "trained or loaded)")
    metrics = relative_to_base(metrics, base)
    lr = effective_lr(run_cfg)
    out: dict[str, Any] = {**metrics, "lr": lr, "log10_lr": math.log10(lr), "method": method, "style": style}
    ids = per_example.pop("example_id")
    save_per_example(out_dir, per_example, example_id=ids)
    if runs.memory:
        from zoo.diffusion.memory import measure_training_step

        out["memory"] = measure_training_step(Path(runs.finetune) / "config.yaml")
    _logger.info("style_eval %s (%s, lr %.3g): %s", runs.finetune, method, lr, metrics)
    out["wall_time_s"] = time.perf_counter() - start
    return out


# ====================================================================================================== memory
@dataclass
class StyleMemorySection:
    """Config section ``memory`` of ``style_memory``."""

    finetune: str | None = None  # the sd_finetune run directory whose training step is measured
    repeat: int = 3  # timed steps after the first


def measure_memory(memory: StyleMemorySection) -> dict[str, Any]:
    """``{"memory": counted and measured bytes of the training step, "method"}`` of the run ``memory.finetune``
    (:func:`zoo.diffusion.memory.measure_training_step` on its ``config.yaml``, in a fresh process): measured once
    per method (the counted bytes do not depend on the replicate), not in every scoring cell."""
    import yaml

    from zoo.diffusion.memory import measure_training_step

    run_dir = memory.finetune
    if not run_dir or not (Path(run_dir) / "config.yaml").is_file():
        raise ConfigError(f"memory.finetune must be an sd_finetune run directory with a config.yaml (studies set "
                          f"it with ${{stage:finetune}}), got {run_dir!r}")
    method = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["adapter"]["name"]
    measured = measure_training_step(Path(run_dir) / "config.yaml", repeat=memory.repeat)
    _logger.info("style_memory %s (%s): %s", run_dir, method, measured)
    return {"memory": measured, "method": method}


# ====================================================================================================== equal
@dataclass
class StyleEqualSection:
    """Config section ``equal`` of ``style_equal``."""

    lo: str | None = None  # style_eval run directories of one method and replicate at two learning rates
    hi: str | None = None
    target: float = 0.5  # the common style_gain
    key: str = "style_gain"


def equal_style(equal: StyleEqualSection, out_dir: Path) -> dict[str, Any]:
    """A method's metrics at equal style from two of its evaluations (``equal.lo`` / ``equal.hi``): every numeric
    metric interpolated at ``equal.target``, ``t`` (0 at ``lo``, 1 at ``hi``; outside [0, 1]: extrapolated, also
    flagged by ``extrapolated`` = 1), ``lr_equal`` (the learning rate interpolated in log-lr), ``lr_lo`` /
    ``lr_hi``, and ``memory`` of ``lo`` when it was measured; per-image scores to ``out_dir/per_example.npz``."""
    from zoo.diffusion.style_eval import interpolate_at
    from zoo.studies import load_per_example, save_per_example

    e = equal
    if not e.lo or not e.hi:
        raise ConfigError("equal.lo and equal.hi must be style_eval run directories (studies set them with "
                          "${stage:eval/<method>.lo} and ${stage:eval/<method>.hi})")
    lo, hi = read_final(e.lo, "equal.lo"), read_final(e.hi, "equal.hi")
    if lo.get("method") != hi.get("method") or lo.get("style") != hi.get("style"):
        raise ConfigError(f"equal.lo and equal.hi must be one method on one replicate; got {lo.get('method')} / "
                          f"{lo.get('style')} and {hi.get('method')} / {hi.get('style')}")
    values, arrays, t = interpolate_at(lo, hi, e.target, e.key, load_per_example(e.lo), load_per_example(e.hi))
    ids = arrays.pop("example_id", None)
    save_per_example(out_dir, arrays, example_id=ids)
    out: dict[str, Any] = {**values, "t": t, "extrapolated": float(not 0.0 <= t <= 1.0),
                           "lr_equal": 10 ** values["log10_lr"], "lr_lo": lo["lr"], "lr_hi": hi["lr"],
                           "method": lo["method"], "style": lo["style"]}
    out.pop("wall_time_s", None)
    if "memory" in lo:
        out["memory"] = lo["memory"]
    if out["extrapolated"]:
        _logger.warning("style_equal: %s = %g is outside [%g, %g] of %s; extrapolated (t = %.2f)", e.key, e.target,
                        lo[e.key], hi[e.key], lo["method"], t)
    return out


# ====================================================================================================== choice
@dataclass
class StyleChoiceSection:
    """Config section ``choice`` of ``style_lr_choice``."""

    results: str | None = None  # the sweep summary's results.json (studies: ${stage:summary}/results.json)
    target: float = 0.5  # the style_gain the study compares methods at
    key: str = "style_gain"
    lr_metric: str = "lr"  # the summarised metric holding each variant's learning rate
    methods: list[str] | None = None  # the methods to choose for (None: every <method>.<k> variant)


def choose_learning_rates(choice: StyleChoiceSection, out_dir: Path) -> dict[str, Any]:
    """Each method's two learning rates around ``choice.target`` from a sweep summary (``choice.results``):
    ``{"target", "key", "chosen": {method: bracket}, "curves": {method: [[lr, value], ...]}}``; writes
    ``out_dir/chosen.yaml`` (the ``optim.lr`` of each ``<method>.lo`` / ``<method>.hi`` variant)."""
    import yaml

    from zoo.diffusion.style_eval import bracketing_learning_rates

    c = choice
    if not c.results or not Path(c.results).is_file():
        raise ConfigError(f"choice.results must be a sweep summary's results.json, got {c.results!r}")
    results = json.loads(Path(c.results).read_text())
    curves: dict[str, list[tuple[float, float]]] = {}
    for entry in results["variants"].values():
        metrics = entry["metrics"]
        if c.lr_metric not in metrics or c.key not in metrics or "." not in entry["variant"]:
            continue  # e.g. the base model's row
        if metrics[c.lr_metric]["mean"] is None or metrics[c.key]["mean"] is None:
            continue  # a variant not scored (a summary with allow_missing)
        method = entry["variant"].split(".", 1)[0]
        if c.methods is not None and method not in c.methods:
            continue
        curves.setdefault(method, []).append((metrics[c.lr_metric]["mean"], metrics[c.key]["mean"]))
    if not curves:
        raise ConfigError(f"{c.results}: no variant named <method>.<k> with metrics '{c.lr_metric}' and '{c.key}'"
                          f"{'' if c.methods is None else f' among choice.methods {c.methods}'}")
    chosen = {method: bracketing_learning_rates(points, c.target) for method, points in curves.items()}
    snippet = {f"{m}.{side}": {"optim.lr": float(f"{v[side]:.6g}")} for m, v in chosen.items()
               for side in ("lo", "hi")}
    (out_dir / "chosen.yaml").write_text(
        f"# learning rates bracketing {c.key} = {c.target} on the validation sweep ({c.results})\n"
        + yaml.safe_dump(snippet, sort_keys=False))
    return {"target": c.target, "key": c.key, "chosen": chosen,
            "curves": {m: [list(p) for p in sorted(pts)] for m, pts in curves.items()}}
