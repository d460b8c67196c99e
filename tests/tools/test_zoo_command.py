"""The one ``zoo`` command: subcommands dispatch to the package's code (``python -m zoo``, the console script of a
wheel), ``tools/*.py`` are shims over the same functions, ``zoo list`` / ``zoo config show`` make the zoo
discoverable, and printed hints name the command the user ran."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def zoo(*args, cwd=REPO, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m zoo ARGS`` in a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_every_subcommand_is_a_package_function_and_has_help():
    from zoo.cli.main import COMMANDS, _load

    for name, (target, summary) in COMMANDS.items():
        fn = _load(target)
        assert callable(fn) and summary, name
        assert target.startswith("zoo."), f"{name}: the wheel has no tools/, so the code must live in the package"
        with pytest.raises(SystemExit) as exit_info:
            fn(["--help"])
        assert exit_info.value.code == 0


def test_console_scripts_in_pyproject():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["zoo"] == "zoo.cli:main"
    assert scripts["zoo-train"] == "zoo.cli:train_main" and scripts["zoo-eval"] == "zoo.cli:eval_main"


def test_no_arguments_prints_the_commands_and_unknown_command_is_one_error_line():
    bare = zoo()
    assert bare.returncode == 2 and "train" in bare.stderr and "config" in bare.stderr
    assert zoo("--help").returncode == 0
    wrong = zoo("trian")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: unknown command 'trian'")
    assert "Did you mean: train" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1


def test_subcommand_help_names_the_zoo_command():
    proc = zoo("train", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m zoo train")
    assert "STAGE:key=value" in proc.stdout


def test_list_models_pretrained_and_configs():
    from zoo.registry import list_models
    from zoo.resources import list_configs

    models = zoo("list", "models", "pointramba*")
    assert models.returncode == 0 and models.stdout.split() == list_models("pointramba*")
    pretrained = zoo("list", "pretrained")
    names = [line.split()[0] for line in pretrained.stdout.splitlines()]
    from zoo.registry import model_info

    shipped = {n for n in list_models(pretrained=True) if model_info(n)["module"].startswith("zoo.")}  # not test toys
    assert shipped <= set(names) and "tiny_t2i_mnist" in names
    assert "load_pretrained_pipeline('tiny_t2i_mnist') from zoo.diffusion" in pretrained.stdout
    configs = zoo("list", "configs")
    rows = dict(line.split(maxsplit=1) for line in configs.stdout.splitlines())
    assert list(rows) == sorted(rows) and set(rows) <= set(list_configs())  # (others may add configs meanwhile)
    assert rows["pointnet/synthetic_shapes"] == "classify" and rows["bignas/mnist_pipeline"] == "pipeline"
    none = zoo("list", "models", "no_such_model*")
    assert none.returncode == 1 and none.stderr.startswith("error: no models match")


@pytest.mark.parametrize("what, expected", [("recipes", "classify"), ("adapters", "lora"), ("tta", "tent"),
                                            ("datasets", "modelnet10")])
def test_list_registries(what, expected):
    proc = zoo("list", what)
    assert proc.returncode == 0 and expected in [line.split()[0] for line in proc.stdout.splitlines()]


def test_config_show_recipe_lists_every_key_with_default_and_doc():
    from zoo.config import schema_keys
    from zoo.recipes.base import get_recipe

    proc = zoo("config", "show", "classify")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[3:] if line and not line.startswith(" ")}
    keys = [k for k in schema_keys(get_recipe("classify").Config)]
    assert [k for k in keys if k not in rows] == []
    assert rows["trainer.epochs"].split()[1:4] == ["int", "10", "epoch"]  # type, default, doc from the comment
    assert "adapter:NAME" in proc.stdout  # where the adapter section's keys are


def test_config_show_adapter_tta_and_ambiguity():
    lora = zoo("config", "show", "adapter:lora")
    assert lora.returncode == 0 and "adapter.rank" in lora.stdout and "adapter.alpha" in lora.stdout
    tent = zoo("config", "show", "tta:tent")
    assert tent.returncode == 0 and "tta.lr" in tent.stdout
    vida = zoo("config", "show", "vida")  # an adapter method and a tta algorithm
    assert vida.returncode == 2 and "adapter:vida" in vida.stderr and "tta:vida" in vida.stderr


def test_config_show_file_merges_bases_and_overrides_and_all_fills_defaults():
    proc = zoo("config", "show", "pointnet/synthetic_shapes", "optim.lr=0.5")
    assert proc.returncode == 0 and "lr: 0.5" in proc.stdout and "recipe: classify" in proc.stdout
    assert "max_steps_per_epoch" not in proc.stdout  # only what the files set
    every = zoo("config", "show", "pointnet/synthetic_shapes", "--all")
    assert every.returncode == 0 and "max_steps_per_epoch: null" in every.stdout


def test_config_show_unknown_name_is_one_error_line_with_close_names():
    proc = zoo("config", "show", "clasify")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "recipe:classify" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_shims_run_the_same_code():
    for script, needle in (("train.py", "STAGE:key=value"), ("eval.py", "--pretrained"), ("export.py", "--child"),
                           ("export_weights.py", "--pipeline"), ("make_corrupted.py", "--severities"),
                           ("report.py", "--update"), ("prepare_data.py", "shapenetpart-synthetic"),
                           ("sample.py", "--adapter")):
        proc = subprocess.run([sys.executable, f"tools/{script}", "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and needle in proc.stdout, (script, proc.stderr[-1000:])
        text = (REPO / "tools" / script).read_text()
        assert len(text.splitlines()) < 25 and "from zoo." in text, f"tools/{script} must stay a thin shim"


def test_printed_commands_name_the_launcher(tmp_path):
    """A refusal printed by ``zoo train`` suggests ``zoo train ...`` commands (a wheel user has no tools/)."""
    config = REPO / "configs" / "pointnet" / "synthetic_shapes.yaml"
    out = tmp_path / "run"
    (out).mkdir()
    (out / "metrics.json").write_text('{"final": {"top1": 1.0}, "complete": true}')
    proc = zoo("train", config, "--output", out)
    assert proc.returncode == 2 and f"python -m zoo train {config}" in proc.stderr
    assert "tools/train.py" not in proc.stderr
    tools = subprocess.run([sys.executable, "tools/train.py", str(config), "--output", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert tools.returncode == 2 and f"python tools/train.py {config}" in tools.stderr


@pytest.mark.slow
def test_wheel_installs_the_zoo_command_and_it_trains_from_another_folder(tmp_path):
    """``pip install`` of the wheel: the ``zoo`` console script lists, shows and trains with packaged configs from a
    folder that is not the checkout (no tools/ there)."""
    src, wheels, target, elsewhere = tmp_path / "src", tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", "tests", "*.pyc"))
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    for cmd in ([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(src)],):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = wheels.glob("zoo-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        members = set(zf.namelist())
        entry_points = next(zf.read(m).decode() for m in members if m.endswith("entry_points.txt"))
    assert "zoo = zoo.cli:main" in entry_points and "zoo/cli/main.py" in members and "zoo/__main__.py" in members
    proc = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = target / "bin" / "zoo"
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_HOME", "PYTHONPATH")} | {
        "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}

    def run(*args):
        return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=elsewhere, capture_output=True,
                              text=True, env=env, timeout=600)

    listing = run("list", "configs", "pointnet/*")
    assert listing.returncode == 0 and "pointnet/synthetic_shapes" in listing.stdout, listing.stderr[-2000:]
    shown = run("config", "show", "pointnet/synthetic_shapes")
    assert str(target / "zoo" / "_configs") in shown.stdout
    train = run("train", "pointnet/synthetic_shapes", "model.name=pointnet_tiny", "trainer.epochs=1",
                "data.kwargs.samples_per_class=4", "data.kwargs.num_points=64", "trainer.tensorboard=false",
                "--output", "runs/w")
    assert train.returncode == 0, train.stderr[-3000:]
    assert "final: top1=" in train.stdout and (elsewhere / "runs" / "w" / "metrics.json").is_file()
    again = run("train", "pointnet/synthetic_shapes", "--output", "runs/w")
    assert again.returncode == 2 and "zoo train pointnet/synthetic_shapes" in again.stderr


def test_export_weights_prints_the_cfg_fields_of_the_written_file(tmp_path, capsys):
    """zoo export-weights: the file (named after ARCH.TAG) and the cfg fields to paste (file, sha256, the run's
    metrics), which then load the same weights."""
    import json

    import torch

    import toys  # noqa: F401  (toy_mlp)
    from zoo.cli.export_weights import main
    from zoo.hub import sha256sum
    from zoo.registry import create_model

    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = create_model("toy_mlp")
    torch.save({"model": model.state_dict(), "epoch": 2}, run / "best.pt")
    (run / "metrics.json").write_text(json.dumps({"best": {"metric": "top1", "value": 91.25, "epoch": 2},
                                                  "final": {"top1": 90.0}, "train_time_s": 12.5}))
    assert main([str(run / "best.pt"), "--name", "toy_mlp.blobs", "--out-dir", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    written = tmp_path / "ckpt" / "toy_mlp_blobs.safetensors"
    assert f"sha256='{sha256sum(written)}'" in out and "file='toy_mlp_blobs.safetensors'" in out
    assert "metrics={'top1': 91.25}" in out and "train_time_s=12.5" in out and "zoo manifest" in out
    again = create_model("toy_mlp", checkpoint_path=str(written))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert main([str(tmp_path / "nope.pt"), "--name", "x.y", "--out-dir", str(tmp_path / "ckpt")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]   # after the INFO line of the create_model above
    assert last.startswith("error:") and "nope.pt" in last
