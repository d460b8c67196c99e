"""NAFNet: forward/backward, padding of odd sizes, state-dict round trip, the official ``{'params': ...}``
checkpoint layout loading strictly, TLC, and parity with the official ``NAFNet_arch.py`` when it is available
offline (``$NAFNET_OFFICIAL_DIR`` = a megvii-research/NAFNet checkout, or the fetched mirror)."""
from __future__ import annotations

import types

import pytest
import torch

from official_code import imported_official, official_sources
from zoo.models.nafnet import LocalAvgPool2d, NAFNet
from zoo.registry import create_model

_FILES = ("basicsr/models/archs/NAFNet_arch.py", "basicsr/models/archs/arch_util.py",
          "basicsr/models/archs/local_arch.py")


def _tiny(**kw):
    torch.manual_seed(0)
    return NAFNet(width=8, middle_blk_num=1, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1), **kw)


def _randomise(model):
    """Non-zero beta/gamma and random weights, so every block does something."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_forward_shape_odd_sizes_and_backward():
    model = _randomise(_tiny()).train()
    x = torch.rand(2, 3, 13, 10, requires_grad=True)
    y = model(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    # padding: the odd image equals the top-left crop of the output for the explicitly zero-padded image
    model.eval()
    with torch.no_grad():
        x = torch.rand(1, 3, 13, 10)
        padded = torch.nn.functional.pad(x, (0, 2, 0, 3))
        torch.testing.assert_close(model(x), model(padded)[:, :, :13, :10])


def test_input_errors():
    model = _tiny().eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*channels-last"):
        model(torch.rand(1, 8, 8, 3))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="as many decoder"):
        NAFNet(enc_blk_nums=(1, 1), dec_blk_nums=(1,))


def test_registered_variants_shapes():
    m = create_model("nafnet_width32")
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(29.1e6, rel=0.01)
    assert [len(s) for s in m.encoders] == [2, 2, 4, 8] and len(m.middle_blks) == 12
    g = create_model("nafnet_gopro_width32", tlc=True)
    assert [len(s) for s in g.encoders] == [1, 1, 1, 28] and g.tlc
    assert isinstance(g.encoders[0][0].sca[0], LocalAvgPool2d)
    assert g.encoders[0][0].sca[0].kernel_size == (384, 384) and g.middle_blks[0].sca[0].kernel_size == (24, 24)
    t = create_model("nafnet_tiny")
    assert t(torch.rand(1, 3, 20, 20)).shape == (1, 3, 20, 20)
    feats = t.forward_intermediates(torch.rand(1, 3, 16, 16), intermediates_only=True)
    assert [f.shape[1:] for f in feats] == [(16, 16, 16), (32, 8, 8), (64, 4, 4)]


def test_official_params_layout_loads_strictly(tmp_path):
    src = _randomise(create_model("nafnet_tiny")).eval()
    path = tmp_path / "NAFNet-official.pth"
    torch.save({"params": src.state_dict()}, path)
    dst = create_model("nafnet_tiny", checkpoint_path=str(path)).eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    bad = dict(src.state_dict())
    bad["extra.weight"] = bad.pop("intro.weight")
    torch.save({"params": bad}, path)
    with pytest.raises(RuntimeError, match=r"missing key.*intro.weight.*unexpected key.*extra.weight"):
        create_model("nafnet_tiny", checkpoint_path=str(path))


def test_local_avg_pool_matches_direct_box_mean():
    x = torch.rand(1, 2, 9, 11)
    pool = LocalAvgPool2d((4, 5))
    out = pool(x)
    assert out.shape == x.shape
    # interior pixel (valid window) = plain mean of the window starting at the same offset
    ref = torch.nn.functional.avg_pool2d(x, (4, 5), stride=1)  # (1, 2, 6, 7), replicate-padded by (1,2,2,2)
    torch.testing.assert_close(out[:, :, 1:7, 2:9], ref)
    torch.testing.assert_close(LocalAvgPool2d((20, 20))(x), x.mean((2, 3), keepdim=True))


# ------------------------------------------------------------------------------------ official parity
@pytest.fixture()
def official(tmp_path):
    sources = official_sources(_FILES, "NAFNET_OFFICIAL_DIR", "megvii-research/NAFNet")
    if sources is None:
        pytest.skip("official NAFNet code not available offline (set NAFNET_OFFICIAL_DIR to a checkout)")
    utils = types.ModuleType("basicsr.utils")
    utils.get_root_logger = lambda *a, **k: None
    with imported_official(tmp_path, sources, "basicsr.models.archs.NAFNet_arch",
                           packages=("basicsr", "basicsr/models", "basicsr/models/archs"),
                           stubs={"basicsr.utils": utils}) as module:
        yield module


_OFFICIAL_WARNINGS = pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning")


@_OFFICIAL_WARNINGS
@pytest.mark.parametrize("cfg", [dict(width=8, middle_blk_num=2, enc_blk_nums=[1, 2], dec_blk_nums=[2, 1]),
                                 dict(width=4, middle_blk_num=1, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1])])
def test_matches_official_nafnet(official, cfg):
    torch.manual_seed(0)
    ref = official.NAFNet(img_channel=3, **cfg)
    _randomise(ref).eval()
    ours = NAFNet(**cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, 3, 19, 22)
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    print("max abs diff", diff)
    assert diff < 1e-4, diff
    # gradients agree too (the official LayerNorm2d has a hand-written backward)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(xr).sum().backward()
    ours(xo).sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-4, atol=1e-5)


@_OFFICIAL_WARNINGS
def test_tlc_matches_official_nafnet_local(official):
    cfg = dict(width=4, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    torch.manual_seed(0)
    ref = official.NAFNetLocal(img_channel=3, train_size=(1, 3, 16, 16), **cfg)
    _randomise(ref).eval()
    with torch.no_grad():  # strong channel attention and residual branches, so the pooling matters
        for name, p in ref.named_parameters():
            if ".sca." in name or name.endswith(("beta", "gamma")):
                p.mul_(10)
    ours = NAFNet(tlc=True, train_size=(16, 16), **cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    # larger than 1.5 x 16 and far from uniform: local windows really see other statistics than the global mean
    ramp = torch.linspace(0, 3, 36).view(1, 1, 1, 36) * (torch.arange(40) > 20).view(1, 1, 40, 1)
    x = torch.rand(1, 3, 40, 36) * 0.1 + ramp
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
        glob = (NAFNet(**cfg).eval().requires_grad_(False))
        glob.load_state_dict(ref.state_dict())
        assert (glob(x) - ref(x)).abs().max() > 1e-3  # TLC changes the output: the test can fail
    print("max abs diff", diff)
    assert diff < 1e-4, diff
