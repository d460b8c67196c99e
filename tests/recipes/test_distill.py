"""hello_distill: the nested stage recipes (students behind one interface, the rotation pre-training evaluated through
the one evaluation loop and gathered across processes), a tiny end-to-end run (storage report against the files
written, resume, nested in an outer run without disturbing it), start-from weights through model.checkpoint_path,
and config errors (unread and renamed keys name the recipe / the new key). The distillation parts are tested in
tests/distill, the projector in tests/adapters/test_hello.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distill.hello_toys import tiny_projector
from zoo.config import ConfigError
from zoo.distill.labels import generate_soft_labels
from zoo.distill.storage import load_image_set
from zoo.distill.students import StudentTeaching
from zoo.engine.checkpoint import read_checkpoint
from zoo.metrics.distill import storage_report
from zoo.recipes.distill import DistillDataConfig, RotationPretrainRecipe, StudentRecipe, _classify_cfg

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "hello"
REPO = Path(__file__).resolve().parents[2]


class FakeCtx:
    def __init__(self, epoch=0):
        self.epoch, self.step, self.batch_index, self.num_backward, self.logged = epoch, 0, 0, 0, {}
        self.losses = []

    def backward(self, loss):
        self.losses.append(float(loss.detach()))
        loss.backward()
        self.num_backward += 1

    def log(self, **kw):
        self.logged.update(kw)


# ---------------------------------------------------------------------------------------------- students
def _student(labels, images, targets, **kw):
    data = DistillDataConfig(name="mnist", root="unused")
    cfg = _classify_cfg({"name": "convnet_tiny", "num_classes": 10}, data, epochs=3, lr=1e-3, batch_size=8, seed=0)
    teaching = StudentTeaching(labels, len(images), 3, view_seed=11, **kw)
    return StudentRecipe(cfg, data, images, targets, teaching, classes=[str(i) for i in range(10)])


def test_student_steps_with_stored_and_projector_labels_give_the_same_gradients():
    g = torch.Generator().manual_seed(0)
    images, targets = torch.rand(12, 1, 28, 28, generator=g), torch.arange(12) % 10
    projector = tiny_projector()
    # "store" the projector's own labels: then stored and on-the-fly labels must give the same loss and gradients
    soft, views = generate_soft_labels(projector, images, 3, 11, dtype="float32")
    stored = _student("stored", images, targets, soft_labels=soft, views=views)
    online = _student("projector", images, targets, projector=projector)
    hard = _student("hard", images, targets)
    idx = torch.tensor([3, 0, 7, 11])
    batch = (images[idx], targets[idx], idx)
    results = {}
    for name, r in (("stored", stored), ("projector", online), ("hard", hard)):
        torch.manual_seed(5)
        model = r.build_model().train()
        ctx = FakeCtx(epoch=2)
        r.train_step(model, batch, ctx)
        results[name] = (ctx.losses[0], [p.grad.clone() for p in model.parameters()])
        assert ctx.num_backward == 1
    assert results["stored"][0] == pytest.approx(results["projector"][0], rel=1e-3, abs=1e-3)
    for a, b in zip(results["stored"][1], results["projector"][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert results["hard"][0] != pytest.approx(results["stored"][0], rel=1e-2)
    with pytest.raises(ValueError, match="teaching covers"):
        StudentRecipe(hard.cfg, hard.distill_data, images[:5], targets[:5], hard.teaching)


# ---------------------------------------------------------------------------------------------- rotation
def _rotation_recipe(root, eval_split="test[:37]", batch=8):
    data = DistillDataConfig(name="mnist", root=str(root), train_split="test[:16]", eval_split=eval_split,
                             eval_batch_size=batch)
    return RotationPretrainRecipe(_classify_cfg({"name": "convnet_tiny"}, data, epochs=1, lr=1e-3, batch_size=8,
                                                seed=0), data)


def test_rotation_pretraining_is_evaluated_over_every_rotation_of_every_image(tmp_path):
    from zoo.distill.rotation import rotation_hits
    from zoo.engine.evaluate import evaluate_model

    root = _write_mnist(tmp_path / "mnist", n=40)
    recipe = _rotation_recipe(root)
    torch.manual_seed(0)
    model = recipe.build_model().eval()
    got = evaluate_model(recipe, model, cpu=True)
    x = torch.stack([recipe.eval_dataset[i][0] for i in range(37)])
    hits = rotation_hits(model, x)
    assert got["top1"] == pytest.approx(100.0 * float(hits.sum()) / 37, abs=1e-9)
    assert set(got) == {"top1"}


_DDP_EVAL = r"""
import json, os, sys, torch
tests = os.environ["ZOO_TESTS"]
sys.path[:0] = [os.environ["ZOO_REPO"], tests, os.path.join(tests, "recipes")]
from test_distill import _rotation_recipe
from zoo.engine.evaluate import evaluate_model
torch.set_num_threads(1)
recipe = _rotation_recipe(sys.argv[1])
torch.manual_seed(0)
model = recipe.build_model().eval()
values = evaluate_model(recipe, model, cpu=True)
with open(os.path.join(sys.argv[2], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
    json.dump(values, f)
import torch.distributed as dist
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


@pytest.mark.ddp
def test_rotation_evaluation_on_two_processes_equals_one(tmp_path):
    """The rotation pre-training used to evaluate on one process only: now 2 gloo processes, each with half of 37
    images (an uneven last batch), report the same top-1 as one process."""
    from zoo.engine.evaluate import evaluate_model

    root = _write_mnist(tmp_path / "mnist", n=40)
    script = tmp_path / "worker.py"
    script.write_text(_DDP_EVAL)
    env = {**os.environ, "ZOO_REPO": str(REPO), "ZOO_TESTS": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(root), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    recipe = _rotation_recipe(root)
    torch.manual_seed(0)
    single = evaluate_model(recipe, recipe.build_model().eval(), cpu=True)
    assert ranks[0] == ranks[1]
    assert ranks[0]["top1"] == pytest.approx(single["top1"], abs=1e-9)


# ---------------------------------------------------------------------------------------------- end to end
def _write_mnist(root: Path, n: int = 120) -> Path:
    from zoo.data.images.mnist import write_idx

    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10
    imgs = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):  # a bright bar whose position is the class
        imgs[i, 2 * c:2 * c + 6, 4:24] = 230
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "t10k-images-idx3-ubyte", imgs)
    write_idx(root / "t10k-labels-idx1-ubyte", labels.astype(np.uint8))
    return root


def _tiny_overrides(root: Path) -> list[str]:
    return [f"data.root={root}", "data.train_split=test[:60]", "data.eval_split=test[60:]", "data.batch_size=16",
            "teacher.epochs=2", "teacher.model.name=convnet_tiny", "encoder.epochs=1", "encoder.model.name=convnet_tiny",
            "projector.epochs=1", "images.ipcs=[2]", "images.mipc=6", "images.steps=2", "students.epochs=2",
            "students.real_epochs=1", "students.model.name=convnet_tiny", "students.batch_size=8"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from zoo.cli import run_training

    base = tmp_path_factory.mktemp("hello")
    root = _write_mnist(base / "mnist")
    out = base / "run"
    summary = run_training(str(CONFIGS / "mnist.yaml"), _tiny_overrides(root), output=out)
    return out, summary, root


def test_end_to_end_tiny_run_writes_sets_labels_students_and_report(tiny_run):
    out, summary, _ = tiny_run
    m = summary["final"]
    assert json.loads((out / "metrics.json").read_text())["complete"]
    for ipc in (2,):
        images, labels = load_image_set(out / f"ipc{ipc}" / "images.safetensors")
        assert images.shape == (10 * ipc, 1, 28, 28)
        assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), ipc))
        rdm, rdm_labels = load_image_set(out / f"ipc{ipc}" / "random.safetensors")
        assert torch.equal(torch.bincount(rdm_labels, minlength=10), torch.full((10,), ipc))
        soft = load_file(str(out / f"ipc{ipc}" / "soft_labels.safetensors"))["soft_labels"]
        assert (out / "projector" / "adapter_config.json").is_file()  # the hello_projector method's folder
        assert soft.shape == (2, 10 * ipc, 10) and soft.dtype == torch.float16  # one label per view per epoch
        for labels_kind in ("hard", "stored", "projector"):
            assert (out / f"ipc{ipc}" / f"syn_{labels_kind}" / "seed0" / "metrics.json").is_file()
            assert 0 <= m[f"ipc{ipc}/{labels_kind}/top1"] <= 100
            for key in ("hlr", "ior", "lrs"):
                assert f"ipc{ipc}/{labels_kind}/{key}" in m
    assert (out / "teacher" / "snapshots" / "epoch_2.pt").is_file()
    assert (out / "results.csv").read_text().count("\n") == 1 + 2 * 3
    assert (out / "hello_mnist.png").is_file() and (out / "ipc2" / "images.png").is_file()


