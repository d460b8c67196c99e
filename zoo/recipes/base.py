"""What every recipe provides, the common config sections, and the recipe registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from zoo._registry_base import Registry
from zoo.engine.optim import OptimConfig, ScheduleConfig
from zoo.engine.trainer import TrainerConfig

__all__ = ["RecipeConfig", "Recipe", "RECIPES", "register_recipe", "get_recipe"]

RECIPES = Registry("recipe", populate=("zoo.recipes",))


def register_recipe(name: str) -> Callable:
    """Register a :class:`Recipe` subclass under ``name`` (the ``recipe:`` key of a config)."""
    return RECIPES.register(name)


def get_recipe(name: str) -> type["Recipe"]:
    """The recipe class registered as ``name`` (``KeyError`` naming the closest ones otherwise)."""
    return RECIPES.get(name)


@dataclass
class RecipeConfig:
    """Sections shared by all recipes. A recipe's own ``Config`` subclasses this and adds its sections."""

    recipe: str = ""
    seed: int = 0
    output_dir: str | None = None  # default: runs/<config file stem>
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


class Recipe:
    """A task: builds model and data from its config, defines one training step and one evaluation.

    Subclasses set ``Config`` (a :class:`RecipeConfig` dataclass) and ``main_metric`` (used to keep the best
    checkpoint), and implement ``build_model``, ``build_dataloaders``, a step and ``evaluate``. Nothing here reads
    the config file: the recipe gets a validated dataclass.

    The step, either of:

    * ``training_step(model, batch) -> {"loss": ..., ...}`` — one loss, back-propagated by the Trainer;
    * ``train_step(model, batch, ctx) -> {name: scalar}`` — the recipe calls ``ctx.backward(loss)`` itself, once
      or several times (sandwich rule), and may ``ctx.log(...)`` more scalars (see
      :class:`zoo.engine.context.StepContext`).

    Other shapes of run: a recipe that builds a stream (:meth:`build_stream`) is run by the stream loop (test-time
    adaptation: no eval loader, online metrics); a recipe that overrides :meth:`run` drives its whole run itself
    (a search, a study of nested trainings) and is still launched by ``tools/train.py CONFIG``.
    """

    Config: ClassVar[type[RecipeConfig]] = RecipeConfig
    main_metric: ClassVar[str | None] = None
    main_metric_mode: ClassVar[str] = "max"  # "min" for losses; trainer.best_mode overrides

    def __init__(self, cfg: RecipeConfig):
        self.cfg = cfg
        self.plan: Any = None  # zoo.engine.trainer.TrainPlan, set by the Trainer before configure_optimizer

    # ---------------------------------------------------------------- shape of the run
    @classmethod
    def owns_run(cls) -> bool:
        """Whether this recipe drives its own run (it overrides :meth:`run`)."""
        return cls.run is not Recipe.run

    def run(self, ctx: Any) -> dict[str, Any]:
        """Drive the whole run (``ctx``: :class:`zoo.engine.context.RunContext`); return its final metrics, which
        ``tools/train.py`` writes to ``metrics.json``. Only for recipes that are not "train, then evaluate"."""
        raise NotImplementedError

    @classmethod
    def has_stream(cls) -> bool:
        """Whether the recipe is run by the stream loop (it overrides :meth:`build_stream`)."""
        return cls.build_stream is not Recipe.build_stream

    def build_stream(self) -> list[tuple[str, torch.utils.data.DataLoader]]:
        """The ordered ``(domain name, loader)`` sequence of a stream run (test-time adaptation)."""
        raise NotImplementedError

    def on_domain_start(self, model: nn.Module, name: str, index: int) -> None:
        """Stream loop: called before the first batch of each domain (e.g. to reset the model per domain)."""

    def stream_metrics(self, per_domain: dict[str, dict[str, float]]) -> dict[str, Any]:
        """Final metrics of a stream from the per-domain sums of the step's scalars (each dict also has
        ``batches``). Default: each scalar's per-batch mean per domain (``<domain>/<name>``), its mean over domains
        (``<name>``) and ``domains`` (the per-domain means)."""
        means = {d: {k: v / max(s["batches"], 1) for k, v in s.items() if k != "batches"} for d, s in per_domain.items()}
        keys = list(dict.fromkeys(k for m in means.values() for k in m))
        out: dict[str, Any] = {k: sum(m[k] for m in means.values() if k in m) / len(means) for k in keys}
        out.update({f"{d}/{k}": v for d, m in means.items() for k, v in m.items()})
        out["domains"] = means
        return out

    def recipe_state(self) -> dict[str, Any]:
        """State the recipe keeps outside the model and optimiser (e.g. a teacher), saved in ``last.pt``."""
        return {}

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`recipe_state`."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_eval_model(self, model_name: str | None = None, pretrained: bool = False,
                         checkpoint_path: str | None = None) -> nn.Module:
        """The model ``tools/eval.py`` evaluates: the config's (or ``model_name``) with the given weights."""
        raise NotImplementedError(f"the '{self.cfg.recipe}' recipe does not support tools/eval.py")

    def build_dataloaders(self) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
        """(train loader, eval loader); batch sizes are global."""
        raise NotImplementedError

    def build_eval_loader(self) -> torch.utils.data.DataLoader:
        """The eval loader alone (``tools/eval.py`` uses it so the training split is never read)."""
        return self.build_dataloaders()[1]

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Losses of one batch; must contain ``"loss"`` (the one to back-propagate)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither training_step nor train_step")

    def train_step(self, model: nn.Module, batch: Any, ctx: Any) -> dict[str, torch.Tensor]:
        """One step with its backward passes (``ctx.backward``); default: :meth:`training_step`, then backward of
        its ``"loss"``. Returns the scalars to log."""
        losses = self.training_step(model, batch)
        if "loss" not in losses:
            raise KeyError(f"{type(self).__name__}.training_step must return a dict with 'loss'; got {sorted(losses)}")
        ctx.backward(losses["loss"])
        return losses

    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        """Metrics over the whole ``loader`` (gathered across processes). Writes artefacts to ``output_dir`` if given."""
        raise NotImplementedError

    def before_evaluate(self, model: nn.Module, accelerator: Any) -> None:
        """Called by the Trainer (not by ``tools/eval.py``) before each evaluation, on the unwrapped weights that
        will be evaluated (e.g. to recalibrate BatchNorm statistics, which are then saved with the checkpoint)."""

    def optimizer_params(self, model: nn.Module) -> nn.Module | list:
        """What the optimiser trains: the whole model by default (grouped for weight decay)."""
        return model

    def configure_optimizer(self, model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
        """The optimiser; override for special ones (e.g. SaRA's sparse optimiser). Default: ``optim`` section."""
        from zoo.engine.optim import build_optimizer

        return build_optimizer(self.optimizer_params(model), cfg)

    def checkpoint_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights written to ``last.pt``/``best.pt``: the full state dict by default; adapter recipes
        return only what they train, so a checkpoint of a fine-tuned Stable Diffusion stays small."""
        return model.state_dict()

    def load_checkpoint_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`checkpoint_state` (strict)."""
        model.load_state_dict(state)
