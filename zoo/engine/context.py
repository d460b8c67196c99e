"""What a recipe that drives its whole run itself sees of it: :class:`RunContext` (see ``Recipe.run``)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from zoo.engine.rundir import read_summary

__all__ = ["RunContext"]

_logger = logging.getLogger("zoo")


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
