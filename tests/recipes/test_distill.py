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
from zoo.distill.config import DistillDataConfig
from zoo.recipes.distill import RotationPretrainRecipe, StudentRecipe, _classify_cfg

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
    return StudentRecipe(cfg, images, targets, teaching, classes=[str(i) for i in range(10)])


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
        StudentRecipe(hard.cfg, images[:5], targets[:5], hard.teaching)


# ---------------------------------------------------------------------------------------------- rotation
def _rotation_recipe(root, eval_split="test[:37]", batch=8):
    data = DistillDataConfig(name="mnist", root=str(root), train_split="test[:16]", val_split=eval_split,
                             eval_split=eval_split, eval_batch_size=batch)
    return RotationPretrainRecipe(_classify_cfg({"name": "convnet_tiny"}, data, epochs=1, lr=1e-3, batch_size=8,
                                                seed=0))


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
    return [f"data.root={root}", "data.train_split=test[:60]", "data.val_split=test[60:85]",
            "data.eval_split=test[85:]", "data.batch_size=16",
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
        sets = {o: load_image_set(out / f"ipc{ipc}" / f"images_{o}.safetensors") for o in ("rded", "label_gap")}
        for images, labels in sets.values():
            assert images.shape == (10 * ipc, 1, 28, 28)
            assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), ipc))
        assert torch.equal(sets["rded"][1], sets["label_gap"][1])  # the pixel steps start from the RDED set
        assert not torch.equal(sets["rded"][0], sets["label_gap"][0])
        rdm, rdm_labels = load_image_set(out / f"ipc{ipc}" / "random.safetensors")
        assert torch.equal(torch.bincount(rdm_labels, minlength=10), torch.full((10,), ipc))
        soft = load_file(str(out / f"ipc{ipc}" / "rded_soft_labels.safetensors"))["soft_labels"]
        assert (out / "projector" / "adapter_config.json").is_file()  # the hello_projector method's folder
        assert soft.shape == (2, 10 * ipc, 10) and soft.dtype == torch.float16  # one label per view per epoch
        for images in ("rded", "label_gap"):
            for labels_kind in ("hard", "stored", "stored_equal", "projector"):
                run = out / f"ipc{ipc}" / f"{images}_{labels_kind}"
                seeds = [run / "seed0"] if labels_kind == "hard" else [run / "ce0" / "seed0", run / "ce0.5" / "seed0"]
                assert all((d / "metrics.json").is_file() for d in seeds)  # every CE-weight candidate
                assert 0 <= m[f"ipc{ipc}/{images}/{labels_kind}/top1"] <= 100
                for key in ("hlr", "ior", "lrs"):
                    assert f"ipc{ipc}/{images}/{labels_kind}/{key}" in m
    assert (out / "teacher" / "snapshots" / "epoch_2.pt").is_file()
    assert (out / "results.csv").read_text().count("\n") == 1 + 3 * 4
    assert (out / "hello_mnist.png").is_file() and (out / "ipc2" / "images.png").is_file()


