"""Registry: create_model, list_models, model_info, helpful errors, timm delegation."""
from __future__ import annotations

import pytest
import torch

import toys  # noqa: F401  (registers toy_mlp)
import zoo
from zoo.registry import create_model, list_models, model_info


def test_create_and_list():
    model = create_model("toy_mlp", num_classes=5)
    assert model(torch.randn(2, 8)).shape == (2, 5)
    assert "toy_mlp" in list_models("toy_*")
    assert list_models("toy_*", pretrained=True) == []  # its cfg names no weights
    assert zoo.create_model is create_model


def test_list_models_patterns_and_sorting():
    names = list_models()
    assert names == list_models("*")
    assert set(list_models(["toy_*", "nothing*"])) == {"toy_mlp"}
    assert "toy_mlp" not in list_models(exclude_filters="toy_*")


def test_none_kwargs_are_dropped():
    assert create_model("toy_mlp", num_classes=None).num_classes == 3


def test_unknown_name_lists_closest():
    with pytest.raises(KeyError, match=r"Unknown model 'toy_mpl'.*Did you mean: toy_mlp"):
        create_model("toy_mpl")


def test_unknown_kwarg_lists_accepted():
    with pytest.raises(TypeError, match=r"unexpected argument 'num_class'.*Did you mean: num_classes"):
        create_model("toy_mlp", num_class=4)


def test_model_info():
    info = model_info("toy_mlp")
    assert info["name"] == "toy_mlp" and info["module"] == "toys" and info["pretrained_cfg"]["num_classes"] == 3
    assert info["has_weights"] is False


def test_model_has_pretrained_cfg():
    assert create_model("toy_mlp").pretrained_cfg.architecture == "toy_mlp"


def test_timm_delegation():
    model = create_model("timm/resnet18", num_classes=3, in_chans=1).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)


def test_timm_unknown_name():
    with pytest.raises(KeyError, match="Unknown timm model 'resnet1800'"):
        create_model("timm/resnet1800")
