"""Reusable building blocks. Import submodules directly (``from zoo.layers.mamba import Mamba``)."""
