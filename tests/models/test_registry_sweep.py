"""Every registered zoo model keeps the model contract (``zoo/models/_contract.py``, timm's), as timm's
``tests/test_models.py`` sweeps its registry: logits from ``forward`` in train and eval mode, gradients everywhere
(auxiliary losses included), a state-dict round trip, ``forward_features`` + ``forward_head``, pre-logits,
``forward_intermediates`` (indices, shapes, ``intermediates_only``, ``stop_early``), layer pruning,
``get_classifier`` / ``reset_classifier``, ``auxiliary_losses()``, non-finite point clouds refused.

Inputs come from the model's pretrained cfg ``input_size`` -- ``(N, 3)`` point clouds (at most 256 points) or
``(C, H, W)`` images (at most 64 x 64), to stay fast. The full-size ``pointramba`` (19.5M parameters, 2 x 256 Mamba tokens: seconds per
forward on 2 CPU cores, a whole sweep would take minutes) is marked slow and runs only the checks that depend on its
size (forward, gradients, features / head, cfg); the class-level checks run on the smaller variants of its class.

Part-segmentation models (a ``num_categories`` attribute, e.g. ``pointramba_partseg*``) take the object category as a
second input and give per-point outputs: ``forward(points, category) -> (B, N, num_classes)``, features / pre-logits
``(B, N, C)``, and their classifier is a kernel-1 ``Conv1d`` over ``(B, C, N)``; the checks below call them through
:func:`_args` / :func:`_classify` and expect those shapes. They have no ``prune_intermediate_layers`` (their head
needs the fetched layers).

Image-to-image models (no classes in their cfg, ``num_classes=None``: NAFNet) are swept with the checks that mean
something for them -- ``forward`` returns an image of the input's shape in train and eval mode, gradients reach every
parameter, the state dict round-trips, ``forward_intermediates`` -- and not the classifier ones.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.models._contract import pop_auxiliary_losses
from zoo.registry import get_pretrained_cfg, model_info

NAMES = [n for n in zoo.list_models() if model_info(n)["module"].startswith("zoo.models")]
IMAGE_TO_IMAGE = {n for n in NAMES if get_pretrained_cfg(n).num_classes is None}
SLOW = {"pointramba", "pointramba_partseg", "nafnet_width32", "nafnet_width64", "nafnet_gopro_width32",
        "nafnet_gopro_width64", "wrn28_10"}


def _params(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


MODELS = _params(NAMES)
LIGHT = [n for n in NAMES if n not in SLOW]  # class-level checks
CLASSIFIERS = _params([n for n in NAMES if n not in IMAGE_TO_IMAGE])
LIGHT_CLASSIFIERS = [n for n in LIGHT if n not in IMAGE_TO_IMAGE]
NUM_CLASSES = 5
BATCH = 2
MAX_POINTS = 256
MAX_SIDE = 64  # as timm's sweep caps its input sizes


def _input_size(name: str) -> tuple[int, ...]:
    cfg = get_pretrained_cfg(name)
    assert cfg.input_size, f"{name}: its pretrained cfg must give input_size"
    size = tuple(cfg.input_size)
    if len(size) == 2:  # (N, C) point cloud
        size = (min(size[0], MAX_POINTS), size[1])
    elif len(size) == 3:  # (C, H, W) image
        size = (size[0], min(size[1], MAX_SIDE), min(size[2], MAX_SIDE))
    return size


def _input(name: str, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, *_input_size(name), generator=torch.Generator().manual_seed(0))


def _is_partseg(model: nn.Module) -> bool:
    return getattr(model, "num_categories", None) is not None


def _args(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The positional inputs of ``model``: ``(x,)``, or ``(points, category)`` for a part-segmentation model."""
    if _is_partseg(model):
        return x, torch.arange(x.shape[0]) % model.num_categories
    return (x,)


def _out_shape(model: nn.Module, x: torch.Tensor, channels: int) -> tuple[int, ...]:
    """``(B, channels)``, ``(B, N, channels)`` per point for a part-segmentation model, the input's shape for an
    image-to-image model."""
    if model.pretrained_cfg.num_classes is None:
        return tuple(x.shape)
    return (x.shape[0], x.shape[1], channels) if _is_partseg(model) else (x.shape[0], channels)


def _classify(model: nn.Module, pre: torch.Tensor) -> torch.Tensor:
    """The classifier on pre-logits (a part-segmentation classifier is a Conv1d over ``(B, C, N)``)."""
    head = model.get_classifier()
    return head(pre.transpose(1, 2)).transpose(1, 2) if _is_partseg(model) else head(pre)


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    if name not in IMAGE_TO_IMAGE:
        kwargs.setdefault("num_classes", NUM_CLASSES)
    return zoo.create_model(name, **kwargs)


