"""Shipped text-to-image pipelines: ``load_pretrained_pipeline("tiny_t2i_mnist")``.

A shipped pipeline is a diffusers folder ``<checkpoints>/<name>/`` (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), found in the folders of :func:`zoo.resources.checkpoint_dirs`
(the repo's ``checkpoints/`` in a checkout, ``zoo/_checkpoints/`` in an installed wheel) or in ``$ZOO_HOME``.
``checkpoints/manifest.yaml`` lists its files with their sha256 (checked on load unless ``verify=False``).

``tiny_t2i_mnist``: 32×32 RGB handwritten digits from prompts such as "a handwritten digit seven" (see
:mod:`zoo.diffusion.captions`); ``StableDiffusionPipeline`` with a DDIM scheduler, trained by
``configs/t2i/pipeline.yaml``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["PRETRAINED_PIPELINES", "pretrained_pipeline_dir", "load_pretrained_pipeline", "manifest_entry"]

#: shipped pipeline name -> what it is (for messages and listings)
PRETRAINED_PIPELINES = {
    "tiny_t2i_mnist": "32x32 RGB MNIST digits from captions ('a handwritten digit seven'); StableDiffusionPipeline",
}


def _search_dirs() -> list[Path]:
    from zoo.resources import checkpoint_dirs

    dirs = []
    if os.environ.get("ZOO_HOME"):
        dirs.append(Path(os.environ["ZOO_HOME"]).expanduser())
    return dirs + checkpoint_dirs()


def manifest_entry(name: str) -> dict[str, Any] | None:
    """The ``checkpoints/manifest.yaml`` entry of pipeline ``name`` (``None`` if it has none)."""
    import yaml

    for d in _search_dirs():
        m = d / "manifest.yaml"
        if m.is_file():
            for entry in yaml.safe_load(m.read_text()) or []:
                if entry.get("name") == name:
                    return entry
    return None


def pretrained_pipeline_dir(name: str) -> Path:
    """The folder of the shipped pipeline ``name``; ``KeyError`` for unknown names, ``FileNotFoundError`` naming
    the folders tried."""
    if name not in PRETRAINED_PIPELINES:
        raise KeyError(f"unknown pretrained pipeline '{name}'; shipped: {', '.join(PRETRAINED_PIPELINES)}")
    tried = [d / name for d in _search_dirs()]
    for p in tried:
        if (p / "model_index.json").is_file():
            return p
    raise FileNotFoundError(f"pretrained pipeline '{name}' not found (tried {', '.join(map(str, tried))}); "
                            f"train it with configs/t2i/pipeline.yaml and export it with tools/export_weights.py "
                            f"--pipeline RUN/unet/pipeline --name {name}, or set $ZOO_HOME to a folder holding {name}/")


def _verify(folder: Path, entry: dict[str, Any]) -> None:
    from zoo.errors import CheckpointError
    from zoo.hub import sha256sum

    for rel, digest in (entry.get("files") or {}).items():
        path = folder / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} (listed in checkpoints/manifest.yaml for {entry['name']}) is missing")
        if sha256sum(path) != digest:
            raise CheckpointError(f"{path}: sha256 differs from checkpoints/manifest.yaml ({entry['name']}); the file is "
                               "corrupt or not the shipped one")


def load_pretrained_pipeline(name: str = "tiny_t2i_mnist", *, torch_dtype: torch.dtype | None = None,
                             device: str | torch.device | None = None, verify: bool = True) -> Any:
    """The shipped ``StableDiffusionPipeline`` ``name`` (offline; no safety checker), weights in ``torch_dtype``
    (default float32, whatever the stored dtype), on ``device``; progress bars off. ``verify``: check the files'
    sha256 against the manifest."""
    from zoo.diffusion.pipeline import load_pipeline

    folder = pretrained_pipeline_dir(name)
    entry = manifest_entry(name)
    if verify and entry is not None:
        _verify(folder, entry)
    pipe = load_pipeline(folder, torch_dtype=torch_dtype or torch.float32, key=f"pretrained pipeline {name}")
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
