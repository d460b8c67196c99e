"""A small name -> callable registry shared by models, datasets and recipes."""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
import re
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["Registry", "import_submodules", "close_matches"]

F = TypeVar("F", bound=Callable)


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The up to ``n`` candidates closest to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.4)


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name.lower())]


def import_submodules(package: str) -> None:
    """Import every public submodule of ``package`` so that their ``@register_*`` decorators run.

    Modules whose name starts with ``_`` are skipped. Import errors are not swallowed.
    """
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


class Registry:
    """Maps names to builders; unknown names raise a ``KeyError`` that lists the closest registered names.

    Args:
        kind: what is registered ("model", "dataset", ...), used in messages.
        populate: packages imported (with all their submodules) before the first lookup, so that
            registration happens lazily and importing ``zoo`` stays cheap.
    """

    def __init__(self, kind: str, populate: Iterable[str] = ()):
        self.kind = kind
        self._entries: dict[str, Callable] = {}
        self._populate = tuple(populate)
        self._populated = not self._populate

    def _ensure_populated(self) -> None:
        if not self._populated:
            self._populated = True  # set first: submodules may look names up while importing
            for package in self._populate:
                import_submodules(package)

    def register(self, name: str | None = None) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name`` (default: ``fn.__name__``). Duplicate names raise."""

        def deco(fn: F) -> F:
            key = name or fn.__name__
            if key in self._entries and self._entries[key] is not fn:
                raise ValueError(f"{self.kind} '{key}' is already registered by {self._entries[key].__module__}")
            self._entries[key] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable:
        """The builder registered as ``name``; ``KeyError`` naming the closest matches if there is none."""
        self._ensure_populated()
        try:
            return self._entries[name]
        except KeyError:
            hint = close_matches(name, self._entries)
            msg = f"Unknown {self.kind} '{name}'."
            msg += f" Did you mean: {', '.join(hint)}?" if hint else f" Registered: {', '.join(self.names()) or 'none'}."
            from zoo.errors import UnknownNameError  # a user error: one error: line on the command line

            raise UnknownNameError(msg) from None

    def __contains__(self, name: str) -> bool:
        self._ensure_populated()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    # ---------------------------------------------------------------- pairs (config class, implementation)
    def register_with_config(self, name: str, config: type, *, base: type, config_base: type) -> Callable[[type], type]:
        """Class decorator of a registry of (config class, implementation) pairs (peft's ``register_peft_method``):
        registers a subclass of ``base`` as ``name`` with ``config`` (a dataclass subclassing ``config_base``) as
        its ``config_class``, and sets ``cls.name``. ``TypeError`` for a config or a class of the wrong kind."""
        import dataclasses

        if not (isinstance(config, type) and issubclass(config, config_base) and dataclasses.is_dataclass(config)):
            raise TypeError(f"{self.kind} '{name}': config must be a {config_base.__name__} dataclass, got {config!r}")

        def deco(cls: type) -> type:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"{self.kind} '{name}': {getattr(cls, '__name__', cls)} must subclass {base.__name__}")
            cls.name = name
            cls.config_class = config
            return self.register(name)(cls)

        return deco

    def in_order(self) -> list[str]:
        """Every registered name, in registration order."""
        self._ensure_populated()
        return list(self._entries)

    def get_for_section(self, section: object, where: str) -> Callable:
        """The entry named by a config section's ``name`` (``section``: a mapping such as ``adapter:`` or ``tta:``);
        :class:`~zoo.errors.ConfigError` naming ``<where>.name`` when it is missing or unknown."""
        from zoo.errors import ConfigError

        name = (section or {}).get("name")
        if not name:
            raise ConfigError(f"{where}: set {where}.name, the {self.kind} (registered: {', '.join(self.in_order())})")
        try:
            return self.get(str(name))
        except KeyError as exc:
            raise ConfigError(f"{where}.name: {exc.args[0]}") from None

    def names(self, filter: str | Iterable[str] = "", exclude: str | Iterable[str] = ()) -> list[str]:
        """Registered names matching any of the fnmatch patterns ``filter`` and none of ``exclude``, naturally sorted."""
        self._ensure_populated()
        include = [filter] if isinstance(filter, str) else list(filter)
        exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        out = [n for n in self._entries if not any(include) or any(fnmatch.fnmatch(n, p) for p in include if p)]
        out = [n for n in out if not any(fnmatch.fnmatch(n, p) for p in exclude)]
        return sorted(out, key=_natural_key)
