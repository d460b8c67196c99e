"""SaRA on the adapter core: exact sparsity of updates, progressive re-selection, save/load/merge, the one-line optimiser."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from zoo.adapters import sara
from zoo.errors import CheckpointError
from zoo.adapters import model as adapter_model
from zoo.layers import lora


pytestmark = pytest.mark.usefixtures("one_thread")


class Small(nn.Module):
    """Linear (big enough for the rank loss), 1×1 and 3×3 convs, a norm: every SaRA code path."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pw = nn.Conv2d(8, 8, 1)
        self.norm = nn.GroupNorm(2, 8)
        self.fc1 = nn.Linear(8, 96)
        self.fc2 = nn.Linear(96, 80)
        with torch.no_grad():
            for m in (self.fc1, self.fc2, self.pw, self.conv):
                m.weight.mul_(0.05)

    def forward(self, x):
        h = self.norm(self.pw(torch.relu(self.conv(x)))).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(h)))


def _small(seed=0):
    torch.manual_seed(seed)
    return Small()


def _x(seed=1):
    return torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def _train(model, opt, steps, seed=1):
    for i in range(steps):
        model(_x(seed + i)).square().mean().backward()
        opt.step()
        opt.zero_grad()


def _plain_state(model):
    """State dict with wrapper names mapped back to the original module names, without adapter tensors."""
    return {k.replace(".base.", "."): v for k, v in model.state_dict().items() if ".deltas." not in k}


def test_lr_rule():
    assert sara.sara_lr(2e-3) == pytest.approx(1e-3 * math.exp(-0.7))
    assert sara.sara_lr(8e-4) == pytest.approx(7.56e-4, rel=1e-3)


@pytest.mark.parametrize("kernel", [True, False])
def test_only_selected_entries_change(kernel):
    model, pristine = _small(), _small()
    theta = 4e-3
    opt = sara.SaRAOptimizer(model, threshold=theta, lr=1e-3, kernel=kernel)
    selected = {n: (p.abs() < theta) for n, p in pristine.named_parameters()}
    assert opt.num_trainable() == sum(int(m.sum()) for m in selected.values()) > 0
    assert all(".deltas." in n for n, p in model.named_parameters() if p.requires_grad)
    _train(model, opt, 3)
    model(_x())  # the last update is written into the weights by the next forward
    now = _plain_state(model)
    for name, before in pristine.state_dict().items():
        changed = now[name] != before
        assert not (changed & ~selected[name]).any(), f"{name}: a frozen entry changed"
        assert torch.equal(now[name][~selected[name]], before[~selected[name]])  # bitwise
    assert sum(int((now[n] != p).sum()) for n, p in pristine.state_dict().items()) > 0.9 * opt.num_trainable()


def test_kernel_and_dense_then_gather_train_identically():
    a, b = _small(), _small()
    oa = sara.SaRAOptimizer(a, threshold=4e-3, lr=1e-3, kernel=True)
    ob = sara.SaRAOptimizer(b, threshold=4e-3, lr=1e-3, kernel=False)
    _train(a, oa, 3)
    _train(b, ob, 3)
    for pa, pb in zip(oa.param_groups[0]["params"], ob.param_groups[0]["params"]):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


def test_progressive_reselection_keeps_learned_values():
    model = _small()
    theta = 4e-3
    opt = sara.SaRAOptimizer(model, threshold=theta, lr=3e-3, progressive_iter=3, weight_decay=0.0)
    n0 = opt.num_trainable()
    _train(model, opt, 3)
    x = _x(9)
    with torch.no_grad():
        y_before = model(x)
    weights_before = {k: v.clone() for k, v in _plain_state(model).items()}
    # the 4th step re-selects: only entries whose current value is still below θ stay trainable
    still_small = sum(int((d.effective_values(p).abs() < theta).sum()) for _, _, d, p in sara.sara_entries(model))
    opt.reselect()
    assert opt.reselected and opt.num_trainable() == still_small < n0
    with torch.no_grad():
        assert torch.equal(model(x), y_before)  # already-learned values are kept
    frozen = {f"{ln}.{p}": (d.__getattr__(f"{p}_frozen_index").long(), d.__getattr__(f"{p}_frozen_values").clone())
              for ln, _, d, p in sara.sara_entries(model)}
    assert sum(i.numel() for i, _ in frozen.values()) == n0 - still_small
    for key, state in opt.state.items():  # moments of the kept entries are carried over
        assert state["exp_avg"].shape == key.shape and int(state["step"]) == 3
    _train(model, opt, 2, seed=20)
    model(x)
    after = _plain_state(model)
    for key, (idx, vals) in frozen.items():
        assert torch.equal(after[key].flatten()[idx], weights_before[key].flatten()[idx])  # frozen for good


