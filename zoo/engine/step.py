"""What a recipe's step sees of the run: :class:`StepContext` (one batch, one optimiser micro-step)."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["StepContext"]


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

    Recipes with ``automatic_optimization = False`` (test-time adaptation, probes) optimise inside the step:
    :meth:`manual_backward` (the accelerator's backward: loss scaling under fp16, DDP gradient hooks) and
    :meth:`optimizer_step` (an optimiser of the recipe's own, stepped through the run's gradient scaler), as
    Lightning's ``manual_backward`` / ``optimizer.step()``. Stream steps hand their per-example outputs to the run's
    metrics with :meth:`record` (gathered across processes by the loop).
    """

    def __init__(self, accelerator: Any, model: Any, optimizer: Any, *, step: int, epoch: int, batch_index: int,
                 domain: str | None = None):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.step = step
        self.epoch = epoch
        self.batch_index = batch_index
        self.domain = domain
        self.num_backward = 0
        self.logged: dict[str, float] = {}
        self.recorded: dict[str, torch.Tensor] = {}

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

    def manual_backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Back-propagate ``loss`` in a step that optimises by itself (``automatic_optimization = False``): the same
        as :meth:`backward` (scaled under fp16, DDP hooks, NaN check); the Trainer then steps nothing."""
        self.backward(loss, **kwargs)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, *, zero_grad: bool = True) -> bool:
        """Step ``optimizer`` (one of the recipe's own) on the gradients of :meth:`manual_backward`: through the
        run's gradient scaler under fp16 (unscaled first; a step with inf/NaN gradients is skipped, as the
        scaler decides), plainly otherwise. Returns whether the step was taken."""
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            scale_before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            taken = scaler.get_scale() >= scale_before
        else:
            optimizer.step()
            taken = True
        if zero_grad:
            optimizer.zero_grad(set_to_none=True)
        return taken

    def record(self, **outputs: torch.Tensor) -> None:
        """Per-example outputs of this batch (``(B, ...)`` tensors on this process) for the run's metrics (stream
        loop: ``recipe.build_metrics("stream")``); the loop gathers them across processes."""
        for k, v in outputs.items():
            if not isinstance(v, torch.Tensor) or v.ndim == 0:
                raise TypeError(f"ctx.record takes per-example tensors (B, ...); '{k}' is "
                                f"{type(v).__name__}{' of shape ()' if isinstance(v, torch.Tensor) else ''}")
            self.recorded[k] = v.detach()

    def log(self, **values: Any) -> None:
        """Record scalars for this step; the loop averages them like the returned losses (``train_<name>``)."""
        for k, v in values.items():
            self.logged[k] = _scalar(v)