def test_the_ce_weight_is_chosen_on_validation_and_only_the_chosen_student_is_reported(tiny_run):
    """Each soft-label kind trains one student per students.ce_weights; the one with the best validation top-1
    (data.val_split, what the nested run evaluates on) is kept, and only it is evaluated on data.eval_split."""
    out, summary, _ = tiny_run
    m = summary["final"]
    for labels_kind in ("stored", "stored_equal", "projector"):
        run = out / "ipc2" / f"rded_{labels_kind}"
        val = {w: json.loads((run / f"ce{w:g}" / "seed0" / "metrics.json").read_text())["final"]["top1"]
               for w in (0.0, 0.5)}
        chosen = m[f"ipc2/rded/{labels_kind}/ce_weight"]
        assert val[chosen] == max(val.values()) and (val[0.0] < val[0.5] or chosen == 0.0)  # ties: the first
        assert m[f"ipc2/rded/{labels_kind}/val_top1"] == val[chosen]
        reported = json.loads((run / f"ce{chosen:g}" / "seed0" / "reported" / "metrics.json").read_text())
        assert reported["split"] == "test[85:]" and reported["top1"] == m[f"ipc2/rded/{labels_kind}/top1"]
        other = 0.5 if chosen == 0.0 else 0.0
        assert not (run / f"ce{other:g}" / "seed0" / "reported").exists()
        # the nested runs evaluated on the 25 validation digits, the reported evaluation on the 35 others
        assert np.load(run / f"ce{other:g}" / "seed0" / "per_example.npz")["top1"].shape == (25,)
        assert np.load(run / f"ce{chosen:g}" / "seed0" / "reported" / "per_example.npz")["top1"].shape == (35,)
    per_example = np.load(out / "per_example.npz")
    assert per_example["ipc2/rded/projector"].shape == (35,)
    assert per_example["ipc2/rded/projector"].mean() == pytest.approx(m["ipc2/rded/projector/top1"])


def test_storage_report_counts_the_encoder_and_stored_equal_fits_in_the_projector_side(tiny_run):
    out, summary, _ = tiny_run
    storage = json.loads((out / "storage.json").read_text())
    m = summary["final"]
    assert storage["projector"] == os.path.getsize(out / "projector" / "projector.safetensors")
    assert storage["encoder"] == os.path.getsize(out / "projector" / "encoder.safetensors")
    assert storage["encoder_public"] is None  # our rotation-pretrained encoder: it ships, its bytes count
    assert storage["projector_side"] == storage["projector"] + storage["encoder"] == m["label_side_bytes"]
    enc = load_file(str(out / "projector" / "encoder.safetensors"))
    assert all(v.dtype == torch.float16 for v in enc.values() if v.is_floating_point())
    for ipc in (2,):
        assert storage[f"ipc{ipc}/images_rded"] == os.path.getsize(out / f"ipc{ipc}" / "images_rded.safetensors")
        labels_file = out / f"ipc{ipc}" / "rded_soft_labels.safetensors"
        assert storage[f"ipc{ipc}/rded/stored_labels"] == os.path.getsize(labels_file)
        assert storage[f"ipc{ipc}/rded/stored_views"] == os.path.getsize(out / f"ipc{ipc}" / "rded_views.safetensors")
        assert storage[f"ipc{ipc}/random/stored_labels"] == os.path.getsize(
            out / f"ipc{ipc}" / "random_soft_labels.safetensors")
        # the payload is epochs x N x K fp16 numbers; the rest is the safetensors header
        payload = 2 * 10 * ipc * 10 * 2
        assert payload < storage[f"ipc{ipc}/rded/stored_labels"] < payload + 200
        assert m[f"ipc{ipc}/rded/stored/label_bytes"] == storage[f"ipc{ipc}/rded/stored_labels"]
        assert m[f"ipc{ipc}/rded/projector/label_bytes"] == storage["projector_side"]
        assert m[f"ipc{ipc}/rded/hard/label_bytes"] == 0
        equal = m[f"ipc{ipc}/rded/stored_equal/label_bytes"]
        assert equal == os.path.getsize(out / f"ipc{ipc}" / "rded_soft_labels_equal.safetensors")
        assert equal <= storage["projector_side"]  # at most the projector side's bytes (here: all 2 epochs fit)
        assert m[f"ipc{ipc}/rded/stored_equal/stored_epochs"] == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage_report({"x": out / "nope.safetensors"})