def test_reselection_at_configured_step_and_resume_roundtrip():
    ref = _small()
    opt_ref = sara.SaRAOptimizer(ref, threshold=4e-3, lr=3e-3, progressive_iter=2)
    _train(ref, opt_ref, 2)
    assert not opt_ref.reselected
    _train(ref, opt_ref, 1, seed=5)
    assert opt_ref.reselected and opt_ref.sara_step == 3
    model_state = sara.sara_state_dict(ref)
    opt_state = copy.deepcopy(opt_ref.state_dict())
    # a fresh process: same pre-trained weights, fresh selection, then the checkpoint
    new = _small()
    opt_new = sara.SaRAOptimizer(new, threshold=4e-3, lr=3e-3, progressive_iter=2)
    sara.load_sara_state_dict(new, model_state)
    opt_new.load_state_dict(opt_state)
    assert opt_new.reselected and opt_new.num_trainable() == opt_ref.num_trainable()
    _train(ref, opt_ref, 2, seed=7)
    _train(new, opt_new, 2, seed=7)
    for pa, pb in zip(opt_ref.param_groups[0]["params"], opt_new.param_groups[0]["params"]):
        assert torch.equal(pa, pb)


def test_weight_decay_towards_zero_like_official():
    model = _small()
    opt = sara.SaRAOptimizer(model, threshold=4e-3, lr=0.1, weight_decay=0.5)
    entries = sara.sara_entries(model)
    params = opt.param_groups[0]["params"]
    with torch.no_grad():
        for p in params:
            p.fill_(1e-3)
    for p in params:
        p.grad = torch.zeros_like(p)  # Adam's update is 0; only the decay acts
    opt.step()
    for (_, _, d, name), p in zip(entries, params):
        w_old = d.orig(name) + 1e-3
        torch.testing.assert_close(d.orig(name) + p.detach(), w_old * (1 - 0.1 * 0.5))  # official: w *= 1 - lr·wd


def test_rank_loss_gradient_is_masked_nuclear_norm_gradient():
    model = _small()
    sara.apply_sara(model, threshold=4e-3)
    cands = sara._rank_candidates(model)
    assert [layer.base for layer, _ in cands] == [model.fc2.base]  # only the Linear with min side > 64
    loss = sara.sara_rank_loss(model, 0.5)
    loss.backward()
    delta = model.fc2.deltas["sara"]
    idx = delta.index("weight").long()
    w = model.fc2.base.weight.detach().flatten().clone()
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[idx] = True
    dense = (w * mask).view(80, 96).requires_grad_(True)
    want = 0.5 * torch.linalg.matrix_norm(dense, ord="nuc")
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(delta.values("weight").grad, dense.grad.flatten()[idx])
    assert sara.sara_rank_loss(_small(), 0.5).item() == 0.0  # no SaRA deltas: zero


def test_save_load_merge_identical_outputs(tmp_path):
    model = _small()
    opt = sara.SaRAOptimizer(model, threshold=4e-3, lr=3e-3, progressive_iter=2)
    _train(model, opt, 4)
    x = _x(3)
    with torch.no_grad():
        y = model(x)
    path = opt.save(tmp_path / "sara_weights.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["format"] == "zoo.sara" and float(meta["threshold"]) == 4e-3
    assert "fc2.weight.index" in keys and "conv.weight.values" in keys
    # plain model: merged straight into the weights, bit-identical
    plain = _small()
    sara.load_sara(plain, path)
    with torch.no_grad():
        assert torch.equal(plain(x), y)
    # SaRA-wrapped model: loaded into the deltas, then merged away
    wrapped = _small()
    sara.apply_sara(wrapped, threshold=1e-3)
    sara.load_sara(wrapped, path)
    with torch.no_grad():
        assert torch.equal(wrapped(x), y)
    merged = adapter_model.remove_adapters(wrapped, merge=True)
    assert not list(adapter_model.iter_lora_layers(merged))
    with torch.no_grad():
        assert torch.equal(merged(x), y)
    with pytest.raises(CheckpointError, match="not a SaRA weights file"):
        from safetensors.torch import save_file

        save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
        sara.load_sara(_small(), tmp_path / "x.safetensors")


def test_one_line_optimizer_on_a_plain_diffusers_loop(tmp_path):
    pytest.importorskip("diffusers")
    import torch.nn.functional as F

    from zoo.diffusion.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    unet, vae, text_encoder, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    pristine = copy.deepcopy(unet.state_dict())
    # ---- the only changed line: optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    optimizer = sara.SaRAOptimizer(unet, threshold=2e-2, lr=1e-3, progressive_iter=2, lambda_rank=1e-3)
    # ----
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    ids = tok(["a red dog", "a blue cat"], padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    unet.train()
    for step in range(3):
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (2,))
        pred = unet(scheduler.add_noise(latents, noise, t), t, text_encoder(ids)[0]).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)  # works: the values are parameters
        assert norm > 0
        optimizer.step()
        optimizer.zero_grad()
    assert optimizer.reselected
    n, n_tensors = optimizer.num_trainable(), len(optimizer.param_groups[0]["params"])
    assert 8 * n <= optimizer.state_bytes() <= 8 * n + 8 * n_tensors  # Adam moments (+ step counters) of the sparse set
    path = optimizer.save(tmp_path / "sara_weights.safetensors")
    fresh = build_tiny_pipeline().unet
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in pristine.items())
    sara.load_sara(fresh, path)
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.randn(1, 16, 32)
    unet.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x, t, e).sample, unet(x, t, e).sample)


def test_errors():
    with pytest.raises(TypeError, match="takes the model"):
        sara.SaRAOptimizer(_small().parameters())
    with pytest.raises(ValueError, match="no module"):
        sara.SaRAOptimizer(nn.Sequential(nn.ReLU()))
