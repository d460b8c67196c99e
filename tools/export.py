#!/usr/bin/env python3
"""Export a child of a trained BigNAS supernet as a standalone model (and as ONNX).

    # a child of a supernet run: BN statistics recalibrated on the config's training split, then written out
    python tools/export.py --config configs/bignas/mnist_supernet.yaml --checkpoint runs/x/supernet/last.pt \\
        --arch max --output exported/max --onnx
    python tools/export.py --config configs/bignas/mnist_supernet.yaml --checkpoint runs/x/supernet/last.pt \\
        --arch '{"resolution": 24, "stem": 8, ...}' --output exported/c1
    # a child a search already exported (runs/x/search/children/<tag>/): add its ONNX file
    python tools/export.py --child runs/x/search/children/mflops_0.8 --onnx

Writes ``OUTPUT/model.safetensors`` + ``OUTPUT/config.json`` (``zoo.models.bignas.load_child(OUTPUT)``, or
``create_model("bignas_child", **config["kwargs"], checkpoint_path=OUTPUT/model.safetensors)``) and, with
``--onnx``, ``OUTPUT/model.onnx`` (dynamic batch), checked with onnxruntime against the PyTorch child when
onnxruntime is installed (``pip install -e .[export]``: onnx, onnxruntime, onnxscript). ``--arch`` is ``max``,
``min``, a JSON dict, or a path to a JSON file holding one. Extra ``key=value`` arguments override the config.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ONNX_ATOL = 1e-4


def parse_arch(text: str, supernet) -> dict:
    """``max`` / ``min`` / a JSON dict / a JSON file path -> an arch dict of ``supernet``'s space."""
    if text in ("max", "min"):
        return supernet.max_subnet() if text == "max" else supernet.min_subnet()
    from zoo.errors import ConfigError

    path = Path(text)
    try:
        arch = json.loads(path.read_text()) if path.is_file() else json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch: {text!r} is neither max/min, a JSON dict nor a JSON file ({exc})") from None
    return supernet.validate_arch(arch)


def export_from_supernet(config: str, checkpoint: str, arch: str, output: str | Path, overrides=(),
                         calib_batches: int | None = None) -> Path:
    """Load the supernet of ``config`` with ``checkpoint``, recalibrate BN for ``arch`` on the config's training
    split, and write the child into ``output``. Returns the output directory."""
    from zoo.cli import build_recipe
    from zoo.engine.batchnorm import recalibrate_batchnorm
    from zoo.errors import ConfigError
    from zoo.hub import load_checkpoint
    from zoo.models.bignas import save_child
    from zoo.recipes.supernet import SupernetRecipe

    recipe, cfg, _ = build_recipe(config, list(overrides))
    if not isinstance(recipe, SupernetRecipe):
        raise ConfigError(f"--config {config}: expected a 'supernet' recipe config, got '{cfg.recipe}'")
    net = recipe.build_model()
    load_checkpoint(net, checkpoint, what="--checkpoint (a supernet run's last.pt or run directory)")
    chosen = parse_arch(arch, net)
    net.set_subnet(chosen)
    n = cfg.supernet.bn_calibration_batches if calib_batches is None else calib_batches
    recalibrate_batchnorm(net, recipe.calibration_batches(chosen["resolution"], n))
    out = Path(output)
    save_child(net.export_subnet(chosen).eval(), out, source=f"{cfg.model['name']} {checkpoint}")
    return out


def export_onnx(child: torch.nn.Module, path: str | Path, batch: int = 2, check: bool = True,
                dynamo: bool = False) -> dict:
    """Write ``child`` (a static BigNAS child) as ONNX with a dynamic batch axis; with ``check`` and onnxruntime
    installed, compare its outputs to PyTorch's on random input (max abs error <= ``ONNX_ATOL``). Returns
    ``{"path", "checked", "max_abs_error"}``.

    ``dynamo=False`` uses torch's TorchScript exporter (deprecated by torch but ~5x faster here, and what the tests
    use); ``dynamo=True`` the torch.export-based one (needs onnxscript)."""
    child = child.eval()
    r = int(child.arch["resolution"])
    x = torch.rand(batch, child.in_chans, r, r, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install -e .[export] "
                          "(onnx, onnxruntime, onnxscript)") from None
    if dynamo:
        torch.onnx.export(child, (x,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True)
    else:
        torch.onnx.export(child, (x,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    info = {"path": str(path), "checked": False, "max_abs_error": None}
    if not check:
        return info
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: the ONNX file was not checked (pip install onnxruntime)", file=sys.stderr)
        return info
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.rand(batch + 1, child.in_chans, r, r, generator=torch.Generator().manual_seed(1))  # another batch size
    with torch.no_grad():
        want = child(x3).numpy()
    got = sess.run(["logits"], {"images": x3.numpy()})[0]
    err = float(abs(got - want).max())
    if not err <= ONNX_ATOL:
        raise RuntimeError(f"ONNX export of {path}: onnxruntime's logits differ from PyTorch's by {err:.2e} "
                           f"(> {ONNX_ATOL}); the file is not usable")
    info.update(checked=True, max_abs_error=err)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value), with --config")
    parser.add_argument("--config", help="the supernet run's config (e.g. runs/x/supernet/config.yaml)")
    parser.add_argument("--checkpoint", help="the supernet run's last.pt / best.pt")
    parser.add_argument("--arch", default="max", help="max | min | JSON dict | JSON file")
    parser.add_argument("--output", help="output directory (model.safetensors, config.json, model.onnx)")
    parser.add_argument("--calib-batches", type=int, default=None, help="BN recalibration batches (default: config's)")
    parser.add_argument("--child", help="an already exported child directory (instead of --config/--checkpoint)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx, checked with onnxruntime")
    parser.add_argument("--dynamo", action="store_true", help="ONNX through torch.export (default: TorchScript)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from zoo.models.bignas import load_child

    if args.child:
        out = Path(args.child)
    elif args.config and args.checkpoint and args.output:
        out = export_from_supernet(args.config, args.checkpoint, args.arch, args.output, args.overrides,
                                   args.calib_batches)
    else:
        parser.error("give --child DIR, or --config, --checkpoint and --output")
    child = load_child(out)
    print(f"child: {out}/model.safetensors + config.json ({json.loads((out / 'config.json').read_text())['mflops']:.3f}"
          f" MFLOPs, {sum(p.numel() for p in child.parameters())} parameters)")
    if args.onnx:
        info = export_onnx(child, out / "model.onnx", dynamo=args.dynamo)
        print(f"onnx: {info['path']}" + (f" (onnxruntime max abs error {info['max_abs_error']:.1e})"
                                         if info["checked"] else " (not checked)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
