"""tools/export.py: a supernet child written as a standalone checkpoint + cfg that create_model loads, equal to the
supernet with that child active (after BN recalibration); its ONNX file gives the same outputs in onnxruntime."""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo.engine.batchnorm import recalibrate_batchnorm
from zoo.models.bignas import load_child, resize_input, save_child

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("zoo_tools_export", REPO / "tools" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _supernet():
    torch.manual_seed(0)
    model = zoo.create_model("bignas_mnist")
    with torch.no_grad():
        for b in model.residual_blocks():
            b.project.bn.weight.fill_(0.5)
    return model


def _write_mnist(root: Path, n: int = 64) -> None:
    from zoo.data.images.mnist import write_idx

    rng = np.random.default_rng(0)
    write_idx(root / "t10k-images-idx3-ubyte", (rng.random((n, 28, 28)) * 255).astype(np.uint8))
    write_idx(root / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))


@pytest.mark.parametrize("which", ["max", "min", "random"])
def test_export_from_supernet_equals_the_active_child(tmp_path, which):
    data = tmp_path / "mnist"
    data.mkdir()
    _write_mnist(data)
    net = _supernet()
    ckpt = tmp_path / "last.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    arch = {"max": net.max_subnet(), "min": net.min_subnet(), "random": net.sample_subnet(random.Random(2))}[which]
    overrides = [f"data.root={data}", "data.eval_batch_size=16", "data.train_split=test[:48]",
                 "data.eval_split=test[48:]"]
    config = str(REPO / "configs/bignas/mnist_supernet.yaml")
    out = _tool().export_from_supernet(config, str(ckpt), json.dumps(arch), tmp_path / "child", overrides,
                                       calib_batches=2)
    child = load_child(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "bignas_child" and cfg["kwargs"]["arch"] == arch
    again = zoo.create_model("bignas_child", **cfg["kwargs"], checkpoint_path=str(out / "model.safetensors")).eval()

    # the supernet with the same BN recalibration (same batches: the config's seeded training loader)
    from zoo.cli import build_recipe

    recipe, _, _ = build_recipe(config, overrides)

    net.set_subnet(arch)
    recalibrate_batchnorm(net, recipe.calibration_batches(arch["resolution"], 2))
    net.eval()
    x = resize_input(torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3)), arch["resolution"])
    with torch.no_grad():
        want = net(x)
        torch.testing.assert_close(child(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again(x), child(x), rtol=0, atol=0)
    assert (want[0] - want[1]).abs().max() > 1e-4  # outputs depend on the input (a real check)


@pytest.mark.parametrize("which", ["max", "min", "random"])
def test_onnx_export_matches_pytorch(tmp_path, which):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    net = _supernet()
    arch = {"max": net.max_subnet(), "min": net.min_subnet(), "random": net.sample_subnet(random.Random(4))}[which]
    net.set_subnet(arch)
    g = torch.Generator().manual_seed(0)
    recalibrate_batchnorm(net, [resize_input(torch.rand(16, 1, 28, 28, generator=g), arch["resolution"])])
    save_child(net.export_subnet(arch), tmp_path)
    child = load_child(tmp_path)
    info = _tool().export_onnx(child, tmp_path / "model.onnx")
    assert info["checked"] and info["max_abs_error"] <= 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    r = arch["resolution"]
    x = torch.rand(5, 1, r, r, generator=torch.Generator().manual_seed(9))
    got = sess.run(["logits"], {"images": x.numpy()})[0]
    with torch.no_grad():
        want = child(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert np.abs(want[0] - want[1]).max() > 1e-4


def test_cli_adds_onnx_to_an_exported_child(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    net = _supernet()
    save_child(net.export_subnet(net.min_subnet()), tmp_path / "c")
    assert _tool().main(["--child", str(tmp_path / "c"), "--onnx"]) == 0
    assert (tmp_path / "c" / "model.onnx").stat().st_size > 1000


def test_cli_needs_a_source(capsys):
    with pytest.raises(SystemExit):
        _tool().main(["--onnx"])
    assert "--child" in capsys.readouterr().err
