"""The Break-for-Make study's scoring stages (``configs/b4m/study.yaml``): ``b4m_select`` (the stage-2 step chosen on
validation) and ``b4m_compose`` (a composition scored at equal prompt fidelity), each owning its run (a study cell)
and wiring its config sections to :mod:`zoo.diffusion.b4m_study` (what each computes is described there); the
training cells are the ``b4m`` recipe's stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoo.diffusion.b4m_study import (B4MComposeSection, B4MDataPaths, B4MScoreSettings, B4MSelectSection,
                                     score_composition, select_step)
from zoo.diffusion.pretrained import PipelineSection
from zoo.recipes.base import RecipeConfig, StudyStage, register_recipe

__all__ = ["B4MSelectConfig", "B4MSelectRecipe", "B4MComposeConfig", "B4MComposeRecipe"]


@dataclass
class B4MSelectConfig(RecipeConfig):
    recipe: str = "b4m_select"
    model: PipelineSection = field(default_factory=PipelineSection)
    select: B4MSelectSection = field(default_factory=B4MSelectSection)
    data: B4MDataPaths = field(default_factory=B4MDataPaths)
    eval: B4MScoreSettings = field(default_factory=lambda: B4MScoreSettings(
        composite_images=40, digit_seeds=4, seed=100_000, digit_split="test[7000:8000]"))


@register_recipe("b4m_select")
class B4MSelectRecipe(StudyStage):
    """Choose a ``merge`` run's stage-2 step on validation (:func:`zoo.diffusion.b4m_study.select_step`)."""

    Config = B4MSelectConfig

    def run(self, ctx: Any) -> dict[str, Any]:
        c = self.cfg
        return select_step(c.model.pretrained, c.select, c.data, c.eval, ctx.output_dir)


@dataclass
class B4MComposeConfig(RecipeConfig):
    recipe: str = "b4m_compose"
    model: PipelineSection = field(default_factory=PipelineSection)
    compose: B4MComposeSection = field(default_factory=B4MComposeSection)
    data: B4MDataPaths = field(default_factory=B4MDataPaths)
    eval: B4MScoreSettings = field(default_factory=B4MScoreSettings)


@register_recipe("b4m_compose")
class B4MComposeRecipe(StudyStage):
    """Score one composition on its scale curve, at equal prompt fidelity
    (:func:`zoo.diffusion.b4m_study.score_composition`)."""

    Config = B4MComposeConfig

    def run(self, ctx: Any) -> dict[str, Any]:
        c = self.cfg
        return score_composition(c.model.pretrained, c.compose, c.data, c.eval, ctx.output_dir)
