"""Batched generation as tensors (for metrics and grids): ``generate(pipe, prompts, seed=...) -> (N, 3, H, W)``.

One ``torch.Generator`` (CPU, seeded ``seed``) draws the initial latents of a whole batch, so the same call
gives the same images bit for bit on the same machine. ``generate_digits`` prompts digits by their canonical
caption (:func:`zoo.diffusion.captions.prompt`, optionally with a suffix such as ``" in brick style"``).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

__all__ = ["generate", "generate_digits"]


@torch.no_grad()
def generate(pipe: Any, prompts: Sequence[str], *, seed: int = 0, num_inference_steps: int = 25,
             guidance_scale: float = 4.0, batch_size: int = 100, height: int | None = None,
             width: int | None = None) -> torch.Tensor:
    """``(len(prompts), 3, H, W)`` float images in [0, 1]; batch ``b`` uses a generator seeded ``seed + b``."""
    pipe.set_progress_bar_config(disable=True)
    out = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = list(prompts[start:start + batch_size])
        gen = torch.Generator(device="cpu").manual_seed(seed + b)
        res = pipe(chunk, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=gen,
                   output_type="pt", height=height, width=width)
        out.append(res.images.float().cpu())
    return torch.cat(out).clamp(0, 1)


def generate_digits(pipe: Any, digits: Iterable[int], *, suffix: str = "", **kwargs: Any) -> torch.Tensor:
    """:func:`generate` for the canonical prompt of each digit (+ ``suffix``): ``(len(digits), 3, H, W)``."""
    from zoo.diffusion.captions import prompt

    return generate(pipe, [prompt(d) + suffix for d in digits], **kwargs)
