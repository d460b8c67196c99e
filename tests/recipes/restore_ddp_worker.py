"""Run under ``torchrun --nproc_per_node N``: the restore recipe's evaluation of a checkpoint (``evaluate_model``, the
tools/eval.py path) and a short training run (the Trainer's evaluation), each rank's final metrics written to
``OUT/rank<r>.json``. Usage: ``restore_ddp_worker.py OUT CONFIG CHECKPOINT [key=value ...]``."""
import json
import os
import sys
from pathlib import Path

import torch  # noqa: F401

from zoo.cli import build_recipe
from zoo.engine.evaluate import evaluate_model
from zoo.engine.trainer import Trainer

out, config, checkpoint, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
recipe, cfg, _ = build_recipe(config, overrides)
evaluated = evaluate_model(recipe, recipe.build_eval_model(checkpoint_path=checkpoint))
recipe, cfg, _ = build_recipe(config, [*overrides, f"model.checkpoint_path={checkpoint}"])
trainer = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, out / "run", seed=cfg.seed)
trained = trainer.fit()["final"]
(out / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"evaluate": evaluated, "train": trained}))
if torch.distributed.is_initialized():  # the same teardown as tools/train.py: no gloo abort at interpreter exit
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
