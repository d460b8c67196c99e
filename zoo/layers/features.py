"""Index handling shared by every ``forward_intermediates`` (models and layer stacks alike)."""
from __future__ import annotations

from typing import Sequence

__all__ = ["feature_take_indices"]


def feature_take_indices(num_blocks: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Absolute block indices for ``forward_intermediates`` and the largest one.

    ``None``: all blocks; an int ``n``: the last ``n``; a sequence: those indices, negative ones counted from
    the end. Out-of-range indices raise a ValueError naming the valid range.
    """
    if num_blocks < 1:
        raise ValueError("forward_intermediates: the model has no blocks to take intermediates from.")
    if indices is None:
        indices = num_blocks
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"forward_intermediates: indices={indices} asks for the last {indices} blocks; the model "
                             f"has {num_blocks} (give 1 to {num_blocks}, or a list of block indices).")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        take = []
        for i in indices:
            j = num_blocks + i if i < 0 else i
            if not 0 <= j < num_blocks:
                raise ValueError(f"forward_intermediates: block index {i} is out of range for {num_blocks} blocks "
                                 f"(valid: 0 to {num_blocks - 1}, or -{num_blocks} to -1).")
            take.append(int(j))
        if not take:
            raise ValueError("forward_intermediates: indices is an empty list; give block indices or None (all).")
    return take, max(take)
