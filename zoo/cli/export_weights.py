"""``zoo export-weights`` (``tools/export_weights.py``): turn a run's checkpoint into a shippable weights file,
``checkpoints/<file>.safetensors``, and print the fields of its pretrained cfg.

    zoo export-weights runs/pointramba_small_mn10/best.pt --name pointramba_small.modelnet10

writes ``checkpoints/pointramba_small_modelnet10.safetensors`` (the tag's dot becomes ``_``; ``--file`` names it
otherwise) and prints the cfg fields to put into the model's ``default_cfgs["pointramba_small.modelnet10"]``
(``file``, ``sha256``, ``metrics`` and ``train_time_s`` from the run's ``metrics.json`` next to the checkpoint).
Then ``zoo manifest`` regenerates ``checkpoints/manifest.yaml`` from the cfgs (never edit it by hand).

A diffusers pipeline folder (e.g. the ``t2i_unet`` run's ``pipeline/``) is copied instead with ``--pipeline``:

    zoo export-weights runs/t2i/unet/pipeline --pipeline --name tiny_t2i_mnist [--dtype fp16]

writes ``checkpoints/<name>/`` (weights stored in ``--dtype``; loaders cast them back to float32) and prints the
``files`` (every file with its sha256) of its ``PipelineCfg`` (``zoo/diffusion/pretrained.py``); then ``zoo
manifest``.
"""
from __future__ import annotations

import argparse
import json
import pprint
from pathlib import Path
from typing import Any

from zoo.cli._common import fail
from zoo.errors import USER_ERRORS

__all__ = ["main", "export_pipeline", "export_model_weights", "default_out_dir", "cfg_snippet"]


def default_out_dir() -> Path:
    """``checkpoints/`` of the source checkout zoo runs from, else ``./checkpoints``."""
    from zoo.resources import source_checkout

    root = source_checkout()
    return (root if root is not None else Path(".")) / "checkpoints"


def cfg_snippet(key: str, fields: dict[str, Any], where: str) -> str:
    """The printed instructions: which cfg to edit (``where``, key ``key``), the fields as Python, then the
    regeneration command."""
    body = ",\n".join(f"    {k}={pprint.pformat(v, width=100, sort_dicts=False)}" for k, v in fields.items())
    return (f"# put these fields into {where}[{key!r}], then run `zoo manifest` (regenerates "
            f"checkpoints/manifest.yaml; never edit it by hand):\n{body},\n")


def _run_summary(src: Path, best: bool) -> dict[str, Any]:
    """``metrics`` / ``train_time_s`` of the run a checkpoint comes from (its ``metrics.json``), if there is one."""
    path = src.parent / "metrics.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    # best.pt holds the best epoch's weights (its selection metric is all the summary keeps of that epoch);
    # anything else (last.pt) the final ones
    chosen = summary.get("best") or {}
    metrics = {chosen["metric"]: chosen["value"]} if best and "metric" in chosen else (summary.get("final") or {})
    metrics = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out = {"metrics": metrics} if metrics else {}
    if summary.get("train_time_s") is not None:
        out["train_time_s"] = summary["train_time_s"]
    return out


def export_model_weights(src: Path, name: str, out_dir: Path, file: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the state dict of checkpoint ``src`` as ``out_dir/<file>`` (safetensors); returns the path and the cfg
    fields of weights ``name`` (``file``, ``sha256``, and the run's ``metrics`` / ``train_time_s``)."""
    from safetensors.torch import save_file

    from zoo.hub import clean_state_dict, load_state_dict_file, sha256sum

    state = clean_state_dict(load_state_dict_file(src))
    out = out_dir / (file or f"{name.replace('.', '_')}.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(out)
    return out, {"file": out.name, "sha256": sha256sum(out), **_run_summary(src, src.name == "best.pt")}


def export_pipeline(src: Path, out: Path, name: str, dtype: str) -> int:
    """Save the diffusers pipeline at ``src`` to ``out`` (weights in ``dtype``) and print its cfg's ``files``."""
    import shutil

    import torch

    from zoo.diffusion.pipeline import load_pipeline
    from zoo.hub import sha256sum

    pipe = load_pipeline(src, key="checkpoint")
    if dtype == "fp16":
        for part in ("unet", "vae", "text_encoder"):
            getattr(pipe, part).to(torch.float16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    files = {p.relative_to(out).as_posix(): sha256sum(p) for p in sorted(out.rglob("*")) if p.is_file()}
    fields = {"folder": out.name, "dtype": dtype, "files": files, **_run_summary(src, best=False)}
    print(cfg_snippet(name, fields, "the pipeline's default_cfgs (zoo/diffusion/pretrained.py)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); prints the cfg fields of the written file(s)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a run's best.pt / last.pt, or any state-dict file")
    parser.add_argument("--name", required=True, help="the weights' model name, ARCH.TAG (e.g. "
                        "pointramba_small.modelnet10); --pipeline: the pipeline's name")
    parser.add_argument("--file", help="the file name in --out-dir (default: NAME with '.' -> '_' + .safetensors)")
    parser.add_argument("--out-dir", default=str(default_out_dir()), help="where the weights go (default: %(default)s)")
    parser.add_argument("--pipeline", action="store_true", help="checkpoint is a diffusers pipeline folder")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16", help="stored dtype of --pipeline weights")
    args = parser.parse_args(argv)
    try:
        if args.pipeline:
            return export_pipeline(Path(args.checkpoint), Path(args.out_dir) / args.name, args.name, args.dtype)
        out, fields = export_model_weights(Path(args.checkpoint), args.name, Path(args.out_dir), args.file)
    except USER_ERRORS as exc:
        return fail(exc)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    print(cfg_snippet(args.name, fields, "the model's default_cfgs"))
    return 0
