"""Stable Diffusion helpers on 🤗 diffusers (the ``[diffusion]`` extra): pipeline loading from a local diffusers
folder or a single ``.safetensors``/``.ckpt`` file, a tiny real-format pipeline for tests and benchmarks, sample
grids with / without an adapter, and the shipped MNIST text-to-image model
(``load_pretrained_pipeline("tiny_t2i_mnist")``).

Importing this package does not import diffusers; the functions do, and raise a MissingDependencyError naming
``pip install 'zoo[diffusion]'`` when it is missing. Submodules: ``pipeline`` (loading, components, encoding a
batch), ``adapters`` (the adaptation methods of :mod:`zoo.adapters` on pipelines: files, detection, loading with an
on/off switch), ``denoising`` (the training objective and the fixed-noise validation loss), ``sampling`` (grids,
``tools/sample.py``), ``generate``, ``captions``, ``tiny``, ``pretrained``, ``t2i`` (the tiny MNIST model's parts),
``b4m`` (Break-for-Make's stages), ``composition_eval`` (scoring content + style compositions).
"""
from zoo.diffusion.pretrained import load_pretrained_pipeline, pretrained_pipeline_dir

__all__ = ["load_pretrained_pipeline", "pretrained_pipeline_dir"]
