"""Shipped text-to-image pipelines: ``load_pretrained_pipeline("tiny_t2i_mnist")``.

A shipped pipeline is a diffusers folder ``<checkpoints>/<name>/`` (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), found in the folders of :func:`zoo.resources.checkpoint_dirs`
(the repo's ``checkpoints/`` in a checkout, ``zoo/_checkpoints/`` in an installed wheel) or in ``$ZOO_HOME``.
Its cfg below (:class:`zoo.pretrained_cfg.PipelineCfg`, the pipelines' ``default_cfgs``) lists its files with their
sha256 (checked on load unless ``verify=False``); ``checkpoints/manifest.yaml`` is generated from it
(``zoo manifest``). A re-shipped pipeline: ``zoo export-weights RUN/unet/pipeline --pipeline --name NAME`` prints
the new ``files``; paste them here, then run ``zoo manifest``.

``tiny_t2i_mnist``: 32×32 RGB handwritten digits from prompts such as "a handwritten digit seven" (see
:mod:`zoo.diffusion.captions`); ``StableDiffusionPipeline`` with a DDIM scheduler, trained by
``configs/t2i/pipeline.yaml``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.pretrained_cfg import PipelineCfg, pipeline_cfgs, register_pipeline_cfg

__all__ = ["PRETRAINED_PIPELINES", "default_cfgs", "pretrained_pipeline_dir", "load_pretrained_pipeline",
           "pipeline_cfg", "PipelineSection", "load_named_pipeline"]

default_cfgs = {
    "tiny_t2i_mnist": PipelineCfg(
        name="tiny_t2i_mnist",
        folder="tiny_t2i_mnist",
        loader="zoo.diffusion.load_pretrained_pipeline",
        pipeline_class="StableDiffusionPipeline",
        dtype="fp16",
        description="32x32 RGB MNIST digits from captions ('a handwritten digit seven'); StableDiffusionPipeline",
        metrics={"prompt_fidelity": 99.33, "vae_psnr_db": 26.94, "vae_psnr_colour_db": 22.87,
                 "unet_val_loss_validation": 0.0894},
        dataset="mnist t10k[:7000] (train; also the VAE's scaling factor) / t10k[7000:8000] (validation) / "
        "t10k[8000:] (reported, read by no training stage), 28x28 zero-padded to 32x32, grey replicated to RGB; "
        "captions from zoo/diffusion/captions.py",
        license="apache-2.0",
        train_command="python tools/train.py configs/t2i/pipeline.yaml --output runs/t2i && python "
        "tools/export_weights.py runs/t2i/unet/pipeline --pipeline --name tiny_t2i_mnist",
        eval_command="python tools/train.py configs/t2i/evaluate.yaml --output runs/t2i_evaluate",
        train_time_s=1784.2,
        notes="metrics: prompt_fidelity = generated digits judged by convnet_small.mnist32, 20 images per digit x 3 "
        "sampling seeds (configs/t2i/evaluate.yaml), bootstrap 95 % [98.7, 99.8]; vae_psnr_db on 512 reported "
        "digits test[8000:8512]. train_time_s: VAE 386.8 s + UNet and text encoder 1397.5 s (training loops), 1 "
        "thread on the shared 2-core CPU; pipeline wall 30 min 20 s.",
        files={
            "model_index.json": "14ff094efd7cabb17ee2e693ad82789e60d23d3a96556279d35139450f4647f4",
            "scheduler/scheduler_config.json": "28d1a009dfa466938be057413130d37105fb555c44c7c403af4cbdb4c3194f5c",
            "text_encoder/config.json": "7c5ff0530177179646a400dfd9be2b9847a1cebf4a3da7e57d2b20326e3ea2de",
            "text_encoder/model.safetensors": "54af765bde1098dc7757875c067f701332f6142b137bdbe714a3bfe9b2cfdc55",
            "tokenizer/tokenizer.json": "9bb9f06b6d6aa29e17e5c409797afa1cd3395d1475e54739c15e4911a31bae86",
            "tokenizer/tokenizer_config.json": "89809aa6597ea42a4d1e3bfda4a6fbb45f65708b3e26682fc1c1887c976d238e",
            "unet/config.json": "c0dcf66be29aae7a35e8df49f07d6112f9605f41beff2a773ff42cc20d871657",
            "unet/diffusion_pytorch_model.safetensors": "67f62799c3eeec6474377dd7586b7571a0473de2585323fe13029c3da8a6660c",
            "vae/config.json": "23a1c3868e07dbce33faed6a0f08a998a7451fe99dac1b349296fc472d7d6921",
            "vae/diffusion_pytorch_model.safetensors": "2d29a82095e479dc41d0546fc9d6cf9036f5ee8dccb530a5a607de71ea542d52",
        },
    ),
}
for _cfg in default_cfgs.values():
    register_pipeline_cfg(_cfg)

#: shipped pipeline name -> what it is (for messages and listings)
PRETRAINED_PIPELINES = {name: cfg.description for name, cfg in default_cfgs.items()}


def pipeline_cfg(name: str) -> PipelineCfg:
    """The cfg of shipped pipeline ``name``; ``KeyError`` naming the shipped ones otherwise."""
    cfgs = pipeline_cfgs()
    if name not in cfgs:
        raise KeyError(f"unknown pretrained pipeline '{name}'; shipped: {', '.join(cfgs)}")
    return cfgs[name]


def _search_dirs() -> list[Path]:
    from zoo.resources import checkpoint_dirs

    dirs = []
    if os.environ.get("ZOO_HOME"):
        dirs.append(Path(os.environ["ZOO_HOME"]).expanduser())
    return dirs + checkpoint_dirs()


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


def _verify(folder: Path, cfg: PipelineCfg) -> None:
    from zoo.errors import CheckpointError
    from zoo.hub import sha256sum

    for rel, digest in cfg.files.items():
        path = folder / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} (listed in the cfg of pipeline {cfg.name}) is missing")
        if sha256sum(path) != digest:
            raise CheckpointError(f"{path}: sha256 differs from the cfg of pipeline {cfg.name} (checkpoints/"
                                  "manifest.yaml); the file is corrupt or not the shipped one")


def load_pretrained_pipeline(name: str = "tiny_t2i_mnist", *, torch_dtype: torch.dtype | None = None,
                             device: str | torch.device | None = None, verify: bool = True) -> Any:
    """The shipped ``StableDiffusionPipeline`` ``name`` (offline; no safety checker), weights in ``torch_dtype``
    (default float32, whatever the stored dtype), on ``device``; progress bars off. ``verify``: check the files'
    sha256 against its cfg (the manifest's)."""
    from zoo.diffusion.pipeline import load_pipeline

    folder = pretrained_pipeline_dir(name)
    if verify:
        _verify(folder, pipeline_cfg(name))
    pipe = load_pipeline(folder, torch_dtype=torch_dtype or torch.float32, key=f"pretrained pipeline {name}")
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class PipelineSection:
    """Config section ``model`` of a scoring stage: the pipeline it scores (:func:`load_named_pipeline`)."""

    pretrained: str = "tiny_t2i_mnist"  # a diffusers folder or a shipped pipeline name


def load_named_pipeline(pretrained: str) -> Any:
    """The pipeline a scoring stage's ``model.pretrained`` names: a shipped pipeline (:func:`load_pretrained_pipeline`,
    files checked against the manifest) or a diffusers folder; weights in float32 (the shipped folders store fp16:
    score in fp32), progress bars off."""
    if pretrained in PRETRAINED_PIPELINES:
        return load_pretrained_pipeline(pretrained)
    from zoo.diffusion.pipeline import load_pipeline

    pipe = load_pipeline(pretrained, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe
