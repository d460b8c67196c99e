"""Call a builder with keyword arguments and turn 'unexpected keyword' errors into messages that name the fix."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from zoo._registry_base import close_matches
from zoo.errors import ArgumentError

__all__ = ["accepted_kwargs", "call_with_checked_kwargs"]


def accepted_kwargs(fn: Callable) -> set[str] | None:
    """Names of the keyword arguments ``fn`` accepts, or ``None`` when it takes ``**kwargs`` (anything goes).

    For a class, the signature of ``__init__`` is used.
    """
    sig = inspect.signature(fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def call_with_checked_kwargs(fn: Callable, what: str, /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, but an unknown keyword raises :class:`~zoo.errors.ArgumentError` (a ``TypeError``)
    naming ``what``, the key and the closest valid ones."""
    accepted = accepted_kwargs(fn)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                hint = close_matches(key, accepted, n=3)
                raise ArgumentError(
                    f"{what} got an unexpected argument '{key}'."
                    + (f" Did you mean: {', '.join(hint)}?" if hint else "")
                    + f" Accepted: {', '.join(sorted(accepted))}."
                )
    return fn(*args, **kwargs)
