"""The teacher helpers shared by CoTTA and ViDA: the EMA update (with a second rate for adapters) and the stochastic
restore, and the CoTTA step against its definition."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.registry import create_model
from zoo.tta.base import LocalStep, build_tta, load_source_model
from zoo.tta.teacher import ema_update, stochastic_restore


def _pair():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


def test_ema_update_is_the_formula_with_a_rate_for_named_adapters():
    teacher, student = _pair()
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    ema_update(teacher, student, 0.9, adapter_rate=0.5, adapter_names={"1.weight"})
    s = dict(student.named_parameters())
    for n, p in teacher.named_parameters():
        rate = 0.5 if n == "1.weight" else 0.9
        assert torch.allclose(p, rate * before[n] + (1 - rate) * s[n])


def test_stochastic_restore_probabilities_and_weight_bias_only():
    model, source = _pair()
    model.register_parameter("extra", nn.Parameter(torch.ones(1000)))
    state = {**{k: v.clone() for k, v in source.state_dict().items()}, "extra": torch.zeros(1000)}
    kept = {n: p.detach().clone() for n, p in model.named_parameters()}
    stochastic_restore(model, state, 0.0)
    assert all(torch.equal(p, kept[n]) for n, p in model.named_parameters())
    torch.manual_seed(0)
    stochastic_restore(model, state, 0.3, only_weight_bias=True)
    assert torch.equal(model.extra, kept["extra"])  # neither weight nor bias: untouched
    stochastic_restore(model, state, 0.3)
    restored = float((model.extra == 0).float().mean())
    assert restored == pytest.approx(0.3, abs=0.05)
    stochastic_restore(model, state, 1.0)
    assert all(torch.equal(p, state[n]) for n, p in model.named_parameters())


def test_cotta_step_follows_its_definition():
    """No augmentation (threshold 0): the scored prediction is the teacher's logits; the student takes one Adam step
    on the soft cross-entropy to it; the teacher moves by EMA; restore off."""
    torch.manual_seed(0)
    algorithm = build_tta({"name": "cotta", "aug_threshold": 0.0, "restore_prob": 0.0, "ema": 0.5, "lr": 0.1})
    model = create_model("timm/vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                         num_classes=5)
    model = algorithm.prepare_model(load_source_model(model, None, None))
    algorithm.capture_source(model)
    algorithm.setup(model)
    with torch.no_grad():  # the student leaves the teacher (a copy at setup), so the loss has a gradient
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        expected = algorithm.teacher(x)
    teacher_before = [p.detach().clone() for p in algorithm.teacher.parameters()]
    reference = [p.detach().clone() for p in model.parameters()]
    pred = algorithm.adapt(model, x, LocalStep(model))
    assert torch.allclose(pred, expected)
    # Adam's first step moves a parameter with a clear gradient by lr (the sign of the gradient)
    moved = [float((p.detach() - r).abs().max()) for p, r in zip(model.parameters(), reference)]
    assert max(moved) == pytest.approx(0.1, rel=1e-3)
    for t, before, s in zip(algorithm.teacher.parameters(), teacher_before, model.parameters()):
        assert torch.allclose(t, 0.5 * before + 0.5 * s.detach(), atol=1e-6)


def _cotta(section: dict):
    torch.manual_seed(0)
    algorithm = build_tta({"name": "cotta", "num_aug": 2, **section})
    model = create_model("timm/vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                         num_classes=5)
    model = algorithm.prepare_model(load_source_model(model, None, None))
    algorithm.capture_source(model)
    algorithm.setup(model)
    return algorithm, model


def test_cotta_trains_only_weights_and_biases_as_the_official_collect_params():
    algorithm, model = _cotta({})
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "pos_embed" not in trained and "cls_token" not in trained
    assert trained == {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in ("weight", "bias")}
    assert sum(len(g["params"]) for g in algorithm.optimizer.param_groups) == len(trained)
    pos = model.pos_embed.detach().clone()
    algorithm.adapt(model, torch.rand(4, 3, 16, 16), LocalStep(model))
    assert torch.equal(model.pos_embed, pos)


@pytest.mark.parametrize("gate", [0.0, 1.1])
def test_cotta_scores_either_prediction_and_adapts_the_same(gate):
    """``score: augmented`` returns the pseudo-label and keeps the teacher's plain logits as an extra prediction;
    ``score: teacher`` the reverse; the two runs adapt identically (same seed)."""
    runs = {}
    for score in ("augmented", "teacher"):
        algorithm, model = _cotta({"score": score, "aug_threshold": gate, "lr": 1e-2})
        torch.manual_seed(1)
        out = []
        for _ in range(3):
            x = torch.rand(4, 3, 16, 16)
            returned = algorithm.adapt(model, x, LocalStep(model))
            out.append((returned, dict(algorithm.extra_predictions), algorithm.logs["augmented"]))
        runs[score] = (out, [p.detach().clone() for p in model.parameters()])
    assert build_tta({"name": "cotta"}).extra_prediction_names == ("teacher",)
    for (ret_a, extra_a, aug_a), (ret_t, extra_t, aug_t) in zip(runs["augmented"][0], runs["teacher"][0]):
        assert torch.equal(ret_a, extra_t["augmented"]) and torch.equal(ret_t, extra_a["teacher"])
        assert aug_a == aug_t == float(gate > 1)
        assert torch.equal(ret_a, ret_t) == (gate == 0.0)  # no augmentation: both are the teacher's logits
    assert all(torch.equal(a, b) for a, b in zip(runs["augmented"][1], runs["teacher"][1]))


def test_cotta_without_update_scores_the_source_augmentation_average():
    algorithm, model = _cotta({"update": False, "aug_threshold": 1.1})
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(4, 3, 16, 16)
    torch.manual_seed(2)
    algorithm.aug_rng.seed_from_global()
    pred = algorithm.adapt(model, x, LocalStep(model))
    torch.manual_seed(2)
    algorithm.aug_rng.seed_from_global()
    with torch.no_grad():
        expected = torch.stack([model(algorithm.augment(x)) for _ in range(2)]).mean(0)
    assert torch.allclose(pred, expected, atol=1e-6)
    assert algorithm.optimizer is None and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
