"""The training loop: accelerate for devices/AMP/DDP/accumulation; we add schedules, EMA, resume, logs, checkpoints.

The Trainer knows nothing about tasks. A recipe (see :class:`zoo.recipes.base.Recipe`) supplies the model, the
data loaders, ``training_step(model, batch) -> {"loss": ..., ...}`` and ``evaluate(model, loader, accelerator)``.

A run directory holds ``config.yaml`` (written by the caller), ``metrics.csv``, ``tb/``, ``last.pt`` (full
training state, written atomically after every epoch), ``best.pt`` (weights of the best epoch by
``best_metric``) and ``metrics.json`` (final evaluation).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.engine.checkpoint import atomic_save, capture_rng_state, restore_rng_state
from zoo.engine.ema import ModelEma
from zoo.engine.logging import RunLogger, progress_enabled
from zoo.engine.optim import OptimConfig, ScheduleConfig, build_scheduler

__all__ = ["TrainerConfig", "Trainer", "find_resume_checkpoint"]

_logger = logging.getLogger("zoo")

LAST = "last.pt"
BEST = "best.pt"


@dataclass
class TrainerConfig:
    """Loop settings (config section ``trainer``)."""

    epochs: int = 10
    grad_accum_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    clip_grad_norm: float | None = None
    ema_decay: float | None = None  # e.g. 0.999; evaluation then uses the EMA weights
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    save_every: int = 1  # epochs between writes of last.pt; the last epoch is always saved
    best_metric: str | None = None  # default: the recipe's main metric
    best_mode: str | None = None  # max | min; default: the recipe's main_metric_mode
    log_every: int = 20  # optimiser steps between progress-bar updates of the running loss
    progress: bool | None = None  # tqdm bars; default: only on a TTY
    tensorboard: bool = True
    cpu: bool = False  # force CPU even when CUDA is available
    max_steps_per_epoch: int | None = None  # cap for smoke runs


def find_resume_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``<run_dir>/last.pt`` if it exists, else ``None``."""
    path = Path(run_dir) / LAST
    return path if path.is_file() else None


