"""What a recipe's step sees of the run: :class:`StepContext` (one optimiser step) and :class:`RunContext` (a whole
run that a recipe drives itself)."""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

__all__ = ["StepContext", "RunContext"]

_logger = logging.getLogger("zoo")


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"ctx.log takes scalars; got a tensor of shape {tuple(value.shape)}")
        return float(value.detach())
    return float(value)


class StepContext:
    """Passed to ``Recipe.train_step(model, batch, ctx)`` for one batch (one micro-step of accumulation).

    Attributes:
        accelerator: the run's ``accelerate.Accelerator`` (device, mixed precision, gather, unwrap_model).
        model, optimizer: the prepared (possibly DDP-wrapped) model and the optimiser (``None`` for a run without one).
        step: optimiser steps taken so far in the run. epoch: completed epochs (epoch loop) / passes over the data.
        batch_index: index of this batch within the current epoch (or stream domain).
        domain: the stream domain's name (stream loop), else ``None``.
        num_backward: how many times :meth:`backward` was called in this step.

    A step may call :meth:`backward` several times (e.g. once per sub-network of BigNAS's sandwich rule): the
    gradients add up and the optimiser steps once after ``train_step`` returns. Free each graph before building
    the next one (``backward`` does), so that memory stays that of one graph.
    """

    def __init__(self, accelerator: Any, model: Any, optimizer: Any, *, step: int, epoch: int, batch_index: int,
                 domain: str | None = None, clip: Callable[[], None] | None = None):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.step = step
        self.epoch = epoch
        self.batch_index = batch_index
        self.domain = domain
        self.num_backward = 0
        self.logged: dict[str, float] = {}
        self._clip = clip

    @property
    def device(self) -> torch.device:
        """The device batches and models live on."""
        return self.accelerator.device

    @property
    def sync_gradients(self) -> bool:
        """True on the micro-step whose gradients the optimiser will use (last of an accumulation window)."""
        return self.accelerator.sync_gradients

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Back-propagate ``loss`` (a scalar; divided by the accumulation steps by accelerate, scaled under fp16).

        Raises ``FloatingPointError`` naming the step if the loss is NaN or infinite.
        """
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"ctx.backward expects a scalar loss tensor, got {type(loss).__name__} "
                            f"{tuple(getattr(loss, 'shape', ()))}")
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"Loss is {loss.item()} at epoch {self.epoch + 1}, step {self.step}"
                f"{f', domain {self.domain}' if self.domain else ''}; lower optim.lr or enable trainer.clip_grad_norm")
        self.accelerator.backward(loss, **kwargs)
        self.num_backward += 1

    def log(self, **values: Any) -> None:
        """Record scalars for this step; the loop averages them like the returned losses (``train_<name>``)."""
        for k, v in values.items():
            self.logged[k] = _scalar(v)


class RunContext:
    """Passed to ``Recipe.run(ctx)`` by ``tools/train.py`` when a recipe drives its whole run itself (a test-time
    adaptation stream, an architecture search, a study of several trainings).

    Attributes:
        output_dir: the run directory (exists). resume: whether ``--resume`` was given. seed: the config's seed.
        config: the merged config (a plain dict) as written to ``config.yaml``.

    Nested trainings (:meth:`train`) get their own sub-directories and leave this process's random state and
    accelerate state as they found them.
    """

    def __init__(self, output_dir: str | os.PathLike, *, resume: bool = False, seed: int = 0,
                 config: Mapping[str, Any] | None = None):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        self.seed = seed
        self.config = dict(config or {})
        self._rows: dict[str, list] = defaultdict(list)

    def subdir(self, name: str) -> Path:
        """``output_dir/name`` (created)."""
        path = self.output_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def train(self, recipe: Any, name: str, **trainer_kwargs: Any) -> dict[str, Any]:
        """Train ``recipe`` (a built :class:`~zoo.recipes.base.Recipe`) with its own config's trainer/optim/schedule
        sections into ``output_dir/name``; returns the run's summary (what ``metrics.json`` holds). A finished
        sub-run is not trained again: its summary is read back (so a resumed study skips finished parts)."""
        from zoo.engine.trainer import Trainer

        out = self.output_dir / name
        done = read_summary(out)
        if done is not None and done.get("complete"):
            _logger.info("%s is finished; reading its metrics.json", out)
            return done
        cfg = recipe.cfg
        resume = "auto" if (out / "last.pt").is_file() else None
        trainer = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, out, seed=cfg.seed, resume=resume, **trainer_kwargs)
        return trainer.fit()

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        """Write ``metrics.json`` (atomically) with ``complete: true``; the run counts as finished."""
        path = self.output_dir / "metrics.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**metrics, "complete": True}, indent=2, default=float))
        os.replace(tmp, path)
        return path


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``metrics.json`` of a run directory, or ``None`` when there is none (or it is unreadable)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        _logger.warning("%s is not valid JSON; treating the run as unfinished", path)
        return None
