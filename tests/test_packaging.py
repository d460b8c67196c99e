"""Packaging: shipped weights and configs travel in the wheel; ``zoo.resources`` finds them in a wheel install, an
editable install and a checkout; ``find_config`` resolves packaged names; one data-root resolver.

The install tests build from a copy of the source tree (so that no ``build/`` or ``*.egg-info`` lands in the
checkout and no stale ``build/lib`` leaks into the wheel), offline (``--no-build-isolation --no-index``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from zoo.config import load_config
from zoo.resources import checkpoint_dirs, config_dirs, find_config, list_configs, source_checkout

REPO = Path(__file__).resolve().parents[1]
_COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                      ".pytest_cache", "work_dirs", "output", "tests", "*.pyc")
_PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]

# Run in the installed copy from an empty folder: report where everything came from as JSON on stdout.
_PROBE = r"""
import json, sys
import zoo
from zoo.config import load_config
from zoo.data.paths import data_dir
from zoo.data.pointcloud._common import default_data_root
from zoo.hub import resolve_weights_file
from zoo.resources import checkpoint_dirs, find_config, list_configs, source_checkout

loaded = {}
for name in zoo.list_models(pretrained=True):
    model = zoo.create_model(name, pretrained=True)
    loaded[name] = str(resolve_weights_file(model.pretrained_cfg))
path = find_config("pointramba/modelnet10_small")
cfg = load_config(path)
try:  # the shipped text-to-image pipeline (needs the [diffusion] extra)
    import diffusers  # noqa: F401
    from zoo.diffusion import load_pretrained_pipeline, pretrained_pipeline_dir
    pipe = load_pretrained_pipeline("tiny_t2i_mnist")
    pipeline = {"dir": str(pretrained_pipeline_dir("tiny_t2i_mnist")), "class": type(pipe).__name__}
except ImportError:
    pipeline = None
