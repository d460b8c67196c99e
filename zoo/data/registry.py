"""Dataset registry: configs name datasets by string, ``build_dataset`` builds them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch.utils.data import DataLoader, Dataset

from zoo._registry_base import Registry
from zoo.errors import ConfigError

__all__ = ["DATASETS", "register_dataset", "build_dataset", "list_datasets", "DatasetSpec", "DataSection",
           "check_loader_settings"]

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


@dataclass
class DatasetSpec:
    """A dataset by registry name, as a config section: ``name``, ``root``, ``split`` and its keyword arguments."""

    name: str = "degraded_patches"
    root: Any = None  # a folder, a list of folders, or "a,b" (degraded_* datasets)
    split: str = "all"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, key: str = "data") -> Dataset:
        """:func:`build_dataset` of this spec; a missing folder names the spec's config key ``key`` (e.g.
        ``data.train``) in its message instead of ``data.root``."""
        try:
            return build_dataset(self.name, root=self.root, split=self.split, **self.kwargs)
        except FileNotFoundError as exc:
            raise FileNotFoundError(str(exc).replace("config key data.root", f"config key {key}.root")) from None


def check_loader_settings(section: Any, where: str = "data") -> None:
    """``batch_size`` (and ``eval_batch_size`` when the section has one and it is set) integers >= 1 and
    ``num_workers`` >= 0 in a config section; ``ConfigError`` naming ``<where>.<key>`` otherwise."""
    for key in ("batch_size", "eval_batch_size"):
        value = getattr(section, key, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}.{key} must be an integer >= 1, got {value!r}")
    if section.num_workers < 0:
        raise ConfigError(f"{where}.num_workers must be >= 0, got {section.num_workers!r}")


@dataclass
class DataSection:
    """Config section ``data`` of a recipe that trains on one split of a registered dataset and evaluates on
    another: the dataset, its arguments (for both splits and per split) and the loader settings."""

    name: str = "synthetic_shapes"
    root: str | None = None
    batch_size: int = 32  # global batch per optimiser micro-step, split across processes
    eval_batch_size: int | None = None  # default: batch_size
    num_workers: int = 0
    drop_last: bool = True  # training only
    train_split: str = "train"
    eval_split: str = "test"
    kwargs: dict[str, Any] = field(default_factory=dict)  # dataset arguments for both splits (e.g. num_points)
    train_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_loader_settings(self)

    def build(self, split: str, extra: Mapping[str, Any] | None = None, transform: Callable | None = None) -> Dataset:
        """The dataset of ``split`` with ``kwargs``, then ``extra`` (e.g. ``train_kwargs``) and ``transform``."""
        kwargs = {**self.kwargs, **(extra or {})}
        if transform is not None:
            kwargs["transform"] = transform
        return build_dataset(self.name, root=self.root, split=split, **kwargs)

    def train_loader(self, dataset: Dataset, seed: int) -> DataLoader:
        """Shuffled (seeded) training batches of the global ``batch_size``; ``drop_last`` when more than one batch."""
        from zoo.data.loader import build_loader

        return build_loader(dataset, self.batch_size, shuffle=True, seed=seed, num_workers=self.num_workers,
                            drop_last=self.drop_last and len(dataset) > self.batch_size)

    def eval_loader(self, dataset: Dataset, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """Evaluation batches of ``eval_batch_size`` (default ``batch_size``), in order unless ``shuffle``."""
        from zoo.data.loader import build_loader

        return build_loader(dataset, self.eval_batch_size or self.batch_size, shuffle=shuffle, seed=seed,
                            num_workers=self.num_workers)
