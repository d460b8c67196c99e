"""README snippets as tests: find the fenced code blocks of the repository's READMEs, read the ``<!-- snippet: ... -->``
directives written right before them, and run a README section's blocks in order in one working folder.

What runs (see ``tests/test_readme_snippets.py`` for the convention as a contributor reads it):

* ``python`` blocks: executed one after the other in one namespace per section (a later block sees the names an
  earlier one defined), with the README as the file name, so a traceback points at the README line;
* ``bash`` / ``sh`` / ``shell`` blocks, and unlabelled blocks whose first command is a known program (``python``,
  ``zoo``, ``torchrun``, ...): run by ``bash -e -o pipefail`` line for line, so the first failing command fails the
  snippet; a ``console`` block runs its ``$ `` lines;
* ``pip install ...`` lines are checked, not run: the distributions (or the zoo extras) they name must be installed,
  else the section is skipped with that line as the reason;
* everything else (``yaml``, ``bibtex``, ``markdown``, a layout tree, ...) is text.

Directives (HTML comments, invisible in the rendered README), one per line, right before the opening fence:

``<!-- snippet: skip "REASON" -->``
    do not run this block; the reason is printed in the test's skip message.
``<!-- snippet: overrides "KEY=VALUE ..." -->``
    append these config overrides to every training command of the block (``tools/train.py``, ``zoo train``,
    ``zoo-train``), before its comment or redirection: the short version of a long run.
``<!-- snippet: overrides "ARGS" if "TEXT" -->``
    append ``ARGS`` to every command of the block that contains ``TEXT`` (any command, e.g. ``tools/eval.py``).
``<!-- snippet: replace "OLD" "NEW" -->``
    run the block with the literal text ``OLD`` replaced by ``NEW`` (a placeholder such as ``/path/to/sdxl``, or a
    long option such as ``--steps 200``).
``<!-- snippet: given "CODE" -->``
    run ``CODE`` before the block (Python for a python block, shell for a shell block; ``"$ COMMAND"`` is a shell
    command for either): what the reader already has (``unet``, a finished ``runs/demo``), never a step the
    snippet itself needs.
``<!-- snippet: slow "REASON" -->``
    the section takes minutes even with its overrides: its test is also marked ``slow``.

Running a section: :func:`section_plan` turns its blocks into steps, :func:`run_plan` (this file run as a script,
``python tests/readme_snippets.py PLAN.json``) executes them in the current folder and names the README line of the
first failure.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: fence languages that are code to run, and those that are text
SHELL_LANGS = {"bash", "sh", "shell"}
RUN_LANGS = {"python", "console"} | SHELL_LANGS
TEXT_LANGS = {"yaml", "yml", "bibtex", "markdown", "md", "text", "txt", "plaintext", "json", "toml", "diff",
              "csv", "ini", "log", "output"}
#: the first word of a command line in an unlabelled block that makes the block a shell block
COMMANDS = {"python", "python3", "zoo", "zoo-train", "zoo-eval", "torchrun", "make", "pip", "cp", "mv", "mkdir",
            "ls", "cat", "rm", "export", "cd", "bash", "sbatch", "tools/train.py"}
DIRECTIVES = {"skip": 1, "overrides": 1, "replace": 2, "given": 1, "slow": 1}
#: a training command: its overrides go at the end of it
TRAIN_COMMAND = re.compile(r"(?:\btools/train\.py\b|\bzoo\s+train\b|\bzoo-train\b)")

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:\s*(.*?)\s*-->\s*$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


class SnippetSyntaxError(ValueError):
    """A ``<!-- snippet: ... -->`` directive that cannot be read, or one that precedes no code block."""


@dataclass
class Directive:
    """One ``<!-- snippet: NAME "ARG" ... [if "TEXT"] -->`` comment."""

    name: str
    args: list[str]
    condition: str | None = None


@dataclass
class Block:
    """A fenced code block: its file, the line of its opening fence (1-based), language and text."""

    path: Path
    line: int
    lang: str
    code: str
    directives: list[Directive] = field(default_factory=list)

    name: str = ""  # the file as the reader names it (relative to the repository)

    @property
    def where(self) -> str:
        return f"{self.name or self.path}:{self.line}"

    @property
    def kind(self) -> str:
        """``python``, ``shell``, ``console`` or ``text``."""
        if self.lang == "python":
            return "python"
        if self.lang in SHELL_LANGS:
            return "shell"
        if self.lang == "console":
            return "console"
        if self.lang == "" and _looks_like_commands(self.code):
            return "shell"
        return "text"

    def directive(self, name: str) -> list[Directive]:
        return [d for d in self.directives if d.name == name]


@dataclass
class Section:
    """The blocks under one heading of a README (up to the next heading of any level)."""

    path: Path
    title: str
    line: int
    blocks: list[Block] = field(default_factory=list)

    @property
    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.kind != "text"]

    name: str = ""

    @property
    def test_id(self) -> str:
        """``FILE/heading-slug``, e.g. ``README.md/train-and-evaluate`` (usable with ``pytest -k``)."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")[:48]
        return f"{self.name or self.path.name}/{slug}"


