"""Break-for-Make's data on the MNIST text-to-image model: a never-seen subject (a glyph drawn in handwriting-like
variants), the texture style of the style benchmark, and the auxiliary sets of MCP.

* :func:`render_glyph` — a ``(28, 28)`` grey mask in [0, 1] (white strokes on black, as MNIST) of one of
  :data:`GLYPHS` (strokes in the unit square), each drawn with a random affine transform (rotation, scale, shear,
  shift), per-point jitter and stroke width, anti-aliased by the distance to the stroke segments;
* :func:`build_glyph_set` — ``num_images`` such glyphs as 32×32 RGB PNGs (padded as
  :func:`zoo.data.images.style_digits.pad_digit`) with ``metadata.jsonl`` captions (``"a handwritten glyph sks"``),
  optionally in a style (``style="brick"``: :func:`zoo.data.images.style_digits.style_image`, the texture of the
  style benchmark), for :class:`zoo.data.images.folder.CaptionedImageFolder`;
* :func:`build_digit_set` — plain digits of one class with their canonical prompt (MCP's auxiliary content sets);
* :func:`build_b4m_sets` — every folder of the real run under one directory (names below), from the shared MNIST
  t10k file (``split`` slices it deterministically).

Folders written by :func:`build_b4m_sets` (``configs/b4m/pipeline_t2i_mnist.yaml`` reads them)::

    content/            the glyph, plain (the subject), caption "a handwritten glyph sks"
    content_eval/       more glyph variants (another seed), for the content-fidelity classifier
    style/              digits in the target texture style (style_digits.build_style_set), "... in brick style"
    aux_style_<s>/      digits in the other texture styles (MCP sets of the content run)
    aux_content_<a>/    MCP sets of the style run: new subjects (other glyphs, "a handwritten glyph snq asterisk",
                        as the official's "a photo of snq teapot") or plain digits ("a handwritten digit one")
    joint/              content/ and style/ together (the single-LoRA joint-training baseline)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["GLYPHS", "GLYPH_CAPTION", "AUX_IDENTIFIER", "aux_glyph_caption", "render_glyph", "build_glyph_set",
           "build_digit_set", "build_b4m_sets"]

#: glyph name -> strokes (polylines of (x, y) points in [0, 1]², y down); none is a digit shape
GLYPHS: dict[str, list[list[tuple[float, float]]]] = {
    # a five-pointed star drawn in one stroke (pentagram)
    "star": [[(0.5, 0.1), (0.74, 0.85), (0.12, 0.38), (0.88, 0.38), (0.26, 0.85), (0.5, 0.1)]],
    # an asterisk-like "snowflake": three crossing strokes
    "asterisk": [[(0.5, 0.12), (0.5, 0.88)], [(0.17, 0.3), (0.83, 0.7)], [(0.17, 0.7), (0.83, 0.3)]],
    # a greek lambda
    "lambda": [[(0.25, 0.12), (0.4, 0.15), (0.8, 0.88)], [(0.55, 0.45), (0.2, 0.88)]],
    # an hourglass: two bars joined by a cross, drawn in one stroke
    "hourglass": [[(0.22, 0.12), (0.78, 0.12), (0.22, 0.88), (0.78, 0.88), (0.22, 0.12)]],
}
GLYPH_CAPTION = "a handwritten glyph sks"
#: the identifier of MCP's auxiliary subjects, as the official's "a photo of snq teapot / perfume / vase": one
#: identifier, then the subject's name ("a handwritten glyph snq asterisk")
AUX_IDENTIFIER = "snq"


def aux_glyph_caption(name: str) -> str:
    """The caption of an auxiliary subject: ``"a handwritten glyph snq <name>"``."""
    return f"a handwritten glyph {AUX_IDENTIFIER} {name}"


def _segments_distance(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance of ``points (P, 2)`` to the nearest segment ``a[k] -> b[k]`` (``(K, 2)`` each): ``(P,)``."""
    ab = b - a  # (K, 2)
    ap = points[:, None, :] - a[None]  # (P, K, 2)
    t = ((ap * ab).sum(-1) / ab.pow(2).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    nearest = a[None] + t[..., None] * ab[None]
    return (points[:, None, :] - nearest).norm(dim=-1).min(dim=1).values


def render_glyph(name: str, gen: torch.Generator, size: int = 28, width: tuple[float, float] = (1.3, 2.4),
                 rotation: float = 15.0, jitter: float = 0.025) -> torch.Tensor:
    """One handwriting-like variant of glyph ``name`` as a ``(size, size)`` mask in [0, 1].

    The strokes are jittered per point (``N(0, jitter)`` in unit-square units), then transformed by a random
    rotation (``±rotation`` degrees), scale (0.75..1.0), shear (±0.2) and shift (±8 % of the size) about the centre,
    and rasterised with a random stroke half-width (``width`` pixels) and a one-pixel linear falloff."""
    if name not in GLYPHS:
        raise ValueError(f"unknown glyph '{name}'; choose one of {', '.join(GLYPHS)} (zoo/data/images/glyphs.py)")

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    ang = math.radians(u(-rotation, rotation))
    s, sh = u(0.75, 1.0), u(-0.2, 0.2)
    rot = torch.tensor([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    mat = rot @ torch.tensor([[1.0, sh], [0.0, 1.0]]) * s
    shift = torch.tensor([u(-0.08, 0.08), u(-0.08, 0.08)])
    a_list, b_list = [], []
    for stroke in GLYPHS[name]:
        pts = torch.tensor(stroke, dtype=torch.float32)
        pts = pts + torch.randn(pts.shape, generator=gen) * jitter
        pts = (pts - 0.5) @ mat.t() + 0.5 + shift
        a_list.append(pts[:-1])
        b_list.append(pts[1:])
    a, b = torch.cat(a_list) * size, torch.cat(b_list) * size
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    d = _segments_distance(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float(), a, b)
    half = u(*width)
    return (half + 0.5 - d).clamp(0, 1).reshape(size, size)


def _write(out: Path, images: Sequence[torch.Tensor], captions: Sequence[str],
           extra: Sequence[dict] | None = None) -> Path:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (img, cap) in enumerate(zip(images, captions)):
        name = f"{k:03d}.png"
        arr = (img.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(out / name)
        rows.append({"file_name": name, "text": cap, **(extra[k] if extra else {})})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def build_glyph_set(out_dir: str | Path, glyph: str = "star", num_images: int = 8, seed: int = 0,
                    caption: str = GLYPH_CAPTION, style: str | None = None) -> Path:
    """Write ``num_images`` variants of ``glyph`` as 32×32 RGB PNGs + ``metadata.jsonl`` (``caption``; with
    ``style``: rendered in that texture style of :data:`zoo.data.images.style_digits.STYLES` and captioned
    ``"<caption> in <style> style"``). Returns ``out_dir``."""
    from zoo.data.images.style_digits import STYLES, load_texture, pad_digit, style_image

    gen = torch.Generator().manual_seed(seed)
    tex = load_texture(STYLES[style][0]) if style else None
    images = []
    for _ in range(num_images):
        grey = pad_digit(render_glyph(glyph, gen)[None])
        images.append(style_image(grey, style, gen, tex) if style else grey.expand(3, -1, -1))
    cap = f"{caption} in {style} style" if style else caption
    return _write(Path(out_dir), images, [cap] * num_images)


def build_digit_set(out_dir: str | Path, digit: int, num_images: int = 8, root: str | Path | None = None,
                    split: str = "test[:7000]") -> Path:
    """Write the first ``num_images`` digits ``digit`` of ``split`` (plain, grey as RGB, 32×32) with the canonical
    prompt (``"a handwritten digit seven"``). Returns ``out_dir``."""
    from zoo.data.images.mnist import MNIST
    from zoo.data.images.style_digits import pad_digit
    from zoo.data.images.captions import prompt

    ds = MNIST(root=root, split=split)
    idx = [i for i, t in enumerate(ds.targets.tolist()) if t == digit][:num_images]
    if len(idx) < num_images:
        raise ValueError(f"build_digit_set: only {len(idx)} digits {digit} in {split}; ask for fewer")
    images = [pad_digit(ds.data[i].float().div(255.0)[None]).expand(3, -1, -1) for i in idx]
    return _write(Path(out_dir), images, [prompt(digit)] * num_images, [{"label": digit}] * num_images)


def build_b4m_sets(out_dir: str | Path, *, glyph: str = "star", style: str = "brick",
                   aux_styles: Sequence[str] = ("grass", "gravel"),
                   aux_content: Sequence[str | int] = ("asterisk", "lambda", "hourglass"),
                   num_content: int = 8, num_style: int = 20, num_aux: int = 10, root: str | Path | None = None,
                   split: str = "test[:7000]", seed: int = 0, background: str = "style"
                   ) -> dict[str, Path | list[Path]]:
    """Write every folder of the B4M run on the MNIST model under ``out_dir`` (see the module doc); the style and
    auxiliary style sets on ``background`` (``"style"``: each style's colour; ``"black"``: the plain digits'
    black, see :func:`zoo.data.images.style_digits.style_image`). ``aux_content``: MCP's auxiliary subjects of the
    style run — glyph names (new subjects, :func:`aux_glyph_caption`, as the official's new objects) or digits
    (plain digits with their canonical prompt, subjects the base model already draws). Returns ``{"content",
    "content_eval", "style", "style_aux": [...], "content_aux": [...], "joint"}``."""
    from zoo.data.images.style_digits import build_style_set

    for subject in aux_content:
        if isinstance(subject, str) and (subject not in GLYPHS or subject == glyph):
            raise ValueError(f"aux_content: '{subject}' must be a glyph of {', '.join(GLYPHS)} other than the content "
                             f"glyph '{glyph}', or a digit")
    out = Path(out_dir)
    sets: dict[str, Path | list[Path]] = {
        "content": build_glyph_set(out / "content", glyph, num_content, seed=seed),
        "content_eval": build_glyph_set(out / "content_eval", glyph, 4 * num_content, seed=seed + 1000),
        "style": build_style_set(out / "style", style=style, num_images=num_style, seed=seed, root=root, split=split,
                                 background=background),
        "style_aux": [build_style_set(out / f"aux_style_{s}", style=s, num_images=num_aux, seed=seed + 1 + i,
                                      root=root, split=split, background=background)
                      for i, s in enumerate(aux_styles)],
        "content_aux": [build_digit_set(out / f"aux_content_{a}", a, num_aux, root=root, split=split)
                        if isinstance(a, int) else
                        build_glyph_set(out / f"aux_content_{a}", a, num_aux, seed=seed + 2000 + i,
                                        caption=aux_glyph_caption(a))
                        for i, a in enumerate(aux_content)],
    }
    joint = out / "joint"
    joint.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in ("content", "style"):
        for line in (sets[key] / "metadata.jsonl").read_text().splitlines():
            r = json.loads(line)
            name = f"{key}_{r['file_name']}"
            (joint / name).write_bytes((sets[key] / r["file_name"]).read_bytes())
            rows.append({**r, "file_name": name})
    (joint / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets["joint"] = joint
    return sets
