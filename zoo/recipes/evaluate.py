"""``recipe: evaluate``: a run that evaluates weights on the eval split of another config, so that evaluations
are study cells (a pipeline stage with variants, ``metrics.json`` per cell, tables generated from the results).

    recipe: evaluate
    evaluate:
      config: configs/pointramba/modelnet10_small.yaml   # whose data / eval sections define the benchmark
      model: pointramba_small_modelnet10                  # default: that config's model.name
      pretrained: true                                    # the shipped weights (or checkpoint: FILE)
      overrides: [eval.num_votes=10]                      # applied to that config

The same evaluation as ``tools/eval.py --config CONFIG --model MODEL --pretrained OVERRIDES --output RUN_DIR``
(:func:`evaluate_weights` is the function behind both).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from zoo.recipes.base import Recipe, RecipeConfig, check_unread_keys, get_recipe, register_recipe

__all__ = ["load_run_config", "evaluate_weights", "EvaluateSection", "EvaluateConfig", "EvaluateRecipe"]


def load_run_config(config: str, overrides: Sequence[str] = ()):
    """(recipe class, validated config, merged raw config) from a config file and ``key=value`` overrides."""
    from zoo.config import ConfigError, load_config, validate_config

    raw = load_config(config, overrides)
    name = raw.get("recipe")
    if not name:
        raise ConfigError(f"{config}: the config names no recipe; add e.g. 'recipe: classify'")
    try:
        recipe_cls = get_recipe(name)
    except KeyError as exc:
        raise ConfigError(f"{config}: recipe: {exc.args[0]}") from None
    check_unread_keys(recipe_cls, raw)
    return recipe_cls, validate_config(raw, recipe_cls.Config), raw


def evaluate_weights(config: str, overrides: Sequence[str] = (), *, model: str | None = None,
                     pretrained: bool = False, checkpoint: str | None = None,
                     output_dir: str | Path | None = None) -> dict[str, Any]:
    """Metrics of ``model`` (default: the config's) with its shipped weights (``pretrained``) or ``checkpoint``
    on the eval split of ``config`` + ``overrides``; the recipe's evaluation writes its files to ``output_dir``."""
    from zoo.engine.evaluate import evaluate_model

    recipe_cls, cfg, _ = load_run_config(config, overrides)
    recipe = recipe_cls(cfg)
    return evaluate_model(recipe, recipe.build_eval_model(model, pretrained=pretrained, checkpoint_path=checkpoint),
                          output_dir=output_dir)


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