def test_stored_equal_labels_cycle_through_the_epochs_that_fit():
    from zoo.distill.labels import epochs_within_bytes
    from zoo.distill.views import view_params

    assert epochs_within_bytes(10_000, 100, 10, "float16", header_bytes=200) == 4  # 9800 // 2000
    assert epochs_within_bytes(100, 500, 10) == 1  # at least one epoch
    g = torch.Generator().manual_seed(0)
    images, targets = torch.rand(6, 1, 28, 28, generator=g), torch.arange(6) % 10
    soft = torch.randn(3, 6, 10)
    teaching = StudentTeaching("stored_equal", 6, 7, soft_labels=soft, view_seed=4)
    assert [teaching.label_epoch(e) for e in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    idx = torch.tensor([1, 4])
    views = teaching.views(images[idx], idx, 4)  # epoch 4 replays stored epoch 1: its views and its labels
    torch.testing.assert_close(views, StudentTeaching("hard", 6, 7, view_seed=4).views(images[idx], idx, 1))
    _, parts = teaching.loss(torch.zeros(2, 10), views, targets[idx], idx, 4)
    from zoo.losses import distillation_kl
    assert float(parts["kl"]) == pytest.approx(float(distillation_kl(torch.zeros(2, 10), soft[1][idx], 4.0)))
    assert view_params(6, 1, 4).shape == (6, 4)


def test_prepare_from_copies_a_prepared_run_and_refuses_other_settings(tiny_run, tmp_path):
    """A study cell reuses one seed's teacher, encoder, projector and image sets (students.labels: [] prepares them);
    a preparation made with other settings is refused."""
    from zoo.cli import run_training

    out, summary, root = tiny_run
    cell = tmp_path / "cell"
    got = run_training(str(CONFIGS / "mnist.yaml"), _tiny_overrides(root) + [
        f"prepare_from={out}", "images.objectives=[rded]", "students.labels=[projector]", "students.real_epochs=0",
        "images.random_baseline=false"], output=cell)
    for f in ("projector/projector.safetensors", "projector/encoder.safetensors", "ipc2/images_rded.safetensors"):
        assert (cell / f).read_bytes() == (out / f).read_bytes()
    assert not (cell / "ipc2" / "images_label_gap.safetensors").exists()
    m = got["final"]
    # one image set and one label kind: the short names a study's summary reads, with per-example scores
    assert m["ipc2"] == m["ipc2/rded/projector/top1"] == summary["final"]["ipc2/rded/projector/top1"]
    assert set(np.load(cell / "per_example.npz").files) >= {"ipc2", "ipc2/rded/projector"}
    with pytest.raises(ConfigError, match="prepare_from.*other 'teacher' settings"):
        run_training(str(CONFIGS / "mnist.yaml"), _tiny_overrides(root) + [
            f"prepare_from={out}", "teacher.epochs=3", "students.labels=[hard]"], output=tmp_path / "bad")


def test_a_resumed_run_reuses_every_finished_part(tiny_run, tmp_path):
    from zoo.cli import run_training

    out, summary, root = tiny_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again = run_training(str(CONFIGS / "mnist.yaml"), _tiny_overrides(root), output=out, resume="auto")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == before
    assert again["final"]["ipc2/rded/projector/top1"] == summary["final"]["ipc2/rded/projector/top1"]


def test_distillation_nested_in_an_outer_run_leaves_it_unchanged(tmp_path):
    from zoo.cli import build_recipe
    from zoo.engine.context import RunContext
    from zoo.engine.trainer import Trainer
    from zoo.recipes.classify import ClassifyRecipe

    root = _write_mnist(tmp_path / "mnist")
    data = DistillDataConfig(name="mnist", root=str(root), train_split="test[:80]", val_split="test[80:100]",
                             eval_split="test[100:]", batch_size=16)
    outer_cfg = _classify_cfg({"name": "convnet_tiny"}, data, epochs=2, lr=1e-3, batch_size=16, seed=3)
    outer_cfg.trainer.eval_every = 1

    class Outer(ClassifyRecipe):
        pass

    inner_recipe, _, _ = build_recipe(str(CONFIGS / "mnist.yaml"), _tiny_overrides(root) + [
        "images.ipcs=[1]", "students.labels=[projector]", "images.random_baseline=false", "students.real_epochs=0",
        "students.epochs=1", "teacher.epochs=1", "images.objectives=[rded]"])
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
    assert ran and "ipc1/rded/projector/top1" in ran[0]
    assert plain["final"]["top1"] == nested["final"]["top1"]
    for k in plain_w:
        assert torch.equal(plain_w[k], nested_w[k]), k


# ---------------------------------------------------------------------------------------------- config / scores
@pytest.mark.parametrize("override,key", [
    ("students.labels=[soft]", "students.labels"), ("images.ipcs=[0]", "images.ipcs"),
    ("projector.head_init=random", "projector.head_init"), ("encoder.kind=clip", "encoder.kind=clip"),
    ("images.crop_scale=[0.9,0.1]", "images.crop_scale"), ("projector.loss=l1", "projector.loss"),
    ("images.objectives=[none]", "images.objectives"), ("students.ce_weights=[]", "students.ce_weights"),
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
                     ("encoder.checkpoint", "encoder.model.checkpoint_path"),
                     ("images.objective", "images.objectives"), ("students.ce_weight", "students.ce_weights"),
                     ("students.stored_ce_weight", "students.ce_weights")):
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
        f"data.root={root}", "data.train_split=test[:30]", "data.val_split=test[30:35]", "data.eval_split=test[35:]",
        "teacher.model.name=convnet_tiny",
        f"teacher.model.checkpoint_path={tmp_path / 'teacher_run'}", "encoder.kind=checkpoint",
        "encoder.model.name=convnet_tiny", f"encoder.model.checkpoint_path={tmp_path / 'encoder.pt'}"])
    ctx = RunContext(tmp_path / "run")
    final, teachers, summary = recipe.pipeline.teacher_models(ctx)
    assert teachers == [final] and summary == {}
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(final(x), teacher(x))
        encoder, dim, clip = recipe.pipeline.build_encoder(ctx)
        # the encoder ships with the labels in fp16: the projector computes with exactly those (rounded) weights
        rounded = create_model("convnet_tiny", num_classes=7).eval()
        rounded.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                                 for k, v in source.state_dict().items()})
        torch.testing.assert_close(encoder(x), rounded.forward_features(x))
    assert (tmp_path / "run" / "projector" / "encoder.safetensors").is_file()
    assert clip is None and dim == source.num_features and not (tmp_path / "run" / "teacher").exists()


