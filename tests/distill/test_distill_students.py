"""What a student learns from (StudentTeaching): stored labels replay exactly the views the projector labels on the
fly, the soft-label loss is Hinton's T^2 KL (+ CE), hard labels are cross-entropy, and bad inputs are refused."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.hello_toys import tiny_projector
from zoo.distill.labels import generate_soft_labels
from zoo.distill.students import StudentTeaching
from zoo.distill.views import apply_views, view_params
from zoo.errors import ConfigError


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 28, 28, generator=g), torch.arange(12) % 10


def test_stored_labels_replay_the_views_and_labels_the_projector_gives_on_the_fly():
    images, targets = _data()
    projector = tiny_projector()
    soft, views = generate_soft_labels(projector, images, 3, 11, dtype="float32")  # "store" the projector's labels
    assert soft.shape == (3, 12, 10) and views.shape == (3, 12, 4)
    stored = StudentTeaching("stored", 12, 3, soft_labels=soft, views=views, view_seed=11, temperature=4.0)
    online = StudentTeaching("projector", 12, 3, projector=projector, view_seed=11, temperature=4.0)
    idx = torch.tensor([3, 0, 7, 11])
    x, y = images[idx], targets[idx]
    assert torch.equal(stored.views(x, idx, 2), online.views(x, idx, 2))
    torch.testing.assert_close(online.views(x, idx, 2), apply_views(x, view_params(12, 2, 11)[idx]))
    logits = torch.randn(4, 10, requires_grad=True)
    (a, pa), (b, pb) = (t.loss(logits, t.views(x, idx, 2), y, idx, 2) for t in (stored, online))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    ga, = torch.autograd.grad(a, logits)
    gb, = torch.autograd.grad(b, logits)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    assert set(pa) == {"loss", "kl"} and not pa["loss"].requires_grad
    # the loss is Hinton's T^2 KL(softmax(soft / T) || softmax(student / T)) on the stored labels of that epoch
    want = F.kl_div(F.log_softmax(logits / 4, -1), F.softmax(soft[2][idx] / 4, -1), reduction="batchmean") * 16
    torch.testing.assert_close(a, want)


def test_ce_weight_and_hard_labels():
    images, targets = _data()
    idx = torch.arange(4)
    x, y = images[idx], targets[idx]
    logits = torch.randn(4, 10)
    projector = tiny_projector()
    plain = StudentTeaching("projector", 12, 1, projector=projector, augment=False)
    with_ce = StudentTeaching("projector", 12, 1, projector=projector, augment=False, ce_weight=0.5)
    assert torch.equal(plain.views(x, idx, 0), x)  # no augmentation: the images themselves
    kl = plain.loss(logits, x, y, idx, 0)[0]
    torch.testing.assert_close(with_ce.loss(logits, x, y, idx, 0)[0], kl + 0.5 * F.cross_entropy(logits, y))
    hard, parts = StudentTeaching("hard", 12, 1).loss(logits, x, y, idx, 0)
    torch.testing.assert_close(hard, F.cross_entropy(logits, y))
    assert set(parts) == {"loss"}


def test_bad_inputs_are_refused():
    images, _ = _data()
    soft, views = generate_soft_labels(tiny_projector(), images, 2, 0, dtype="float32")
    with pytest.raises(ValueError, match="do not cover"):
        StudentTeaching("stored", 12, 3, soft_labels=soft, views=views)
    with pytest.raises(ValueError, match="do not cover"):
        StudentTeaching("stored", 13, 2, soft_labels=soft, views=views)
    with pytest.raises(ValueError, match="needs soft_labels"):
        StudentTeaching("stored", 12, 2)
    with pytest.raises(ValueError, match="needs the projector"):
        StudentTeaching("projector", 12, 2)
    with pytest.raises(ConfigError, match="students.labels"):
        StudentTeaching("soft", 12, 2)


@pytest.mark.parametrize("temperature", [4.0, 20.0, 3.0])
def test_soft_label_gradients_are_bit_for_bit_those_of_the_batchmean_formula(temperature):
    """The students' loss (zoo.losses.distillation_kl) back-propagates exactly what the former
    ``F.kl_div(log_softmax(s / T), softmax(t / T), "batchmean") * T * T + w * CE`` did, so runs reproduce."""
    g = torch.Generator().manual_seed(1)
    s, soft, y = torch.randn(37, 10, generator=g) * 3, torch.randn(37, 10, generator=g) * 3, torch.arange(37) % 10
    a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
    T = temperature
    old = F.kl_div(F.log_softmax(a / T, -1), F.softmax(soft / T, -1), reduction="batchmean") * T * T
    (old + 0.5 * F.cross_entropy(a, y)).backward()
    teaching = StudentTeaching("stored", 37, 1, soft_labels=soft[None], views=torch.zeros(1, 37, 4), temperature=T,
                               ce_weight=0.5)
    teaching.loss(b, b, y, torch.arange(37), 0)[0].backward()
    assert torch.equal(a.grad, b.grad)
