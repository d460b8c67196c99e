"""Exceptions that mean "the user's input is wrong" (a leaf module: everything may import it).

The command line prints these (and ``FileNotFoundError`` / ``FileExistsError``) as one ``error:`` line whose
message names the thing and the fix; every other exception is a bug and shows its traceback. Each class also
derives from the builtin exception a caller would expect (``ConfigError`` is a ``ValueError``...), so code that
catches the builtin keeps working.
"""
from __future__ import annotations

__all__ = ["ZooError", "ConfigError", "ArgumentError", "DataError", "CheckpointError", "MissingDependencyError",
           "UnknownNameError", "USER_ERRORS"]


class ZooError(Exception):
    """Base of the zoo's user-facing errors: the message names the input at fault and how to fix it."""


class ConfigError(ZooError, ValueError):
    """A config file or override is invalid; the message names the key/file and the fix."""


class ArgumentError(ConfigError, TypeError):
    """A builder (model, dataset, transform) got a keyword argument it does not take (from a config or a call);
    also a ``TypeError``, as Python's own unexpected-keyword error."""


class DataError(ZooError, ValueError):
    """A dataset's files are missing, malformed or not what the config says (the message names file and fix)."""


class CheckpointError(ZooError, RuntimeError):
    """A weights file does not fit the model (missing / unexpected keys, shapes, class count, frame) or cannot be
    read (truncated, corrupt, unsafe pickles)."""


class MissingDependencyError(ZooError, ImportError):
    """An optional dependency (an extra) is not installed; the message names the package and the install command."""


class UnknownNameError(ZooError, KeyError):
    """A registry has nothing under that name (a model, weights tag, dataset, recipe, method...); the message lists
    the closest names. Also a ``KeyError``, as any failed lookup."""

    def __str__(self) -> str:  # the message itself, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


#: what the command line reports as one ``error:`` line (anything else is a bug: traceback)
USER_ERRORS: tuple[type[BaseException], ...] = (ZooError, FileNotFoundError, FileExistsError)