def test_storage_report_equals_the_bytes_of_the_files_written(tiny_run):
    out, summary, _ = tiny_run
    storage = json.loads((out / "storage.json").read_text())
    assert storage["projector"] == os.path.getsize(out / "projector" / "projector.safetensors")
    for ipc in (2,):
        assert storage[f"ipc{ipc}/images"] == os.path.getsize(out / f"ipc{ipc}" / "images.safetensors")
        labels_file = out / f"ipc{ipc}" / "soft_labels.safetensors"
        assert storage[f"ipc{ipc}/syn/stored_labels"] == os.path.getsize(labels_file)
        assert storage[f"ipc{ipc}/syn/stored_views"] == os.path.getsize(out / f"ipc{ipc}" / "views.safetensors")
        assert storage[f"ipc{ipc}/rdm/stored_labels"] == os.path.getsize(out / f"ipc{ipc}" / "soft_labels_rdm.safetensors")
        # the payload is epochs x N x K fp16 numbers; the rest is the safetensors header
        payload = 2 * 10 * ipc * 10 * 2
        assert payload < storage[f"ipc{ipc}/syn/stored_labels"] < payload + 200
        m = summary["final"]
        assert m[f"ipc{ipc}/stored/label_bytes"] == storage[f"ipc{ipc}/syn/stored_labels"]
        assert m[f"ipc{ipc}/projector/label_bytes"] == storage["projector"]
        assert m[f"ipc{ipc}/hard/label_bytes"] == 0
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage_report({"x": out / "nope.safetensors"})


