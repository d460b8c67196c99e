"""Files of a distillation: image sets (uint8 images + labels) and named tensors (stored soft labels, views) in
safetensors files, each written atomically (a temp file, then a rename); the returned sizes are what the storage
report counts."""
from __future__ import annotations

import os

import torch

from zoo.files import read_safetensors_file, write_safetensors_file

__all__ = ["save_tensors", "load_tensors", "save_image_set", "load_image_set", "save_module_weights",
           "load_module_weights"]


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> int:
    """Named tensors in a safetensors file at ``path`` (atomically, parent folders created); returns its size in
    bytes."""
    return write_safetensors_file(tensors, path).stat().st_size


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The named tensors of a :func:`save_tensors` file (errors name the file: missing, truncated, corrupt)."""
    return read_safetensors_file(path, what="distillation file")


def save_image_set(path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Images ``(N, C, H, W)`` in [0, 1] stored as uint8 with labels ``(N,)`` int64 in a safetensors file (atomically);
    returns its size in bytes."""
    return save_tensors(path, {"images": (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8),
                               "labels": labels.detach().cpu().long()})


def load_image_set(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, C, H, W) float32 in [0, 1], labels (N,))`` from :func:`save_image_set`'s file."""
    d = read_safetensors_file(path, what="image set")
    return d["images"].float() / 255.0, d["labels"].long()


def save_module_weights(module: torch.nn.Module, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> int:
    """Every tensor of ``module.state_dict()`` (weights and buffers) in a safetensors file, floating ones cast to
    ``dtype``: what has to ship when a network is part of what is stored (e.g. a projector's encoder that no one
    can download). Returns the file's size in bytes."""
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in module.state_dict().items()}
    return save_tensors(path, state)


def load_module_weights(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a :func:`save_module_weights` file into ``module`` (strict; floating tensors cast to the module's
    dtypes), so the module computes with exactly the stored (rounded) weights."""
    state = load_tensors(path)
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"{path}: does not match {type(module).__name__}: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
