"""Which part of each dataset trains, which validates and which is reported: one scheme, used by every config.

Every reported number has a validation split beside it, disjoint from the reported one; checkpoints
(``best.pt``), learning rates, thresholds and gates are chosen on the validation split only, and no training or
pre-training stage reads the reported split (not even for a scaling constant). A config whose evaluation during
training reads the reported split must not select on it (``trainer.save_best: false``: the run reports its last
epoch); ``tests/test_splits.py`` checks every shipped config against this table.

The scheme per dataset (split strings as the datasets take them; ``test[a:b]`` is a slice of the test file):

* ``mnist`` — the shared data holds only MNIST's t10k file: ``test[:7000]`` trains, ``test[7000:8000]`` validates,
  ``test[8000:]`` (2,000 digits) is reported. Streams and generated sets follow the same cut: a corrupted
  validation stream is made from ``test[7000:8000]``, the reported stream from ``test[8000:]``.
* ``modelnet10`` / ``modelnet40`` / ``scanobjectnn`` / ``shapenetpart`` / ``cifar10`` / ``cifar100`` — the official
  ``train`` / ``test`` splits; ``test`` is reported. The point-cloud benchmarks have no official validation split:
  their configs select nothing (last epoch reported), as the official code bases report.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SplitScheme", "SPLIT_SCHEMES", "split_scheme", "is_reported_split"]


@dataclass(frozen=True)
class SplitScheme:
    """The train / validation / reported splits of one dataset (``validation`` None: the dataset has none and its
    configs must not select a checkpoint or tune on an evaluation split)."""

    train: str
    validation: str | None
    reported: str


SPLIT_SCHEMES: dict[str, SplitScheme] = {
    "mnist": SplitScheme(train="test[:7000]", validation="test[7000:8000]", reported="test[8000:]"),
    "modelnet10": SplitScheme(train="train", validation=None, reported="test"),
    "modelnet40": SplitScheme(train="train", validation=None, reported="test"),
    "scanobjectnn": SplitScheme(train="train", validation=None, reported="test"),
    "shapenetpart": SplitScheme(train="trainval", validation=None, reported="test"),
    "cifar10": SplitScheme(train="train", validation=None, reported="test"),
    "cifar100": SplitScheme(train="train", validation=None, reported="test"),
}


def split_scheme(dataset: str) -> SplitScheme | None:
    """The scheme of ``dataset`` (a registered dataset name), None for datasets outside the table."""
    return SPLIT_SCHEMES.get(dataset)


def _mnist_range(split: str) -> tuple[int, int] | None:
    """``test[a:b]`` -> (a, b) on the 10,000-digit t10k file; None for other strings."""
    import re

    m = re.fullmatch(r"test(?:\[(-?\d*):(-?\d*)\])?", split.replace(" ", ""))
    if m is None:
        return None
    a = int(m.group(1)) if m.group(1) else 0
    b = int(m.group(2)) if m.group(2) else 10_000
    return (a + 10_000 if a < 0 else a, b + 10_000 if b < 0 else b)


def is_reported_split(dataset: str, split: str) -> bool:
    """Whether ``split`` of ``dataset`` reads any of the reported examples (for MNIST slices: overlaps
    ``test[8000:]``)."""
    scheme = split_scheme(dataset)
    if scheme is None:
        return False
    if dataset == "mnist":
        got, reported = _mnist_range(split), _mnist_range(scheme.reported)
        if got is None or reported is None:
            return split == scheme.reported
        return max(got[0], reported[0]) < min(got[1], reported[1])
    return split == scheme.reported