def _looks_like_commands(code: str) -> bool:
    for line in code.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        while words and _ASSIGNMENT.match(words[0]):
            words = words[1:]
        return bool(words) and words[0] in COMMANDS
    return False


def readme_files(repo: Path) -> list[Path]:
    """The READMEs whose snippets are tests: ``README.md`` and ``configs/*/README.md``."""
    return [repo / "README.md", *sorted((repo / "configs").glob("*/README.md"))]


def parse_directive(text: str, where: str) -> Directive:
    """``NAME "ARG" ... [if "TEXT"]`` (the inside of a ``<!-- snippet: ... -->`` comment) as a :class:`Directive`."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise SnippetSyntaxError(f"{where}: cannot read the snippet directive {text!r} ({e})") from None
    if not words or words[0] not in DIRECTIVES:
        raise SnippetSyntaxError(f"{where}: unknown snippet directive {words[:1]!r}; known: {', '.join(DIRECTIVES)}")
    name, args, condition = words[0], words[1:], None
    if len(args) >= 2 and args[-2] == "if" and name == "overrides":
        args, condition = args[:-2], args[-1]
    if len(args) != DIRECTIVES[name]:
        raise SnippetSyntaxError(f"{where}: snippet directive '{name}' takes {DIRECTIVES[name]} quoted argument(s), "
                                 f"got {len(args)}: {text!r}")
    return Directive(name, args, condition)


def parse_readme(path: Path, name: str = "") -> list[Section]:
    """Every section of the markdown file ``path`` (shown as ``name``) with its fenced blocks and directives."""
    lines = path.read_text(encoding="utf-8").split("\n")
    name = name or path.name
    sections = [Section(path, name, 1, name=name)]
    pending: list[Directive] = []
    pending_line = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE.match(line)
        if m:
            pending.append(parse_directive(m.group(1), f"{path}:{i + 1}"))
            pending_line = i + 1
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            indent, marker, lang = fence.groups()
            body, j = [], i + 1
            while j < len(lines) and not re.match(rf"^\s*{re.escape(marker[0])}{{{len(marker)},}}\s*$", lines[j]):
                body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
                j += 1
            sections[-1].blocks.append(Block(path, i + 1, lang.lower(), "\n".join(body), pending, name=name))
            pending = []
            i = j + 1
            continue
        if pending and line.strip():
            raise SnippetSyntaxError(f"{path}:{pending_line}: a snippet directive must come right before a code "
                                     f"block (its fence); found text instead: {line.strip()[:60]!r}")
        heading = _HEADING.match(line)
        if heading:
            sections.append(Section(path, heading.group(2), i + 1, name=name))
        i += 1
    if pending:
        raise SnippetSyntaxError(f"{path}:{pending_line}: a snippet directive at the end of the file precedes no "
                                 f"code block")
    return [s for s in sections if s.blocks]


# --- shell text -----------------------------------------------------------------------------------------------------

def command_segments(code: str) -> list[tuple[int, int]]:
    """``(start, end)`` character ranges of the simple commands of the shell text ``code``: split at unquoted
    newlines (not line continuations), ``;``, ``&``, ``|``, ``(`` / ``)``, redirections and comments; ``end`` is
    where arguments appended to the command go (after its last word)."""
    segments: list[tuple[int, int]] = []
    start, last_word_end, i, n = 0, 0, 0, len(code)
    quote: str | None = None

    def close(at_end: int) -> None:
        nonlocal start
        first = start + len(code[start:last_word_end]) - len(code[start:last_word_end].lstrip())
        if last_word_end > first:
            segments.append((first, last_word_end))
        start = at_end

    while i < n:
        c = code[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = None
                last_word_end = i + 1
            i += 1
            continue
        if c in "'\"":
            quote = c
            i += 1
            continue
        if c == "\\" and i + 1 < n:
            if code[i + 1] != "\n":
                last_word_end = i + 2
            i += 2
            continue
        if c == "#" and (i == 0 or code[i - 1].isspace()):
            close(i)
            while i < n and code[i] != "\n":
                i += 1
            start = i
            continue
        if c in "\n;&|()<>":
            close(i + 1)
            if c in "<>":  # the redirection's target word is not part of the command's arguments
                i += 1
                while i < n and code[i] in " \t>&":
                    i += 1
                while i < n and not code[i].isspace() and code[i] not in ";&|()":
                    i += 1
                start = last_word_end = i
                continue
            i += 1
            start = i
            continue
        if not c.isspace():
            last_word_end = i + 1
        i += 1
    close(n)
    return segments


def apply_overrides(code: str, directives: list[Directive]) -> str:
    """``code`` with each ``overrides`` directive's arguments appended to the commands it applies to."""
    inserts: dict[int, list[str]] = {}
    for start, end in command_segments(code):
        command = code[start:end]
        for d in directives:
            if d.name != "overrides":
                continue
            applies = d.condition in command if d.condition is not None else bool(TRAIN_COMMAND.search(command))
            if applies:
                inserts.setdefault(end, []).append(d.args[0])
    for end in sorted(inserts, reverse=True):
        code = code[:end] + " " + " ".join(inserts[end]) + code[end:]
    return code


