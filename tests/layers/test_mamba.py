"""Mamba layer: mamba-ssm state-dict layout, initialisation, recurrent step == full forward, Block semantics."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo.layers.mamba import Block, InferenceParams, Mamba, MixerModel, RMSNorm, create_block, init_weights


def mamba_ssm_block_keys(prefix, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", rms_norm=False):
    """The keys and shapes mamba-ssm's create_block(...) produces, written from its source, not from our module."""
    d_inner = expand * d_model
    r = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
    keys = {
        "mixer.A_log": (d_inner, d_state), "mixer.D": (d_inner,),
        "mixer.in_proj.weight": (2 * d_inner, d_model),
        "mixer.conv1d.weight": (d_inner, 1, d_conv), "mixer.conv1d.bias": (d_inner,),
        "mixer.x_proj.weight": (r + 2 * d_state, d_inner),
        "mixer.dt_proj.weight": (d_inner, r), "mixer.dt_proj.bias": (d_inner,),
        "mixer.out_proj.weight": (d_model, d_inner),
        "norm.weight": (d_model,),
    }
    if not rms_norm:
        keys["norm.bias"] = (d_model,)
    return {f"{prefix}{k}": v for k, v in keys.items()}


@pytest.mark.parametrize("rms_norm", [False, True])
def test_stack_keys_match_mamba_ssm_and_load_strict(rms_norm):
    d_model, n = 24, 3
    layers = nn.ModuleList(create_block(d_model, ssm_cfg=dict(d_state=8), rms_norm=rms_norm, layer_idx=i)
                           for i in range(n))
    model = nn.Module()
    model.layers = layers
    expected = {}
    for i in range(n):
        expected.update(mamba_ssm_block_keys(f"layers.{i}.", d_model, d_state=8, rms_norm=rms_norm))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    synthetic = {k: torch.randn(shape) for k, shape in expected.items()}  # "saved by mamba-ssm"
    model.load_state_dict(synthetic, strict=True)
    assert torch.equal(model.layers[2].mixer.A_log, synthetic["layers.2.mixer.A_log"])
    assert [b.layer_idx for b in layers] == [0, 1, 2] and layers[1].mixer.layer_idx == 1


def test_mixer_model_keys():
    m = MixerModel(16, 2, ssm_cfg=dict(d_state=4), drop_path=0.1)
    keys = set(m.state_dict())
    assert {"norm_f.weight", "norm_f.bias"} <= keys
    assert set(mamba_ssm_block_keys("layers.1.", 16, d_state=4)) <= keys
    assert m(torch.randn(2, 5, 16), torch.randn(2, 5, 16)).shape == (2, 5, 16)


def test_mamba_init_statistics():
    torch.manual_seed(0)
    m = Mamba(64, d_state=16, dt_min=0.001, dt_max=0.1)
    assert m.d_inner == 128 and m.dt_rank == 4
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(128, 16))
    assert m.A_log.dtype == torch.float32 and m.D.dtype == torch.float32 and torch.all(m.D == 1)
    dt = torch.nn.functional.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= 0.001 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert dt.min() < 0.003 and dt.max() > 0.03  # log-uniform over the range
    bound = m.dt_rank ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.conv1d.bias is not None
    assert m.conv1d.groups == 128 and m.conv1d.padding == (3,)
    # a stack's init keeps dt_proj.bias (no_reinit) and zeroes other Linear biases
    blk = create_block(16, ssm_cfg=dict(bias=True))
    before = blk.mixer.dt_proj.bias.detach().clone()
    blk.apply(lambda mod: init_weights(mod, n_layer=4))
    assert torch.equal(blk.mixer.dt_proj.bias, before) and torch.all(blk.mixer.in_proj.bias == 0)


def test_dt_init_constant_and_errors():
    m = Mamba(32, dt_init="constant", dt_rank=8)
    assert torch.allclose(m.dt_proj.weight, torch.full_like(m.dt_proj.weight, 8 ** -0.5))
    with pytest.raises(NotImplementedError, match="dt_init"):
        Mamba(8, dt_init="bogus")
    with pytest.raises(ValueError, match=r"d_model=8"):
        Mamba(8)(torch.randn(1, 3, 7))


@pytest.mark.parametrize("prompt", [0, 3])
def test_step_matches_full_forward(prompt):
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, d_conv=4, layer_idx=0).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        full = m(x)
        params = InferenceParams(max_seqlen=9, max_batch_size=2)
        outs = [m(x[:, :prompt], inference_params=params)] if prompt else []
        for t in range(prompt, 9):
            params.seqlen_offset = t
            outs.append(m(x[:, t:t + 1], inference_params=params))
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)
    conv_state, ssm_state = params.key_value_memory_dict[0]
    assert conv_state.shape == (2, 32, 4) and ssm_state.shape == (2, 32, 4)


