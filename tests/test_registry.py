"""Registry: create_model, list_models, model_info, helpful errors, timm delegation."""
from __future__ import annotations

import pytest
import torch

import toys  # (registers toy_mlp)
import zoo
from zoo.pretrained_cfg import PretrainedCfg
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


def _imported_modules(path) -> set[str]:
    """Every module a source file imports (at any level, lazily inside functions too)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_hub_registry_import_cycle(repo_root):
    """PretrainedCfg and its store live in the leaf zoo.pretrained_cfg: hub and registry import it, not each other."""
    from zoo import hub, pretrained_cfg, registry

    zoo_dir = repo_root / "zoo"
    assert not any(m.startswith("zoo.registry") for m in _imported_modules(zoo_dir / "hub.py"))
    assert not any(m.startswith("zoo.hub") for m in _imported_modules(zoo_dir / "registry.py"))
    assert not any(m.startswith(("zoo.hub", "zoo.registry")) for m in _imported_modules(zoo_dir / "pretrained_cfg.py"))
    assert hub.PretrainedCfg is pretrained_cfg.PretrainedCfg is registry.PretrainedCfg
    # the store registry fills is the one hub reads
    assert hub.lookup_pretrained_cfg("toy_mlp") is registry.get_pretrained_cfg("toy_mlp")


def test_pretrained_cfg_leaf_imports_alone():
    """zoo.pretrained_cfg imports in a fresh interpreter without pulling in hub, registry or torch."""
    import subprocess
    import sys

    code = ("import sys, importlib.util; spec = importlib.util.spec_from_file_location('pc', sys.argv[1]); "
            "m = sys.modules['pc'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.PretrainedCfg(file='x').has_weights, 'torch' in sys.modules)")
    from zoo import pretrained_cfg

    out = subprocess.run([sys.executable, "-c", code, pretrained_cfg.__file__], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "False"]


# ------------------------------------------------------------------------------------------------ weights as tags
def test_tagged_weights_and_their_alias_load_the_same_file():
    """timm's arch.tag names: pointramba_small.modelnet10 is pointramba_small with the ModelNet10 weights; the older
    name pointramba_small_modelnet10 is an alias of the same cfg and file."""
    from zoo.registry import get_pretrained_cfg

    tagged = create_model("pointramba_small.modelnet10", pretrained=True)
    alias = create_model("pointramba_small_modelnet10", pretrained=True)
    assert tagged.num_classes == alias.num_classes == 10
    assert all(torch.equal(a, b) for a, b in zip(tagged.state_dict().values(), alias.state_dict().values()))
    cfg = get_pretrained_cfg("pointramba_small.modelnet10")
    assert get_pretrained_cfg("pointramba_small_modelnet10") is cfg and tagged.pretrained_cfg is cfg
    assert (cfg.architecture, cfg.tag, cfg.name) == ("pointramba_small", "modelnet10", "pointramba_small.modelnet10")
    assert cfg.aliases == ("pointramba_small_modelnet10",)


def test_list_models_pretrained_lists_tags_not_aliases():
    names = list_models(pretrained=True)
    assert "pointramba_small.modelnet10" in names and "convnet_small.mnist32" in names
    assert "pointramba_small_modelnet10" not in names and "pointramba_small_modelnet10" in list_models()
    assert list_models("pointramba*", pretrained=True) == ["pointramba_small.modelnet10"]
    for name in names:  # every listed name builds with its weights
        assert "." in name and model_info(name)["has_weights"]


def test_tag_applies_the_constructor_arguments_its_weights_need():
    """convnet_small.mnist32 is convnet_small on 32x32 RGB: the cfg's model_args (in_chans=3) apply, with or
    without the weights; the plain architecture keeps its defaults."""
    assert create_model("convnet_small.mnist32").in_chans == 3
    assert create_model("convnet_small").in_chans == 1
    loaded = create_model("convnet_small.mnist32", pretrained=True)
    assert loaded(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_untagged_architecture_with_pretrained_loads_its_default_tag():
    """As timm: create_model("pointramba_small", pretrained=True) loads the first tag's weights."""
    plain = create_model("pointramba_small", pretrained=True)
    tagged = create_model("pointramba_small.modelnet10", pretrained=True)
    assert plain.pretrained_cfg.name == "pointramba_small.modelnet10" and plain.num_classes == 10
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), tagged.state_dict().values()))
    assert create_model("pointramba_small").num_classes == 40  # without pretrained: the architecture's default


def test_unknown_tag_names_the_tags():
    with pytest.raises(KeyError, match=r"Unknown weights tag 'modelnet40' of model 'pointramba_small'; its tags: "
                                       r"pointramba_small.modelnet10"):
        create_model("pointramba_small.modelnet40", pretrained=True)
    with pytest.raises(KeyError, match=r"Unknown model 'pointrmba_small'.*Did you mean: pointramba_small"):
        create_model("pointrmba_small.modelnet10")


def test_pipelines_are_listed_and_create_model_says_how_to_load_them():
    from zoo.registry import list_pipelines

    assert "tiny_t2i_mnist" in list_pipelines() and "tiny_t2i_mnist" not in list_models()
    with pytest.raises(KeyError) as err:
        create_model("tiny_t2i_mnist")
    msg = str(err.value)
    assert "is a pipeline" in msg and "from zoo.diffusion import load_pretrained_pipeline" in msg
    assert "load_pretrained_pipeline('tiny_t2i_mnist')" in msg and "zoo[diffusion]" in msg


# a registry entry declared as a model module does it: an untagged cfg and two tagged ones in default_cfgs
default_cfgs = {
    "toy_tagged": PretrainedCfg(num_classes=3, classifier="head"),
    "toy_tagged.five": PretrainedCfg(num_classes=5, classifier="head", file="five.safetensors"),
    "toy_tagged.wide": PretrainedCfg(num_classes=4, classifier="head", model_args={"hidden": 48}, file="w.safetensors",
                                     aliases=("toy_tagged_wide",)),
}


def _toy_tagged():
    from zoo.hub import build_model_with_cfg
    from zoo.registry import _MODELS, register_model

    if "toy_tagged" not in _MODELS._entries:
        def toy_tagged(pretrained=False, **kwargs):
            return build_model_with_cfg(toys.ToyMLP, "toy_tagged", pretrained, **kwargs)

        toy_tagged.__module__ = __name__
        register_model(toy_tagged)


def test_default_cfgs_tags_register_with_their_architecture(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from zoo.hub import sha256sum
    from zoo.registry import get_pretrained_cfg

    _toy_tagged()
    assert set(list_models("toy_tagged*", pretrained=True)) == {"toy_tagged.five", "toy_tagged.wide"}
    assert get_pretrained_cfg("toy_tagged_wide").name == "toy_tagged.wide"
    torch.manual_seed(1)
    wide = toys.ToyMLP(num_classes=4, hidden=48)
    save_file(wide.state_dict(), str(tmp_path / "w.safetensors"))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path))
    loaded = create_model("toy_tagged.wide", pretrained=True, pretrained_cfg_overlay={
        "sha256": sha256sum(tmp_path / "w.safetensors")})
    assert loaded.head.weight.shape == (4, 48) and torch.equal(loaded.head.weight, wide.head.weight)
    assert create_model("toy_tagged.five").num_classes == 5  # the tag's class count, weights or not
    assert create_model("toy_tagged").num_classes == 3
