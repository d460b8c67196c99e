"""Stable Diffusion helpers on 🤗 diffusers (the ``[diffusion]`` extra): pipeline loading from a local diffusers
folder or a single ``.safetensors``/``.ckpt`` file, a tiny real-format pipeline for tests and benchmarks, and
sample grids with / without an adapter.

Importing this package does not import diffusers; the functions do, and raise an ImportError naming
``pip install -e .[diffusion]`` when it is missing. Submodules: ``pipeline``, ``tiny``, ``sampling``.
"""
