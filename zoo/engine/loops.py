"""How a run walks its data (mmengine's loops, on the :class:`~zoo.engine.trainer.Trainer` core).

Each loop drives the Trainer's primitives (``train_batch``, ``evaluate``, ``save_best``, ``save_last``,
``log_row``, ``check_stop``) and keeps its own position in ``last.pt`` (``state_dict`` / ``load_state_dict``),
so every loop resumes exactly, also in the middle of an epoch or a stream domain. A resumed run re-reads the
batches it had already trained on and discards them: data-loader workers then do exactly the same work as in an
uninterrupted run, so their random streams (augmentations) stay the same.

* :class:`EpochLoop` — ``trainer.epochs`` epochs; evaluate every ``eval_every`` epochs and at the end.
* :class:`IterationLoop` — ``trainer.max_steps`` optimiser steps, cycling the loader (each pass is an epoch for
  the sampler's seed); a metrics row every ``log_every`` steps; evaluate every ``eval_every_steps`` and at the end.
* :class:`StreamLoop` — one pass over ``recipe.build_stream()``'s ordered ``(name, loader)`` domains; no
  separate evaluation: the recipe's step scores each batch before adapting on it and records the per-example
  outputs (``ctx.record(correct=...)``); they are gathered across processes into ``recipe.build_metrics("stream")``,
  computed per domain into ``stream.csv`` and, through ``recipe.stream_metrics(per_domain)``, ``metrics.json``.
"""
from __future__ import annotations

import csv
import os
from collections import defaultdict
from typing import Any

from tqdm.auto import tqdm

from zoo.engine.logging import progress_enabled

__all__ = ["EpochLoop", "IterationLoop", "StreamLoop", "build_loop"]


class _Running:
    """Sums of per-step scalars since the last report, saved with the loop so resumed logs are identical."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] += v
        self.count += 1

    def means(self, prefix: str = "train_") -> dict[str, float]:
        return {f"{prefix}{k}": v / self.count for k, v in self.sums.items()} if self.count else {}

    def reset(self) -> None:
        self.sums, self.count = defaultdict(float), 0

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = defaultdict(float, state.get("sums", {}))
        self.count = int(state.get("count", 0))


class _Loop:
    """Shared pieces: the progress bar, the running sums and their state."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.running = _Running()

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running.load_state_dict(state.get("running", {}))

    def _bar(self, total: int | None, desc: str, initial: int = 0) -> tqdm:
        t = self.trainer
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False,
                    disable=not progress_enabled(t.cfg.progress, t.is_main))

    def _train_pass(self, loader: Any, bar: tqdm, limit: int | None, after_step) -> bool:
        """Train on the batches of one pass from ``trainer.batch_in_epoch`` on; ``after_step()`` is called after
        every optimiser step and returns True to stop the pass early. Returns True if the pass was stopped."""
        t = self.trainer
        start = t.batch_in_epoch
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            if i < start:  # resumed mid-pass: re-read and discard what was already trained on
                continue
            values, _ = t.train_batch(batch, i)
            self.running.add(values)
            t.batch_in_epoch = i + 1
            if t.accelerator.sync_gradients:
                bar.update(1)
                if t.global_step % t.cfg.log_every == 0 and "loss" in self.running.sums:
                    lr = t.lr()
                    bar.set_postfix(loss=f"{self.running.sums['loss'] / self.running.count:.4f}",
                                    **({"lr": f"{lr:.2e}"} if lr is not None else {}))
                t.check_stop()
                if after_step():
                    return True
        return False


class EpochLoop(_Loop):
    """``trainer.epochs`` passes over the training loader (the loop of classification recipes)."""

    def run(self) -> dict[str, Any]:
        t, cfg = self.trainer, self.trainer.cfg
        metrics: dict[str, Any] = {}
        while t.epoch < cfg.epochs:
            t.model.train()
            t.set_loader_epoch(t.train_loader, t.epoch)
            initial = t.batch_in_epoch // cfg.grad_accum_steps
            bar = self._bar(t.steps_per_epoch, f"epoch {t.epoch + 1}/{cfg.epochs}", initial)
            try:
                self._train_pass(t.train_loader, bar, t.batches_per_epoch, lambda: False)
            finally:
                bar.close()
            train_metrics = self.running.means()
            is_last = t.epoch + 1 == cfg.epochs
            metrics = {}
            if is_last or (t.epoch + 1) % cfg.eval_every == 0:
                metrics = t.evaluate(output_dir=t.output_dir if is_last else None)
            t.epoch += 1
            t.batch_in_epoch = 0
            self.running.reset()
            t.log_row({"epoch": t.epoch, "step": t.global_step, "lr": t.lr(), **train_metrics,
                       **{f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}})
            t.save_best(metrics)
            if is_last or t.epoch % cfg.save_every == 0:
                t.save_last()
            t.run_callbacks(metrics)
        if not metrics:  # resumed a finished run: evaluate once more so metrics.json is complete
            metrics = t.evaluate(output_dir=t.output_dir)
        return metrics