@pytest.mark.slow
def test_real_mnist_short_run(tmp_path):
    """On the shared MNIST file: a short real run; teacher and projector learn, the students run, and the projector
    side's bytes are the projector file plus the encoder that ships with it (at IPC 1 and 30 epochs, more than the
    stored labels: the encoder is counted)."""
    from zoo.data.paths import data_dir
    from zoo.cli import run_training

    root = data_dir("mnist")
    if not (Path(root) / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no shared MNIST at {root}")
    out = run_training(str(CONFIGS / "mnist.yaml"), [
        "data.train_split=test[:2000]", "data.val_split=test[7000:8000]", "data.eval_split=test[8000:]",
        "teacher.epochs=3", "encoder.epochs=1",
        "projector.epochs=1", "images.ipcs=[1]", "images.mipc=50", "images.steps=2", "students.epochs=30",
        "students.real_epochs=0", "images.random_baseline=false", "images.objectives=[rded]",
        "students.labels=[hard,stored,projector]", "students.ce_weights=[0.5]"], output=tmp_path / "run")
    m = out["final"]
    assert m["teacher_val_top1"] > 80 and m["projector_val_top1"] > 30
    storage = m["storage_bytes"]
    assert m["ipc1/rded/projector/label_bytes"] == storage["projector"] + storage["encoder"] > 10_000
    assert m["ipc1/rded/stored/label_bytes"] < m["ipc1/rded/projector/label_bytes"]
