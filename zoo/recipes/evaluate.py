"""``recipe: evaluate``: a run that evaluates weights on the eval split of another config, so that evaluations
are study cells (a pipeline stage with variants, ``metrics.json`` per cell, tables generated from the results).

    recipe: evaluate
    evaluate:
      config: configs/pointramba/modelnet10_small.yaml   # whose data / eval sections define the benchmark
      model: pointramba_small_modelnet10                  # default: that config's model.name
      pretrained: true                                    # the shipped weights (or checkpoint: FILE)
      overrides: [eval.num_votes=10]                      # applied to that config

The same evaluation as ``tools/eval.py --config CONFIG --model MODEL --pretrained OVERRIDES --output RUN_DIR``
(:func:`zoo.engine.evaluate.evaluate_weights` is the function behind both).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoo.engine.evaluate import evaluate_weights
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe

__all__ = ["EvaluateSection", "EvaluateConfig", "EvaluateRecipe"]


@dataclass
class EvaluateSection:
    """What to evaluate: the benchmark ``config`` (+ ``overrides`` to it), the ``model`` name and its weights
    (``pretrained: true`` for the shipped ones, or a ``checkpoint`` file)."""

    config: str = ""
    model: str | None = None
    pretrained: bool = False
    checkpoint: str | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class EvaluateConfig(RecipeConfig):
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)


@register_recipe("evaluate")
class EvaluateRecipe(Recipe):
    """Evaluate weights as a run: ``metrics.json`` is the evaluation's metrics, the run directory holds its files
    (e.g. the confusion matrix), and a pipeline stage of evaluations is a study like any other."""

    Config = EvaluateConfig
    run_shape = "study"
    unread_keys = {"optim": "an evaluation trains nothing", "schedule": "an evaluation trains nothing",
                   "trainer": "an evaluation trains nothing"}

    def __init__(self, cfg: EvaluateConfig):
        super().__init__(cfg)
        from zoo.errors import ConfigError

        e = cfg.evaluate
        if not e.config:
            raise ConfigError("recipe 'evaluate': evaluate.config is required (the config whose data and eval "
                              "sections define the benchmark, e.g. configs/pointramba/modelnet10_small.yaml)")
        if e.pretrained == bool(e.checkpoint):
            raise ConfigError("recipe 'evaluate': give exactly one of evaluate.pretrained: true (the shipped "
                              "weights) and evaluate.checkpoint: FILE")

    def run(self, ctx: Any) -> dict[str, Any]:
        e = self.cfg.evaluate
        return evaluate_weights(e.config, e.overrides, model=e.model, pretrained=e.pretrained, checkpoint=e.checkpoint,
                                output_dir=ctx.output_dir)