def install_line(line: str) -> list[str] | None:
    """The requirements a ``pip install ...`` line asks for (``zoo[extra]`` for ``-e ".[extra]"``), else None."""
    words = shlex.split(line, comments=True)
    if words[:2] not in (["pip", "install"], ["python", "-m"]) or (words[:2] == ["python", "-m"] and words[2:4] != ["pip", "install"]):
        return None
    args = words[2:] if words[0] == "pip" else words[4:]
    wanted = []
    for a in args:
        if a.startswith("-") or a in (".",):
            continue
        m = re.match(r"^(?:\.|zoo)\[([\w,\s-]+)\]$", a)
        wanted.extend(f"zoo[{x.strip()}]" for x in m.group(1).split(",")) if m else wanted.append(a)
    return wanted


def missing_requirements(wanted: list[str]) -> list[str]:
    """Those of ``wanted`` (distribution names, or ``zoo[extra]``) that are not installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    missing = []
    for want in wanted:
        extra = re.match(r"^zoo\[(.+)\]$", want)
        if extra:
            for spec in metadata.requires("zoo") or []:
                req = Requirement(spec)
                if req.marker is not None and req.marker.evaluate({"extra": extra.group(1)}):
                    try:
                        metadata.version(req.name)
                    except metadata.PackageNotFoundError:
                        missing.append(f"{req.name} (extra [{extra.group(1)}])")
            continue
        try:
            metadata.version(Requirement(want).name)
        except metadata.PackageNotFoundError:
            missing.append(want)
    return missing


def shell_code(block: Block) -> tuple[str, list[str]]:
    """The shell text to run for ``block`` (replacements and overrides applied, ``pip install`` lines turned into
    no-ops) and the requirements its install lines name."""
    code = block.code
    if block.kind == "console":
        code = "\n".join(line[2:] if line.startswith("$ ") else "" for line in code.split("\n"))
    for d in block.directive("replace"):
        code = code.replace(d.args[0], d.args[1])
    wanted: list[str] = []
    lines = code.split("\n")
    for k, line in enumerate(lines):
        req = install_line(line) if line.strip().startswith(("pip ", "python -m pip ")) else None
        if req is not None:
            wanted.extend(req)
            lines[k] = ": checked, not run: " + shlex.quote(line.strip())
    return apply_overrides("\n".join(lines), block.directives), wanted


def stale_directives(block: Block) -> list[str]:
    """The directives of ``block`` that would do nothing (the README changed under them): a ``replace`` whose text
    is not in the block, an ``overrides`` that applies to no command of it. Each as ``FILE:LINE: why``."""
    out = []
    code = block.code
    for d in block.directive("replace"):
        if d.args[0] not in code:
            out.append(f"{block.where}: replace {d.args[0]!r}: the block does not contain it")
        code = code.replace(d.args[0], d.args[1])
    if block.kind in ("shell", "console"):
        commands = [code[a:b] for a, b in command_segments(code)]
        for d in block.directive("overrides"):
            hit = any((d.condition in c) if d.condition is not None else TRAIN_COMMAND.search(c) for c in commands)
            if not hit:
                what = f"no command contains {d.condition!r}" if d.condition else "the block has no training command"
                out.append(f"{block.where}: overrides {d.args[0]!r}: {what}")
    elif block.directive("overrides"):
        out.append(f"{block.where}: overrides on a {block.kind} block (only shell commands take them)")
    return out


def python_code(block: Block) -> str:
    code = block.code
    for d in block.directive("replace"):
        code = code.replace(d.args[0], d.args[1])
    return code


# --- a section as steps ---------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What to run for a section: ``steps`` (dicts for :func:`run_plan`), skipped blocks with their reasons, the
    requirements named by install lines, and whether a block asked for the ``slow`` marker."""

    steps: list[dict]
    skipped: list[str]
    requirements: list[str]
    slow: bool


