"""Data loaders whose order depends only on (seed, epoch), so resumed and multi-process runs see the same batches."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochSampler", "build_loader", "seed_worker", "cycle_loader"]


class EpochSampler(Sampler[int]):
    """Yields ``range(len(data))``, shuffled with a generator seeded by ``seed + epoch`` when ``shuffle``.

    Call :meth:`set_epoch` before each epoch (the Trainer does). The order never depends on global RNG state,
    which makes resume exact and lets ``accelerate`` split the same global batches across processes.

    ``worker_generator`` is the ``generator`` of the DataLoader built by :func:`build_loader`: the loader draws
    its workers' base seed from it at every ``iter()``, and :meth:`set_epoch` re-seeds it from ``(seed, epoch)``,
    so worker-side randomness (augmentations) is a function of the epoch too, not of the process's history.
    """

    def __init__(self, data: Sized, shuffle: bool = True, seed: int = 0):
        self.n = len(data)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.worker_generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.worker_generator.manual_seed((self.seed * 1_000_003 + epoch) % 2**63 + 1)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def seed_worker(worker_id: int) -> None:
    """Seed numpy in each DataLoader worker from torch's per-worker seed (torch seeds only itself and ``random``)."""
    np.random.seed(torch.initial_seed() % 2**32)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with an :class:`EpochSampler` (global batch size ``batch_size``).

    Workers are started afresh every epoch (not ``persistent_workers``) with seeds drawn from the sampler's
    per-epoch generator: a run resumed at any epoch gives its workers the seeds the uninterrupted run had.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError(f"{type(dataset).__name__} is empty: check the dataset root and split")
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_fn,
        worker_init_fn=seed_worker,
        generator=sampler.worker_generator,
    )


def cycle_loader(loader: Any) -> Iterator[Any]:
    """The batches of ``loader`` over and over (a new pass, e.g. a new shuffle, each time it is exhausted): for a
    second data set drawn beside the main loader; ``ValueError`` if ``loader`` yields nothing."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("cycle_loader: the loader is empty (no batch in a whole pass)")
