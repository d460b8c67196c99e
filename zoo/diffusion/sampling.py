"""Sample grids: each prompt rendered without and with an adapter, from the same noise, side by side; and a
grid of several adapters of one UNet (:func:`composition_grid`).

Adapters are loaded by :func:`zoo.diffusion.adapters.load_adapter` (any registered method; detected from the
path or named): ``sara`` — a :func:`zoo.adapters.sara.save_sara` file (``sara_weights.safetensors``); ``lora`` —
a diffusers LoRA file (``pytorch_lora_weights.safetensors``, or its folder; UNet-only files load into the zoo's
adapter core, others through ``pipe.load_lora_weights``); ``full`` — a fine-tuned UNet folder (``config.json`` +
weights); any method — the folder its ``save`` wrote (``adapter_config.json``). ``python tools/sample.py --help``.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from zoo.diffusion.pipeline import require_diffusers

__all__ = ["sample_images", "make_grid", "comparison_grid", "composition_grid", "sample_parser", "sample_main"]


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


def composition_grid(pipe: Any, rows: Mapping[str, str | None], prompts: Sequence[str], **sample_kwargs: Any) -> Any:
    """A PIL grid with one row per entry of ``rows`` (``{label: adapter name}``; ``None``: the base UNet, no
    adapter) and one column per prompt, every cell rendered with the same seed per prompt (:func:`sample_images`;
    ``sample_kwargs``: ``num_inference_steps``, ``guidance_scale``, ``seed``, ``height``, ``width``). The
    previously active adapters are restored afterwards."""
    from zoo.adapters.model import active_adapters, set_active_adapters

    unet = pipe.unet
    before = active_adapters(unet)
    images = []
    try:
        for label, adapter in rows.items():
            set_active_adapters(unet, [] if adapter is None else [adapter])
            images.append(sample_images(pipe, list(prompts), **sample_kwargs))
    finally:
        set_active_adapters(unet, before)
    return make_grid(images, list(rows), list(prompts))


def sample_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/sample.py``; ``--kind`` offers every registered adapter method (all of them load
    into a pipeline: see :func:`zoo.diffusion.adapters.load_adapter`)."""
    from zoo.adapters.base import adapter_names

    parser = argparse.ArgumentParser(description="Render prompts with and without an adapter into one PNG grid.")
    parser.add_argument("--pipeline", required=True, help="diffusers folder or single .safetensors/.ckpt checkpoint")
    parser.add_argument("--single-file-config", help="local diffusers folder with the configs of a single-file model")
    parser.add_argument("--adapter", help="sara_weights.safetensors, pytorch_lora_weights.safetensors, a run dir, a "
                        "UNet folder or a folder an adapter method's save() wrote")
    parser.add_argument("--kind", choices=adapter_names(), help="adapter method (default: detected)")
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
    return parser


def sample_main(argv: Sequence[str] | None = None) -> int:
    """``tools/sample.py --pipeline PATH --adapter FILE --prompts P [P ...] --output grid.png`` (see
    :func:`sample_parser`)."""
    parser = sample_parser()
    args = parser.parse_args(argv)
    from zoo.diffusion.adapters import load_adapter
    from zoo.diffusion.pipeline import dtype_from_precision, load_pipeline
    from zoo.errors import USER_ERRORS

    try:
        require_diffusers()
        dtype = dtype_from_precision(args.dtype)
        pipe = load_pipeline(args.pipeline, single_file_config=args.single_file_config, torch_dtype=dtype, key="--pipeline")
        set_enabled = load_adapter(pipe, args.adapter, args.kind) if args.adapter else None
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
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