def test_a_resumed_run_reuses_every_finished_part(tiny_run, tmp_path):
    from zoo.cli import run_training

    out, summary, root = tiny_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again = run_training(str(CONFIGS / "mnist.yaml"), _tiny_overrides(root), output=out, resume="auto")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == before
    assert again["final"]["ipc2/projector/top1"] == summary["final"]["ipc2/projector/top1"]


def test_distillation_nested_in_an_outer_run_leaves_it_unchanged(tmp_path):
    from zoo.cli import build_recipe
    from zoo.engine.context import RunContext
    from zoo.engine.trainer import Trainer
    from zoo.recipes.classify import ClassifyRecipe

    root = _write_mnist(tmp_path / "mnist")
    data = DistillDataConfig(name="mnist", root=str(root), train_split="test[:80]", eval_split="test[80:]",
                             batch_size=16)
    outer_cfg = _classify_cfg({"name": "convnet_tiny"}, data, epochs=2, lr=1e-3, batch_size=16, seed=3)
    outer_cfg.trainer.eval_every = 1

    class Outer(ClassifyRecipe):
        pass

    inner_recipe, _, _ = build_recipe(str(CONFIGS / "mnist.yaml"), _tiny_overrides(root) + [
        "images.ipcs=[1]", "students.labels=[projector]", "images.random_baseline=false", "students.real_epochs=0",
        "students.epochs=1", "teacher.epochs=1"])
    ran = []

    def run_inner(trainer, epoch, metrics):
        if epoch == 1:
            ran.append(inner_recipe.run(RunContext(tmp_path / "inner", seed=0)))

    def outer(out_dir, callbacks=()):
        summary = Trainer(Outer(outer_cfg), outer_cfg.trainer, outer_cfg.optim, outer_cfg.schedule, out_dir, seed=3,
                          callbacks=callbacks).fit()
        return summary, read_checkpoint(out_dir / "last.pt")["model"]

    plain, plain_w = outer(tmp_path / "plain")
    nested, nested_w = outer(tmp_path / "nested", [run_inner])
    assert ran and "ipc1/projector/top1" in ran[0]
    assert plain["final"]["top1"] == nested["final"]["top1"]
    for k in plain_w:
        assert torch.equal(plain_w[k], nested_w[k]), k


