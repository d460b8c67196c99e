"""``zoo export`` (``tools/export.py``): a child of a trained BigNAS supernet as a standalone model (and as ONNX).

    # a child of a supernet run: BN statistics recalibrated on the config's training split, then written out
    zoo export --config configs/bignas/mnist_supernet.yaml --checkpoint runs/x/supernet/last.pt \\
        --arch max --output exported/max --onnx
    zoo export --config configs/bignas/mnist_supernet.yaml --checkpoint runs/x/supernet/last.pt --output exported/c1 \\
        --arch '{"resolution": 24, "stem": 8, "widths": [8, 16, 24], "depths": [1, 1, 1], "kernels": [3, 3, 3],
                 "expands": [3, 3, 3], "head": 64}'
    # a child a search already exported (runs/x/search/children/<tag>/): add its ONNX file
    zoo export --child runs/x/search/children/mflops_0p8 --onnx

Writes ``OUTPUT/model.safetensors`` + ``OUTPUT/config.json`` (``zoo.models.bignas.load_child(OUTPUT)``, or
``create_model("bignas_child", **config["kwargs"], checkpoint_path=OUTPUT/model.safetensors)``) and, with
``--onnx``, ``OUTPUT/model.onnx`` (dynamic batch), checked with onnxruntime against the PyTorch child when
onnxruntime is installed (``pip install 'zoo[export]'``: onnx, onnxruntime, onnxscript). ``--arch`` is ``max``,
``min``, a JSON dict with all seven keys (resolution, stem, widths, depths, kernels, expands, head: one value per
stage for the lists), or a path to a JSON file holding one. Extra ``key=value`` arguments override the config.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

import torch

from zoo.cli._common import fail
from zoo.errors import USER_ERRORS, ConfigError, MissingDependencyError

__all__ = ["parse_arch", "export_from_supernet", "export_onnx", "check_output_dir", "main", "ONNX_ATOL"]

ONNX_ATOL = 1e-4
ARCH_KEYS = ("resolution", "stem", "widths", "depths", "kernels", "expands", "head")


def parse_arch(text: str, supernet) -> dict:
    """``max`` / ``min`` / a JSON dict / a JSON file path -> an arch dict of ``supernet``'s space; a
    :class:`~zoo.errors.ConfigError` naming ``--arch``, what is wrong (every missing key) and a valid example."""
    if text in ("max", "min"):
        return supernet.max_subnet() if text == "max" else supernet.min_subnet()
    path = Path(text)
    example = json.dumps(supernet.min_subnet(), separators=(", ", ": "))
    try:
        arch = json.loads(path.read_text()) if path.is_file() else json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch: {text!r} is neither max/min, a JSON dict nor a JSON file ({exc}); e.g. --arch "
                          f"'{example}'") from None
    if not isinstance(arch, dict):
        raise ConfigError(f"--arch: expected a JSON dict with the keys {', '.join(ARCH_KEYS)}, got "
                          f"{type(arch).__name__}; e.g. --arch '{example}'")
    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise ConfigError(f"--arch: missing key(s) {', '.join(missing)}; an arch needs all {len(ARCH_KEYS)} keys "
                          f"({', '.join(ARCH_KEYS)}), e.g. the smallest child: --arch '{example}' (or --arch max / min)")
    try:
        return supernet.validate_arch(arch)
    except ValueError as exc:
        raise ConfigError(f"--arch: {exc}; e.g. --arch '{example}'") from None


def check_output_dir(output: str | Path, option: str = "--output") -> Path:
    """Check now that ``output`` can be created and written, so a bad folder fails before any work, with a
    :class:`~zoo.errors.ConfigError` naming ``option``; leaves no folder behind (the writer creates it later)."""
    out = Path(output)
    missing = [p for p in (out, *out.parents) if not p.exists()][::-1]  # the folders this check creates, outer first
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".zoo_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{option} {output}: cannot write there ({exc.strerror or exc}); give a folder you can "
                          f"write, e.g. {option} exported/{out.name or 'child'}") from None
    finally:
        for folder in reversed(missing):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return out


def export_from_supernet(config: str, checkpoint: str, arch: str, output: str | Path, overrides=(),
                         calib_batches: int | None = None) -> Path:
    """Load the supernet of ``config`` with ``checkpoint``, recalibrate BN for ``arch`` on the config's training
    split, and write the child into ``output``. Returns the output directory."""
    from zoo.cli.train import build_recipe
    from zoo.engine.batchnorm import recalibrate_batchnorm
    from zoo.hub import load_checkpoint
    from zoo.models.bignas import save_child
    from zoo.recipes.supernet import SupernetRecipe

    recipe, cfg, _ = build_recipe(config, list(overrides))
    if not isinstance(recipe, SupernetRecipe):
        raise ConfigError(f"--config {config}: expected a 'supernet' recipe config, got '{cfg.recipe}'")
    net = recipe.build_model()
    chosen = parse_arch(arch, net)  # before the (slow) checkpoint load and calibration
    out = check_output_dir(output)
    load_checkpoint(net, checkpoint, what="--checkpoint (a supernet run's last.pt or run directory)")
    net.set_subnet(chosen)
    n = cfg.supernet.bn_calibration_batches if calib_batches is None else calib_batches
    recalibrate_batchnorm(net, recipe.calibration_batches(chosen["resolution"], n))
    save_child(net.export_subnet(chosen).eval(), out, source=f"{cfg.model['name']} {checkpoint}")
    return out


def _export_quietly(child: torch.nn.Module, x: torch.Tensor, path: Path, dynamo: bool) -> None:
    """``torch.onnx.export`` without its known, harmless warnings: the TorchScript exporter's deprecation notices
    (torch >= 2.9 prefers the slower dynamo exporter, see :func:`export_onnx`) and the tracer's note on the model's
    input-shape check (a Python ``if`` on static shapes, constant by design)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        if dynamo:
            torch.onnx.export(child, (x,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True)
        else:
            torch.onnx.export(child, (x,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


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
        raise MissingDependencyError("ONNX export needs the onnx package: pip install 'zoo[export]' "
                                     "(onnx, onnxruntime, onnxscript)") from None
    _export_quietly(child, x, path, dynamo)
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


def _child_dir(text: str) -> Path:
    """``--child DIR`` checked: a folder holding what :func:`zoo.models.bignas.save_child` writes."""
    from zoo.models.bignas import CHILD_CONFIG, CHILD_WEIGHTS

    out = Path(text)
    if not out.is_dir():
        raise FileNotFoundError(f"--child {text}: no such folder; give a child folder that zoo export or a search "
                                f"wrote (e.g. runs/<run>/search/children/<tag>), or export one with --config "
                                f"CONFIG --checkpoint LAST_PT --output DIR")
    missing = [name for name in (CHILD_CONFIG, CHILD_WEIGHTS) if not (out / name).is_file()]
    if missing:
        raise FileNotFoundError(f"--child {text}: the folder has no {' / '.join(missing)}, so it is not an exported "
                                f"child; give a folder zoo export wrote (holding {CHILD_CONFIG} and {CHILD_WEIGHTS})")
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value), with --config")
    parser.add_argument("--config", help="the supernet run's config (e.g. runs/x/supernet/config.yaml)")
    parser.add_argument("--checkpoint", help="the supernet run's last.pt / best.pt")
    parser.add_argument("--arch", default="max", help="max | min | JSON dict with all 7 keys | JSON file")
    parser.add_argument("--output", help="output directory (model.safetensors, config.json, model.onnx)")
    parser.add_argument("--calib-batches", type=int, default=None, help="BN recalibration batches (default: config's)")
    parser.add_argument("--child", help="an already exported child directory (instead of --config/--checkpoint)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx, checked with onnxruntime")
    parser.add_argument("--dynamo", action="store_true", help="ONNX through torch.export (default: TorchScript)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring); returns the exit status (2: a user error, one ``error:`` line)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.child or (args.config and args.checkpoint and args.output)):
        parser.error("give --child DIR, or --config, --checkpoint and --output")
    try:
        from zoo.models.bignas import load_child

        if args.child:
            out = _child_dir(args.child)
        else:
            out = export_from_supernet(args.config, args.checkpoint, args.arch, args.output, args.overrides,
                                       args.calib_batches)
        child = load_child(out)
        mflops = json.loads((out / "config.json").read_text())["mflops"]
        print(f"child: {out}/model.safetensors + config.json ({mflops:.3f} MFLOPs, "
              f"{sum(p.numel() for p in child.parameters())} parameters)")
        if args.onnx:
            info = export_onnx(child, out / "model.onnx", dynamo=args.dynamo)
            print(f"onnx: {info['path']}" + (f" (onnxruntime max abs error {info['max_abs_error']:.1e})"
                                             if info["checked"] else " (not checked)"))
    except USER_ERRORS as exc:
        return fail(exc)
    return 0