print(json.dumps({
    "pipeline": pipeline,
    "zoo": zoo.__file__, "checkout": str(source_checkout()), "checkpoint_dirs": [str(d) for d in checkpoint_dirs()],
    "loaded": loaded, "config": str(path), "model": cfg.model.name, "clip": cfg.trainer.clip_grad_norm,
    "data_root_in_config": cfg.data.root, "data_dir": str(data_dir()), "default_data_root": str(default_data_root()),
    "configs": list_configs(),
}))
"""


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _source_copy(tmp: Path) -> Path:
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=_COPY_IGNORE)
    return src


def _probe(python: str, cwd: Path, **extra_env: str) -> dict:
    """Run ``_PROBE`` with ``python`` in ``cwd``, without $ZOO_HOME / $ZOO_DATA / $PYTHONPATH unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_HOME", "ZOO_DATA", "PYTHONPATH")} | extra_env
    proc = _run([python, "-c", _PROBE], cwd=cwd, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _shipped_files() -> tuple[set[str], set[str], set[str]]:
    """Relative paths of the checkout's python modules, configs and shipped weight files."""
    py = {p.relative_to(REPO).as_posix() for pkg in ("zoo", "cuda_ext") for p in (REPO / pkg).rglob("*.py")}
    configs = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    weights = {p.name for p in (REPO / "checkpoints").iterdir()
               if p.suffix == ".safetensors" or p.name == "manifest.yaml"}
    pipelines = [p for p in (REPO / "checkpoints").iterdir() if (p / "model_index.json").is_file()]
    weights |= {f.relative_to(REPO / "checkpoints").as_posix() for p in pipelines for f in p.rglob("*") if f.is_file()}
    return py, configs, weights


# ------------------------------------------------------------------------------------------------- checkout
def test_pyproject_lists_every_package():
    """pyproject.toml lists packages explicitly (two are mapped data folders); a new package must be added there."""
    from setuptools import find_packages

    cfg = _pyproject()["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set(find_packages(where=str(REPO), include=["zoo*", "cuda_ext*"]))
    missing = sorted(found - listed)
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {missing}"
    data = {"zoo._checkpoints": "checkpoints", "zoo._configs": "configs"}
    assert listed - found == set(data) and cfg["package-dir"] == data


def test_checkout_resources():
    assert source_checkout() == REPO
    assert checkpoint_dirs() == [REPO / "checkpoints"] and config_dirs() == [REPO / "configs"]
    names = list_configs()
    assert "pointramba/modelnet10_small" in names and "pointnet/synthetic_shapes" in names
    assert not any(n.startswith("_base_") for n in names)
    expected = {p.relative_to(REPO / "configs").with_suffix("").as_posix() for p in (REPO / "configs").rglob("*.yaml")
                if "_base_" not in p.parts}
    assert set(names) == expected


def test_find_config_existing_path_is_returned_as_is(tmp_path, monkeypatch):
    own = tmp_path / "mine.yaml"
    own.write_text("recipe: classify\n")
    assert find_config(own) == own and find_config(str(own)) == own
    monkeypatch.chdir(REPO)
    rel = "configs/pointnet/synthetic_shapes.yaml"
    assert find_config(rel) == Path(rel)  # relative stays relative


@pytest.mark.parametrize("name", ["pointramba/modelnet10_small", "pointramba/modelnet10_small.yaml",
                                  "configs/pointramba/modelnet10_small.yaml"])
def test_find_config_packaged_name(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the name must resolve to the packaged file
    path = find_config(name)
    assert path == REPO / "configs" / "pointramba" / "modelnet10_small.yaml"
    cfg = load_config(path)
    assert cfg.model.name == "pointramba_small" and cfg.trainer.clip_grad_norm == 10.0  # from its _base_ chain


def test_find_config_unknown_name_names_the_path_and_close_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        find_config("pointramba/modelnet10_smal")
    msg = str(err.value)
    assert "'pointramba/modelnet10_smal'" in msg
    assert str(REPO / "configs" / "pointramba" / "modelnet10_smal.yaml") in msg
    assert "Did you mean: pointramba/modelnet10_small" in msg


def test_one_data_root_resolver(tmp_path, monkeypatch):
    from zoo.data.paths import data_dir, data_root, default_data_dir
    from zoo.data.pointcloud._common import default_data_root

    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "absent"))
    assert data_dir("modelnet10") == tmp_path / "absent" / "modelnet10"
    assert default_data_root() == data_root() == tmp_path / "absent"  # a wrong $ZOO_DATA shows in errors
    monkeypatch.delenv("ZOO_DATA")
    assert default_data_dir() == REPO.parent / "shared" / "data"
    assert default_data_root() == data_root() == (default_data_dir() if default_data_dir().is_dir() else None)


# ------------------------------------------------------------------------------------------------- installs
def test_wheel_ships_weights_and_configs_and_loads_them_from_another_folder(tmp_path):
    """issue 13 item 5: ``pip install .`` (a wheel), then every pretrained model loads from another folder."""
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    src = _source_copy(tmp_path)
    _run([*_PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(src)], cwd=tmp_path)
    (wheel,) = wheels.glob("zoo-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        members = set(zf.namelist())
    py, configs, weights = _shipped_files()
    assert py - members == set(), "modules missing from the wheel"
    assert {f"zoo/_configs/{c}" for c in configs} - members == set(), "configs missing from the wheel"
    assert {f"zoo/_checkpoints/{w}" for w in weights} - members == set(), "weights missing from the wheel"
    assert not any(m.startswith(("checkpoints/", "configs/", "tests/")) for m in members)

    _run([*_PIP, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], cwd=tmp_path)
    out = _probe(sys.executable, elsewhere, PYTHONPATH=str(target))
    assert Path(out["zoo"]).is_relative_to(target), f"imported zoo from {out['zoo']}, not the installed wheel"
    assert out["checkout"] == "None"
    assert out["checkpoint_dirs"] == [str(target / "zoo" / "_checkpoints")]
    assert out["loaded"] and all(Path(p).is_relative_to(target) for p in out["loaded"].values()), out["loaded"]
    assert out["config"] == str(target / "zoo" / "_configs" / "pointramba" / "modelnet10_small.yaml")
    assert out["model"] == "pointramba_small" and out["clip"] == 10.0
    assert out["data_dir"] == str(elsewhere / "data")
    assert out["data_root_in_config"] == str(elsewhere / "data" / "modelnet10")
    assert out["default_data_root"] == "None"
    assert out["configs"] == list_configs()
    if out["pipeline"] is not None:  # diffusers installed: the shipped pipeline loads from the wheel
        assert out["pipeline"] == {"dir": str(target / "zoo" / "_checkpoints" / "tiny_t2i_mnist"),
                                   "class": "StableDiffusionPipeline"}


def test_editable_install_finds_the_checkouts_weights_and_configs(tmp_path):
    """``pip install -e .`` of a copy into a fresh venv: resources come from the copy's top-level folders."""
    src, venv, elsewhere = _source_copy(tmp_path), tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    venv_python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([str(venv_python), "-c", purelib]).stdout.strip())
    # torch & co. from this environment as plain path entries (its own .pth files, incl. our editable finder, not run)
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (site / "_parent_env.pth").write_text("\n".join(ours) + "\n")
    _run([*_PIP, "--python", str(venv_python), "install", "--no-deps", "--no-build-isolation", "--no-index",
          "-e", str(src)])
    out = _probe(str(venv_python), elsewhere)
    assert Path(out["zoo"]).is_relative_to(src), out["zoo"]
    assert out["checkout"] == str(src) and out["checkpoint_dirs"] == [str(src / "checkpoints")]
    assert out["loaded"] and all(Path(p).is_relative_to(src / "checkpoints") for p in out["loaded"].values())
    assert out["config"] == str(src / "configs" / "pointramba" / "modelnet10_small.yaml") and out["clip"] == 10.0
    assert out["data_dir"] == str(tmp_path / "shared" / "data")
