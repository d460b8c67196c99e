"""Sample grids: each prompt rendered without and with an adapter, from the same noise, side by side.

Adapters (detected from the path, or named; the methods of :mod:`zoo.diffusion.methods`): ``sara`` — a
:func:`zoo.adapters.sara.save_sara` file (``sara_weights.safetensors``); ``lora`` — a diffusers LoRA file
(``pytorch_lora_weights.safetensors``, or its folder; UNet-only files load into the zoo's adapter core, others
through ``pipe.load_lora_weights``); ``full`` — a fine-tuned UNet folder (``config.json`` + weights).
``python tools/sample.py --help``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from zoo.diffusion.methods import LORA_FILE, SARA_FILE, adapter_method_names, detect_adapter_method, get_adapter_method  # noqa: F401
from zoo.diffusion.pipeline import require_diffusers

__all__ = ["detect_adapter_kind", "load_adapter", "sample_images", "make_grid", "comparison_grid", "sample_main"]


def detect_adapter_kind(path: str | os.PathLike) -> str:
    """The adapter method (``"sara"``, ``"lora"``, ``"full"``, ...) whose output ``path`` holds; raises naming what
    was expected. Asks each registered method of :mod:`zoo.diffusion.methods` (``detect``)."""
    return detect_adapter_method(path)


def load_adapter(pipe: Any, path: str | os.PathLike, kind: str | None = None) -> Callable[[bool], None]:
    """Load the adapter at ``path`` into ``pipe`` and return ``set_enabled(bool)`` switching it on/off (the method's
    ``load``; ``kind`` names the method, default: detected)."""
    kind = kind or detect_adapter_kind(path)
    try:
        method = get_adapter_method(kind)
    except KeyError:
        raise ValueError(f"unknown adapter kind '{kind}'; choose one of {', '.join(adapter_method_names())}") from None
    return method.load(pipe, path)


@torch.no_grad()
def sample_images(
    pipe: Any,
    prompts: Sequence[str],
    *,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[Any]:
    """One PIL image per prompt; prompt ``i`` uses a generator seeded ``seed + i`` (same noise for every variant)."""
    device = pipe.unet.device
    images = []
    for i, prompt in enumerate(prompts):
        gen = torch.Generator(device="cpu").manual_seed(seed + i)
        mixed = autocast_dtype is not None and autocast_dtype != torch.float32
        with torch.autocast(device.type, dtype=autocast_dtype) if mixed else contextlib.nullcontext():
            out = pipe(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=gen,
                       height=height, width=width, negative_prompt=negative_prompt)
        images.append(out.images[0])
    return images


def make_grid(rows: Sequence[Sequence[Any]], row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
              label_height: int = 14, min_size: int = 128) -> Any:
    """A PIL image of ``rows`` (lists of equally sized PIL images) with optional column titles and row captions.

    Images smaller than ``min_size`` are enlarged (nearest neighbour) so that tiny test renders stay readable.
    """
    from PIL import Image, ImageDraw

    w, h = rows[0][0].size
    if w < min_size:
        factor = -(-min_size // w)
        w, h = w * factor, h * factor
    n_cols = max(len(r) for r in rows)
    chars = max(4, w // 6)  # the default bitmap font is ~6 px per character
    col_lines = [textwrap.wrap(str(label), chars) or [""] for label in col_labels]  # long prompts wrap, not cut
    top = label_height * max(len(lines) for lines in col_lines) if col_labels else 0
    row_gap = label_height if row_labels else 0
    grid = Image.new("RGB", (n_cols * w, top + len(rows) * (h + row_gap)), "white")
    draw = ImageDraw.Draw(grid)
    for c, lines in enumerate(col_lines):
        for i, line in enumerate(lines):
            draw.text((c * w + 2, 1 + i * label_height), line, fill="black")
    for r, row in enumerate(rows):
        y = top + r * (h + row_gap)
        if row_labels:
            draw.text((2, y + 1), str(row_labels[r])[: chars * n_cols], fill="black")
        for c, im in enumerate(row):
            grid.paste(im.resize((w, h), Image.NEAREST if im.size[0] < w else Image.BICUBIC), (c * w, y + row_gap))
    return grid


def comparison_grid(
    pipe: Any, prompts: Sequence[str], set_enabled: Callable[[bool], None] | None, **kwargs: Any
) -> Any:
    """Grid with one row per prompt: ``[base, adapter]`` (or just ``[model]`` when ``set_enabled`` is None)."""
    if set_enabled is None:
        rows = [[im] for im in sample_images(pipe, prompts, **kwargs)]
        return make_grid(rows, prompts, ["model"])
    set_enabled(False)
    try:
        base = sample_images(pipe, prompts, **kwargs)
    finally:
        set_enabled(True)
    tuned = sample_images(pipe, prompts, **kwargs)
    return make_grid([[a, b] for a, b in zip(base, tuned)], prompts, ["base", "adapter"])


def sample_main(argv: Sequence[str] | None = None) -> int:
    """``tools/sample.py --pipeline PATH --adapter FILE --prompts P [P ...] --output grid.png``."""
    parser = argparse.ArgumentParser(description="Render prompts with and without an adapter into one PNG grid.")
    parser.add_argument("--pipeline", required=True, help="diffusers folder or single .safetensors/.ckpt checkpoint")
    parser.add_argument("--single-file-config", help="local diffusers folder with the configs of a single-file model")
    parser.add_argument("--adapter", help="sara_weights.safetensors, pytorch_lora_weights.safetensors, a run dir or a UNet folder")
    parser.add_argument("--kind", choices=adapter_method_names(), help="adapter method (default: detected)")
    parser.add_argument("--prompts", nargs="+", required=True)
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--negative-prompt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    args = parser.parse_args(argv)
    require_diffusers()
    from zoo.diffusion.pipeline import dtype_from_precision, load_pipeline

    dtype = dtype_from_precision(args.dtype)
    try:
        pipe = load_pipeline(args.pipeline, single_file_config=args.single_file_config, torch_dtype=dtype, key="--pipeline")
        set_enabled = load_adapter(pipe, args.adapter, args.kind) if args.adapter else None
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=__import__("sys").stderr)
        return 2
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    grid = comparison_grid(pipe, args.prompts, set_enabled, num_inference_steps=args.steps, guidance_scale=args.guidance,
                           seed=args.seed, height=args.height, width=args.width, negative_prompt=args.negative_prompt)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"wrote {out} ({len(args.prompts)} prompts{', base | adapter' if set_enabled else ''})")
    return 0
