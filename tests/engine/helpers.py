"""Build and run the toy classification config with the Trainer (shared by engine tests and the DDP worker)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import toys  # noqa: F401  (registers toy_mlp / toy_blobs)
from zoo.cli import build_recipe
from zoo.engine.trainer import Trainer


def write_toy_config(folder: Path) -> Path:
    path = Path(folder) / "toy.yaml"
    path.write_text(toys.TOY_CONFIG)
    return path


def run_toy(folder: Path, run_dir: Path, overrides: Iterable[str] = (), resume=None, callbacks=()) -> Trainer:
    """Train the toy config (with ``overrides``) into ``run_dir``; returns the finished Trainer."""
    recipe, cfg, _ = build_recipe(str(write_toy_config(folder)), list(overrides))
    trainer = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, run_dir, seed=cfg.seed, resume=resume, callbacks=callbacks)
    trainer.fit()
    return trainer


def final_weights(trainer: Trainer) -> dict:
    return {k: v.detach().cpu().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
