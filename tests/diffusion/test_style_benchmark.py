"""The style benchmark (zoo/benchmarks/style.py) end to end at tiny sizes: style set, matched LoRA rank, the
three fine-tuning methods through the sd_finetune recipe on the shipped tiny_t2i_mnist, metrics, table."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("skimage")

REPO = Path(__file__).resolve().parents[2]
from zoo.benchmarks import style  # noqa: E402
from fake_data import fake_mnist  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sara_threshold_selects_the_fraction():
    import torch

    lin = torch.nn.Linear(100, 100)
    theta = style.sara_threshold(lin, 0.1)
    share = sum((p.abs() < theta).sum().item() for p in lin.parameters()) / sum(p.numel() for p in lin.parameters())
    assert share == pytest.approx(0.1, abs=0.002)


@pytest.mark.slow
def test_style_benchmark_runs_end_to_end_at_tiny_size(tmp_path):
    root = fake_mnist(tmp_path / "mnist")
    p = argparse.ArgumentParser()
    style.add_arguments(p)
    out = tmp_path / "bench"
    args = p.parse_args(["--steps", "2", "--batch", "2", "--per-digit", "1", "--sample-steps", "2", "--real", "10",
                         "--num-images", "10", "--data-root", str(root), "--real-split", "test[20:]",
                         "--style-split", "test[:20]", "--out", str(out), "--time-repeat", "1",
                         "--figure", str(out / "fig.png")])
    args.json = str(out / "table.json")
    rows = style.run(args)
    names = [r["name"] for r in rows]
    assert names == ["base", "full", "lora", "sara"]
    by = {r["name"]: r for r in rows}
    assert abs(by["lora"]["trainable"] - by["sara"]["trainable"]) <= 0.1 * by["sara"]["trainable"]
    assert by["full"]["trainable"] > 10 * by["sara"]["trainable"]
    for r in rows[1:]:
        assert r["step_ms"] > 0 and 0 <= r["fid_style"] <= 100 and r["style_gram"] >= 0
    assert by["full"]["state_mb"] > 5 * by["sara"]["state_mb"] > 0  # exact training state (zoo.diffusion.memory)
    saved = json.loads((out / "table.json").read_text())
    assert saved["kind"] == "benchmark" and saved["details"]["lora_rank"] >= 1 and len(saved["details"]["runs"]) == 4
    assert (out / "brick_sara_seed0" / "sara_weights.safetensors").is_file()
    assert (out / "brick_lora_seed0" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "brick_full_seed0" / "unet" / "config.json").is_file()
    from PIL import Image

    width, height = Image.open(out / "fig.png").size  # 4 rows (base + 3 methods) x 20 images, labels around them
    assert width >= 20 * 32 and height >= 4 * 32 and width > height
