"""The run core: accelerate for devices / AMP / DDP / accumulation; we add schedules, EMA, exact resume, logs,
checkpoints, Ctrl-C handling. *How* the data is walked is a loop's business (:mod:`zoo.engine.loops`):

* ``epoch`` — ``trainer.epochs`` passes over the training loader, evaluation every ``eval_every`` epochs;
* ``iteration`` — ``trainer.max_steps`` optimiser steps over the loader repeated as often as needed, evaluation and
  saving every ``eval_every_steps`` / ``save_every_steps`` steps;
* ``stream`` — one pass over an ordered sequence of loaders (``recipe.build_stream()``: test-time adaptation
  domains), no separate evaluation, per-batch online metrics aggregated per domain.

The Trainer knows nothing about tasks. A recipe (:class:`zoo.recipes.base.Recipe`) supplies the model, the
data, ``train_step(model, batch, ctx)`` (which calls ``ctx.backward`` once or several times; the default wraps
``training_step(model, batch) -> {"loss": ...}``) and ``evaluate(model, loader, accelerator, output_dir)``.

A run directory holds ``config.yaml`` (the config in force, written by the caller once the run has started),
``metrics.csv``, ``tb/``, ``last.pt`` (everything needed to continue exactly, written atomically; mid-epoch on
Ctrl-C), ``best.pt`` (weights of the best evaluation by ``best_metric``) and ``metrics.json`` (final metrics,
``complete: true`` once the loop has finished).

Runs nest: a Trainer may run inside another's step or evaluation (students trained inside an evaluation). Each
Trainer has its own accelerate state (:mod:`zoo.engine.accel`) and leaves the process's random state as it
found it, so the outer run continues bit for bit as without the inner one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from zoo.engine.checkpoint import atomic_save, capture_rng_state, read_checkpoint, restore_rng_state
from zoo.engine.ema import ModelEma
from zoo.engine.interrupt import StopRequest, TrainingInterrupted
from zoo.engine.logging import RunLogger
from zoo.engine.optim import OptimConfig, ScheduleConfig, build_scheduler
from zoo.engine.step import StepContext
from zoo.errors import ConfigError

__all__ = ["TrainerConfig", "Trainer", "TrainPlan", "choose_loop", "plan_training", "find_resume_checkpoint", "LOOPS",
           "MIXED_PRECISION"]

_logger = logging.getLogger("zoo")

LAST = "last.pt"
BEST = "best.pt"
LOOPS = ("epoch", "iteration", "stream")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainerConfig:
    """Loop settings (config section ``trainer``)."""

    epochs: int = 10  # epoch loop
    max_steps: int | None = None  # iteration loop: optimiser steps in all (epochs is then ignored)
    loop: str | None = None  # epoch | iteration | stream; default: stream if the recipe builds a stream,
    #                          iteration if max_steps is set, else epoch
    grad_accum_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    clip_grad_norm: float | None = None
    ema_decay: float | None = None  # e.g. 0.999; evaluation then uses the EMA weights
    eval_every: int = 1  # epochs (epoch loop); the last epoch is always evaluated
    save_every: int = 1  # epochs between writes of last.pt (epoch loop); the last epoch is always saved
    eval_every_steps: int | None = None  # iteration loop (default: only at the end)
    save_every_steps: int | None = None  # iteration loop (default: at each evaluation) and stream loop (batches)
    # write best.pt (the checkpoint selected on the eval split by best_metric); false when the eval split is the
    # reported one (selecting on it would be model selection on the test set): the run then reports its last epoch
    save_best: bool = True
    best_metric: str | None = None  # default: the recipe's main metric
    best_mode: str | None = None  # max | min; default: the recipe's main_metric_mode
    log_every: int = 20  # optimiser steps between progress-bar updates (iteration loop: between metrics.csv rows)
    progress: bool | None = None  # tqdm bars; default: only on a TTY
    tensorboard: bool = True
    cpu: bool = False  # force CPU even when CUDA is available
    max_steps_per_epoch: int | None = None  # cap for smoke runs
    ddp_find_unused_parameters: bool = False  # needed when a step leaves weights unused (e.g. a sub-network)

    def __post_init__(self) -> None:
        def at_least(name: str, value: Any, low: int, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"trainer.{name} must be an integer >= {low}"
                                    f"{' or null' if allow_none else ''}, got {value!r}")

        at_least("epochs", self.epochs, 1)
        at_least("max_steps", self.max_steps, 1, allow_none=True)
        at_least("grad_accum_steps", self.grad_accum_steps, 1)
        at_least("eval_every", self.eval_every, 1)
        at_least("save_every", self.save_every, 1)
        at_least("eval_every_steps", self.eval_every_steps, 1, allow_none=True)
        at_least("save_every_steps", self.save_every_steps, 1, allow_none=True)
        at_least("log_every", self.log_every, 1)
        at_least("max_steps_per_epoch", self.max_steps_per_epoch, 1, allow_none=True)
        # YAML 1.1 reads a bare `no` (trainer.mixed_precision=no) as false, which the str-typed schema then turns
        # into the text "False" before this runs
        if self.mixed_precision in (False, "False", "false"):
            self.mixed_precision = "no"
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"trainer.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                                f"got {self.mixed_precision!r}")
        if self.loop is not None and self.loop not in LOOPS:
            raise ConfigError(f"trainer.loop must be one of {', '.join(LOOPS)} (or null for automatic), got {self.loop!r}")
        if self.best_mode not in (None, "max", "min"):
            raise ConfigError(f"trainer.best_mode must be 'max' or 'min', got {self.best_mode!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ConfigError(f"trainer.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"trainer.ema_decay must be in (0, 1) or null, got {self.ema_decay!r}")


@dataclass
class TrainPlan:
    """How long the run is, known before the optimiser is built (``recipe.plan``; e.g. SaRA's progressive
    schedule needs the total). ``steps_per_epoch`` / ``epochs`` are ``None`` for loaders without a length."""

    total_steps: int
    steps_per_epoch: int | None
    epochs: int | None


def choose_loop(cfg: TrainerConfig, stream: bool = False) -> str:
    """The training loop a run uses: ``trainer.loop`` when set, else ``stream`` for a stream recipe, ``iteration``
    with ``trainer.max_steps``, ``epoch`` otherwise."""
    if cfg.loop is not None:
        return cfg.loop
    if stream:
        return "stream"
    return "iteration" if cfg.max_steps else "epoch"


def plan_training(cfg: TrainerConfig, loader_length: int | None, loop: str) -> tuple[TrainPlan, int | None]:
    """(the run's :class:`TrainPlan`, batches per epoch) for a training loader of ``loader_length`` batches
    (``None``: no length) under the ``trainer`` section ``cfg`` and ``loop`` (``epoch`` or ``iteration``)."""
    n = loader_length
    if n is not None and cfg.max_steps_per_epoch:
        n = min(n, cfg.max_steps_per_epoch * cfg.grad_accum_steps)
    elif n is None and cfg.max_steps_per_epoch:
        n = cfg.max_steps_per_epoch * cfg.grad_accum_steps
    steps_per_epoch = math.ceil(n / cfg.grad_accum_steps) if n is not None else None
    if loop == "iteration":
        if not cfg.max_steps:
            raise ConfigError("the iteration loop needs trainer.max_steps (the number of optimiser steps)")
        return TrainPlan(cfg.max_steps, steps_per_epoch, None), n
    if steps_per_epoch is None:
        raise ConfigError("the training loader has no length (an iterable dataset): set trainer.max_steps to "
                          "train by steps (iteration loop), or trainer.max_steps_per_epoch")
    return TrainPlan(steps_per_epoch * cfg.epochs, steps_per_epoch, cfg.epochs), n


def find_resume_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``<run_dir>/last.pt`` if it exists, else ``None``."""
    path = Path(run_dir) / LAST
    return path if path.is_file() else None


def _loader_length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an iterable without __len__
        return None


class Trainer:
    """Runs ``recipe`` with the loop its config asks for, writing everything into ``output_dir``.

    Args:
        recipe: supplies model, data, training step and evaluation.
        cfg, optim, schedule: loop, optimiser and lr-schedule settings.
        output_dir: the run directory.
        seed: seeds python/numpy/torch on every process (loader order is seeded separately by the recipe).
        resume: ``None`` (fresh run), ``"auto"`` (resume from ``output_dir/last.pt`` when present) or a path.
        callbacks: ``fn(trainer, epoch, metrics)`` called on every process after each checkpoint point.
        on_start: ``fn(trainer)`` called on the main process once model and data are built, before training
            (``tools/train.py`` writes ``config.yaml`` there, so a run that fails to start leaves nothing behind).
        history_note: what to record about this session when it resumes the run (e.g. the overrides given to
            ``--resume`` and the settings they changed); every session's note is kept in ``last.pt`` and in
            ``metrics.json`` (``history``).
    """

    def __init__(
        self,
        recipe: Any,
        cfg: TrainerConfig,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        output_dir: str | os.PathLike,
        *,
        seed: int = 0,
        resume: str | os.PathLike | None = None,
        callbacks: Iterable[Callable] = (),
        on_start: Callable[["Trainer"], None] | None = None,
        history_note: dict[str, Any] | None = None,
    ):
        from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

        from zoo.engine.accel import RunAccelerator

        self.recipe, self.cfg, self.optim_cfg, self.schedule_cfg = recipe, cfg, optim, schedule
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.resume = resume
        self.callbacks = list(callbacks)
        self.on_start = on_start
        self.history_note = history_note
        self.best_mode = cfg.best_mode or getattr(recipe, "main_metric_mode", "max")
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"trainer.best_mode must be 'max' or 'min', got '{self.best_mode}'")
        self._run_accelerator = RunAccelerator(
            cpu=cfg.cpu or not torch.cuda.is_available(),
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum_steps,
            # batch_size in configs is the global batch: each process takes its slice, so results do not
            # depend on the number of processes (and the scheduler steps once per optimiser step).
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused_parameters)],
        )
        self.accelerator = self._run_accelerator.accelerator
        self.best_metric = cfg.best_metric or getattr(recipe, "main_metric", None)
        self.loop_name = choose_loop(self.cfg, getattr(self.recipe, "has_stream", lambda: False)())
        self.epoch = 0  # completed epochs (passes over the training loader)
        self.global_step = 0  # optimiser steps (stream loop: batches)
        self.batch_in_epoch = 0  # batches of the current epoch (or stream domain) already trained on
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.elapsed_before = 0.0  # training seconds of earlier sessions of this run
        self.stop = StopRequest()
        self.model = self.optimizer = self.scheduler = self.ema = None
        self.train_loader = self.eval_loader = None
        self.stream: list[tuple[str, Any]] = []
        self.loop: Any = None

    # ------------------------------------------------------------------ setup
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _plan(self, train_loader: Any) -> TrainPlan:
        plan, self.batches_per_epoch = plan_training(self.cfg, _loader_length(train_loader), self.loop_name)
        self.steps_per_epoch = plan.steps_per_epoch
        return plan

    def _setup(self) -> None:
        from accelerate.utils import set_seed

        from zoo.engine.loops import build_loop

        acc = self.accelerator
        set_seed(self.seed)
        model = self.recipe.calibrate(self.recipe.build_model(), acc)
        if self.loop_name == "stream":
            self.stream = [(name, acc.prepare(loader)) for name, loader in self.recipe.build_stream()]
            if not self.stream:
                raise ValueError(f"recipe '{type(self.recipe).__name__}' built an empty stream (no domains)")
            train_loader, eval_loader = None, None
            lengths = [_loader_length(loader) for _, loader in self.stream]
            total = sum(n for n in lengths if n is not None)
            plan = TrainPlan(total, total if None not in lengths else None, 1)  # one pass over the stream
        else:
            train_loader, eval_loader = self.recipe.build_dataloaders()
            batch = getattr(train_loader, "batch_size", None) or 1
            if batch % acc.num_processes:
                raise ValueError(
                    f"The global batch size {batch} is not divisible by the {acc.num_processes} processes; "
                    "change data.batch_size or the number of processes")
            plan = self._plan(train_loader)
        self.recipe.plan = plan
        optimizer = self.recipe.configure_optimizer(model, self.optim_cfg)
        self.scheduler = (build_scheduler(optimizer, self.schedule_cfg, plan.steps_per_epoch, plan.epochs,
                                          total_steps=plan.total_steps) if optimizer is not None else None)
        self.ema = ModelEma(model, self.cfg.ema_decay) if self.cfg.ema_decay else None
        to_prepare = [model] + ([optimizer] if optimizer is not None else [])
        if any(p.requires_grad for p in model.parameters()):
            prepared = acc.prepare(*to_prepare)
        else:  # nothing to train (a frozen model scored on a stream): no DDP wrapper, which torch refuses on CPU
            prepared = (acc.prepare_model(model, evaluation_mode=True), *(acc.prepare(o) for o in to_prepare[1:]))
        prepared = prepared if isinstance(prepared, (list, tuple)) else (prepared,)
        self.model = prepared[0]
        self.optimizer = prepared[1] if optimizer is not None else None
        if train_loader is not None:
            self.train_loader = acc.prepare(train_loader)
            self.eval_loader = acc.prepare(eval_loader) if eval_loader is not None else None
        if self.ema is not None:
            self.ema.to(acc.device)
        self.loop = build_loop(self.loop_name, self)
        if self.is_main:  # only now: a run that fails to start leaves no directory behind
            self.output_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (tensors and primitives only)."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        state = {
            "model": self.recipe.checkpoint_state(acc.unwrap_model(self.model)),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batch_in_epoch": self.batch_in_epoch,
            "epochs_total": self.cfg.epochs,
            "max_steps": self.cfg.max_steps,
            "loop": self.loop_name,
            "loop_state": self.loop.state_dict(),
            "recipe_state": self.recipe.recipe_state(),
            "best": self.best,
            "history": self.history,
            "elapsed_s": self.elapsed_before + self._session_time(),
            "rng": gather_object([capture_rng_state()]) if acc.num_processes > 1 else [capture_rng_state()],
        }
        if acc.scaler is not None:
            state["scaler"] = acc.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the model/optimiser must already be built)."""
        acc = self.accelerator
        if state.get("loop", "epoch") != self.loop_name:
            raise RuntimeError(f"the checkpoint was written by the {state.get('loop')} loop but this run uses the "
                               f"{self.loop_name} loop (trainer.loop / trainer.max_steps); resume with the same settings")
        self.recipe.load_checkpoint_state(acc.unwrap_model(self.model), state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and acc.scaler is not None:
            acc.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" not in state:
                raise RuntimeError("trainer.ema_decay is set but the checkpoint has no EMA weights; resume without EMA")
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.global_step, self.best = state["epoch"], state["global_step"], state["best"]
        self.batch_in_epoch = state.get("batch_in_epoch", 0)
        self.history = list(state.get("history", []))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.loop.load_state_dict(state.get("loop_state", {}))
        self.recipe.load_recipe_state(state.get("recipe_state", {}))
        if self.loop_name == "epoch" and state.get("epochs_total") != self.cfg.epochs:
            _logger.warning(
                "Resuming a run planned for %s epochs with trainer.epochs=%s: the lr schedule is rescaled to the new length",
                state.get("epochs_total"), self.cfg.epochs,
            )
        rngs = state["rng"]
        restore_rng_state(rngs[acc.process_index] if acc.process_index < len(rngs) else rngs[0])

    def _maybe_resume(self) -> None:
        if self.resume is None:
            return
        if self.resume == "auto":
            path = find_resume_checkpoint(self.output_dir)
            if path is None:
                _logger.info("--resume auto: no %s in %s, starting a fresh run", LAST, self.output_dir)
                return
        else:
            path = Path(self.resume)
            if not path.is_file():
                raise FileNotFoundError(f"Resume checkpoint not found: {path}")
        self.load_state_dict(read_checkpoint(path, what="the run's last.pt (--resume)"))
        note = {"resumed_at_step": self.global_step, "epoch": self.epoch, **(self.history_note or {})}
        self.history.append(note)
        _logger.info("Resumed from %s at epoch %d, step %d%s", path, self.epoch + 1, self.global_step,
                     f", batch {self.batch_in_epoch} of the epoch" if self.batch_in_epoch else "")

    def save_last(self) -> None:
        """Write ``last.pt`` (collective: every process must call it; only the main process writes)."""
        state = self.state_dict()  # gathers RNG states
        if self.is_main:
            atomic_save(state, self.output_dir / LAST)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ steps
    def eval_model(self) -> nn.Module:
        """The weights evaluation uses: the EMA copy when enabled, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def set_loader_epoch(self, loader: Any, epoch: int) -> None:
        """Make the loader's order (and its workers' seeds) those of ``epoch``."""
        # accelerate's prepared loader calls sampler.set_epoch(<its own iteration count>) on every __iter__, and
        # that count restarts at 0 in a resumed process: set it (and through it the sampler) to the true epoch.
        if hasattr(loader, "set_epoch"):  # accelerate's prepared loader: sets its sampler's epoch too
            loader.set_epoch(epoch)
        elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)

    def train_batch(self, batch: Any, batch_index: int, domain: str | None = None) -> tuple[dict[str, float], StepContext]:
        """One micro-step: the recipe's ``train_step`` (its backward passes), then on the last micro-step of an
        accumulation window clipping, the optimiser and scheduler steps and the EMA update. Recipes with
        ``automatic_optimization = False`` optimise inside their step (the Trainer steps nothing). Returns the
        step's scalars (returned losses and ``ctx.log`` values) as floats, and the step context (its recorded
        per-example outputs)."""
        acc, cfg = self.accelerator, self.cfg
        automatic = getattr(self.recipe, "automatic_optimization", True)
        with acc.accumulate(self.model):
            ctx = StepContext(acc, self.model, self.optimizer, step=self.global_step, epoch=self.epoch,
                              batch_index=batch_index, domain=domain)
            out = self.recipe.train_step(self.model, batch, ctx) or {}
            stepped = automatic and ctx.num_backward > 0 and self.optimizer is not None
            if automatic and ctx.num_backward == 0:
                raise RuntimeError(f"{type(self.recipe).__name__}.train_step returned without calling ctx.backward "
                                   "(nothing to train); call ctx.backward(loss) in the step, or declare "
                                   "automatic_optimization = False for a step that optimises by itself")
            if stepped:
                if acc.sync_gradients and cfg.clip_grad_norm:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        values = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in out.items()}
        values.update(ctx.logged)
        if acc.sync_gradients:
            if stepped and self.scheduler is not None and not acc.optimizer_step_was_skipped:
                self.scheduler.step()
            self.global_step += 1
            if self.ema is not None and stepped:
                self.ema.update(acc.unwrap_model(self.model))
        return values, ctx

    def evaluate(self, output_dir: str | os.PathLike | None = None) -> dict[str, float]:
        """Evaluate the current (or EMA) weights on the recipe's eval loader; the model is left in train mode."""
        model = self.eval_model()
        if self.eval_loader is not None:  # its workers' seeds (if it has random transforms) follow the epoch too
            self.set_loader_epoch(self.eval_loader, self.epoch)
        with torch.no_grad():
            self.recipe.before_evaluate(self.accelerator.unwrap_model(model), self.accelerator)
            model.eval()
            try:
                return self.recipe.evaluate(model, self.eval_loader, self.accelerator, output_dir=output_dir)
            finally:
                self.model.train()

    def _is_better(self, value: float) -> bool:
        if "value" not in self.best:
            return True
        return value > self.best["value"] if self.best_mode == "max" else value < self.best["value"]

    def save_best(self, metrics: dict[str, float]) -> None:
        """Write ``best.pt`` when ``metrics[best_metric]`` beats the best so far."""
        if not self.cfg.save_best or self.best_metric is None or self.best_metric not in metrics:
            return
        value = metrics[self.best_metric]
        if not self._is_better(value):
            return
        self.best = {"metric": self.best_metric, "value": value, "epoch": self.epoch, "step": self.global_step}
        if self.is_main:
            weights = self.recipe.checkpoint_state(self.accelerator.unwrap_model(self.eval_model()))
            atomic_save({"model": weights, "epoch": self.epoch, "step": self.global_step, "metric": self.best_metric,
                         "value": value}, self.output_dir / BEST)

    def log_row(self, row: dict[str, Any]) -> None:
        """Append ``row`` to metrics.csv / TensorBoard and print it on the console (main process)."""
        self.logger.log(row, self.global_step)
        if self.is_main:
            _logger.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    def lr(self) -> float | None:
        """The current learning rate of the first parameter group (``None`` without optimiser)."""
        return self.scheduler.get_last_lr()[0] if self.scheduler is not None else None

    def check_stop(self) -> None:
        """After a step: if Ctrl-C was pressed (on any process), save ``last.pt`` and raise TrainingInterrupted."""
        requested = self.stop.requested
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(requested)], device=self.accelerator.device)
            requested = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        if requested:
            self.save_last()
            raise TrainingInterrupted(self.output_dir, self.epoch, self.global_step)

    def run_callbacks(self, metrics: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback(self, self.epoch, metrics)

    # ------------------------------------------------------------------ run
    def _session_time(self) -> float:
        return time.time() - self._session_start if getattr(self, "_session_start", None) else 0.0

    def fit(self) -> dict[str, Any]:
        """Run the loop to its end (resuming if asked); returns the summary also written to ``metrics.json``."""
        outer_rng = capture_rng_state()
        try:
            # enable_grad: a nested run may start inside an outer evaluation (under no_grad)
            with self._run_accelerator.active(), self.stop, torch.enable_grad():
                return self._fit()
        finally:
            restore_rng_state(outer_rng)

    def _fit(self) -> dict[str, Any]:
        self._setup()
        self.logger = RunLogger(self.output_dir, enabled=self.is_main, tensorboard=self.cfg.tensorboard)
        try:
            self._maybe_resume()
            self.logger.truncate_after(self.global_step, purge_tensorboard=self.resume is not None)
            if self.on_start is not None and self.is_main:
                self.on_start(self)
            self._session_start = time.time()
            metrics = self.loop.run()
            summary = self._summary(metrics)
            if self.is_main:
                tmp = self.output_dir / "metrics.json.tmp"
                tmp.write_text(json.dumps(summary, indent=2, default=float))
                os.replace(tmp, self.output_dir / "metrics.json")
            self.accelerator.wait_for_everyone()
            return summary
        finally:
            self.logger.close()

    def _summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        acc = self.accelerator
        return {
            "final": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            **({"domains": metrics["domains"]} if isinstance(metrics.get("domains"), dict) else {}),
            "best": self.best,
            "epochs": self.epoch,
            "steps": self.global_step,
            "loop": self.loop_name,
            "world_size": acc.num_processes,
            "ema": self.ema is not None,
            "train_time_s": round(self.elapsed_before + self._session_time(), 2),
            "sessions": 1 + len(self.history),
            "history": self.history,
            "trainer": asdict(self.cfg),
            "complete": True,
        }

