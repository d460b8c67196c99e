"""``python study_cli.py TRAIN_ARGS...``: ``tools/train.py`` with the test toys registered, plus the
``classify_per_example`` recipe (``classify`` that also saves per-example top-1 scores with
:func:`zoo.studies.save_per_example` at the final evaluation), for study tests that run cells as processes."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (toys)

import torch  # noqa: E402

import toys  # noqa: E402,F401  (registers toy_mlp / toy_blobs)
from zoo.cli import train_main  # noqa: E402
from zoo.recipes.base import RECIPES, register_recipe  # noqa: E402
from zoo.recipes.classify import ClassifyRecipe  # noqa: E402
from zoo.studies import save_per_example  # noqa: E402


class PerExampleRecipe(ClassifyRecipe):
    """classify, plus ``per_example.npz`` (top1: 100 per correct example, 0 otherwise) in the run directory."""

    def evaluate(self, model, loader, accelerator, output_dir=None):
        metrics = super().evaluate(model, loader, accelerator, output_dir=output_dir)
        if output_dir is not None:
            with torch.no_grad():
                correct = torch.cat([(model(x).argmax(1) == y).float() * 100.0 for x, y in loader])
            save_per_example(output_dir, {"top1": correct}, example_id=torch.arange(len(correct)))
        return metrics


if "classify_per_example" not in RECIPES._entries:
    register_recipe("classify_per_example")(PerExampleRecipe)

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