class IterationLoop(_Loop):
    """``trainer.max_steps`` optimiser steps; the loader is repeated as often as needed (iterable loaders too)."""

    def run(self) -> dict[str, Any]:
        t, cfg = self.trainer, self.trainer.cfg
        bar = self._bar(cfg.max_steps, "steps", t.global_step)
        metrics: dict[str, Any] = {}
        evaluated_at = -1

        def checkpoint_point() -> bool:
            nonlocal metrics, evaluated_at
            step, done = t.global_step, t.global_step >= cfg.max_steps
            log = done or step % cfg.log_every == 0
            evaluate = done or bool(cfg.eval_every_steps and step % cfg.eval_every_steps == 0)
            row: dict[str, Any] = {"epoch": t.epoch, "step": step, "lr": t.lr()}
            if log:
                row.update(self.running.means())
                self.running.reset()
            if evaluate:
                metrics = t.evaluate(output_dir=t.output_dir if done else None)
                evaluated_at = step
                row.update({f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            if log or evaluate:
                t.log_row(row)
            if evaluate:
                t.save_best(metrics)
            save_every = cfg.save_every_steps or cfg.eval_every_steps
            if done or (save_every and step % save_every == 0):
                t.save_last()
                t.run_callbacks(metrics if evaluate else {})
            return done

        try:
            t.model.train()
            while t.global_step < cfg.max_steps:
                t.set_loader_epoch(t.train_loader, t.epoch)
                stopped = self._train_pass(t.train_loader, bar, t.batches_per_epoch, checkpoint_point)
                if stopped:
                    break
                if t.batch_in_epoch == 0:
                    raise RuntimeError("the training loader yielded no batch; check the dataset and data.batch_size")
                t.epoch += 1
                t.batch_in_epoch = 0
        finally:
            bar.close()
        if evaluated_at != t.global_step:  # resumed a finished run
            metrics = t.evaluate(output_dir=t.output_dir)
        return metrics


class StreamLoop(_Loop):
    """One pass over an ordered sequence of domains, scoring online (test-time adaptation).

    Per domain, the step's recorded per-example outputs (``ctx.record``) are gathered across processes into the
    recipe's stream metrics (``recipe.build_metrics("stream")``), whose values per domain go to ``stream.csv``; the
    step's logged scalars are averaged per domain into ``metrics.csv``. Resumes exactly mid-domain (the metrics'
    state is saved in ``last.pt``).
    """

    def __init__(self, trainer: Any):
        super().__init__(trainer)
        from zoo.metrics.base import as_metric_set

        self.domain_index = 0
        self.per_domain: dict[str, dict[str, float]] = {}
        self.metrics = as_metric_set(trainer.recipe.build_metrics("stream"))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "domain_index": self.domain_index, "per_domain": self.per_domain,
                "metrics": self.metrics.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.domain_index = int(state.get("domain_index", 0))
        self.per_domain = {k: dict(v) for k, v in state.get("per_domain", {}).items()}
        if "metrics" in state:
            self.metrics.load_state_dict(state["metrics"])

    def _write_csv(self) -> None:
        t = self.trainer
        if not t.is_main or not self.per_domain:
            return
        keys = list(dict.fromkeys(k for v in self.per_domain.values() for k in v))
        path = t.output_dir / "stream.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["domain", *keys])
            for name, values in self.per_domain.items():
                writer.writerow([name, *(values.get(k, "") for k in keys)])
        os.replace(tmp, path)

    def run(self) -> dict[str, Any]:
        t, recipe = self.trainer, self.trainer.recipe
        total = sum(len(loader) for _, loader in t.stream) if all(hasattr(l, "__len__") for _, l in t.stream) else None
        bar = self._bar(total, "stream", t.global_step)
        try:
            for d, (name, loader) in enumerate(t.stream):
                if d < self.domain_index:
                    continue
                if t.batch_in_epoch == 0:
                    recipe.on_domain_start(t.accelerator.unwrap_model(t.model), name, d)
                    self.running.reset()
                    self.metrics.reset()
                bar.set_description(f"stream {d + 1}/{len(t.stream)} {name}")
                start = t.batch_in_epoch
                for i, batch in enumerate(loader):
                    if i < start:
                        continue
                    values, ctx = t.train_batch(batch, i, domain=name)
                    self.metrics.update(ctx.recorded, t.accelerator)
                    self.running.add(values)
                    t.batch_in_epoch = i + 1
                    bar.update(1)
                    t.check_stop()
                    if t.cfg.save_every_steps and t.global_step % t.cfg.save_every_steps == 0:
                        t.save_last()
                self.per_domain[name] = self.metrics.compute()
                t.log_row({"domain": name, "step": t.global_step, **self.running.means(""), **self.per_domain[name]})
                self.running.reset()
                self.metrics.reset()
                self.domain_index = d + 1
                t.batch_in_epoch = 0
                self._write_csv()
                t.save_last()
                t.run_callbacks({})
        finally:
            bar.close()
        return recipe.stream_metrics(self.per_domain)


LOOP_CLASSES = {"epoch": EpochLoop, "iteration": IterationLoop, "stream": StreamLoop}


def build_loop(name: str, trainer: Any) -> _Loop:
    """The loop called ``name`` (``epoch`` | ``iteration`` | ``stream``) driving ``trainer``."""
    try:
        return LOOP_CLASSES[name](trainer)
    except KeyError:
        raise ValueError(f"unknown loop '{name}'; choose one of {', '.join(LOOP_CLASSES)}") from None