# ---------------------------------------------------------------------------------------------- config / scores
@pytest.mark.parametrize("override,key", [
    ("students.labels=[soft]", "students.labels"), ("images.ipcs=[0]", "images.ipcs"),
    ("projector.head_init=random", "projector.head_init"), ("encoder.kind=clip", "encoder.kind=clip"),
    ("images.crop_scale=[0.9,0.1]", "images.crop_scale"), ("projector.loss=l1", "projector.loss"),
])
def test_bad_settings_name_the_key(override, key):
    from zoo.cli import load_run_config

    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        load_run_config(str(CONFIGS / "mnist.yaml"), [override])


def test_unread_and_renamed_keys_are_errors_naming_the_recipe_or_the_new_key():
    from zoo.cli import load_run_config

    for override in ("trainer.epochs=99", "optim.lr=0.5", "schedule.name=cosine", "trainer.tensorboard=true"):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=rf"'{key}' is not read by recipe 'hello_distill'"):
            load_run_config(str(CONFIGS / "mnist.yaml"), [override])
    load_run_config(str(CONFIGS / "mnist.yaml"), ["trainer.cpu=true"])  # read: where everything runs
    for old, new in (("teacher.checkpoint", "teacher.model.checkpoint_path"),
                     ("encoder.checkpoint", "encoder.model.checkpoint_path")):
        with pytest.raises(ConfigError, match=rf"{old}.*{new}"):
            load_run_config(str(CONFIGS / "mnist.yaml"), [f"{old}=x.pt"])
    with pytest.raises(ConfigError, match="encoder.model.checkpoint_path"):
        load_run_config(str(CONFIGS / "mnist.yaml"), ["encoder.kind=checkpoint"])


def test_teacher_and_encoder_start_from_model_checkpoint_path(tmp_path):
    """A trained teacher (a run directory) and an encoder from a classifier's weights file (its head dropped) are
    loaded through zoo.hub.load_checkpoint; nothing is trained."""
    from zoo.cli import build_recipe
    from zoo.engine.checkpoint import atomic_save
    from zoo.engine.context import RunContext
    from zoo.registry import create_model

    root = _write_mnist(tmp_path / "mnist", n=40)
    torch.manual_seed(1)
    teacher = create_model("convnet_tiny", num_classes=10).eval()
    (tmp_path / "teacher_run").mkdir()
    atomic_save({"model": teacher.state_dict(), "epoch": 3}, tmp_path / "teacher_run" / "last.pt")
    torch.manual_seed(2)
    source = create_model("convnet_tiny", num_classes=7).eval()  # another class count: its head is not loaded
    atomic_save(source.state_dict(), tmp_path / "encoder.pt")
    recipe, _, _ = build_recipe(str(CONFIGS / "mnist.yaml"), [
        f"data.root={root}", "data.train_split=test[:30]", "data.eval_split=test[30:]", "teacher.model.name=convnet_tiny",
        f"teacher.model.checkpoint_path={tmp_path / 'teacher_run'}", "encoder.kind=checkpoint",
        "encoder.model.name=convnet_tiny", f"encoder.model.checkpoint_path={tmp_path / 'encoder.pt'}"])
    ctx = RunContext(tmp_path / "run")
    final, teachers, summary = recipe.teacher_models(ctx)
    assert teachers == [final] and summary == {}
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(final(x), teacher(x))
        encoder, dim, clip = recipe.build_encoder(ctx)
        torch.testing.assert_close(encoder(x), source.forward_features(x))
    assert clip is None and dim == source.num_features and not (tmp_path / "run" / "teacher").exists()


@pytest.mark.slow
def test_real_mnist_short_run(tmp_path):
    """On the shared MNIST file: a short real run; teacher and projector learn, the students run, the projector file
    is smaller than the stored labels."""
    from zoo.data.paths import data_dir
    from zoo.cli import run_training

    root = data_dir("mnist")
    if not (Path(root) / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no shared MNIST at {root}")
    out = run_training(str(CONFIGS / "mnist.yaml"), [
        "data.train_split=test[:2000]", "data.eval_split=test[8000:]", "teacher.epochs=3", "encoder.epochs=1",
        "projector.epochs=1", "images.ipcs=[1]", "images.mipc=50", "images.steps=2", "students.epochs=30",
        "students.real_epochs=0", "images.random_baseline=false"], output=tmp_path / "run")
    m = out["final"]
    assert m["teacher_top1"] > 80 and m["projector_top1"] > 30
    assert m["ipc1/projector/label_bytes"] < m["ipc1/stored/label_bytes"]
