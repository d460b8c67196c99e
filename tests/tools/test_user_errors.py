"""Every user error of the command line is one ``error:`` line that names the option, key or file and a fix that
works (issue 28's cases), and a run that fails to start leaves no run directory behind."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import toys

REPO = Path(__file__).resolve().parents[2]
TOY_CLI = REPO / "tests" / "engine" / "toy_cli.py"
SUPERNET = str(REPO / "configs" / "bignas" / "mnist_supernet.yaml")


def _error_line(stderr: str) -> str:
    """The ``error:`` line of a failed command (there must be exactly one, and no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------------------ zoo export
def _export(capsys, *args) -> tuple[int, str]:
    from zoo.cli.export import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_export_arch_missing_keys_names_all_seven_and_a_working_example(capsys, tmp_path):
    import zoo

    code, err = _export(capsys, "--config", SUPERNET, "--checkpoint", tmp_path / "last.pt", "--output", tmp_path / "c",
                        "--arch", '{"resolution": 24, "stem": 8}')
    line = _error_line(err)
    assert code == 2 and line.startswith("error: --arch: missing key(s) widths, depths, kernels, expands, head")
    assert "all 7 keys" in line
    example = json.loads(line.split("--arch '", 1)[1].split("'", 1)[0])
    net = zoo.create_model("bignas_mnist")
    assert net.validate_arch(example) == example  # the suggested --arch is a valid child
    assert not (tmp_path / "c").exists()


def test_export_child_that_does_not_exist(capsys, tmp_path):
    code, err = _export(capsys, "--child", tmp_path / "runs" / "nonexistent", "--onnx")
    line = _error_line(err)
    assert code == 2 and f"--child {tmp_path / 'runs' / 'nonexistent'}: no such folder" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _export(capsys, "--child", empty)
    assert code == 2 and "has no config.json / model.safetensors" in _error_line(err)


@pytest.mark.parametrize("where", ["proc", "under_a_file"])
def test_export_unwritable_output_names_the_option(capsys, tmp_path, where):
    if where == "proc" and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    (tmp_path / "a_file").write_text("x")
    output = Path("/proc/zoo_out") if where == "proc" else tmp_path / "a_file" / "out"
    code, err = _export(capsys, "--config", SUPERNET, "--checkpoint", tmp_path / "last.pt", "--output", output,
                        "--arch", "min")
    line = _error_line(err)
    assert code == 2 and line.startswith(f"error: --output {output}: cannot write there") and "give a folder" in line


def test_check_output_dir_leaves_no_folder_behind(tmp_path):
    from zoo.cli.export import check_output_dir

    check_output_dir(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_is_quiet(tmp_path, recwarn):
    pytest.importorskip("onnx")
    import warnings

    import zoo
    from zoo.cli.export import export_onnx
    from zoo.models.bignas import load_child, save_child

    net = zoo.create_model("bignas_mnist")
    save_child(net.export_subnet(net.min_subnet()), tmp_path)
    warnings.simplefilter("always")
    export_onnx(load_child(tmp_path), tmp_path / "model.onnx", check=False)
    shown = [f"{w.category.__name__}: {w.message}" for w in recwarn.list]
    assert not [s for s in shown if "Tracer" in s or "TorchScript" in s or "onnx" in s.lower()], shown
    assert (tmp_path / "model.onnx").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ missing extras
def test_missing_diffusers_names_the_wheel_extra(monkeypatch):
    from zoo.diffusion.pipeline import require_diffusers
    from zoo.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(MissingDependencyError) as err:
        require_diffusers()
    assert "pip install 'zoo[diffusion]'" in str(err.value) and "-e ." not in str(err.value)


def test_missing_transformers_for_clip_is_a_user_error(monkeypatch, tmp_path):
    from zoo.errors import USER_ERRORS
    from zoo.metrics.clip_sim import CLIPScorer

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(USER_ERRORS) as err:
        CLIPScorer.from_pretrained(tmp_path)
    assert "pip install 'zoo[diffusion]'" in str(err.value)


# ------------------------------------------------------------------------------------------------ data keys
def _write_images(folder: Path, n: int = 3) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((24, 20, 3), 40 * i + 10, np.uint8)).save(folder / f"img{i}.png")
    return folder


def _train(*args, cwd=REPO, script=REPO / "tools" / "train.py", timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_missing_colora_training_images_are_reported_under_data_train_root(tmp_path):
    out = tmp_path / "run"
    proc = _train("configs/colora/pretrain_prod.yaml", f"data.train.root=[{tmp_path / 'nowhere'}]", "--output", out)
    line = _error_line(proc.stderr)
    assert proc.returncode == 2 and str(tmp_path / "nowhere") in line and "(config key data.train.root)" in line
    assert not out.exists()


def test_missing_colora_eval_images_are_reported_under_data_eval_root(tmp_path):
    from zoo.cli import build_recipe

    images = _write_images(tmp_path / "imgs")
    recipe, _, _ = build_recipe(str(REPO / "configs" / "colora" / "pretrain_prod.yaml"),
                                [f"data.train.root=[{images}]", f"data.eval.root=[{tmp_path / 'gone'}]"])
    assert len(recipe.train_dataset) > 0
    with pytest.raises(FileNotFoundError, match=r"config key data\.eval\.root"):
        recipe.eval_dataset


def test_worker_wrapped_error_prints_the_original_message():
    from zoo.cli._common import one_line

    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise DataError(...)\n'
               "zoo.errors.DataError: cannot read image /d/bad.png: cannot identify image file; replace or remove it\n")
    assert one_line(RuntimeError(wrapped)) == "cannot read image /d/bad.png: cannot identify image file; replace or " \
                                              "remove it"
    assert one_line(ValueError("plain message")) == "plain message"


# ------------------------------------------------------------------------------------------------ run folders
@pytest.fixture
def toy_configs(tmp_path):
    (tmp_path / "toy.yaml").write_text(toys.TOY_CONFIG)
    (tmp_path / "other.yaml").write_text("_base_: [toy.yaml]\nmodel:\n  name: toy_mlp\n  checkpoint_path: ???\n"
                                         "optim: {lr: 0.01}\n")
    return tmp_path


def _suggested(stderr: str, label: str | None = None) -> list[str]:
    """The command a refusal suggests (after ``label``, or the only one), as argv for the toy command line."""
    lines = stderr.strip().splitlines()
    index = next(i for i, line in enumerate(lines) if label in line) + 1 if label else len(lines) - 1
    argv = shlex.split(lines[index].strip())
    assert argv[:2] == ["python", "tools/train.py"], lines[index]
    return argv[2:]


def test_refusal_over_another_runs_folder_suggests_only_a_new_folder_and_it_works(toy_configs):
    """The ViDA README case: --output is the folder of the source run this run reads its weights from."""
    out = toy_configs / "source"
    assert _train("toy.yaml", "trainer.epochs=1", "--output", out, cwd=toy_configs, script=TOY_CLI).returncode == 0
    proc = _train("other.yaml", f"model.checkpoint_path={out}/best.pt", "--output", out, cwd=toy_configs,
                  script=TOY_CLI)
    line = _error_line(proc.stderr)
    assert proc.returncode == 2 and "this config cannot continue it" in line and "optim.lr" in line
    assert "--resume" not in proc.stderr and "--overwrite" not in proc.stderr  # neither would work
    argv = _suggested(proc.stderr)
    assert argv[-2:] == ["--output", f"{out}_2"]
    ok = _train(*argv, cwd=toy_configs, script=TOY_CLI)
    assert ok.returncode == 0, ok.stderr[-2000:]
    overwrite = _train("other.yaml", f"model.checkpoint_path={out}/best.pt", "--output", out, "--overwrite",
                       cwd=toy_configs, script=TOY_CLI)
    assert overwrite.returncode == 2 and "reads model.checkpoint_path" in _error_line(overwrite.stderr)
    assert (out / "best.pt").is_file()


def test_refusal_suggests_resume_when_it_works_and_the_command_does(toy_configs):
    out = toy_configs / "run"
    assert _train("toy.yaml", "trainer.epochs=1", "--output", out, cwd=toy_configs, script=TOY_CLI).returncode == 0
    proc = _train("toy.yaml", "trainer.epochs=2", "--output", out, cwd=toy_configs, script=TOY_CLI)
    assert proc.returncode == 2 and _error_line(proc.stderr)
    argv = _suggested(proc.stderr, "continue it")
    assert argv[-1] == "--resume"
    resumed = _train(*argv, cwd=toy_configs, script=TOY_CLI)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_failed_start_leaves_no_run_dir(toy_configs):
    out = toy_configs / "bad"
    proc = _train("toy.yaml", "data.name=mnist", f"data.root={toy_configs / 'no_mnist'}", "data.kwargs={}",
                  "--output", out, cwd=toy_configs, script=TOY_CLI)
    assert proc.returncode == 2 and _error_line(proc.stderr) and "no_mnist" in proc.stderr and not out.exists()


@pytest.mark.parametrize("case, kept", [("config only", False), ("tensorboard opened", False), ("a logged step", True),
                                        ("a study's own file", True), ("existed before", True), ("ctrl-c", True),
                                        ("finished", True)])
def test_run_dir_guard_removes_only_what_a_failed_start_made(tmp_path, case, kept):
    from zoo.cli._runs import RunDirGuard

    out = tmp_path / "run"
    if case == "existed before":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    error = KeyboardInterrupt if case == "ctrl-c" else RuntimeError
    try:
        with RunDirGuard(out):
            out.mkdir(exist_ok=True)
            (out / "config.yaml").write_text("recipe: classify\n")
            if case == "a logged step":
                (out / "metrics.csv").write_text("epoch,step\n1,6\n")
            if case == "tensorboard opened":
                (out / "tb").mkdir()
                (out / "tb" / "events.out.tfevents.1.host").write_bytes(b"")
            if case == "a study's own file":
                (out / "search").mkdir()
                (out / "search" / "latency_table.json").write_text("{}")
            if case != "finished":
                raise error("boom")
    except (RuntimeError, KeyboardInterrupt):
        pass
    assert out.exists() == kept


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from zoo.diffusion.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd") / "pipe")


@pytest.mark.parametrize("workers", [0, 1])
def test_sara_run_over_a_corrupt_image_leaves_no_run_dir(tiny_sd, tmp_path, workers):
    style = _write_images(tmp_path / "style", 4)
    (style / "img9.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    proc = _train("configs/sara/tiny.yaml", f"model.pretrained={tiny_sd}", f"data.root={style}",
                  f"data.num_workers={workers}", "--output", out)
    line = _error_line(proc.stderr)
    assert proc.returncode == 2 and f"cannot read image {style / 'img9.png'}" in line and "replace or remove" in line
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ torchrun
@pytest.mark.ddp
def test_only_rank_zero_prints_the_final_lines(toy_configs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(TOY_CLI), "toy.yaml", "trainer.epochs=1", "--output", "ddp"], cwd=toy_configs,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final: top1=") == 1 and proc.stdout.count("run directory: ddp") == 1, proc.stdout
    assert torch.load(toy_configs / "ddp" / "last.pt", weights_only=True)["epoch"] == 1


def test_refusal_inside_a_pipeline_suggests_the_pipeline_command(toy_configs):
    """A stage that holds an interrupted run: the refusal suggests continuing the pipeline (which works), not the
    stage's own config with unresolved ${stage:...} references."""
    (toy_configs / "refine.yaml").write_text("_base_: [toy.yaml]\nmodel:\n  name: toy_mlp\n  checkpoint_path: ???\n")
    pipe = toy_configs / "pipe.yaml"
    pipe.write_text("pipeline:\n  - {name: train, config: toy.yaml}\n  - name: refine\n    config: refine.yaml\n"
                    "    overrides: {model.checkpoint_path: '${stage:train}/last.pt'}\n")
    out = toy_configs / "p"
    assert _train(pipe, "trainer.epochs=1", "--output", out, cwd=toy_configs, script=TOY_CLI).returncode == 0
    (out / "refine" / "metrics.json").unlink()  # as if interrupted after its last save
    proc = _train(pipe, "trainer.epochs=1", "--output", out, cwd=toy_configs, script=TOY_CLI)
    assert proc.returncode == 2 and "already holds an unfinished run" in _error_line(proc.stderr)
    assert "${stage:" not in proc.stderr and "--overwrite" not in proc.stderr  # would delete the whole pipeline
    argv = _suggested(proc.stderr, "continue it")
    assert argv[0] == str(pipe) and argv[-1] == "--resume"
    resumed = _train(*argv, cwd=toy_configs, script=TOY_CLI)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["complete"]
