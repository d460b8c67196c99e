"""Run alone or under ``torchrun --nproc_per_node N``: evaluate the diffusion recipes of ``cases.json`` (config +
overrides each) on freshly built, seeded models and write rank 0's metrics to ``OUT/metrics_<world size>.json``.

    python ddp_eval_worker.py OUT                    # cases from OUT/cases.json
"""
import json
import os
import sys
from pathlib import Path

import torch

from zoo.cli import build_recipe
from zoo.engine.evaluate import evaluate_model

out = Path(sys.argv[1])
cases = json.loads((out / "cases.json").read_text())
results = {}
for name, (config, overrides) in cases.items():
    recipe, cfg, _ = build_recipe(config, overrides)
    torch.manual_seed(0)  # the same initial weights on every process
    model = recipe.build_model()
    results[name] = evaluate_model(recipe, model, cpu=True)
world = int(os.environ.get("WORLD_SIZE", "1"))
if int(os.environ.get("RANK", "0")) == 0:
    (out / f"metrics_{world}.json").write_text(json.dumps(results, indent=1))
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
