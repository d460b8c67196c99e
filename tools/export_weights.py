#!/usr/bin/env python3
"""Turn a run's checkpoint into a shippable weights file: ``checkpoints/<name>.safetensors`` + its sha256.

    python tools/export_weights.py runs/pointramba_small_mn10/best.pt --name pointramba_small_modelnet10

Prints the sha256 and the manifest entry to paste into ``checkpoints/manifest.yaml`` and the model's
``default_cfgs``. The run's ``metrics.json`` and ``config.yaml`` (next to the checkpoint) fill in metrics.

A diffusers pipeline folder (e.g. the ``t2i_unet`` run's ``pipeline/``) is copied instead with ``--pipeline``:

    python tools/export_weights.py runs/t2i/unet/pipeline --pipeline --name tiny_t2i_mnist [--dtype fp16]

writes ``checkpoints/<name>/`` (weights stored in ``--dtype``; loaders cast them back to float32) and prints its
manifest entry (``kind: diffusers``, every file with its sha256).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a run's best.pt / last.pt, or any state-dict file")
    parser.add_argument("--name", required=True, help="output file stem (usually the registered model name)")
    parser.add_argument("--out-dir", default=str(REPO / "checkpoints"))
    parser.add_argument("--pipeline", action="store_true", help="checkpoint is a diffusers pipeline folder")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16", help="stored dtype of --pipeline weights")
    args = parser.parse_args(argv)
    if args.pipeline:
        return export_pipeline(Path(args.checkpoint), Path(args.out_dir) / args.name, args.name, args.dtype)

    from safetensors.torch import save_file

    from zoo.hub import clean_state_dict, load_state_dict_file, sha256sum

    src = Path(args.checkpoint)
    state = clean_state_dict(load_state_dict_file(src))
    out = Path(args.out_dir) / f"{args.name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    entry = {"name": args.name, "file": out.name, "sha256": sha256sum(out), "size_bytes": out.stat().st_size}
    metrics_file = src.parent / "metrics.json"
    if metrics_file.is_file():
        summary = json.loads(metrics_file.read_text())
        # best.pt holds the best epoch's weights; anything else (last.pt) the final ones
        entry["metrics"] = summary.get("best") if src.name == "best.pt" else summary.get("final")
        entry["train_time_s"] = summary.get("train_time_s")
    print(yaml.safe_dump([entry], sort_keys=False))
    return 0


def export_pipeline(src: Path, out: Path, name: str, dtype: str) -> int:
    """Save the diffusers pipeline at ``src`` to ``out`` (weights in ``dtype``) and print its manifest entry."""
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
    entry = {"name": name, "kind": "diffusers", "folder": out.name, "dtype": dtype,
             "size_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()), "files": files}
    metrics_file = src.parent / "metrics.json"
    if metrics_file.is_file():
        entry["metrics"] = json.loads(metrics_file.read_text()).get("final")
    print(yaml.safe_dump([entry], sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
