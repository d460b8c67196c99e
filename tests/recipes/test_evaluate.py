"""``recipe: evaluate``: an evaluation as a run (and so as a study cell) gives the numbers tools/eval.py gives,
refuses what it cannot mean, and a pipeline of evaluation cells summarises into a results file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from zoo.cli.train import run_training
from zoo.errors import ConfigError
from zoo.engine.evaluate import evaluate_weights

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "studies" / "tiny_classify.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    run_training(TINY, [], out)
    return out


def _evaluate_config(tmp_path: Path, name: str, **section) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"recipe": "evaluate", "evaluate": {"config": TINY, **section}}))
    return path


def test_an_evaluate_run_gives_what_tools_eval_gives(trained, tmp_path):
    checkpoint = str(trained / "last.pt")
    direct = evaluate_weights(TINY, [], checkpoint=checkpoint)
    config = _evaluate_config(tmp_path, "eval", checkpoint=checkpoint)
    summary = run_training(str(config), [], tmp_path / "run")
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert written["top1"] == pytest.approx(direct["top1"], abs=1e-9) and summary["final"]["top1"] == written["top1"]
    assert (tmp_path / "run" / "confusion_matrix.csv").is_file()  # the evaluation's files land in the run
    last = json.loads((trained / "metrics.json").read_text())["final"]  # the training run's own last evaluation
    assert written["top1"] == pytest.approx(last["top1"], abs=1e-6)
    # overrides reach the evaluated config
    fewer = run_training(str(config), ["evaluate.overrides=[data.eval_kwargs.samples_per_class=3]"], tmp_path / "few")
    assert fewer["final"]["num_samples"] == 4 * 3 and written["num_samples"] == 4 * 8


@pytest.mark.parametrize("section, message", [
    ({}, "give exactly one of evaluate.pretrained: true"),
    ({"pretrained": True, "checkpoint": "x.pt"}, "give exactly one of"),
])
def test_what_to_evaluate_must_be_named_once(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        run_training(str(_evaluate_config(tmp_path, "bad", **section)), [], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_training_keys_are_refused(trained, tmp_path):
    config = _evaluate_config(tmp_path, "eval", checkpoint=str(trained / "last.pt"))
    with pytest.raises(ConfigError, match="optim.*evaluate.*trains nothing"):
        run_training(str(config), ["optim.lr=0.5"], tmp_path / "out")
