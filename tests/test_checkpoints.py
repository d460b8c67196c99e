"""Shipped weights: manifest <-> default_cfgs agreement, sha256, size limits, and that each file loads strictly.

Manifest entries are of three kinds: a registered model's weights file (``name`` = the model, its default_cfgs
agree), ``kind: weights`` (a file for an architecture given as ``model`` + ``model_kwargs``, e.g. the digit
classifier of the generation metrics) and ``kind: diffusers`` (a pipeline folder, every file with its sha256).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import zoo
from zoo.hub import CHECKPOINT_DIR, sha256sum
from zoo.registry import get_pretrained_cfg
from zoo.resources import checkpoint_dirs

ALL_ENTRIES = yaml.safe_load((CHECKPOINT_DIR / "manifest.yaml").read_text()) or []
MANIFEST = [e for e in ALL_ENTRIES if "kind" not in e]  # registered models' weights
WEIGHTS = [e for e in ALL_ENTRIES if e.get("kind") == "weights"]
PIPELINES = [e for e in ALL_ENTRIES if e.get("kind") == "diffusers"]
MB = 1 << 20


def test_checkpoint_dir_is_the_shipped_folder(repo_root):
    """In this checkout the shipped weights are the repo's checkpoints/ (a wheel: tests/test_packaging.py)."""
    assert checkpoint_dirs() == [repo_root / "checkpoints"] and CHECKPOINT_DIR == repo_root / "checkpoints"


def test_manifest_entries_match_files_and_cfgs():
    total = 0
    for entry in MANIFEST:
        path = CHECKPOINT_DIR / entry["file"]
        assert path.is_file(), f"{entry['name']}: {path} missing"
        size = path.stat().st_size
        assert size <= 25 * MB, f"{path.name} is {size / MB:.1f} MB (limit 25 MB)"
        total += size
        assert sha256sum(path) == entry["sha256"], f"{path.name}: sha256 differs from the manifest"
        cfg = get_pretrained_cfg(entry["name"])
        assert cfg.file == entry["file"] and cfg.sha256 == entry["sha256"], f"{entry['name']}: default_cfgs disagree with the manifest"
        for key in ("metrics", "train_command", "eval_command"):
            assert entry.get(key), f"{entry['name']}: manifest entry needs '{key}'"
        for key in ("frame", "normalization"):  # point clouds: the frame / normalisation the weights were trained in
            assert entry.get(key) == getattr(cfg, key), f"{entry['name']}: manifest and default_cfgs disagree on {key}"
    for entry in WEIGHTS:
        path = CHECKPOINT_DIR / entry["file"]
        assert path.is_file() and path.stat().st_size <= 25 * MB, f"{entry['name']}: {path} missing or > 25 MB"
        assert sha256sum(path) == entry["sha256"], f"{path.name}: sha256 differs from the manifest"
        total += path.stat().st_size
    for entry in PIPELINES:
        folder = CHECKPOINT_DIR / entry["folder"]
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert files == set(entry["files"]), f"{entry['name']}: files in {folder} and the manifest differ"
        for rel, digest in entry["files"].items():
            size = (folder / rel).stat().st_size
            assert size <= 25 * MB, f"{rel} is {size / MB:.1f} MB (limit 25 MB)"
            assert sha256sum(folder / rel) == digest, f"{entry['name']}/{rel}: sha256 differs from the manifest"
            total += size
    for entry in WEIGHTS + PIPELINES:
        for key in ("metrics", "train_command", "eval_command"):
            assert entry.get(key), f"{entry['name']}: manifest entry needs '{key}'"
    assert total <= 150 * MB


def test_every_shipped_cfg_is_in_manifest():
    listed = {e["name"] for e in MANIFEST}
    for name in zoo.list_models(pretrained=True):
        cfg = get_pretrained_cfg(name)
        if cfg.file and (CHECKPOINT_DIR / cfg.file).exists():
            assert name in listed, f"{name} ships {cfg.file} but is not in checkpoints/manifest.yaml"
    files = {p.name for p in Path(CHECKPOINT_DIR).glob("*.safetensors")}
    assert files == {e["file"] for e in MANIFEST + WEIGHTS}, "files in checkpoints/ and the manifest differ"
    folders = {p.name for p in Path(CHECKPOINT_DIR).iterdir() if p.is_dir() and (p / "model_index.json").is_file()}
    assert folders == {e["folder"] for e in PIPELINES}, "pipeline folders in checkpoints/ and the manifest differ"


@pytest.mark.parametrize("entry", WEIGHTS or [pytest.param(None, marks=pytest.mark.skip("no kind: weights entries"))],
                         ids=lambda e: e["name"] if e else "none")
def test_weights_entries_load_strictly(entry):
    model = zoo.create_model(entry["model"], checkpoint_path=str(CHECKPOINT_DIR / entry["file"]),
                             **entry.get("model_kwargs", {}))
    assert model.num_classes == entry.get("model_kwargs", {}).get("num_classes", model.num_classes)


@pytest.mark.parametrize("name", [e["name"] for e in MANIFEST] or [pytest.param("none", marks=pytest.mark.skip("no shipped weights yet"))])
def test_pretrained_loads_strictly(name):
    model = zoo.create_model(name, pretrained=True)
    assert model.pretrained_cfg.sha256
