"""``python toy_cli.py TRAIN_ARGS...``: ``tools/train.py`` with the test toys registered, for subprocess tests.

Adds ``toy_noisy_blobs`` (toy blobs plus per-sample noise drawn from the data-loader worker's numpy RNG, so that
worker seeding matters for exact resume) and the ``classify_sigint`` recipe (``classify`` that sends SIGINT to its
whole process group -- as Ctrl-C in a terminal does, data-loader workers included -- at optimiser step
``$ZOO_TEST_SIGINT_STEP``).
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (toys)

import numpy as np  # noqa: E402
import toys  # noqa: E402
from zoo.cli import train_main  # noqa: E402
from zoo.data.registry import DATASETS, register_dataset  # noqa: E402
from zoo.recipes.base import RECIPES, register_recipe  # noqa: E402
from zoo.recipes.classify import ClassifyRecipe  # noqa: E402


class NoisyBlobs(toys.ToyBlobs):
    """Toy blobs with noise from the worker's numpy RNG added to every sample."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + 0.5 * float(np.random.randn()), y


class SigintRecipe(ClassifyRecipe):
    """classify, plus a real SIGINT to the process group at step $ZOO_TEST_SIGINT_STEP."""

    def train_step(self, model, batch, ctx):
        out = super().train_step(model, batch, ctx)
        if ctx.step + 1 == int(os.environ.get("ZOO_TEST_SIGINT_STEP", "-1")):
            os.killpg(os.getpgrp(), signal.SIGINT)
        return out


if "toy_noisy_blobs" not in DATASETS._entries:
    register_dataset("toy_noisy_blobs")(NoisyBlobs)
if "classify_sigint" not in RECIPES._entries:
    register_recipe("classify_sigint")(SigintRecipe)

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
