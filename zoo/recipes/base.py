"""What every recipe provides, the common config sections, and the recipe registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from zoo.registry import RECIPES
from zoo.engine.optim import OptimConfig, ScheduleConfig
from zoo.engine.trainer import TrainerConfig

__all__ = ["RecipeConfig", "Recipe", "RECIPES", "RUN_SHAPES", "register_recipe", "get_recipe", "NOTHING_TRAINED",
           "StudyStage"]

#: how a recipe's run goes: ``plain`` (the Trainer trains, then evaluates), ``stream`` (the stream loop: test-time
#: adaptation over ordered domains, scored online), ``study`` (the recipe drives its whole run: a search, nested
#: trainings)
RUN_SHAPES = ("plain", "stream", "study")

#: ``unread_keys`` of a recipe that trains nothing (an evaluation, a data or a choice stage of a study)
NOTHING_TRAINED: Mapping[str, str] = {"optim": "nothing is trained here", "schedule": "nothing is trained here"}



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
    checkpoint), and implement ``build_model``, ``build_dataloaders``, a step and the evaluation step. Nothing here
    reads the config file: the recipe gets a validated dataclass.

    **Declared, not inferred:**

    * ``run_shape`` — ``"plain"`` (the Trainer trains, then evaluates), ``"stream"`` (implements
      :meth:`build_stream`: the stream loop, online metrics, no eval loader) or ``"study"`` (implements :meth:`run`:
      the recipe drives its whole run, e.g. a search or nested trainings, still launched by ``tools/train.py``);
    * ``automatic_optimization`` — True: the Trainer steps the optimiser after ``train_step``; False: the step does
      its own optimisation (test-time adaptation, a probe) and still back-propagates through the step context
      (``ctx.manual_backward(loss)``, ``ctx.optimizer_step(opt)``), so AMP scaling and DDP hooks apply (Lightning's
      ``automatic_optimization = False`` + ``manual_backward``);
    * ``unread_keys`` — ``{key: why}`` for shared config keys (``optim``, ``trainer.epochs``...) the recipe does
      not read: setting one is an error naming the recipe and the reason, instead of being silently ignored.

    The step, either of:

    * ``training_step(model, batch) -> {"loss": ..., ...}`` — one loss, back-propagated by the Trainer;
    * ``train_step(model, batch, ctx) -> {name: scalar}`` — the recipe calls ``ctx.backward(loss)`` itself, once
      or several times (sandwich rule), and may ``ctx.log(...)`` more scalars (see
      :class:`zoo.engine.step.StepContext`).

    The evaluation: :meth:`eval_step` (a batch's per-example outputs) and :meth:`build_metrics` (the metric
    objects); :meth:`evaluate` runs them through the one evaluation loop (gathered across processes) and calls
    :meth:`after_evaluate` for files. :meth:`report` writes what a finished run adds to its directory.
    """

    Config: ClassVar[type[RecipeConfig]] = RecipeConfig
    main_metric: ClassVar[str | None] = None
    main_metric_mode: ClassVar[str] = "max"  # "min" for losses; trainer.best_mode overrides
    run_shape: ClassVar[str] = "plain"
    automatic_optimization: ClassVar[bool] = True
    unread_keys: ClassVar[Mapping[str, str]] = {}
    #: with an ``adapter`` (the :class:`zoo.adapters.base.AdapterMethod` a recipe trains, set in ``__init__``),
    #: checkpoints hold only what it trains; False: the whole model, adapters included
    adapter_checkpoints: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_shape_base", False):
            return  # a base of one run shape (StudyStage): its subclasses are checked
        if cls.run_shape not in RUN_SHAPES:
            raise TypeError(f"{cls.__name__}.run_shape must be one of {RUN_SHAPES}, got {cls.run_shape!r}")
        if cls.run_shape == "study" and cls.run is Recipe.run:
            raise TypeError(f"{cls.__name__} declares run_shape 'study' but does not implement run(ctx)")
        if cls.run_shape == "stream" and cls.build_stream is Recipe.build_stream:
            raise TypeError(f"{cls.__name__} declares run_shape 'stream' but does not implement build_stream()")

    def __init__(self, cfg: RecipeConfig):
        self.cfg = cfg
        self.plan: Any = None  # zoo.engine.trainer.TrainPlan, set by the Trainer before configure_optimizer
        self.adapter: Any = None  # the adaptation method trained on a frozen model, if any
        self._eval_generator: torch.Generator | None = None  # of the current evaluation (eval_generator)
        self._process_index = 0

    # ---------------------------------------------------------------- shape of the run
    @classmethod
    def owns_run(cls) -> bool:
        """Whether this recipe drives its own run (``run_shape == "study"``)."""
        return cls.run_shape == "study"

    def run(self, ctx: Any) -> dict[str, Any]:
        """Drive the whole run (``ctx``: :class:`zoo.engine.context.RunContext`); return its final metrics, which
        ``tools/train.py`` writes to ``metrics.json``. Only for ``run_shape = "study"``."""
        raise NotImplementedError

    @classmethod
    def has_stream(cls) -> bool:
        """Whether the recipe is run by the stream loop (``run_shape == "stream"``)."""
        return cls.run_shape == "stream"

    def build_stream(self) -> list[tuple[str, torch.utils.data.DataLoader]]:
        """The ordered ``(domain name, loader)`` sequence of a stream run (test-time adaptation)."""
        raise NotImplementedError

    def on_domain_start(self, model: nn.Module, name: str, index: int) -> None:
        """Stream loop: called before the first batch of each domain (e.g. to reset the model per domain)."""

    def stream_metrics(self, per_domain: dict[str, dict[str, float]]) -> dict[str, Any]:
        """Final metrics of a stream from each domain's metrics (what :meth:`build_metrics` ``("stream")``
        computed over the domain's examples). Default: each metric per domain (``<domain>/<name>``), its mean over
        domains (``<name>``) and ``domains`` (the per-domain values): :func:`zoo.metrics.stream.mean_over_domains`."""
        from zoo.metrics.stream import mean_over_domains

        return mean_over_domains(per_domain)

    def report(self, summary: dict[str, Any], run_dir: Any) -> None:
        """Write what a finished run adds to ``run_dir`` (tables, figures) from its ``summary`` (what
        ``metrics.json`` holds). Called once, on the main process, after the run. Default: nothing."""

    def recipe_state(self) -> dict[str, Any]:
        """State the recipe keeps outside the model and optimiser (e.g. a teacher), saved in ``last.pt``."""
        return {}

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`recipe_state`."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def calibrate(self, model: nn.Module, accelerator: Any) -> nn.Module:
        """Data-driven set-up of the built model before the optimiser exists, with the run's ``accelerator`` (called
        by the Trainer right after :meth:`build_model`): e.g. an adapter method that measures contributions on a few
        batches before it is applied (:meth:`zoo.adapters.base.AdapterMethod.calibrate_and_apply`). Default: the
        model as built."""
        return model

    def build_eval_model(self, model_name: str | None = None, pretrained: bool = False,
                         checkpoint_path: str | None = None) -> nn.Module:
        """The model ``tools/eval.py`` evaluates: the config's (or ``model_name``) with the given weights."""
        from zoo.errors import ConfigError

        raise ConfigError(f"the '{self.cfg.recipe}' recipe does not support tools/eval.py")

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

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """One evaluation batch's per-example outputs ``{name: (B, ...) tensor}`` on this process (what the
        metrics of :meth:`build_metrics` read); called under ``torch.no_grad`` with the model in eval mode."""
        raise NotImplementedError(f"{type(self).__name__} defines no eval_step")

    def build_metrics(self, kind: str = "eval") -> Any:
        """The metric objects (:class:`zoo.metrics.base.Metric` list or :class:`~zoo.metrics.base.MetricSet`) of an
        evaluation (``kind="eval"``) or of one stream domain (``kind="stream"``)."""
        raise NotImplementedError(f"{type(self).__name__} defines no build_metrics")

    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        """Metrics over the whole ``loader``, gathered across processes (the one evaluation loop over
        :meth:`eval_step` and :meth:`build_metrics`); then :meth:`after_evaluate` and :meth:`save_outputs` write
        files when ``output_dir`` is given (main process), and every process waits until they are written."""
        from zoo.engine.evaluate import evaluation_loop

        self._eval_generator, self._process_index = None, accelerator.process_index
        progress = getattr(getattr(self.cfg, "trainer", None), "progress", None)
        metrics = evaluation_loop(model, loader, accelerator, self.eval_step, self.build_metrics("eval"),
                                  progress=progress)
        values = metrics.compute()
        if output_dir is not None and accelerator.is_main_process:
            self.after_evaluate(metrics, values, output_dir)
            values.update(self.save_outputs(accelerator.unwrap_model(model), output_dir))
        if output_dir is not None:
            accelerator.wait_for_everyone()  # no process reads a run's files before the main one has written them
        return values

    def save_outputs(self, model: nn.Module, output_dir: Any) -> dict[str, Any]:
        """What an evaluation with ``output_dir`` (the final one, main process) saves from the evaluated ``model``
        (an adapter file, a diffusers folder, samples); returns values to add to its metrics. Default: nothing."""
        return {}

    def eval_generator(self, device: Any) -> torch.Generator:
        """The evaluation's random generator (e.g. voting views), seeded ``seed + process index`` once per
        :meth:`evaluate`, so an evaluation is reproducible."""
        if self._eval_generator is None:
            self._eval_generator = torch.Generator(device).manual_seed(self.cfg.seed + self._process_index)
        return self._eval_generator

    def after_evaluate(self, metrics: Any, values: dict[str, Any], output_dir: Any) -> None:
        """Files written after an evaluation into ``output_dir`` (main process), e.g. a confusion matrix;
        ``metrics``: the :class:`~zoo.metrics.base.MetricSet` (per-example outputs), ``values``: what it computed."""

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
        """The weights written to ``last.pt``/``best.pt``: the full state dict, or with an ``adapter`` (and
        ``adapter_checkpoints``) only what it trains, so a checkpoint of a fine-tuned Stable Diffusion stays small."""
        if self.adapter is not None and self.adapter_checkpoints:
            return self.adapter.state_dict(model)
        return model.state_dict()

    def load_checkpoint_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`checkpoint_state` (strict)."""
        if self.adapter is not None and self.adapter_checkpoints:
            self.adapter.load_state_dict(model, state)
        else:
            model.load_state_dict(state)


class StudyStage(Recipe):
    """A study cell that owns its run and trains nothing (a data, scoring or choice stage): subclasses set
    ``Config`` and implement :meth:`run`, usually one call into the package that holds the stage's logic."""

    _shape_base = True
    run_shape = "study"
    unread_keys = NOTHING_TRAINED
