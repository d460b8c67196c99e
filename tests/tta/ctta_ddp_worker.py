"""Run under ``torchrun --nproc_per_node N``: one tiny ``ctta`` stream (the config overrides in argv[2:]) into
``argv[1]/run``; each rank saves its final weights to ``argv[1]/rank<k>.pt``."""
import os
import sys
from pathlib import Path

import torch

from zoo.cli import build_recipe
from zoo.engine.trainer import Trainer

out = Path(sys.argv[1])
recipe, cfg, _ = build_recipe(str(out / "ctta.yaml"), sys.argv[2:])
trainer = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, out / "run", seed=cfg.seed)
trainer.fit()
weights = {k: v.detach().cpu().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
torch.save(weights, out / f"rank{os.environ.get('RANK', '0')}.pt")
if torch.distributed.is_initialized():  # the same teardown as tools/train.py: no gloo abort at interpreter exit
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