def test_allocate_inference_cache_and_layer_idx_required():
    m = Mamba(8, d_state=3)
    conv, ssm = m.allocate_inference_cache(5, 10)
    assert conv.shape == (5, 16, 4) and ssm.shape == (5, 16, 3) and not conv.any()
    with pytest.raises(ValueError, match="layer_idx"):
        m(torch.randn(1, 2, 8), inference_params=InferenceParams(2, 1))


def test_mamba_backward_cpu_matches_reference(monkeypatch):
    torch.manual_seed(0)
    m = Mamba(12, d_state=4)
    x = torch.randn(2, 17, 12)

    def grads(kernel):
        monkeypatch.setenv("ZOO_KERNEL", kernel)
        m.zero_grad()
        m(x).square().sum().backward()
        return {k: p.grad.clone() for k, p in m.named_parameters()}

    g_ref, g_cpu = grads("ref"), grads("cpu")
    for k in g_ref:
        torch.testing.assert_close(g_cpu[k], g_ref[k], rtol=1e-4, atol=1e-5, msg=k)


def test_block_add_norm_mixer_and_drop_path():
    torch.manual_seed(0)
    blk = create_block(8, ssm_cfg=dict(d_state=4), drop_path=0.5).eval()
    assert type(blk.drop_path).__name__ == "DropPath"
    h, r = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    out, res = blk(h, r)
    torch.testing.assert_close(res, h + r)
    torch.testing.assert_close(out, blk.mixer(blk.norm(h + r)))
    out0, res0 = blk(h)  # first block: the residual is the input itself
    torch.testing.assert_close(res0, h)
    blk.train()  # in training, whole samples of the incoming mixer output are dropped (or rescaled by 2)
    torch.manual_seed(1)
    _, res_t = blk(h, r)
    for i in range(2):
        assert torch.allclose(res_t[i], r[i]) or torch.allclose(res_t[i], r[i] + 2 * h[i])
    assert isinstance(create_block(8).drop_path, nn.Identity)


@pytest.mark.parametrize("rms_norm", [False, True])
def test_fused_add_norm_falls_back_to_same_math(rms_norm):
    torch.manual_seed(0)
    a = create_block(8, ssm_cfg=dict(d_state=4), rms_norm=rms_norm, residual_in_fp32=True).eval()
    b = create_block(8, ssm_cfg=dict(d_state=4), rms_norm=rms_norm, residual_in_fp32=True, fused_add_norm=True).eval()
    b.load_state_dict(a.state_dict())
    h, r = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    for x, y in zip(a(h, r), b(h, r)):
        torch.testing.assert_close(x, y)
    assert a(h, r)[1].dtype == torch.float32
    with pytest.raises(TypeError, match="fused_add_norm"):
        Block(8, lambda d: nn.Identity(), norm_cls=lambda d: nn.BatchNorm1d(d), fused_add_norm=True)


def test_rmsnorm():
    n = RMSNorm(6, eps=1e-6)
    assert [k for k, _ in n.named_parameters()] == ["weight"] and n.bias is None
    with torch.no_grad():
        n.weight.copy_(torch.arange(1.0, 7.0))
    x, res = torch.randn(3, 6), torch.randn(3, 6)
    expect = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * n.weight
    torch.testing.assert_close(n(x), expect)
    out, pre = n(x, residual=res, prenorm=True, residual_in_fp32=True)
    torch.testing.assert_close(pre, x + res)
    torch.testing.assert_close(out, n(x + res))


def test_mixer_model_intermediates_are_the_normed_residual_stream():
    """Layer i's feature is norm_f(hidden_i + residual_i), as the official PoinTramba MixerModelForSegmentation
    collects at its fetch_idx layers; the last one is what forward returns."""
    torch.manual_seed(0)
    m = MixerModel(16, 3, ssm_cfg=dict(d_state=4), drop_path=0.0).eval()
    x, pos = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    hidden, residual, want = x + pos, None, []
    for layer in m.layers:  # written out from the official forward
        hidden, residual = layer(hidden, residual)
        want.append(m.norm_f(hidden + residual))
    with torch.no_grad():
        final, feats = m.forward_intermediates(x, pos)
        assert len(feats) == 3
        for got, ref in zip(feats, want):
            torch.testing.assert_close(got, ref)
        torch.testing.assert_close(final, m(x, pos))
        torch.testing.assert_close(feats[-1], final)
        picked = m.forward_intermediates(x, pos, indices=[-1, 0], intermediates_only=True)
        torch.testing.assert_close(picked[0], want[2])
        torch.testing.assert_close(picked[1], want[0])
        early_final, early = m.forward_intermediates(x, pos, indices=[1], stop_early=True)
        torch.testing.assert_close(early[0], want[1])
        torch.testing.assert_close(early_final, want[1])
    with pytest.raises(ValueError, match=r"block index 3 is out of range for 3 blocks"):
        m.forward_intermediates(x, pos, indices=[3])
