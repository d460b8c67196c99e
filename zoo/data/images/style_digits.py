"""Digits rendered with textures and colours: the VAE's colour augmentation and the style fine-tuning set.

A digit's grey mask ``m`` (``(32, 32)`` in [0, 1], MNIST padded by 2 pixels) is composited as
``image = m · foreground + (1 - m) · background`` with ``(3, 32, 32)`` foreground / background images in [0, 1]
(solid colours, or crops of texture images tinted by a colour).

* :class:`ColourDigits` — random composites from a texture bank of skimage's *colour photos and other greyscale
  images* (astronaut, coffee, chelsea, rocket, camera, moon — never the style textures), used while training the
  VAE so that its latent space also represents colour and texture (the style fine-tuning keeps the VAE frozen);
* :func:`build_style_set` — the style benchmark's training images: the strokes filled with one of the skimage
  textures ``brick`` / ``grass`` / ``gravel`` (reported) or ``cells`` (validation: learning rates are tuned on it)
  tinted with the style's colour, on the style's background colour,
  written as PNGs with a ``metadata.jsonl`` of captions ("a handwritten digit seven in brick style") that
  :class:`zoo.data.images.folder.CaptionedImageFolder` reads.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["STYLES", "REPORTED_STYLES", "VALIDATION_STYLES", "BACKGROUNDS", "AUGMENT_TEXTURES", "load_texture",
           "pad_digit", "render_digit", "ColourDigits", "style_image", "build_style_set", "style_images_tensor"]

#: style name -> (skimage texture, stroke tint RGB, background RGB), all in [0, 1]
STYLES = {
    "brick": ("brick", (0.85, 0.35, 0.2), (0.95, 0.9, 0.75)),
    "grass": ("grass", (0.25, 0.75, 0.2), (0.25, 0.2, 0.45)),
    "gravel": ("gravel", (0.75, 0.7, 0.65), (0.15, 0.35, 0.6)),
    "cells": ("cell", (0.7, 0.35, 0.8), (0.85, 0.95, 0.8)),
}
#: the styles results are reported on (the SaRA study: configs/sara/study.yaml)
REPORTED_STYLES = ("brick", "grass", "gravel")
#: the style learning rates are tuned on (configs/sara/sweep.yaml): another texture (skimage's ``cell``), never
#: reported
VALIDATION_STYLES = ("cells",)
#: skimage images used for the VAE's colour augmentation (disjoint from the style textures)
AUGMENT_TEXTURES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon")


def load_texture(name: str) -> torch.Tensor:
    """skimage's ``data.<name>()`` as a ``(3, H, W)`` float tensor in [0, 1] (greyscale images repeated)."""
    try:
        import skimage.data
    except ImportError as exc:
        raise ImportError("the style textures come from scikit-image (zoo/data/images/style_digits.py): "
                          "pip install scikit-image, or install zoo with the [diffusion] extra") from exc
    if not hasattr(skimage.data, name):
        raise ValueError(f"skimage.data has no image '{name}' (zoo/data/images/style_digits.py)")
    arr = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    arr = arr / 255.0 if arr.max() > 1.0 else arr
    t = torch.from_numpy(arr)
    t = t.unsqueeze(0).repeat(3, 1, 1) if t.ndim == 2 else t[..., :3].permute(2, 0, 1)
    return t.contiguous()


def pad_digit(img: torch.Tensor, size: int = 32) -> torch.Tensor:
    """``(..., 28, 28)`` -> ``(..., size, size)``: zero (black) padding, the digit centred."""
    h, w = img.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"pad_digit: image {h}x{w} is larger than {size}x{size}")
    return torch.nn.functional.pad(img, (left, size - w - left, top, size - h - top))


