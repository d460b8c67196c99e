"""Exceptions that mean "the user's input is wrong" (a leaf module: everything may import it)."""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key/file and the fix."""
