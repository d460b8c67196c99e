"""One ``accelerate.Accelerator`` per run, so that runs can nest (a training inside another's evaluation).

accelerate keeps its settings in process-wide singletons: ``AcceleratorState`` (mixed precision, DDP plugin, ...)
and ``GradientState`` (accumulation steps, whether gradients sync now, the active data loaders). A second
``Accelerator`` with other settings is refused while the first one's state is installed, and wiping that state
(``AcceleratorState._reset_state``) to build the second one corrupts the first run if it is still going: its
``accumulate()`` and its data loaders read the wiped state.

:class:`RunAccelerator` gives each run its own copy of both singletons instead. It builds its ``Accelerator``
on empty singletons and keeps the state it produced; :meth:`RunAccelerator.active` installs that state for
the duration of the run and puts back whatever was installed before (an outer run's, or nothing). The
process-group state (``PartialState``: ranks, device) is shared by all runs and never touched. The singletons'
storage dicts are changed in place, as accelerate's ``SharedDict`` documents they must be.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

__all__ = ["RunAccelerator"]

_Snapshot = tuple[dict[str, Any], dict[str, Any]]


def _storages() -> tuple[dict, dict]:
    from accelerate.state import AcceleratorState, GradientState

    return AcceleratorState._shared_state, GradientState._shared_state


def _snapshot() -> _Snapshot:
    acc, grad = _storages()
    return dict(acc), dict(grad)


def _install(snapshot: _Snapshot) -> None:
    for storage, values in zip(_storages(), snapshot):
        storage.clear()
        storage.update(values)


class RunAccelerator:
    """An ``Accelerator`` built with ``kwargs`` whose process-wide state is private to one run.

    Use ``with handle.active() as accelerator:`` around everything the run does with it (preparing, training,
    evaluating, saving). Runs may nest: an inner run's ``active()`` saves the outer run's state and restores it
    on exit, so the outer run continues exactly as if the inner one had not happened.
    """

    def __init__(self, **kwargs: Any):
        from accelerate import Accelerator

        outer = _snapshot()
        _install(({}, {}))
        try:
            self.accelerator = Accelerator(**kwargs)
            self._state = _snapshot()
        finally:
            _install(outer)

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        """Install this run's accelerate state; yields the ``Accelerator``; restores the previous state after."""
        outer = _snapshot()
        _install(self._state)
        try:
            yield self.accelerator
        finally:
            self._state = _snapshot()
            _install(outer)
