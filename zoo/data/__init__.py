"""Datasets in their real on-disk formats, built by name through ``build_dataset``."""
from zoo.data.registry import build_dataset, list_datasets, register_dataset

__all__ = ["build_dataset", "list_datasets", "register_dataset"]