def section_plan(section: Section) -> Plan:
    steps, skipped, wanted, slow = [], [], [], False
    for block in section.runnable:
        slow = slow or bool(block.directive("slow"))
        skip = block.directive("skip")
        if skip:
            skipped.append(f"{block.where}: {skip[0].args[0]}")
            continue
        given = [d.args[0] for d in block.directive("given")]
        if block.kind == "python":
            code = python_code(block)
        else:
            code, req = shell_code(block)
            wanted.extend(req)
        steps.append({"kind": "python" if block.kind == "python" else "shell", "code": code, "given": given,
                      "path": str(block.path), "line": block.line, "where": block.where})
    return Plan(steps, skipped, wanted, slow)


def run_plan(steps: list[dict]) -> int:
    """Run ``steps`` in order in the current folder: Python in one shared namespace (file name and line numbers
    those of the README), shell with ``bash -e -o pipefail``. Prints a line per step with its wall time; on the
    first failure prints ``SNIPPET FAILED at FILE:LINE`` and returns 1."""
    namespace: dict = {"__name__": "__readme__"}
    for step in steps:
        t0 = time.perf_counter()
        print(f"[snippet] {step['where']} ({step['kind']})", flush=True)
        ok = True
        if step["kind"] == "python":
            try:
                for code in step["given"]:
                    if code.startswith("$ "):
                        subprocess.run(["bash", "-e", "-o", "pipefail", "-x", "-c", code[2:]], check=True)
                    else:
                        exec(compile(code, f"<given for {step['where']}>", "exec"), namespace)
                padded = "\n" * step["line"] + step["code"]  # line numbers of the README in tracebacks
                exec(compile(padded, step["path"], "exec"), namespace)
            except SystemExit as e:
                ok = e.code in (0, None)
            except BaseException:  # noqa: BLE001 -- reported with its traceback, then the section fails
                import traceback

                traceback.print_exc()
                ok = False
        else:
            script = Path(f".snippet_{step['line']}.sh")
            # line 1: the error trap and any given code; then blank lines, so that $LINENO is the README's line
            first = (f"trap 'rc=$?; {{ set +x; }} 2>/dev/null; echo \"SNIPPET FAILED at {step['path']}:$LINENO (exit $rc): "
                     "$BASH_COMMAND\" >&2' ERR; "
                     + "".join(f"{g.removeprefix('$ ')}; " for g in step["given"]) + "set -x")
            script.write_text(first + "\n" * step["line"] + step["code"] + "\n")
            proc = subprocess.run(["bash", "-e", "-o", "pipefail", str(script)])
            script.unlink()
            ok = proc.returncode == 0
            if proc.returncode == 127:
                print("(exit 127: a command was not found; is the package installed? `pip install -e .` installs "
                      "the `zoo` command)", flush=True)
        print(f"[snippet] {step['where']} took {time.perf_counter() - t0:.1f} s", flush=True)
        if not ok:
            print(f"SNIPPET FAILED at {step['path']}:{step['line']}", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_plan(json.loads(Path(sys.argv[1]).read_text())))
