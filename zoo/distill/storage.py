"""Files of a distillation: image sets (uint8 images + labels) and named tensors (stored soft labels, views) in
safetensors files, each written atomically (a temp file, then a rename); the returned sizes are what the storage
report counts."""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["save_tensors", "save_image_set", "load_image_set"]


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> int:
    """Named tensors in a safetensors file at ``path`` (atomically, parent folders created); returns its size in
    bytes."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    return path.stat().st_size


def save_image_set(path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Images ``(N, C, H, W)`` in [0, 1] stored as uint8 with labels ``(N,)`` int64 in a safetensors file (atomically);
    returns its size in bytes."""
    return save_tensors(path, {"images": (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8),
                               "labels": labels.detach().cpu().long()})


def load_image_set(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, C, H, W) float32 in [0, 1], labels (N,))`` from :func:`save_image_set`'s file."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"load_image_set: no file {path}")
    d = load_file(str(path))
    return d["images"].float() / 255.0, d["labels"].long()
