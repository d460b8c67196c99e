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
