"""Shipped weights: ``checkpoints/manifest.yaml`` is exactly what the pretrained cfgs generate (one source of truth),
every shipped file matches its cfg's sha256 and the size limits, nothing unlisted is shipped, and each set of
weights loads strictly under its tagged name and its aliases."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import zoo
from zoo.hub import CHECKPOINT_DIR, sha256sum
from zoo.manifest import check_manifest, manifest_entries, render_manifest
from zoo.pretrained_cfg import pipeline_cfgs
from zoo.registry import get_pretrained_cfg, list_pipelines
from zoo.resources import checkpoint_dirs

ALL_ENTRIES = yaml.safe_load((CHECKPOINT_DIR / "manifest.yaml").read_text()) or []
MODELS = [e for e in ALL_ENTRIES if "kind" not in e]  # tagged model weights
PIPELINES = [e for e in ALL_ENTRIES if e.get("kind") == "diffusers"]
MB = 1 << 20


def test_checkpoint_dir_is_the_shipped_folder(repo_root):
    """In this checkout the shipped weights are the repo's checkpoints/ (a wheel: tests/test_packaging.py)."""
    assert checkpoint_dirs() == [repo_root / "checkpoints"] and CHECKPOINT_DIR == repo_root / "checkpoints"


def test_manifest_is_generated_from_the_cfgs():
    """Edit a model's default_cfgs (or a pipeline's cfg), then run `zoo manifest`: a hand edit fails here."""
    diff = check_manifest(CHECKPOINT_DIR / "manifest.yaml")
    assert not diff, "checkpoints/manifest.yaml differs from the pretrained cfgs; run `zoo manifest`:\n" + "\n".join(
        diff[:60])


def test_check_manifest_notices_a_hand_edit(tmp_path):
    edited = tmp_path / "manifest.yaml"
    edited.write_text(render_manifest().replace("top1: 91.08", "top1: 92.0"))
    diff = check_manifest(edited)
    assert any(line.startswith("-") and "92.0" in line for line in diff)
    assert any(line.startswith("+") and "91.08" in line for line in diff)
    assert check_manifest(tmp_path / "absent.yaml")  # a missing manifest differs too


def test_manifest_cli_writes_and_checks(tmp_path, capsys):
    from zoo.manifest import main

    path = tmp_path / "manifest.yaml"
    assert main(["--check", "--path", str(path)]) == 1
    assert main(["--path", str(path)]) == 0 and path.read_text() == render_manifest()
    assert main(["--check", "--path", str(path)]) == 0 and "up to date" in capsys.readouterr().out


def test_every_shipped_file_matches_its_cfg():
    total = 0
    for entry in MODELS:
        cfg = get_pretrained_cfg(entry["name"])
        path = CHECKPOINT_DIR / cfg.file
        assert path.is_file(), f"{entry['name']}: {path} missing"
        size = path.stat().st_size
        assert size <= 25 * MB, f"{path.name} is {size / MB:.1f} MB (limit 25 MB)"
        total += size
        assert sha256sum(path) == cfg.sha256, f"{path.name}: sha256 differs from {entry['name']}'s cfg"
        for key in ("metrics", "train_command", "eval_command"):
            assert getattr(cfg, key), f"{entry['name']}: its cfg needs '{key}'"
    for name in list_pipelines():
        cfg = pipeline_cfgs()[name]
        folder = CHECKPOINT_DIR / cfg.folder
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert files == set(cfg.files), f"{name}: files in {folder} and its cfg differ"
        for rel, digest in cfg.files.items():
            size = (folder / rel).stat().st_size
            assert size <= 25 * MB, f"{rel} is {size / MB:.1f} MB (limit 25 MB)"
            assert sha256sum(folder / rel) == digest, f"{name}/{rel}: sha256 differs from its cfg"
            total += size
        for key in ("metrics", "train_command", "eval_command"):
            assert getattr(cfg, key), f"{name}: its cfg needs '{key}'"
    assert total <= 150 * MB


def test_nothing_shipped_is_missing_from_the_manifest():
    files = {p.name for p in Path(CHECKPOINT_DIR).glob("*.safetensors")}
    assert files == {e["file"] for e in MODELS}, "weights files in checkpoints/ without a cfg (or the reverse)"
    folders = {p.name for p in Path(CHECKPOINT_DIR).iterdir() if p.is_dir() and (p / "model_index.json").is_file()}
    assert folders == {e["folder"] for e in PIPELINES}, "pipeline folders in checkpoints/ and the cfgs differ"
    assert [e["name"] for e in manifest_entries()] == [e["name"] for e in ALL_ENTRIES]


@pytest.mark.parametrize("entry", MODELS or [pytest.param(None, marks=pytest.mark.skip("no shipped weights yet"))],
                         ids=lambda e: e["name"] if e else "none")
def test_pretrained_loads_strictly_under_its_tag_and_aliases(entry):
    import torch

    model = zoo.create_model(entry["name"], pretrained=True)
    assert model.pretrained_cfg.sha256 == entry["sha256"] and "." in entry["name"]
    for alias in entry.get("aliases", []):
        other = zoo.create_model(alias, pretrained=True)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("entry", ALL_ENTRIES, ids=lambda e: e["name"])
def test_the_readme_models_table_states_each_shipped_cfgs_metrics(repo_root, entry):
    """The README's Models table names each shipped set of weights by its tag and quotes the metrics of its cfg, so a
    re-shipped model cannot leave an old number in the table."""
    readme = (repo_root / "README.md").read_text()
    table = readme[readme.index("## Models"):readme.index("## Systems")]
    row = next((line for line in table.splitlines() if line.startswith(f"| `{entry['name']}`")), None)
    assert row is not None, f"README.md's Models table has no row starting with `{entry['name']}`"
    shown = {"top1", "mean_class_acc", "prompt_fidelity", "vae_psnr_db"}
    for key, value in entry["metrics"].items():
        if key in shown:
            assert f"{value:g}" in row, f"README Models row of {entry['name']} lacks {key} = {value:g}: {row}"
