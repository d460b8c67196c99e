"""The one evaluation path: a recipe's per-batch step over a loader into metric objects (also ``tools/eval.py``).

:func:`evaluation_loop` walks the loader, calls ``step(model, batch) -> {name: (B, ...) tensor}`` (per-example
outputs of the batch on this process) and hands them to a :class:`~zoo.metrics.base.MetricSet`, which gathers them
across processes once per batch and updates every metric; ``compute`` then gives the same numbers on every process.
No recipe writes its own evaluation loop: it supplies the step and the metrics (``Recipe.eval_step`` /
``Recipe.build_metrics``) and, for files written after an evaluation, ``Recipe.after_evaluate``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from zoo.metrics.base import Metric, MetricSet, as_metric_set

__all__ = ["evaluation_loop", "evaluate_model"]

EvalStep = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]


def evaluation_loop(model: nn.Module, loader: Any, accelerator: Any, step: EvalStep,
                    metrics: MetricSet | Metric | list[Metric], *, desc: str = "evaluate",
                    progress: bool | None = None) -> MetricSet:
    """Run ``step`` over every batch of ``loader`` under ``torch.no_grad`` and update ``metrics`` (gathered across
    processes, last-batch padding dropped). Returns the updated :class:`MetricSet` (call ``compute()``).

    Args:
        model: the (prepared) model, in the mode the caller chose (``eval`` for evaluations).
        loader: a loader prepared by ``accelerator`` (each process sees its shard).
        accelerator: the run's ``accelerate.Accelerator``.
        step: ``step(model, batch) -> {name: (B, ...) tensor}``, the batch's per-example outputs on this process.
        metrics: what to compute from the outputs.
        desc, progress: the progress bar's label; whether to show it (default: on a TTY, main process only).
    """
    from tqdm.auto import tqdm

    from zoo.engine.logging import progress_enabled

    metric_set = as_metric_set(metrics)
    metric_set.reset()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=not progress_enabled(progress, accelerator.is_main_process))
    with torch.no_grad():
        for batch in bar:
            metric_set.update(step(model, batch), accelerator)
    return metric_set


def evaluate_model(recipe: Any, model: nn.Module, output_dir: str | os.PathLike | None = None, cpu: bool | None = None,
                   loader: Any = None) -> dict[str, float]:
    """Run ``recipe.evaluate`` on its eval loader (or ``loader``) with ``model`` in eval mode (device chosen by
    accelerate; its state is private to this call, so it can run inside a training run)."""
    from zoo.engine.accel import RunAccelerator

    handle = RunAccelerator(cpu=cpu if cpu is not None else not torch.cuda.is_available())
    with handle.active() as accelerator:
        eval_loader = recipe.build_eval_loader() if loader is None else loader
        model, eval_loader = accelerator.prepare(model, eval_loader)
        model.eval()
        with torch.no_grad():
            return recipe.evaluate(model, eval_loader, accelerator, output_dir=output_dir)


def evaluate_weights(config: str, overrides: Sequence[str] = (), *, model: str | None = None,
                     pretrained: bool = False, checkpoint: str | None = None,
                     output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Metrics of ``model`` (default: the config's) with its shipped weights (``pretrained``) or ``checkpoint`` on
    the eval split of ``config`` + ``overrides``; the recipe's evaluation writes its files to ``output_dir``. The
    function behind ``tools/eval.py`` and ``recipe: evaluate``."""
    from zoo.config import load_run_config

    recipe_cls, cfg, _ = load_run_config(config, overrides)
    recipe = recipe_cls(cfg)
    return evaluate_model(recipe, recipe.build_eval_model(model, pretrained=pretrained, checkpoint_path=checkpoint),
                          output_dir=output_dir)
