"""The SaRA study's stages on the MNIST text-to-image model (``configs/sara/sweep.yaml``, ``configs/sara/study.yaml``),
around the ``sd_finetune`` cells that do the fine-tuning: five recipes, each owning its run (a study cell), each
wiring its config sections to one stage of :mod:`zoo.diffusion.style_study` (what each computes is described there).
Importing this module does not import diffusers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoo.diffusion import style_study as study
from zoo.diffusion.style_eval import StyleEvalSettings
from zoo.diffusion.pretrained import PipelineSection
from zoo.diffusion.style_study import (StyleChoiceSection, StyleEqualSection, StyleMemorySection, StyleRunsSection,
                                       StyleSetsSection)
from zoo.recipes.base import RecipeConfig, StudyStage, register_recipe

__all__ = ["StyleDataConfig", "StyleDataRecipe", "StyleEvalConfig", "StyleEvalRecipe", "StyleMemoryConfig",
           "StyleMemoryRecipe", "StyleEqualConfig", "StyleEqualRecipe", "StyleChoiceConfig", "StyleChoiceRecipe"]


@dataclass
class StyleDataConfig(RecipeConfig):
    recipe: str = "style_data"
    model: PipelineSection = field(default_factory=PipelineSection)
    sets: StyleSetsSection = field(default_factory=StyleSetsSection)
    eval: StyleEvalSettings = field(default_factory=StyleEvalSettings)


@register_recipe("style_data")
class StyleDataRecipe(StudyStage):
    """One replicate's style set and the base model's scores on it (:func:`zoo.diffusion.style_study.score_base`)."""

    Config = StyleDataConfig

    def style(self) -> str:
        """The replicate's style: ``sets.styles[seed % len(sets.styles)]``."""
        return study.replicate_style(self.cfg.sets.styles, self.cfg.seed)

    def run(self, ctx: Any) -> dict[str, Any]:
        c = self.cfg
        return study.score_base(c.model.pretrained, c.sets, c.eval, c.seed, ctx.output_dir)


@dataclass
class StyleEvalConfig(RecipeConfig):
    recipe: str = "style_eval"
    model: PipelineSection = field(default_factory=PipelineSection)
    runs: StyleRunsSection = field(default_factory=StyleRunsSection)
    eval: StyleEvalSettings = field(default_factory=StyleEvalSettings)


@register_recipe("style_eval")
class StyleEvalRecipe(StudyStage):
    """Score a fine-tuned run against its replicate's base model (:func:`zoo.diffusion.style_study.score_finetuned`)."""

    Config = StyleEvalConfig

    def __init__(self, cfg: StyleEvalConfig):
        super().__init__(cfg)
        cfg.runs.check()

    def run(self, ctx: Any) -> dict[str, Any]:
        return study.score_finetuned(self.cfg.model.pretrained, self.cfg.runs, self.cfg.eval, ctx.output_dir)


@dataclass
class StyleMemoryConfig(RecipeConfig):
    recipe: str = "style_memory"
    memory: StyleMemorySection = field(default_factory=StyleMemorySection)


@register_recipe("style_memory")
class StyleMemoryRecipe(StudyStage):
    """The memory of one fine-tuning run's training step (:func:`zoo.diffusion.style_study.measure_memory`)."""

    Config = StyleMemoryConfig

    def run(self, ctx: Any) -> dict[str, Any]:
        return study.measure_memory(self.cfg.memory)


@dataclass
class StyleEqualConfig(RecipeConfig):
    recipe: str = "style_equal"
    equal: StyleEqualSection = field(default_factory=StyleEqualSection)


@register_recipe("style_equal")
class StyleEqualRecipe(StudyStage):
    """A method's metrics at equal style from two of its evaluations (:func:`zoo.diffusion.style_study.equal_style`)."""

    Config = StyleEqualConfig

    def run(self, ctx: Any) -> dict[str, Any]:
        return study.equal_style(self.cfg.equal, ctx.output_dir)


@dataclass
class StyleChoiceConfig(RecipeConfig):
    recipe: str = "style_lr_choice"
    choice: StyleChoiceSection = field(default_factory=StyleChoiceSection)


@register_recipe("style_lr_choice")
class StyleChoiceRecipe(StudyStage):
    """Each method's two learning rates around the target style from a sweep
    (:func:`zoo.diffusion.style_study.choose_learning_rates`)."""

    Config = StyleChoiceConfig

    def run(self, ctx: Any) -> dict[str, Any]:
        return study.choose_learning_rates(self.cfg.choice, ctx.output_dir)
