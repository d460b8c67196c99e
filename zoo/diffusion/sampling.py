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
              min_size: int = 128, *, title: str = "", caption: str = "",
              col_groups: Sequence[tuple[str, int]] = ()) -> Any:
    """A PIL image of ``rows`` (lists of PIL images, ``R x C``): row labels on the left (a prompt or a method) and
    column labels on top, wrapped onto several lines and never cut; optional ``title``, ``caption`` and
    ``col_groups`` (headings over runs of columns, e.g. ``[("style prompt", 10), ("plain prompt", 10)]``).

    Each cell is drawn at least ``min_size`` pixels wide (nearest-neighbour enlarged, so tiny renders stay
    readable); drawn by :func:`zoo.plotting.image_grid`, so every grid of the zoo has the same layout.
    """
    import numpy as np

    from zoo.plotting import figure_to_image, image_grid

    dpi = 100
    cell_px = max(rows[0][0].size[0], min_size, 64)
    arrays = [[np.asarray(im.convert("RGB")) for im in row] for row in rows]
    fig = image_grid(arrays, row_labels=[str(r) for r in row_labels], col_labels=[str(c) for c in col_labels],
                     col_groups=col_groups, title=title, caption=caption, cell_inches=cell_px / dpi)
    return figure_to_image(fig, dpi=dpi)


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
    return make_grid([[a, b] for a, b in zip(base, tuned)], prompts, ["base", "adapter"],
                     title="Same noise per prompt: base model | with the adapter")


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
    return make_grid(images, list(rows), list(prompts),
                     title="Rows: adapters composed; columns: prompts (same seed per prompt)")


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
