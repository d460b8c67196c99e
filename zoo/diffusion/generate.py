"""Batched generation as tensors (for metrics and grids): ``generate(pipe, prompts, seed=...) -> (N, 3, H, W)``.

One ``torch.Generator`` (CPU, seeded ``seed``) draws the initial latents of a whole batch, so the same call
gives the same images bit for bit on the same machine. ``generate_digits`` prompts digits by their canonical
caption (:func:`zoo.diffusion.captions.prompt`, optionally with a suffix such as ``" in brick style"``).
For evaluations over a data loader of generation items (``{"prompt", "seed", ...}``), :func:`generate_step` renders a
batch with each image's noise drawn from its own seed (:func:`item_latents`), so the images do not depend on the
batching or the number of processes; :func:`collate_items` batches the items.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["generate", "generate_digits", "collate_items", "item_latents", "generate_step"]


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


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of :func:`generation_items`: lists of prompts and seeds, and a ``(B,)`` tensor of every other
    (integer) key, e.g. ``digit``."""
    out: dict[str, Any] = {"prompt": [x["prompt"] for x in items], "seed": [x["seed"] for x in items]}
    for key in items[0]:
        if key not in out:
            out[key] = torch.tensor([x[key] for x in items])
    return out


def item_latents(pipe: Any, seeds: Sequence[int], height: int | None = None, width: int | None = None
                 ) -> torch.Tensor:
    """``(B, C, h, w)`` initial latents, item ``i`` drawn alone by a CPU generator seeded ``seeds[i]`` — the noise
    ``pipe(prompt, generator=torch.Generator().manual_seed(seed))`` draws for one image — so a batch renders each
    item as it would be rendered alone, whatever the batching or the number of processes."""
    scale = pipe.vae_scale_factor
    h = (height or pipe.unet.config.sample_size * scale) // scale
    w = (width or pipe.unet.config.sample_size * scale) // scale
    shape = (1, pipe.unet.config.in_channels, h, w)
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=pipe.unet.dtype)
                      for s in seeds])


def generate_step(num_inference_steps: int = 25, guidance_scale: float = 4.0
                  ) -> Callable[[Any, dict[str, Any]], dict[str, torch.Tensor]]:
    """The evaluation step ``step(pipe, batch)``: the batch's prompts rendered together, each from its own seed's
    noise (:func:`item_latents`; DDIM is deterministic given the noise) -> ``{"images": (B, 3, 32, 32)[, "digit":
    (B,)]}`` (images in [0, 1], resized to 32 when smaller)."""

    def step(pipe: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        latents = item_latents(pipe, batch["seed"]).to(pipe.unet.device)
        res = pipe(list(batch["prompt"]), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   latents=latents, output_type="pt")
        images = res.images.float().cpu().clamp(0, 1)
        if images.shape[-1] != 32:
            images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False,
                                   antialias=images.shape[-1] > 32).clamp(0, 1)
        out = {"images": images}
        if "digit" in batch:
            out["digit"] = batch["digit"]
        return out

    return step
