"""``b4m_eval``: the comparison stage of the Break-for-Make run on the MNIST text-to-image model
(``configs/b4m/pipeline_t2i_mnist.yaml``): every composition of the content and style adapters scored with the same
prompts and seeds, one grid; the config wired to :func:`zoo.diffusion.b4m_eval.compare_compositions` (rows and
scores are described there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoo.diffusion.b4m_eval import B4MEvalSection, compare_compositions, stage1_plp
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe

__all__ = ["B4MEvalModel", "B4MEvalSection", "B4MEvalConfig", "B4MEvalRecipe"]


@dataclass
class B4MEvalModel:
    """Config section ``model``."""

    pretrained: str | None = None  # diffusers folder or a shipped pipeline name (tiny_t2i_mnist)


@dataclass
class B4MEvalConfig(RecipeConfig):
    recipe: str = "b4m_eval"
    model: B4MEvalModel = field(default_factory=B4MEvalModel)
    # the stage-1 runs' adapter section (for the b4m_merge_only row); default: the content run's config.yaml
    adapter: dict[str, Any] = field(default_factory=dict)
    eval: B4MEvalSection = field(default_factory=B4MEvalSection)
    b4m: dict[str, Any] = field(default_factory=dict)  # not used (one command line serves every stage)


@register_recipe("b4m_eval")
class B4MEvalRecipe(Recipe):
    """Compare the compositions (see the module doc); owns its run."""

    Config = B4MEvalConfig
    run_shape = "study"
    unread_keys = {"model.plp": "moved: the stage-1 runs' PLP settings are the adapter section, e.g. adapter.rank"}

    def __init__(self, cfg: B4MEvalConfig):
        super().__init__(cfg)
        cfg.eval.check()

    def run(self, ctx: Any) -> dict[str, Any]:
        c = self.cfg
        plp = stage1_plp(c.adapter, c.eval.content_adapter) if c.eval.merge_only else None
        return compare_compositions(c.model.pretrained, c.eval, plp, c.seed, ctx.output_dir)
