"""Run under ``torchrun --nproc_per_node N``: trains the toy config and saves each rank's final weights."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (toys)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/engine (helpers)

import torch  # noqa: E402
from helpers import final_weights, run_toy  # noqa: E402

out = Path(sys.argv[1])
trainer = run_toy(out, out / "run", sys.argv[2:])
torch.save(final_weights(trainer), out / f"rank{os.environ.get('RANK', '0')}.pt")
if torch.distributed.is_initialized():  # the same teardown as tools/train.py: no gloo abort at interpreter exit
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