class Trainer:
    """Runs ``recipe`` for ``cfg.epochs`` epochs, writing everything into ``output_dir``.

    Args:
        recipe: supplies model, loaders, training step and evaluation.
        cfg, optim, schedule: loop, optimiser and lr-schedule settings.
        output_dir: the run directory.
        seed: seeds python/numpy/torch on every process (loader order is seeded separately by the recipe).
        resume: ``None`` (fresh run), ``"auto"`` (resume from ``output_dir/last.pt`` when present) or a path.
        callbacks: ``fn(trainer, epoch, metrics)`` called on every process after each epoch's checkpoint.
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
    ):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import DataLoaderConfiguration

        self.recipe, self.cfg, self.optim_cfg, self.schedule_cfg = recipe, cfg, optim, schedule
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.resume = resume
        self.callbacks = list(callbacks)
        self.best_mode = cfg.best_mode or getattr(recipe, "main_metric_mode", "max")
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"trainer.best_mode must be 'max' or 'min', got '{self.best_mode}'")
        # accelerate keeps process-wide singletons: a second Trainer in one process (a notebook, the tests) with
        # other settings (e.g. mixed precision) would be refused. Reset them, keeping the process group.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        self.accelerator = Accelerator(
            cpu=cfg.cpu or not torch.cuda.is_available(),
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum_steps,
            # batch_size in configs is the global batch: each process takes its slice, so results do not
            # depend on the number of processes (and the scheduler steps once per optimiser step).
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        self.best_metric = cfg.best_metric or getattr(recipe, "main_metric", None)
        self.epoch = 0
        self.global_step = 0
        self.best: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _setup(self) -> None:
        from accelerate.utils import set_seed

        acc = self.accelerator
        set_seed(self.seed)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        model = self.recipe.build_model()
        train_loader, eval_loader = self.recipe.build_dataloaders()
        self._sampler = getattr(train_loader, "sampler", None)
        batch = train_loader.batch_size or 1
        if batch % acc.num_processes:
            raise ValueError(
                f"The global batch size {batch} is not divisible by the {acc.num_processes} processes; "
                "change data.batch_size or the number of processes"
            )
        n_batches = len(train_loader)
        if self.cfg.max_steps_per_epoch:
            n_batches = min(n_batches, self.cfg.max_steps_per_epoch * self.cfg.grad_accum_steps)
        self.batches_per_epoch = n_batches
        self.steps_per_epoch = math.ceil(n_batches / self.cfg.grad_accum_steps)
        optimizer = self.recipe.configure_optimizer(model, self.optim_cfg)
        self.scheduler = build_scheduler(optimizer, self.schedule_cfg, self.steps_per_epoch, self.cfg.epochs)
        self.ema = ModelEma(model, self.cfg.ema_decay) if self.cfg.ema_decay else None
        self.model, self.optimizer, self.train_loader, self.eval_loader = acc.prepare(model, optimizer, train_loader, eval_loader)
        if self.ema is not None:
            self.ema.to(acc.device)
        self.logger = RunLogger(self.output_dir, enabled=self.is_main, tensorboard=self.cfg.tensorboard)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (tensors and primitives only)."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        state = {
            "model": self.recipe.checkpoint_state(acc.unwrap_model(self.model)),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "epochs_total": self.cfg.epochs,
            "best": self.best,
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
        self.recipe.load_checkpoint_state(acc.unwrap_model(self.model), state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and acc.scaler is not None:
            acc.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" not in state:
                raise RuntimeError("trainer.ema_decay is set but the checkpoint has no EMA weights; resume without EMA")
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.global_step, self.best = state["epoch"], state["global_step"], state["best"]
        if state.get("epochs_total") != self.cfg.epochs:
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
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state_dict(state)
        _logger.info("Resumed from %s at epoch %d (step %d)", path, self.epoch, self.global_step)

    # ------------------------------------------------------------------ loop
    def eval_model(self) -> nn.Module:
        """The weights evaluation uses: the EMA copy when enabled, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def _train_epoch(self) -> dict[str, float]:
        acc, cfg = self.accelerator, self.cfg
        self.model.train()
        # accelerate's prepared loader calls sampler.set_epoch(<its own iteration count>) on every __iter__, and
        # that count restarts at 0 in a resumed process: set it (and through it the sampler) to the true epoch.
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(self.epoch)
        elif self._sampler is not None and hasattr(self._sampler, "set_epoch"):
            self._sampler.set_epoch(self.epoch)
        sums: dict[str, float] = defaultdict(float)
        count = 0
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not progress_enabled(cfg.progress, self.is_main), dynamic_ncols=True, leave=False)
        for i, batch in enumerate(self.train_loader):
            if i >= self.batches_per_epoch:
                break
            with acc.accumulate(self.model):
                losses = self.recipe.training_step(self.model, batch)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"Loss is {loss.item()} at epoch {self.epoch + 1}, step {self.global_step}; "
                                             "lower optim.lr or enable trainer.clip_grad_norm")
                acc.backward(loss)
                if acc.sync_gradients and cfg.clip_grad_norm:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            for k, v in losses.items():
                sums[k] += float(v.detach())
            count += 1
            if acc.sync_gradients:
                if not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                self.global_step += 1
                if self.ema is not None:
                    self.ema.update(acc.unwrap_model(self.model))
                bar.update(1)
                if self.global_step % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        return {f"train_{k}": v / max(count, 1) for k, v in sums.items()}

    def evaluate(self, output_dir: str | os.PathLike | None = None) -> dict[str, float]:
        """Evaluate the current (or EMA) weights on the recipe's eval loader."""
        model = self.eval_model()
        with torch.no_grad():
            self.recipe.before_evaluate(self.accelerator.unwrap_model(model), self.accelerator)
            model.eval()
            return self.recipe.evaluate(model, self.eval_loader, self.accelerator, output_dir=output_dir)

    def _is_better(self, value: float) -> bool:
        if "value" not in self.best:
            return True
        return value > self.best["value"] if self.best_mode == "max" else value < self.best["value"]

    def _save_best(self, metrics: dict[str, float]) -> None:
        if self.best_metric is None or self.best_metric not in metrics:
            return
        value = metrics[self.best_metric]
        if not self._is_better(value):
            return
        self.best = {"metric": self.best_metric, "value": value, "epoch": self.epoch}
        if self.is_main:
            weights = self.recipe.checkpoint_state(self.accelerator.unwrap_model(self.eval_model()))
            atomic_save({"model": weights, "epoch": self.epoch, "metric": self.best_metric, "value": value}, self.output_dir / BEST)

    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.epochs`` (resuming if asked); returns the final metrics also written to ``metrics.json``."""
        self._setup()
        self._maybe_resume()
        acc, cfg = self.accelerator, self.cfg
        start = time.time()
        metrics: dict[str, float] = {}
        while self.epoch < cfg.epochs:
            train_metrics = self._train_epoch()
            is_last = self.epoch + 1 == cfg.epochs
            metrics = {}
            if is_last or (self.epoch + 1) % cfg.eval_every == 0:
                metrics = self.evaluate(output_dir=self.output_dir if is_last else None)
            self.epoch += 1
            row = {"epoch": self.epoch, "step": self.global_step, "lr": self.scheduler.get_last_lr()[0], **train_metrics,
                   **{f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}
            self.logger.log(row, self.global_step)
            if self.is_main:
                _logger.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            self._save_best(metrics)
            if is_last or self.epoch % cfg.save_every == 0:
                state = self.state_dict()  # collective (gathers RNG states): every process calls it
                if self.is_main:
                    atomic_save(state, self.output_dir / LAST)
                acc.wait_for_everyone()
            for callback in self.callbacks:
                callback(self, self.epoch, metrics)
        if not metrics:  # resumed a finished run: evaluate once more so metrics.json is complete
            metrics = self.evaluate(output_dir=self.output_dir)
        summary = {
            "final": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "best": self.best,
            "epochs": self.epoch,
            "steps": self.global_step,
            "world_size": acc.num_processes,
            "ema": self.ema is not None,
            "train_time_s": round(time.time() - start, 2),
            "trainer": asdict(cfg),
        }
        if self.is_main:
            tmp = self.output_dir / "metrics.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2))
            os.replace(tmp, self.output_dir / "metrics.json")
        self.logger.close()
        acc.wait_for_everyone()
        return summary
