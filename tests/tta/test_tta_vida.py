"""The ViDA test-time algorithm: HKA (uncertainty and scales, paper vs released rule), its optimiser groups, what it
trains, the adapters' own EMA rate, the scored prediction and the default ViDA adapter."""
from __future__ import annotations

import pytest
import torch

from zoo.adapters.vida import VIDA_HIGH, VIDA_LOW, ViDAMethod
from zoo.registry import create_model
from zoo.tta.base import LocalStep, build_tta, load_source_model
from zoo.tta.vida import hka_scales, hka_scales_from_uncertainty, hka_uncertainty


def prepared(section: dict, adapter: dict | None = None):
    torch.manual_seed(0)
    algorithm = build_tta({"name": "vida", "num_aug": 2, **section}, adapter or {"high_rank": 4})
    model = create_model("timm/vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                         num_classes=5)
    model = algorithm.prepare_model(load_source_model(model, None, algorithm.adapter))
    algorithm.capture_source(model)
    algorithm.setup(model)
    return algorithm, model


def test_vida_uses_the_vida_adapter_with_its_defaults():
    algorithm = build_tta({"name": "vida"})
    assert isinstance(algorithm.adapter, ViDAMethod)
    assert (algorithm.adapter.config.low_rank, algorithm.adapter.config.high_rank) == (1, 128)  # official ranks
    c = algorithm.config
    assert (c.lr, c.adapter_lr, c.ema, c.ema_adapter, c.restore_prob, c.num_aug, c.unc_threshold) == \
        (1e-4, 1e-5, 0.999, 0.999, 0.1, 10, 0.05)  # official CIFAR-10 settings


@pytest.mark.parametrize("train", ["all", "adapters"])
def test_param_groups_and_trainable_set(train):
    algorithm, model = prepared({"train": train})
    adapter = {id(p) for p in algorithm.adapter.trainable_parameters(model)}
    groups = {g["name"]: g for g in algorithm.optimizer.param_groups}
    assert {id(p) for p in groups["vida"]["params"]} == adapter and groups["vida"]["lr"] == 1e-5
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if train == "all":  # the official collect_params: the whole model, adapters at their own rate
        assert groups["model"]["lr"] == 1e-4 and trainable == adapter | {id(p) for p in groups["model"]["params"]}
        assert len(trainable) == len(list(model.parameters()))
    else:
        assert "model" not in groups and trainable == adapter


def test_one_step_scores_the_teacher_sets_hka_scales_and_updates_adapters_at_their_own_ema_rate():
    algorithm, model = prepared({"ema": 0.5, "ema_adapter": 0.9, "restore_prob": 0.0, "lr": 1e-2, "adapter_lr": 1e-2})
    teacher_before = {n: p.clone() for n, p in algorithm.teacher.named_parameters()}
    x = torch.rand(3, 3, 16, 16)
    torch.manual_seed(1)
    pred = algorithm.adapt(model, x, LocalStep(model))
    with torch.no_grad():  # the scored prediction is the teacher's on x, before its EMA update
        reference = {n: p.clone() for n, p in algorithm.teacher.named_parameters()}
        algorithm.teacher.load_state_dict({**algorithm.teacher.state_dict(), **teacher_before})
        assert torch.allclose(pred, algorithm.teacher(x), atol=1e-6)
        algorithm.teacher.load_state_dict({**algorithm.teacher.state_dict(), **reference})
    student = dict(model.named_parameters())
    for name, t in algorithm.teacher.named_parameters():
        rate = 0.9 if name in algorithm.adapter_names else 0.5
        assert torch.allclose(t, rate * teacher_before[name] + (1 - rate) * student[name], atol=1e-6), name
    assert any(".deltas.vida_high." in n for n in algorithm.adapter_names)
    assert all(".deltas.vida_" in n for n in algorithm.adapter_names)
    low, high = algorithm.scales
    layer = model.blocks[0].attn.qkv
    assert float(layer.deltas[VIDA_LOW].scale) == pytest.approx(float(low))
    assert float(layer.deltas[VIDA_HIGH].scale) == pytest.approx(float(high))
    assert abs(float(low) - 1) == pytest.approx(algorithm.last_uncertainty, abs=1e-6)  # low = 1 ± u (paper)


def test_resume_state_keeps_per_sample_scales():
    algorithm, model = prepared({"per_sample_uncertainty": True})
    algorithm.adapt(model, torch.rand(3, 3, 16, 16), LocalStep(model))
    state = algorithm.state_dict()
    other, _ = prepared({"per_sample_uncertainty": True})
    other.load_state_dict(state)
    assert torch.equal(other.scales[0], algorithm.scales[0]) and other.scales[0].shape == (3,)


# ------------------------------------------------------------------------------------------------ HKA
def _views(deltas: torch.Tensor) -> torch.Tensor:
    """Two views per (sample, class): 0 and ``deltas`` -> unbiased variance ``deltas² / 2``."""
    return torch.stack([torch.zeros_like(deltas), deltas])


def test_hka_uncertainty_is_a_tenth_of_the_mean_variance():
    d = torch.tensor([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])  # variances 0.5 and 4.5
    assert hka_uncertainty(_views(d)).item() == pytest.approx(0.1 * 2.5)
    assert torch.allclose(hka_uncertainty(_views(d), per_sample=True), torch.tensor([0.05, 0.45]))
    with pytest.raises(ValueError, match="views"):
        hka_uncertainty(torch.zeros(1, 2, 3))


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_hka_scales_follow_the_formula(variant):
    d = torch.full((4, 3), 2.0)  # variance 2 -> u = 0.2
    low, high, u = hka_scales(_views(d), threshold=0.1, variant=variant)  # uncertain: high up, low down
    assert u.item() == pytest.approx(0.2)
    assert low.item() == pytest.approx(0.8)
    assert high.item() == pytest.approx(1.2 if variant == "paper" else 1.0)
    low, high, _ = hka_scales(_views(d), threshold=0.5, variant=variant)  # certain: low up, high down
    assert low.item() == pytest.approx(1.2)
    assert high.item() == pytest.approx(0.8 if variant == "paper" else 1.0)
    per = torch.tensor([[1.0] * 3, [3.0] * 3])  # u = 0.05, 0.45; threshold 0.1
    low, high, u = hka_scales(_views(per), threshold=0.1, variant=variant, per_sample=True)
    assert torch.allclose(low, torch.tensor([1.05, 0.55]))
    assert torch.allclose(high, torch.tensor([0.95, 1.45]) if variant == "paper" else torch.ones(2))


def test_scales_from_an_uncertainty_follow_the_threshold():
    low, high = hka_scales_from_uncertainty(torch.tensor([0.01, 0.3]), threshold=0.05)
    assert torch.allclose(low, torch.tensor([1.01, 0.7])) and torch.allclose(high, torch.tensor([0.99, 1.3]))
    with pytest.raises(ValueError, match="paper"):
        hka_scales_from_uncertainty(torch.tensor(0.1), 0.05, variant="both")


# ------------------------------------------------------------------------------------------------ update vs control
def _stream(n: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.rand(6, 3, 16, 16, generator=g) for _ in range(n)]


def _scores(section: dict) -> tuple[list[torch.Tensor], list[float], object, torch.nn.Module]:
    """The scored logits and uncertainties of a ViDA run over :func:`_stream` (run seed 3), and the algorithm."""
    algorithm, model = prepared({"hka": "official", **section})
    torch.manual_seed(3)  # the run's seed: augmentation stream and restore masks
    algorithm.aug_rng.seed_from_global()
    scored, uncertainties = [], []
    for x in _stream():
        scored.append(algorithm.adapt(model, x, LocalStep(model)).detach().clone())
        uncertainties.append(algorithm.last_uncertainty)
    return scored, uncertainties, algorithm, model


def test_the_no_update_control_sees_the_same_views_as_the_run_that_adapts():
    """Lockstep: a run that steps (lr 0, teacher EMA 1, stochastic restore drawing its masks from the global RNG)
    scores bit for bit what the ``update: false`` control scores: the augmented views come from their own stream."""
    stepped, u_stepped, algorithm, _ = _scores({"lr": 0.0, "adapter_lr": 0.0, "ema": 1.0, "ema_adapter": 1.0,
                                                "restore_prob": 0.5})
    control, u_control, frozen, model = _scores({"update": False})
    assert algorithm.optimizer is not None and frozen.optimizer is None
    assert not any(p.requires_grad for p in model.parameters())
    for a, b in zip(stepped, control):
        assert torch.equal(a, b)
    assert u_stepped == u_control


def test_vidas_update_reaches_its_predictions_at_a_learning_rate_where_it_should():
    """At lr 1e-2 (model and adapters), teacher EMA 0.5, no restore, the scored (teacher) predictions leave the
    no-update control's after the first batch, which both score before any update; at the official rates (1e-4 /
    1e-5, EMA 0.999, restore 0.1) they stay within ~1e-3 of it over the same batches."""
    control, u_control, _, _ = _scores({"update": False})
    fast, u_fast, algorithm, _ = _scores({"lr": 1e-2, "adapter_lr": 1e-2, "ema": 0.5, "ema_adapter": 0.5,
                                          "restore_prob": 0.0})
    official, _, _, _ = _scores({})
    assert torch.equal(fast[0], control[0]) and u_fast[0] == u_control[0]  # scored before the first update
    gaps = [float((a - b).abs().max()) for a, b in zip(fast, control)]
    assert all(g > 0.05 for g in gaps[1:]), gaps
    assert gaps[-1] > gaps[1]  # and it keeps moving
    official_gaps = [float((a - b).abs().max()) for a, b in zip(official, control)]
    assert official_gaps[0] == 0.0 and max(official_gaps) < 1e-2, official_gaps


def test_hka_none_keeps_the_scales_and_computes_no_views():
    algorithm, model = prepared({"hka": "none", "update": False})
    calls = []
    algorithm.augment = lambda x: calls.append(1) or x
    x = torch.rand(3, 3, 16, 16)
    pred = algorithm.adapt(model, x, LocalStep(model))
    assert not calls and algorithm.scales == (1.0, 1.0)
    with torch.no_grad():
        assert torch.equal(pred, model(x))  # teacher = student = the starting model, nothing moved
