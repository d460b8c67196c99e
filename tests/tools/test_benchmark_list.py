"""``tools/benchmark.py --list``: each benchmark described by whole sentences (its docstring's first paragraph), not
the docstring's first line cut mid-sentence."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tool():
    import zoo.benchmarks

    return zoo.benchmarks


def test_summary_is_the_first_paragraph_on_one_line():
    tool = _tool()
    module = type(sys)("fake")
    module.__doc__ = "Speed of the thing: ours against the\nreference.\n\nDetails that the list leaves out."
    assert tool.summary(module) == "Speed of the thing: ours against the reference."


def test_list_ends_every_description_with_a_full_stop():
    tool = _tool()
    proc = subprocess.run([sys.executable, "tools/benchmark.py", "--list"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    entries: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if line[:1].strip():  # a new benchmark: "name  description"
            name, _, text = line.partition(" ")
            entries[name] = text.strip()
        else:
            entries[name] += " " + line.strip()
    modules = tool.discover()
    assert set(entries) == set(modules)
    for name, text in entries.items():
        assert text == tool.summary(modules[name]), name
        assert text.endswith("."), f"{name}: {text!r} stops mid-sentence"
