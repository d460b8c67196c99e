"""PointNet (and the small image ConvNet): shapes, gradients, the model contract (logits + auxiliary losses,
per-layer features), errors, registry."""
import pytest
import torch

from zoo.models.convnet import ConvNet, convnet_small, convnet_tiny
from zoo.models._contract import pop_auxiliary_losses
from zoo.models.pointnet import PointNet, TNet, feature_transform_regularizer, pointnet, pointnet_tiny
from zoo.registry import create_model, get_pretrained_cfg


def _small_pointnet(**kw):
    """The full architecture (both T-Nets) at small widths, to keep the test fast."""
    return PointNet(num_classes=5, embed_dims=(8, 8, 8, 16, 32), head_dims=(16, 8), **kw)


def _all_params_have_grad(model):
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_train_mode_logits_regulariser_and_gradients_everywhere():
    torch.manual_seed(0)
    model = _small_pointnet().train()
    # The T-Nets start at the identity with zero weights: perturb them so every parameter gets a gradient.
    with torch.no_grad():
        for tnet in (model.input_tnet, model.feature_tnet):
            tnet.transform.weight.normal_(std=0.01)
    x = torch.randn(2, 64, 3)
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5)
    losses = pop_auxiliary_losses(model)
    assert set(losses) == {"feat_transform_reg"} and model.auxiliary_losses() == {}
    reg = losses["feat_transform_reg"]
    _, trans_feat, _ = model._features(x)
    assert reg.ndim == 0 and reg > 0
    torch.testing.assert_close(reg, 0.001 * feature_transform_regularizer(trans_feat))
    (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])) + reg).backward()
    _all_params_have_grad(model)


def test_regulariser_off_and_eval_mode_keep_no_loss():
    model = _small_pointnet(feat_transform_reg=0.0).train()
    model(torch.randn(2, 64, 3))
    assert model.auxiliary_losses() == {}
    model = _small_pointnet().train()
    model(torch.randn(2, 64, 3))
    model.eval()(torch.randn(2, 64, 3))
    assert model.auxiliary_losses() == {}


def test_forward_intermediates_are_the_per_point_layer_outputs():
    model = _small_pointnet().eval()
    x = torch.randn(2, 64, 3)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        assert [tuple(f.shape) for f in feats] == [(2, 64, 8), (2, 64, 8), (2, 64, 8), (2, 64, 16), (2, 64, 32)]
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(feats[-1].amax(dim=1), final)  # the global feature is the max over points
        # layer 1 (before the feature T-Net) is taken after the transform, as layer 2 sees it
        xyz = torch.bmm(x, model.input_tnet(x.transpose(1, 2)))
        h = model.mlp1(xyz.transpose(1, 2))
        h = torch.bmm(h.transpose(1, 2), model.feature_tnet(h))
        torch.testing.assert_close(feats[1], h)
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2


def test_eval_mode_plain_logits_and_features():
    model = _small_pointnet().eval()
    x = torch.randn(2, 64, 3)
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features) == (2, 32)
    assert torch.allclose(model.forward_head(feats), logits)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 8)


def test_permutation_invariant():
    model = _small_pointnet().eval()
    x = torch.randn(2, 64, 3)
    assert torch.allclose(model(x), model(x[:, torch.randperm(64)]), atol=1e-5)


def test_tnet_starts_at_identity_and_regulariser():
    tnet = TNet(4, mlp_dims=(8, 16), fc_dims=(8, 8)).eval()
    assert torch.equal(tnet(torch.randn(3, 4, 10)), torch.eye(4).expand(3, 4, 4))
    assert feature_transform_regularizer(torch.eye(4).expand(3, 4, 4)) == 0
    assert torch.isclose(feature_transform_regularizer(2 * torch.eye(2)[None]), torch.tensor(18.0))  # ||4I - I||^2


def test_no_tnet_returns_logits_in_training():
    model = pointnet_tiny(num_classes=3).train()
    out = model(torch.randn(2, 64, 3))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    out.sum().backward()
    _all_params_have_grad(model)
    assert model.input_tnet is None and model.feature_tnet is None


def test_extra_channels():
    model = PointNet(num_classes=4, in_chans=6, embed_dims=(8, 8, 8, 16), head_dims=(8, 8)).eval()
    assert model(torch.randn(2, 32, 6)).shape == (2, 4)


def test_bad_input_errors():
    model = pointnet_tiny()
    with pytest.raises(ValueError, match=r"expects points of shape \(B, N, 3\).*got \(2, 3, 64\).*transpose"):
        model(torch.randn(2, 3, 64))
    with pytest.raises(ValueError, match=r"got \(64, 3\)"):
        model(torch.randn(64, 3))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.ones(2, 64, 3, dtype=torch.long))
    bad = torch.randn(3, 64, 3)
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"PointNet: 1 of the 3 point clouds.*batch indices: 0\).*drop_nonfinite=True"):
        model(bad)


def test_reset_classifier():
    model = pointnet_tiny(num_classes=10).eval()
    model.reset_classifier(7)
    assert model.num_classes == 7 and model(torch.randn(2, 16, 3)).shape == (2, 7)
    model.reset_classifier(0)
    assert model(torch.randn(2, 16, 3)).shape == (2, 32)


def test_create_model_and_cfg():
    model = create_model("pointnet", num_classes=5)
    assert isinstance(model, PointNet) and model.num_classes == 5 and model.num_features == 1024
    assert model.input_tnet is not None and model.feature_tnet is not None
    assert model.get_classifier() is model.head.fc3
    cfg = get_pretrained_cfg("pointnet")
    assert cfg.classifier == "head.fc3" and "head.fc3.weight" in model.state_dict()
    assert cfg.input_size == (1024, 3)
    assert 3.4e6 < sum(p.numel() for p in model.parameters()) < 3.6e6  # the paper's ~3.5M
    with pytest.raises(TypeError, match="num_clases"):
        create_model("pointnet_tiny", num_clases=5)


def test_checkpoint_round_trip(tmp_path):
    model = pointnet_tiny(num_classes=4).eval()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    loaded = create_model("pointnet_tiny", checkpoint_path=str(tmp_path / "ckpt.pt"), num_classes=4).eval()
    x = torch.randn(2, 16, 3)
    assert torch.equal(model(x), loaded(x))


# -- ConvNet --------------------------------------------------------------------------------------------------

def test_convnet_forward_backward_and_api():
    model = convnet_tiny(num_classes=10).train()
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.sum().backward()
    _all_params_have_grad(model)
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    assert model.forward_features(x).shape == (2, model.num_features) == (2, 32)
    assert torch.allclose(model.forward_head(model.forward_features(x)), model(x))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier() is model.head.fc


def test_convnet_small_size_and_cifar_input():
    model = convnet_small()
    assert 5e4 < sum(p.numel() for p in model.parameters()) < 1.5e5
    assert convnet_small(in_chans=3, num_classes=100).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert isinstance(create_model("convnet_small", num_classes=5), ConvNet)
    assert get_pretrained_cfg("convnet_small").classifier == "head.fc"


def test_convnet_bad_input_errors():
    model = convnet_tiny()
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, H, W\).*got \(1, 28, 28\).*unsqueeze\(0\)"):
        model(torch.randn(1, 28, 28))
    with pytest.raises(ValueError, match=r"got \(2, 28, 28, 1\).*permute"):
        model(torch.randn(2, 28, 28, 1))
    with pytest.raises(ValueError, match=r"H, W >= 4"):
        model(torch.randn(2, 1, 2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
