"""Dataset registry: configs name datasets by string, ``build_dataset`` builds them."""
from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import Dataset

from zoo._registry_base import Registry

__all__ = ["DATASETS", "register_dataset", "build_dataset", "list_datasets"]

DATASETS = Registry("dataset", populate=("zoo.data.pointcloud", "zoo.data.images"))


def register_dataset(name: str) -> Callable:
    """Register a dataset class or factory ``fn(root=None, split="train", **kwargs) -> Dataset`` under ``name``."""
    return DATASETS.register(name)


def build_dataset(name: str, root: str | None = None, split: str = "train", **kwargs: Any) -> Dataset:
    """Build the dataset registered as ``name`` for ``split`` from files under ``root``.

    Extra keyword arguments go to the dataset (e.g. ``num_points``, ``transform``); an unknown one raises a
    ``TypeError`` that names it and the accepted ones.
    """
    from zoo._introspect import call_with_checked_kwargs

    return call_with_checked_kwargs(DATASETS.get(name), f"dataset '{name}'", root=root, split=split, **kwargs)


def list_datasets(filter: str = "") -> list[str]:
    """Names of the registered datasets matching the fnmatch pattern ``filter``."""
    return DATASETS.names(filter)
