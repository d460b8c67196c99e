"""No shipped config selects a checkpoint or tunes on a reported split (issue 27, item 4).

Every config under ``configs/`` is loaded as it runs: a plain config as written, a pipeline or study as each of its
runs (every stage, every cell of a matrix stage, with the stage's and the variant's overrides applied). For each
run, the split strings it names (``data.train_split``, ``data.eval_split``, ``search_split``, ...) are checked
against the split scheme of :mod:`zoo.data.splits`:

* splits that train, validate or search (``train_split``, ``val_split``, ``search_split``, a pre-training
  ``split``) never read the reported split;
* a run whose per-epoch evaluation reads the reported split does not pick ``best.pt`` on it
  (``trainer.save_best: false``: the run reports its last epoch);
* the stages of a study that choose (``*sweep*``, ``*tune*``, ``*select*``, ``*search*``, ``*choose*`` stages) read
  no reported split at all, evaluation included.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from zoo.config import apply_overrides, load_raw_config
from zoo.data.splits import SPLIT_SCHEMES, is_reported_split, split_scheme
from zoo.engine.pipeline import is_pipeline, load_pipeline, plan_stage

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CHOOSING_STAGE = re.compile(r"sweep|tune|select|search|choose", re.IGNORECASE)
EVALUATION_KEYS = {"eval_split", "real_split", "digit_split", "test_split"}
EVALUATION_SECTIONS = {"measure"}            # measure.split: what an evaluation-only recipe scores
SELECTION_KEYS = {"val_split", "search_split"}   # a run that chooses on these reports on its evaluation split
MNIST_SLICE = re.compile(r"^test\[-?\d*:-?\d*\]$")


def shipped_configs() -> list[Path]:
    """Every runnable YAML under configs/ (``_base_`` fragments are checked through the configs that use them)."""
    return sorted(p for p in CONFIGS.rglob("*.yaml") if "_base_" not in p.parts)


def runs_of(path: Path) -> Iterator[tuple[str, str | None, dict]]:
    """(label, stage name, unresolved config tree) for each run ``path`` makes."""
    raw = load_raw_config(path)
    if not is_pipeline(raw):
        yield path.relative_to(CONFIGS).as_posix(), None, raw
        return
    stages = load_pipeline(path, raw)
    for i, stage in enumerate(stages):
        for step in plan_stage(stage, stages[:i], "/nonexistent-study-root"):
            tree = apply_overrides(load_raw_config(stage.config), step.overrides)
            yield f"{path.relative_to(CONFIGS).as_posix()} [{step.label}]", stage.name, tree


def split_leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, value) for every string leaf whose key ends in ``split``."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from split_leaves(value, f"{prefix}{key}.")
    elif isinstance(tree, str) and prefix.rstrip(".").rsplit(".", 1)[-1].endswith("split"):
        yield prefix.rstrip("."), tree


def dataset_of(tree: dict) -> str | None:
    """The dataset a run reads: ``data.name``, or MNIST for the t10k slices (``test[a:b]``) of configs that do not
    name one (the text-to-image and style configs read MNIST digits only)."""
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    name = data.get("name")
    if isinstance(name, str) and name in SPLIT_SCHEMES:
        return name
    if name is None and any(MNIST_SLICE.match(v.replace(" ", "")) for _, v in split_leaves(tree)):
        return "mnist"
    return None


def selects_on_evaluation(tree: dict) -> bool:
    """Whether a training run keeps ``best.pt`` by its per-epoch evaluation (the trainer's default)."""
    trainer = tree.get("trainer")
    return isinstance(trainer, dict) and trainer.get("save_best", True) is not False


def violations(label: str, stage: str | None, tree: dict) -> list[str]:
    """What the run ``label`` reads of the reported split where it must not."""
    dataset = dataset_of(tree)
    if dataset is None:
        return []
    found = []
    reported = split_scheme(dataset).reported
    leaves = list(split_leaves(tree))
    chooses_on_its_own_split = any(k.rsplit(".", 1)[-1] in SELECTION_KEYS for k, _ in leaves)
    choosing = stage is not None and CHOOSING_STAGE.search(stage)
    for key, value in leaves:
        if "${" in value or not is_reported_split(dataset, value):
            continue
        parts = key.split(".")
        leaf = parts[-1]
        evaluation = leaf in EVALUATION_KEYS or (len(parts) > 1 and parts[-2] in EVALUATION_SECTIONS)
        if choosing and not (evaluation and chooses_on_its_own_split):
            found.append(f"{label}: {key}={value} reads the reported split {reported} in a stage that chooses")
        elif not evaluation:
            found.append(f"{label}: {key}={value} trains or validates on the reported split {reported}")
        elif selects_on_evaluation(tree):
            found.append(f"{label}: {key}={value} is the reported split {reported} and the trainer keeps best.pt by it "
                         "(set trainer.save_best: false, or evaluate on the validation split)")
    # a training run that names no evaluation split evaluates on the dataset's default test split (the reported one)
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    if (dataset != "mnist" and not any(k.rsplit(".", 1)[-1] in EVALUATION_KEYS for k, _ in split_leaves(data))
            and tree.get("recipe") in {"classify", "segment", None} and selects_on_evaluation(tree)):
        found.append(f"{label}: evaluates each epoch on {dataset}'s reported split '{reported}' (its default) and the "
                     "trainer keeps best.pt by it: set trainer.save_best: false (the run reports its last epoch)")
    return found


def test_the_configs_are_found():
    names = {p.relative_to(CONFIGS).as_posix() for p in shipped_configs()}
    assert {"vida/mnist_c_source.yaml", "pointramba/modelnet10_small.yaml", "hello/mnist.yaml"} <= names


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_no_config_selects_or_tunes_on_a_reported_split(path):
    found = [v for label, stage, tree in runs_of(path) for v in violations(label, stage, tree)]
    assert not found, "\n".join(found)


def test_the_check_catches_selection_and_tuning_on_the_reported_split():
    """The rules themselves: selection by best.pt on test[8000:], training on it, a sweep evaluating on it, and a
    point-cloud config that evaluates on its (default) test split while keeping best.pt."""
    picks_best = {"recipe": "classify", "data": {"name": "mnist", "train_split": "test[:7000]",
                                                 "eval_split": "test[8000:]"}, "trainer": {"epochs": 2}}
    assert violations("a", None, picks_best)
    assert not violations("a", None, {**picks_best, "trainer": {"epochs": 2, "save_best": False}})
    assert not violations("a", None, {**picks_best, "data": {**picks_best["data"], "eval_split": "test[7000:8000]"}})
    assert violations("a", None, {"data": {"name": "mnist", "train_split": "test[5000:9000]"}})
    assert violations("a", "lr_sweep", {"data": {"name": "mnist", "eval_split": "test[-2000:]"}})
    assert not violations("a", "report", {"data": {"name": "mnist", "eval_split": "test[-2000:]"}})
    search = {"data": {"name": "mnist", "search_split": "test[7000:8000]", "eval_split": "test[8000:]"}}
    assert not violations("a", "search", search)   # chooses on search_split, reports on eval_split
    assert violations("a", "search", {"data": {**search["data"], "search_split": "test[8000:9000]"}})
    point_clouds = {"recipe": "classify", "data": {"name": "modelnet10"}, "trainer": {"epochs": 3}}
    assert violations("a", None, point_clouds)
    assert not violations("a", None, {**point_clouds, "trainer": {"epochs": 3, "save_best": False}})
