"""The config-key reference (``zoo config show``) generated from the config classes: field comments become the
one-line docs (trailing, wrapped and above-the-field comments), nested sections expand, defaults are the values
the config class really starts with."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from zoo.cli.config_reference import config_keys, field_docs, format_keys


@dataclass
class _Inner:
    """A nested section."""

    size: int = 3  # how big
    names: list[str] = field(default_factory=lambda: ["a", "b"])


@dataclass
class _Base:
    lr: float = 0.1  # learning rate; wrapped onto
    #                  the next line
    # a comment block above a field
    # (two lines)
    steps: int = 10
    plain: bool = False


@dataclass
class _Config(_Base):
    inner: _Inner = field(default_factory=lambda: _Inner(size=5))  # overridden default of a section
    extra: dict[str, Any] = field(default_factory=dict)  # free-form
    steps: int = 20  # redeclared with its own doc


def test_field_docs_from_comments():
    docs = field_docs(_Config)
    assert docs["lr"] == "learning rate; wrapped onto the next line"
    assert docs["steps"] == "redeclared with its own doc"
    assert field_docs(_Base)["steps"] == "a comment block above a field (two lines)"
    assert docs["plain"] == "" and docs["extra"] == "free-form"


def test_config_keys_expand_sections_with_the_real_defaults():
    rows = {r.key: r for r in config_keys(_Config)}
    assert list(rows) == ["lr", "steps", "plain", "inner.size", "inner.names", "extra"]
    assert rows["inner.size"].default == "5" and rows["inner.size"].doc == "how big"  # the factory's value
    assert rows["inner.names"].default == "[a, b]" and rows["inner.names"].type == "list[str]"
    assert rows["steps"].default == "20" and rows["extra"].default == "{}"


def test_format_keys_aligns_and_wraps():
    text = format_keys(config_keys(_Config), width=70)
    lines = text.splitlines()
    assert lines[0].split() == ["key", "type", "default", "doc"]
    assert all(len(line) <= 70 for line in lines) and any(line.startswith(" ") for line in lines)  # wrapped docs


@pytest.mark.parametrize("kind", ["recipe", "adapter", "tta"])
def test_every_registered_config_class_has_a_reference(kind):
    """Every registered recipe / adapter method / TTA algorithm renders its table of keys."""
    from zoo.cli.inventory import _registered, show_class

    for name in _registered(kind):
        text = show_class(kind, name)
        assert "key" in text and "default" in text, name
