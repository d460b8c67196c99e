"""hello_distill: views, RDED selection and stitching, the image objective, the three label kinds behind one
interface, the storage report against the files written, a tiny end-to-end run (also nested in an outer run
without disturbing it), config errors, and DD-Ranking's scores."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from zoo.adapters.hello import FeatureEncoder, HelloProjector, add_projector_adapters, init_head
from zoo.config import ConfigError
from zoo.metrics.distill import hard_label_recovery, improvement_over_random, label_robust_score, storage_report
from zoo.models.convnet import ConvNet
from zoo.recipes.distill import (StudentRecipe, apply_views, generate_soft_labels, image_objective, load_image_set,
                                 optimise_images, rded_select, stitch_patches, view_params, _classify_cfg,
                                 DistillDataConfig)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "hello"


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


def _tiny_net(num_classes=10, seed=0):
    torch.manual_seed(seed)
    return ConvNet(num_classes=num_classes, widths=(8, 16), convs_per_stage=1).eval()


def _projector(seed=0):
    torch.manual_seed(seed)
    p = HelloProjector(FeatureEncoder(ConvNet(num_classes=0, widths=(8, 16), convs_per_stage=1)), 16, 10,
                       logit_scale=10.0)
    init_head(p, torch.randn(10, 16))
    add_projector_adapters(p, 1, 2)
    return p.eval()


# ---------------------------------------------------------------------------------------------- views
def test_views_are_a_pure_function_of_seed_epoch_and_stay_inside_the_image():
    a, b = view_params(50, 3, 7), view_params(50, 3, 7)
    assert torch.equal(a, b) and not torch.equal(a, view_params(50, 4, 7)) and not torch.equal(a, view_params(50, 3, 8))
    w, h, cx, cy = a.unbind(1)
    assert ((w > 0) & (w <= 1) & (h > 0) & (h <= 1)).all()
    assert ((cx.abs() + w) <= 1 + 1e-6).all() and ((cy.abs() + h) <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.5 - 1e-4 and area.max() <= 1 + 1e-6
    x = torch.rand(4, 1, 12, 12)
    identity = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(4, 1)
    torch.testing.assert_close(apply_views(x, identity), x, rtol=0, atol=1e-5)
    # the left half of the image, scaled up: the output's left column is the input's left column
    half = torch.tensor([[0.5, 1.0, -0.5, 0.0]]).repeat(4, 1)
    out = apply_views(x, half)
    assert not torch.allclose(out, x)
    torch.testing.assert_close(out[..., ::2].mean(), x[..., :6].mean(), rtol=0.05, atol=0.02)


# ---------------------------------------------------------------------------------------------- RDED
class BrightnessTeacher(torch.nn.Module):
    """Logit of class 1 = 20 * mean brightness, of class 0 = 0: brighter crops are more confidently class 1."""

    def forward(self, x):
        b = x.mean((1, 2, 3))
        return torch.stack([torch.zeros_like(b), 20 * b], 1)


def test_rded_select_keeps_the_most_confident_patches_and_stitches_them():
    brightness = torch.linspace(0.05, 0.95, 12)
    images = brightness.view(-1, 1, 1, 1).expand(12, 1, 8, 8).clone()
    out = rded_select(BrightnessTeacher(), images, 1, 3, num_crop=2, factor=1, scale=(1.0, 1.0))
    assert out.shape == (3, 1, 8, 8)
    torch.testing.assert_close(out.mean((1, 2, 3)).sort().values, brightness[-3:], rtol=0, atol=2e-3)
    # class 0 prefers the darkest
    dark = rded_select(BrightnessTeacher(), images, 0, 2, num_crop=2, factor=1, scale=(1.0, 1.0))
    torch.testing.assert_close(dark.mean((1, 2, 3)).sort().values, brightness[:2], rtol=0, atol=2e-3)
    # factor 2: 2 images from the 8 brightest patches, 4 per image in 4x4 cells
    two = rded_select(BrightnessTeacher(), images, 1, 2, num_crop=1, factor=2, scale=(1.0, 1.0))
    assert two.shape == (2, 1, 8, 8)
    cells = two.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2)).flatten()
    torch.testing.assert_close(cells.sort().values, brightness[-8:], rtol=0, atol=2e-3)
    with pytest.raises(ValueError, match="mipc"):
        rded_select(BrightnessTeacher(), images, 1, 4, factor=2)


def test_stitch_patches_tiles_row_major_with_remainders():
    patches = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 3, 3)
    out = stitch_patches(patches, 2, (5, 5))
    assert out.shape == (1, 1, 5, 5)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 0, 4] == 1 and out[0, 0, 4, 0] == 2 and out[0, 0, 4, 4] == 3
    assert out[0, 0, 2, 2] == 0 and out[0, 0, 2, 3] == 1  # the first row/column of cells takes the remainder


def test_image_optimisation_lowers_its_objective():
    teacher, projector = _tiny_net(seed=1), _projector(seed=2)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(12, 1, 16, 16, generator=g), torch.arange(12) % 10
    fixed = view_params(12, 123, 5).clone()

    def objective(x):
        with torch.no_grad():
            return float(image_objective(teacher, projector, apply_views(x, fixed), labels))

    out, history = optimise_images(images, labels, teacher, projector, steps=12, lr=0.1, batch_size=8)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert len(history) == 12 and history[-1] < history[0]
    assert objective(out) < 0.95 * objective(images)
    # teacher and projector untouched
    assert all(p.grad is None for p in teacher.parameters())


# ---------------------------------------------------------------------------------------------- students
def _student(labels, images, targets, **kw):
    data = DistillDataConfig(name="mnist", root="unused")
    cfg = _classify_cfg({"name": "convnet_tiny", "num_classes": 10}, data, epochs=3, lr=1e-3, batch_size=8, seed=0)
    return StudentRecipe(cfg, data, images, targets, labels, view_seed=11, classes=[str(i) for i in range(10)], **kw)


def test_stored_labels_replay_the_same_views_the_projector_labels_on_the_fly():
    g = torch.Generator().manual_seed(0)
    images, targets = torch.rand(12, 1, 28, 28, generator=g), torch.arange(12) % 10
    projector = _projector()
    # "store" the projector's own labels: then stored and on-the-fly labels must give the same loss and gradients
    soft, views = generate_soft_labels(projector, images, 3, 11, dtype="float32")
    assert soft.shape == (3, 12, 10) and views.shape == (3, 12, 4)
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
    with pytest.raises(ValueError, match="do not cover"):
        _student("stored", images, targets, soft_labels=soft[:2], views=views[:2])
    with pytest.raises(ValueError, match="needs the projector"):
        _student("projector", images, targets)


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
        return summary, torch.load(out_dir / "last.pt", map_location="cpu", weights_only=False)["model"]

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


def test_dd_ranking_scores():
    assert hard_label_recovery(98.0, 80.0) == pytest.approx(18.0)
    assert improvement_over_random(85.0, 80.0) == pytest.approx(5.0)
    # a = 0.5 * 0.05 - 0.5 * 0.18 = -0.065
    a = -0.065
    assert label_robust_score(18.0, 5.0) == pytest.approx((math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert label_robust_score(0.0, 100.0, weight=1.0) == pytest.approx(1.0)
    assert label_robust_score(100.0, 0.0, weight=0.0) == pytest.approx(0.0)


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
