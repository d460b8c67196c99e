"""Stable Diffusion helpers on 🤗 diffusers (the ``[diffusion]`` extra): pipeline loading from a local diffusers
folder or a single ``.safetensors``/``.ckpt`` file, a tiny real-format pipeline for tests and benchmarks, sample
grids with / without an adapter, and the shipped MNIST text-to-image model
(``load_pretrained_pipeline("tiny_t2i_mnist")``).

Importing this package does not import diffusers; the functions do, and raise an ImportError naming
``pip install -e .[diffusion]`` when it is missing. Submodules: ``pipeline``, ``tiny``, ``sampling``, ``generate``,
``captions``, ``pretrained``.
"""
from zoo.diffusion.pretrained import load_pretrained_pipeline, pretrained_pipeline_dir

__all__ = ["load_pretrained_pipeline", "pretrained_pipeline_dir"]
