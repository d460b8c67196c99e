"""The reference of config keys, generated from the config classes: every key of a recipe's (or an adapter method's,
or a test-time adaptation algorithm's) config dataclass with its type, its default and the one-line doc written as
the field's comment in the source (``epochs: int = 10  # epoch loop``).

Comments count for a field when they are on the field's own lines, on comment-only lines right above it, or on
indented comment-only lines right below a field that has a trailing comment (a wrapped comment)::

    loop: str | None = None  # epoch | iteration | stream; default: stream if the recipe builds a stream,
    #                          iteration if max_steps is set, else epoch
    # write best.pt (the checkpoint selected on the eval split)
    save_best: bool = True

Nested dataclass sections are expanded into dotted keys (``trainer.epochs``); a section typed as a plain dict (e.g.
``model``, ``adapter``) is one key whose default is shown as YAML.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["KeyDoc", "field_docs", "config_keys", "format_keys"]


@dataclass(frozen=True)
class KeyDoc:
    """One config key: its dotted ``key``, ``type`` (as written), ``default`` (YAML flow text) and ``doc``."""

    key: str
    type: str
    default: str
    doc: str


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """``{line: (comment text without '#', whether the line holds only the comment)}`` of ``source`` (1-based)."""
    out: dict[int, tuple[str, bool]] = {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            out[row] = (tok.string[1:], not lines[row - 1][:col].strip())
    return out


def _class_field_comments(klass: type) -> dict[str, str]:
    """Field name -> joined comment text, for the fields ``klass`` itself annotates (see the module docstring)."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    try:
        tree = ast.parse(source)
        comments = _comments(source)
    except (SyntaxError, tokenize.TokenError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    fields = [(n.lineno, n.end_lineno or n.lineno, n.target.id) for n in body
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    claimed: set[int] = set()
    docs: dict[str, list[str]] = {}
    for first, last, name in fields:  # trailing comments and their wrapped continuation lines
        parts = [comments[r][0].strip() for r in range(first, last + 1) if r in comments]
        claimed.update(r for r in range(first, last + 1) if r in comments)
        row = last + 1
        while parts and row in comments and comments[row][1] and comments[row][0].startswith("  "):
            parts.append(comments[row][0].strip())
            claimed.add(row)
            row += 1
        docs[name] = parts
    for first, _, name in fields:  # comment blocks right above a field
        above, row = [], first - 1
        while row in comments and comments[row][1] and row not in claimed:
            above.insert(0, comments[row][0].strip())
            row -= 1
        docs[name] = above + docs[name]
    return {name: " ".join(p for p in parts if p) for name, parts in docs.items()}


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> one-line doc of every field of the dataclass ``cls``, its base classes' fields included (a
    subclass's comment wins when it re-declares a field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object and dataclasses.is_dataclass(klass) and klass.__dict__.get("__annotations__"):
            docs.update({k: v for k, v in _class_field_comments(klass).items() if v or k not in docs})
    return docs


def _type_text(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _yaml(value: Any) -> str:
    import yaml

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-3].strip() if text.endswith("...") else text


def _section(tp: Any, value: Any) -> type | None:
    """The dataclass a field holds (its value's class, else its annotation's), or ``None``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)
    if dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)


def _defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of the dataclass ``cls`` (an instance's values when ``cls()`` builds, so that
    factories and ``__post_init__`` apply); fields without a default map to ``dataclasses.MISSING``."""
    try:
        instance = cls()
        return {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}
    except Exception:  # noqa: BLE001 -- a required field or a check that needs real values: per-field defaults
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
            else:
                out[f.name] = dataclasses.MISSING
        return out


def config_keys(cls: type, prefix: str = "", instance: Any = None) -> list[KeyDoc]:
    """Every key of the config dataclass ``cls`` (nested sections expanded to dotted keys, in declaration order)
    with its type, default and one-line doc. ``instance``: the section's default object, when the enclosing config
    made it (its defaults may differ from the section class's own)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults = {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)} if instance is not None \
        else _defaults(cls)
    rows: list[KeyDoc] = []
    for f in dataclasses.fields(cls):
        value = defaults[f.name]
        section = _section(hints.get(f.name), value)
        if section is not None:
            own = value if dataclasses.is_dataclass(value) and not isinstance(value, type) else None
            rows += config_keys(section, f"{prefix}{f.name}.", own)
            continue
        default = "(required)" if value is dataclasses.MISSING else _yaml(value)
        rows.append(KeyDoc(f"{prefix}{f.name}", _type_text(hints.get(f.name, f.type)), default, docs.get(f.name, "")))
    return rows


def format_keys(rows: list[KeyDoc], width: int = 120) -> str:
    """The rows as an aligned table ``KEY  TYPE  DEFAULT  DOC`` (long defaults and docs wrap under their column)."""
    if not rows:
        return ""
    key_w = max(len("key"), *(len(r.key) for r in rows))
    type_w = max(len("type"), min(max(len(r.type) for r in rows), 24))
    default_w = max(len("default"), min(max(len(r.default) for r in rows), 28))
    lines = [f"{'key':<{key_w}}  {'type':<{type_w}}  {'default':<{default_w}}  doc"]
    indent = key_w + type_w + default_w + 6
    for r in rows:
        head = f"{r.key:<{key_w}}  {r.type:<{type_w}}  {r.default:<{default_w}}  "
        if len(r.type) > type_w or len(r.default) > default_w:  # too wide for its column: the doc goes below
            lines.append(head.rstrip())
            head = " " * indent
        doc = textwrap.wrap(r.doc, max(width - indent, 30)) or [""]
        lines.append((head + doc[0]).rstrip())
        lines += [" " * indent + more for more in doc[1:]]
    return "\n".join(lines)
