"""Evaluate a model with a recipe outside of training (``tools/eval.py``)."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

__all__ = ["evaluate_model"]


def evaluate_model(recipe: Any, model: nn.Module, output_dir: str | os.PathLike | None = None, cpu: bool | None = None) -> dict[str, float]:
    """Run ``recipe.evaluate`` on its eval loader with ``model`` in eval mode (device chosen by accelerate; its
    state is private to this call, so it can run inside a training run)."""
    from zoo.engine.accel import RunAccelerator

    handle = RunAccelerator(cpu=cpu if cpu is not None else not torch.cuda.is_available())
    with handle.active() as accelerator:
        eval_loader = recipe.build_eval_loader()
        model, eval_loader = accelerator.prepare(model, eval_loader)
        model.eval()
        with torch.no_grad():
            return recipe.evaluate(model, eval_loader, accelerator, output_dir=output_dir)
