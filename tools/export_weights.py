#!/usr/bin/env python3
"""Turn a run's checkpoint into a shippable weights file: ``checkpoints/<name>.safetensors`` + its sha256.

    python tools/export_weights.py runs/pointramba_small_mn10/best.pt --name pointramba_small_modelnet10

Prints the sha256 and the manifest entry to paste into ``checkpoints/manifest.yaml`` and the model's
``default_cfgs``. The run's ``metrics.json`` and ``config.yaml`` (next to the checkpoint) fill in metrics.
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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