def _expected_shape(info: dict, x: torch.Tensor, tokens: int) -> tuple[int, ...]:
    if info["fmt"] == "NCHW":
        r = info["reduction"]
        return (x.shape[0], info["num_chs"], x.shape[2] // r, x.shape[3] // r)
    assert info["fmt"] == "NLC", info
    return (x.shape[0], tokens, info["num_chs"])


def test_sweep_is_not_empty():
    assert {"pointramba_tiny", "pointnet_tiny", "convnet_tiny"} <= set(LIGHT)
    assert SLOW <= set(NAMES) and "nafnet_tiny" in IMAGE_TO_IMAGE
    for name in SLOW:  # each slow model's class is also swept at a light size
        cls = type(zoo.create_model(name))
        assert any(type(zoo.create_model(n)) is cls for n in LIGHT), name


@pytest.mark.parametrize("name", MODELS)
def test_forward_is_logits_and_backward_reaches_every_parameter(name):
    model = _model(name).train()
    x = _input(name)
    logits = model(*_args(model, x))
    assert isinstance(logits, torch.Tensor) and logits.shape == _out_shape(model, x, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    aux = model.auxiliary_losses()
    assert isinstance(aux, dict) and all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in aux.values())
    assert model.auxiliary_losses() == {}, "auxiliary_losses() must clear what it returns"
    (logits.float().pow(2).mean() + sum(aux.values())).backward()
    unused = set(getattr(model, "params_without_grad", ()))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and n not in unused]
    assert not missing, f"{name}: parameters without gradient (auxiliary losses included): {missing[:10]}"

    model.eval()
    with torch.no_grad():
        out = model(*_args(model, x))
    assert isinstance(out, torch.Tensor) and out.shape == _out_shape(model, x, NUM_CLASSES)
    assert pop_auxiliary_losses(model) == {}, "an eval-mode forward keeps no auxiliary loss"


@pytest.mark.parametrize("name", LIGHT)
def test_state_dict_round_trip(name, tmp_path):
    src = _model(name).eval()
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(1)
    dst = _model(name, checkpoint_path=str(path)).eval()
    x = _input(name)
    with torch.no_grad():
        torch.testing.assert_close(dst(*_args(dst, x)), src(*_args(src, x)), rtol=0, atol=0)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_features_head_and_pre_logits(name):
    model = _model(name).eval()
    x = _input(name)
    with torch.no_grad():
        logits = model(*_args(model, x))
        feats = model.forward_features(*_args(model, x))
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape == _out_shape(model, x, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), logits)
        assert pre.shape == _out_shape(model, x, model.head_hidden_size)
        torch.testing.assert_close(_classify(model, pre), logits)  # pre-logits are the classifier's input


@pytest.mark.parametrize("name", LIGHT)
def test_forward_intermediates(name):
    model = _model(name).eval()
    x = _input(name)
    n = len(model.feature_info)
    assert n >= 2, f"{name}: feature_info lists {n} blocks"
    args = _args(model, x)
    with torch.no_grad():
        final, feats = model.forward_intermediates(*args)
        torch.testing.assert_close(final, model.forward_features(*args))
        assert len(feats) == n
        tokens = feats[0].shape[1]
        for info, f in zip(model.feature_info, feats):
            assert f.shape == _expected_shape(info, x, tokens), (info, tuple(f.shape))
        last2 = model.forward_intermediates(*args, indices=2, intermediates_only=True)
        assert isinstance(last2, list) and len(last2) == 2
        for got, want in zip(last2, feats[-2:]):
            torch.testing.assert_close(got, want)
        picked = model.forward_intermediates(*args, indices=[0, -1], intermediates_only=True)
        torch.testing.assert_close(picked[0], feats[0])
        torch.testing.assert_close(picked[1], feats[-1])
        early = model.forward_intermediates(*args, indices=[0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], feats[0])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(*args, indices=[n])
    with pytest.raises(ValueError, match="last"):
        model.forward_intermediates(*args, indices=n + 1)


@pytest.mark.parametrize("name", LIGHT_CLASSIFIERS)
def test_prune_intermediate_layers(name):
    model = _model(name).eval()
    if not hasattr(model, "prune_intermediate_layers"):
        pytest.skip(f"{type(model).__name__} has no prune_intermediate_layers")
    x = _input(name)
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
        assert model.prune_intermediate_layers([0]) == [0]
        assert len(model.feature_info) == 1
        torch.testing.assert_close(model.forward_intermediates(x, intermediates_only=True)[0], want)
        assert isinstance(model.get_classifier(), nn.Identity)
        assert model(x).shape == (BATCH, model.head_hidden_size)


@pytest.mark.parametrize("name", LIGHT_CLASSIFIERS)
def test_get_and_reset_classifier(name):
    model = _model(name).eval()
    x = _input(name)
    head = model.get_classifier()
    kind, outputs = (nn.Conv1d, "out_channels") if _is_partseg(model) else (nn.Linear, "out_features")
    assert isinstance(head, kind) and getattr(head, outputs) == NUM_CLASSES
    model.reset_classifier(3)
    assert model.num_classes == 3 and getattr(model.get_classifier(), outputs) == 3
    with torch.no_grad():
        assert model(*_args(model, x)).shape == _out_shape(model, x, 3)
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        assert model(*_args(model, x)).shape == _out_shape(model, x, model.head_hidden_size)


@pytest.mark.parametrize("name", LIGHT)
def test_nonfinite_point_clouds_are_refused(name):
    if len(_input_size(name)) != 2:
        pytest.skip("not a point-cloud model")
    model = _model(name).eval()
    x = _input(name, batch=3)
    x[1, 5, 0] = float("nan")
    x[2, 0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"2 of the 3 point clouds.*batch indices: 1, 2.*drop_nonfinite"):
        model(*_args(model, x))


@pytest.mark.parametrize("name", MODELS)
def test_model_cfg_is_consistent(name):
    cfg = get_pretrained_cfg(name)
    model = zoo.create_model(name)
    assert cfg.num_classes is None or model.num_classes == cfg.num_classes
    state = model.state_dict()
    for head in cfg.classifier_names:
        assert any(k.startswith(head + ".") for k in state), f"{name}: classifier '{head}' not in state dict"
