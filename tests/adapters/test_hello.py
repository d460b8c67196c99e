"""HeLlO projector: zero adapters reproduce the initial head, only adapters train, the stored file round-trips,
head initialisation, the loss, and a CLIP image tower from a local transformers directory."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from zoo.adapters.hello import (ADAPTER_NAME, FeatureEncoder, HelloProjector, add_projector_adapters, class_mean_features,
                                init_head, load_projector, projector_loss, projector_payload_bytes, save_projector)
from zoo.models.convnet import ConvNet


def _projector(seed=0, normalize=True, head_init="class_means", adapters=True):
    torch.manual_seed(seed)
    enc = ConvNet(num_classes=0, widths=(8, 16, 32), convs_per_stage=1)
    with torch.no_grad():  # non-trivial BN statistics so that eval mode matters
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    p = HelloProjector(FeatureEncoder(enc), 32, 10, normalize=normalize, logit_scale=10.0, head_init=head_init)
    init_head(p, torch.randn(10, 32, generator=torch.Generator().manual_seed(seed + 1)))
    if adapters:
        add_projector_adapters(p, encoder_rank=2, head_rank=4)
    return p


def _x(n=6, seed=3):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("normalize", [True, False])
def test_zero_initialised_adapters_reproduce_the_initial_head(normalize):
    plain = _projector(normalize=normalize, adapters=False).eval()
    adapted = _projector(normalize=normalize, adapters=True).eval()
    x = _x()
    expected = plain(x)
    torch.testing.assert_close(adapted(x), expected, rtol=0, atol=1e-6)
    # the same predictions also in train mode (the encoder stays in eval mode: BN running statistics)
    torch.testing.assert_close(adapted.train()(x), expected, rtol=0, atol=1e-6)
    # and a non-zero adapter does change them (the comparison above can fail)
    with torch.no_grad():
        adapted.head.deltas[ADAPTER_NAME].up.normal_()
    assert not torch.allclose(adapted(x), expected, atol=1e-3)


def test_only_adapter_parameters_train_and_the_encoder_statistics_stay():
    p = _projector().train()
    trainable = {n for n, q in p.named_parameters() if q.requires_grad}
    assert trainable and all(f".deltas.{ADAPTER_NAME}." in n for n in trainable)
    assert any(n.startswith("head.") for n in trainable) and any(n.startswith("encoder.") for n in trainable)
    before = {k: v.clone() for k, v in p.state_dict().items()}
    opt = torch.optim.SGD([q for q in p.parameters() if q.requires_grad], lr=0.5)
    x, y = _x(8), torch.arange(8) % 10
    teacher = torch.randn(8, 10)
    for _ in range(2):
        opt.zero_grad()
        loss, parts = projector_loss(p(x), [teacher, teacher * 0.5], y, kind="kl", ce_weight=0.5)
        loss.backward()
        opt.step()
    after = p.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all(f".deltas.{ADAPTER_NAME}." in k for k in changed), sorted(changed)
    # every up projection moved (they started at zero)
    ups = [k for k in trainable if k.endswith(".up")]
    assert ups and all(k in changed for k in ups)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_round_trip_and_stored_size(tmp_path, dtype):
    p = _projector(seed=0)
    with torch.no_grad():
        for n, q in p.named_parameters():
            if q.requires_grad:
                q.normal_(0, 0.05)
    path = tmp_path / "projector.safetensors"
    size = save_projector(p, path, storage_dtype=dtype)
    assert size == os.path.getsize(path)
    payload = projector_payload_bytes(p, dtype)
    assert 0 < payload < size < payload + 4096  # tensors + a small header
    # a projector built the same way but with another head (class means are stored) and zero adapters
    q = _projector(seed=0)
    with torch.no_grad():
        q.head.base.weight.zero_()
    load_projector(q, path)
    x = _x()
    if dtype == "float32":
        torch.testing.assert_close(q.eval()(x), p.eval()(x), rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(q.eval()(x), p.eval()(x), rtol=0, atol=5e-2)


def test_text_initialised_head_is_not_stored_and_a_missing_head_is_an_error(tmp_path):
    text = _projector(head_init="text")
    means = _projector(head_init="class_means")
    assert projector_payload_bytes(means) - projector_payload_bytes(text) == (10 * 32 + 10) * 2
    save_projector(text, tmp_path / "t.safetensors")
    with pytest.raises(RuntimeError, match="class means"):
        load_projector(means, tmp_path / "t.safetensors")
    with pytest.raises(FileNotFoundError):
        load_projector(means, tmp_path / "missing.safetensors")


def test_class_mean_head_is_the_nearest_class_mean_rule():
    torch.manual_seed(0)
    centres = torch.randn(3, 5) * 4

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    p = HelloProjector(Identity(), 5, 3, normalize=False, logit_scale=1.0)
    y = torch.arange(60) % 3
    x = centres[y] + 0.3 * torch.randn(60, 5)
    means = class_mean_features(p, [(x[:30], y[:30]), (x[30:], y[30:])])
    torch.testing.assert_close(means, torch.stack([x[y == c].mean(0) for c in range(3)]), rtol=1e-5, atol=1e-5)
    init_head(p, means)
    q = torch.randn(40, 5) * 4
    nearest = torch.cdist(q, means).argmin(1)
    assert torch.equal(p(q).argmax(1), nearest)
    with pytest.raises(ValueError, match="no sample of class"):
        class_mean_features(p, [(x[y < 2], y[y < 2])])


def test_projector_loss_kinds_and_teacher_average():
    s = torch.randn(4, 10)
    loss, parts = projector_loss(s, s.clone(), None, kind="kl")
    assert abs(float(loss)) < 1e-6
    t1, t2 = torch.randn(4, 10), torch.randn(4, 10)
    both, _ = projector_loss(s, [t1, t2], None, kind="mse")
    one = projector_loss(s, t1, None, kind="mse")[0]
    two = projector_loss(s, t2, None, kind="mse")[0]
    torch.testing.assert_close(both, (one + two) / 2)
    y = torch.tensor([0, 1, 2, 3])
    with_ce, parts = projector_loss(s, t1, y, kind="kl", ce_weight=0.5, temperature=2.0)
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t1 / 2, -1), reduction="batchmean") * 4
    torch.testing.assert_close(with_ce, kl + 0.5 * F.cross_entropy(s, y))
    with pytest.raises(ValueError, match="kind"):
        projector_loss(s, t1, None, kind="l1")


@pytest.mark.parametrize("kind", ["kl", "mse"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_projector_loss_gradients_are_bit_for_bit_the_former_formula(kind, temperature):
    """projector_loss (KL through zoo.losses.distillation_kl) back-propagates exactly what its former own KL did
    with several teachers, so a projector trains to the same weights as before."""
    g = torch.Generator().manual_seed(2)
    s, y = torch.randn(37, 10, generator=g) * 3, torch.arange(37) % 10
    teachers = [torch.randn(37, 10, generator=g) * 3 for _ in range(3)]
    a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
    T, scaled, old = temperature, a / temperature, a.new_zeros(())
    for t in teachers:
        p_t = F.softmax(t / T, -1)
        if kind == "kl":
            old = old + F.kl_div(F.log_softmax(scaled, -1), p_t, reduction="batchmean") * T ** 2
        else:
            old = old + ((F.softmax(scaled, -1) - p_t) ** 2).sum(-1).mean()
    (old / 3 + 0.5 * F.cross_entropy(a, y)).backward()
    projector_loss(b, teachers, y, kind=kind, temperature=T, ce_weight=0.5)[0].backward()
    assert torch.equal(a.grad, b.grad)


def test_clip_image_tower_from_a_local_transformers_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    from zoo.adapters.hello import load_clip

    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=12)
    transformers.CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    model, enc, dim, backend = load_clip(tmp_path / "clip")
    assert backend == "transformers" and dim == 12
    p = HelloProjector(enc, dim, 3, logit_scale=100.0, head_init="text")
    init_head(p, torch.randn(3, 12))
    add_projector_adapters(p, encoder_rank=2, head_rank=2)
    out = p(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3)
    assert any("encoder.backbone.vision_model" in n for n, q in p.named_parameters() if q.requires_grad)


# ---------------------------------------------------------------------------------------------- the adaptation method
def test_hello_projector_method_is_registered_and_its_section_validated():
    from zoo.adapters.base import adapter_names, build_adapter
    from zoo.adapters.hello import HelloProjectorMethod
    from zoo.errors import ConfigError

    assert "hello_projector" in adapter_names()
    method = build_adapter({"name": "hello_projector", "encoder_rank": 2, "head_rank": 4})
    assert isinstance(method, HelloProjectorMethod) and method.config.storage_dtype == "float16"
    with pytest.raises(ConfigError, match="adapter.head_ranks"):
        build_adapter({"name": "hello_projector", "head_ranks": 4})
    with pytest.raises(ConfigError, match="not both 0"):
        build_adapter({"name": "hello_projector", "encoder_rank": 0, "head_rank": 0})
    with pytest.raises(ConfigError, match="storage_dtype"):
        build_adapter({"name": "hello_projector", "storage_dtype": "int8"})
    with pytest.raises(ConfigError, match="HeLlO projector"):
        method.apply(ConvNet(num_classes=3, widths=(8,), convs_per_stage=1))


def _trained(p):
    with torch.no_grad():
        for q in p.parameters():
            if q.requires_grad:
                q.normal_(0, 0.05)
    return p


def test_method_trains_checkpoints_and_stores_the_projector(tmp_path):
    from zoo.adapters.base import ADAPTER_CONFIG_FILE, AdapterMethod, build_adapter

    method = build_adapter({"name": "hello_projector", "encoder_rank": 2, "head_rank": 4, "storage_dtype": "float32"})
    p = _projector(adapters=False)
    method.apply(p)
    assert {id(q) for q in method.trainable_parameters(p)} == {id(q) for q in p.parameters() if q.requires_grad}
    _trained(p)
    state = method.state_dict(p)  # checkpoints: only the trained adapters
    assert state and all(f".{ADAPTER_NAME}." in k for k in state) and "head.weight" not in state
    out = method.save(p, tmp_path / "proj")
    assert (out / ADAPTER_CONFIG_FILE).is_file() and (out / "projector.safetensors").is_file()
    # a fresh projector with another head (class means are stored) and no adapters yet
    q = _projector(seed=0, adapters=False)
    with torch.no_grad():
        q.head.weight.zero_()
    AdapterMethod.from_saved(out).load(q, out)
    x = _x()
    torch.testing.assert_close(q.eval()(x), p.eval()(x), rtol=0, atol=1e-6)
    # switched off: the projector's initial head; back on: the adapted one
    method.disable(q)
    torch.testing.assert_close(q(x), _projector(seed=0, adapters=False).eval()(x), rtol=0, atol=1e-6)
    method.enable(q)
    torch.testing.assert_close(q(x), p(x), rtol=0, atol=1e-6)
    # checkpoint state round trip (strict)
    r = _projector(seed=0)
    method.load_state_dict(r, state)
    torch.testing.assert_close(r.eval()(x), p(x), rtol=0, atol=1e-6)


def test_a_projector_file_written_before_the_method_loads_and_the_method_writes_the_same_bytes(tmp_path):
    from zoo.adapters.base import build_adapter

    p = _trained(_projector(seed=0))
    old = tmp_path / "old" / "projector.safetensors"
    save_projector(p, old, "float16", {"encoder_rank": 2, "head_rank": 4})  # what hello_distill wrote before
    method = build_adapter({"name": "hello_projector", "encoder_rank": 2, "head_rank": 4})
    new = method.save(p, tmp_path / "new") / method.weights_file
    # the same file (safetensors orders the header's metadata at random): same size, so the reported label bytes
    # do not change, same metadata and tensors
    from safetensors import safe_open

    assert new.stat().st_size == old.stat().st_size
    with safe_open(str(new), "pt") as a, safe_open(str(old), "pt") as b:
        assert a.metadata() == b.metadata() and a.keys() == b.keys()
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    q = _projector(seed=0, adapters=False)
    method.load(q, old)  # the file alone (no adapter_config.json), adapters added on the way
    want = _projector(seed=0)
    load_projector(want, old)
    x = _x()
    torch.testing.assert_close(q.eval()(x), want.eval()(x), rtol=0, atol=0)
    assert method.payload_bytes(q) == projector_payload_bytes(want)