def _crop(texture: torch.Tensor, size: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """A random ``(3, size, size)`` crop of a ``(3, H, W)`` texture covering ``size * scale`` source pixels."""
    _, H, W = texture.shape
    src = max(4, min(H, W, int(round(size * scale))))
    y = int(torch.randint(0, H - src + 1, (1,), generator=gen))
    x = int(torch.randint(0, W - src + 1, (1,), generator=gen))
    patch = texture[:, y:y + src, x:x + src]
    if src != size:
        patch = torch.nn.functional.interpolate(patch[None], size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=src > size)[0]
    return patch


def render_digit(mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``mask (H, W)`` or ``(1, H, W)`` in [0, 1], fore/background ``(3, H, W)`` -> ``(3, H, W)`` composite."""
    m = mask if mask.ndim == 3 else mask[None]
    return (m * foreground + (1 - m) * background).clamp(0, 1)


class ColourDigits:
    """Random colour/texture composite of a digit (VAE augmentation): with probability ``p`` the ``(1, 32, 32)``
    grey digit becomes ``(3, 32, 32)`` with a foreground and a background that are each a random solid colour or
    a random crop of :data:`AUGMENT_TEXTURES` (tinted by a random colour); otherwise the grey digit repeated."""

    def __init__(self, p: float = 0.5, textures: Sequence[str] = AUGMENT_TEXTURES, seed: int = 0):
        self.p = p
        self.bank = [load_texture(n) for n in textures]
        self.gen = torch.Generator().manual_seed(seed)

    def _layer(self, size: int) -> torch.Tensor:
        colour = torch.rand(3, 1, 1, generator=self.gen)
        if torch.rand(1, generator=self.gen).item() < 0.5:
            return colour.expand(3, size, size)
        tex = self.bank[int(torch.randint(0, len(self.bank), (1,), generator=self.gen))]
        scale = 0.5 + 3.5 * torch.rand(1, generator=self.gen).item()
        patch = _crop(tex, size, self.gen, scale)
        return (patch * (0.4 + 0.6 * colour / colour.max().clamp_min(1e-3))).clamp(0, 1)

    def __call__(self, grey: torch.Tensor) -> torch.Tensor:
        """``(1, S, S)`` in [0, 1] -> ``(3, S, S)`` in [0, 1]."""
        if torch.rand(1, generator=self.gen).item() >= self.p:
            return grey.expand(3, -1, -1).clone()
        size = grey.shape[-1]
        return render_digit(grey, self._layer(size), self._layer(size))


#: ``background`` choices of :func:`style_image`: the style's own colour, or black (the plain digits' background,
#: i.e. the style only re-textures the strokes: a style closer to what the MNIST model knows)
BACKGROUNDS = ("style", "black")


def style_image(grey: torch.Tensor, style: str, gen: torch.Generator, texture: torch.Tensor | None = None,
                background: str = "style") -> torch.Tensor:
    """``(1, 32, 32)`` grey digit -> ``(3, 32, 32)`` in ``style`` (:data:`STYLES`): strokes filled with a random
    crop of the style's texture (64 source pixels squeezed into 32) tinted by its colour, on its background
    colour (``background="style"``) or on black (``"black"``)."""
    if style not in STYLES:
        raise ValueError(f"unknown style '{style}'; choose one of {', '.join(STYLES)}")
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background '{background}'; choose one of {', '.join(BACKGROUNDS)}")
    tex_name, tint, bg = STYLES[style]
    bg = (0.0, 0.0, 0.0) if background == "black" else bg
    tex = load_texture(tex_name) if texture is None else texture
    size = grey.shape[-1]
    fg = _crop(tex, size, gen, scale=2.0)
    fg = (0.35 + 1.0 * fg) * torch.tensor(tint).view(3, 1, 1)
    back = torch.tensor(bg).view(3, 1, 1).expand(3, size, size)
    return render_digit(grey, fg.clamp(0, 1), back)


def build_style_set(out_dir: str | Path, style: str = "brick", num_images: int = 20, seed: int = 0,
                    root: str | Path | None = None, split: str = "test[:7000]", background: str = "style",
                    offset: int = 0) -> Path:
    """Write ``num_images`` digits (2 per class for 20, cycling 0..9; of each class the digits number ``offset``,
    ``offset + 1``, ... of ``split``) in ``style`` (on ``background``, see :func:`style_image`; texture crops drawn
    with ``seed``) to ``out_dir`` as ``NNN.png`` plus ``metadata.jsonl`` (``file_name``, ``text`` = "a handwritten
    digit seven in brick style", ``label``). Returns ``out_dir``."""
    from PIL import Image

    from zoo.data.images.mnist import MNIST
    from zoo.data.images.captions import prompt

    if style not in STYLES:
        raise ValueError(f"unknown style '{style}'; choose one of {', '.join(STYLES)} (zoo/data/images/style_digits.py)")
    ds = MNIST(root=root, split=split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tex = load_texture(STYLES[style][0])
    by_class: dict[int, list[int]] = {d: [] for d in range(10)}
    for i, t in enumerate(ds.targets.tolist()):
        by_class[t].append(i)
    rows = []
    for k in range(num_images):
        digit = k % 10
        if offset + k // 10 >= len(by_class[digit]):
            raise ValueError(f"build_style_set: {split} has only {len(by_class[digit])} digits {digit}; lower offset "
                             f"({offset}) or num_images ({num_images})")
        idx = by_class[digit][offset + k // 10]
        grey = pad_digit(ds.data[idx].float().div(255.0)[None])
        img = style_image(grey, style, gen, tex, background=background)
        name = f"{k:03d}.png"
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out / name)
        rows.append({"file_name": name, "text": f"{prompt(digit)} in {style} style", "label": digit})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def style_images_tensor(folder: str | Path) -> torch.Tensor:
    """The PNGs of a :func:`build_style_set` folder as ``(N, 3, H, W)`` in [0, 1] (file order)."""
    from PIL import Image

    files = sorted(Path(folder).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no .png files in {folder} (build it with zoo.data.images.style_digits.build_style_set)")
    arr = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
