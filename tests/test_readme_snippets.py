"""The READMEs' snippets are tests: every Python snippet and shell command of ``README.md`` and
``configs/*/README.md`` runs here, on tiny data, so a snippet that fails as written fails CI.

How it works, for contributors
------------------------------

Each README section (the text under one heading, any level) is one test (``README.md/train-and-evaluate``). Its
fenced blocks run in order in a fresh working folder that looks like a checkout: copies of ``configs/``, ``tools/``,
``checkpoints/`` and ``scripts/``, with the sample data at ``../shared/data`` as in CI (the tests skip when it is
absent). A later block sees what an earlier one wrote (``runs/...``); ``python`` blocks of a section share one
namespace. Shell blocks (``bash``, ``sh``, ``console``'s ``$`` lines, and unlabelled blocks that start with a
command such as ``python`` or ``zoo``) run under ``bash -e -o pipefail``: the first failing command fails the test,
which names the README line. ``pip install ...`` lines are not run: what they install must already be there
(CI installs ``[dev,pointcloud,diffusion]``), else the section is skipped naming the line. Text blocks (``yaml``,
``bibtex``, layout trees) are not run.

Write a snippet the way a user runs it. When it is long (a 30-minute training), put the short version it is tested
with in an HTML comment right before the opening fence (invisible on GitHub, visible to whoever edits the block):

* ``<!-- snippet: overrides "trainer.epochs=1 data.kwargs.samples_per_class=2" -->`` appends these overrides to
  every training command of the block (``tools/train.py``, ``zoo train``, ``zoo-train``); ``overrides "ARGS" if
  "TEXT"`` appends to every command containing ``TEXT`` instead (e.g. ``if "tools/eval.py"``; per-stage
  ``STAGE:key=value`` overrides of a pipeline work as on the command line);
* ``<!-- snippet: replace "/path/to/sdxl" "checkpoints/tiny_t2i_mnist" -->`` runs the block with a placeholder
  (or a long option such as ``--steps 200``) replaced;
* ``<!-- snippet: given "unet = ..." -->`` runs code before the block (``given "$ COMMAND"``: a shell command):
  what the reader already has (their UNet, a finished ``runs/demo``), never a step the snippet itself needs;
* ``<!-- snippet: skip "needs a GPU" -->`` does not run the block; the reason shows in the test's skip message.
  Keep skips rare and honest: a skip is for what CI cannot have (a GPU, a multi-GB download, a cluster), never for
  a snippet that fails;
* ``<!-- snippet: slow "3 min even with the overrides" -->`` also marks the section's test ``slow``.

A directive that no longer matches its block (the ``replace`` text or the command of an ``overrides`` is gone after
an edit) fails ``test_no_directive_is_stale``, so a README edit cannot silently turn the short run back into the long
one. A snippet must not write into the checkout it is tested from (the test fails when the checkout's
``checkpoints/`` changed): give such a command an ``--out-dir`` inside the working folder.

``tests/readme_snippets.py`` holds the parser and the runner. Run one section:
``pytest tests/test_readme_snippets.py -k train-and-evaluate``; all of them: ``pytest -m docs``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from readme_snippets import (Directive, SnippetSyntaxError, apply_overrides, command_segments, parse_directive,
                             parse_readme, readme_files, section_plan, missing_requirements)

REPO = Path(__file__).resolve().parents[1]
#: what a section's working folder copies from the checkout (the commands name these paths)
CHECKOUT_PARTS = ("configs", "tools", "checkpoints", "scripts")
#: a section's time limit
SECTION_TIMEOUT_S = 900


def _sections():
    sections = []
    for path in readme_files(REPO):
        try:
            sections.extend(s for s in parse_readme(path, str(path.relative_to(REPO))) if s.runnable)
        except SnippetSyntaxError:  # collection goes on; test_every_code_block_is_classified_... names the line
            continue
    return sections


def _params():
    params = []
    for section in _sections():
        marks = [pytest.mark.docs, pytest.mark.data]
        if section_plan(section).slow:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(section, id=section.test_id, marks=marks))
    return params


def _files_state(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.is_dir() else {}


def _workdir(tmp_path: Path, data: Path) -> Path:
    """``tmp_path/zoo`` as a checkout's root (copies of :data:`CHECKOUT_PARTS`) with ``../shared/data`` -> data."""
    root = tmp_path / "zoo"
    root.mkdir()
    for part in CHECKOUT_PARTS:
        if (REPO / part).exists():
            shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data.resolve(), target_is_directory=True)
    return root


@pytest.mark.parametrize("section", _params())
def test_readme_section_runs_as_written(section, tmp_path, shared_data):
    plan = section_plan(section)
    if not plan.steps:
        pytest.skip("; ".join(plan.skipped))
    missing = missing_requirements(plan.requirements)
    if missing:
        pytest.skip(f"{section.test_id}: needs {', '.join(missing)} (its pip install line)")
    root = _workdir(tmp_path, shared_data)
    (tmp_path / "plan.json").write_text(json.dumps(plan.steps))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    shipped = _files_state(REPO / "checkpoints")  # a snippet must never write into the checkout it tests
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("readme_snippets.py")),
                           str(tmp_path / "plan.json")], cwd=root, env=env, capture_output=True, text=True,
                          timeout=SECTION_TIMEOUT_S)
    took = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    print(output[-4000:])
    now = _files_state(REPO / "checkpoints")
    changed = sorted(k for k in shipped.keys() | now.keys() if shipped.get(k) != now.get(k))
    assert not changed, (f"{section.test_id} wrote into the checkout's checkpoints/ (restore them with git): "
                         f"{changed[:5]}; point the command at the working folder (e.g. a replace directive adding "
                         "--out-dir checkpoints)")
    assert proc.returncode == 0, (f"{section.test_id} fails as written ({took:.0f} s):\n"
                                  + "\n".join(line for line in output.splitlines() if "SNIPPET FAILED" in line)
                                  + "\n--- output (end) ---\n" + output[-6000:])
    if plan.skipped:
        print("skipped blocks: " + "; ".join(plan.skipped))


# --- the mechanism itself (no data, fast) ---------------------------------------------------------------------------

def test_every_code_block_is_classified_and_every_directive_reads():
    """An unknown fence language would silently not run: every block is code we run or text we know."""
    from readme_snippets import RUN_LANGS, TEXT_LANGS

    for path in readme_files(REPO):
        for section in parse_readme(path, str(path.relative_to(REPO))):  # raises on a bad directive
            for block in section.blocks:
                assert block.lang in RUN_LANGS | TEXT_LANGS | {""}, (
                    f"{block.where}: fence language {block.lang!r} is neither run nor known as text; add it to "
                    "tests/readme_snippets.py")


def test_no_directive_is_stale():
    """A README edit that removes the text a ``replace`` names, or the command an ``overrides`` is for, would make
    the test run the long or placeholder version: fail instead, naming the directive's line."""
    from readme_snippets import stale_directives

    stale = [msg for path in readme_files(REPO) for section in parse_readme(path, str(path.relative_to(REPO)))
             for block in section.blocks for msg in stale_directives(block)]
    assert not stale, "stale snippet directives:\n" + "\n".join(stale)


def test_stale_directives_are_found():
    from readme_snippets import Block, stale_directives

    block = Block(Path("R.md"), 7, "bash", "python tools/eval.py --checkpoint x.pt",
                  [Directive("replace", ["CONFIG", "a.yaml"]), Directive("overrides", ["trainer.epochs=1"]),
                   Directive("overrides", ["--steps 2"], "tools/sample.py"), Directive("overrides", ["a=1"], "eval.py")])
    assert stale_directives(block) == [
        "R.md:7: replace 'CONFIG': the block does not contain it",
        "R.md:7: overrides 'trainer.epochs=1': the block has no training command",
        "R.md:7: overrides '--steps 2': no command contains 'tools/sample.py'"]


def test_overrides_go_at_the_end_of_each_training_command_before_comments_and_redirections():
    code = ("python tools/train.py a.yaml --output runs/x   # comment\n"
            "python tools/eval.py --checkpoint runs/x/best.pt\n"
            "OMP_NUM_THREADS=1 python tools/train.py b.yaml \\\n    seed=1 --output runs/y\n"
            "zoo train c.yaml --list-cells > cells.txt && zoo train d.yaml | tee log\n")
    out = apply_overrides(code, [Directive("overrides", ["trainer.epochs=1"])])
    assert out.splitlines() == [
        "python tools/train.py a.yaml --output runs/x trainer.epochs=1   # comment",
        "python tools/eval.py --checkpoint runs/x/best.pt",
        "OMP_NUM_THREADS=1 python tools/train.py b.yaml \\",
        "    seed=1 --output runs/y trainer.epochs=1",
        "zoo train c.yaml --list-cells trainer.epochs=1 > cells.txt && zoo train d.yaml trainer.epochs=1 | tee log"]
    only_eval = apply_overrides(code, [Directive("overrides", ["data.eval_split=test[:8]"], "tools/eval.py")])
    assert "best.pt data.eval_split=test[:8]" in only_eval and only_eval.count("test[:8]") == 1


def test_segments_respect_quotes_and_hash_inside_words():
    code = "python tools/train.py x.yaml 'a=[1, 2] # not a comment' b#c ; echo hi"
    starts = [code[s:e] for s, e in command_segments(code)]
    assert starts == ["python tools/train.py x.yaml 'a=[1, 2] # not a comment' b#c", "echo hi"]


def test_directives_parse_and_bad_ones_name_the_line(tmp_path):
    assert parse_directive('overrides "a=1 b=2" if "eval.py"', "f:1") == Directive("overrides", ["a=1 b=2"],
                                                                                    "eval.py")
    assert parse_directive('skip "needs a GPU"', "f:1").args == ["needs a GPU"]
    with pytest.raises(SnippetSyntaxError, match="f:3: unknown snippet directive.*known: skip"):
        parse_directive('skipp "x"', "f:3")
    md = tmp_path / "README.md"
    md.write_text('# T\n\n<!-- snippet: skip "x" -->\nsome text\n```bash\necho\n```\n')
    with pytest.raises(SnippetSyntaxError, match="README.md:3: a snippet directive must come right before"):
        parse_readme(md)


def test_a_section_runs_its_blocks_in_order_and_names_the_failing_line(tmp_path):
    md = tmp_path / "README.md"
    md.write_text("# Demo\n\n```bash\necho 41 > n.txt\n```\n\n```python\nn = int(open('n.txt').read()) + 1\n```\n\n"
                  "```python\nassert n == 42\n```\n\n## Broken\n\n<!-- snippet: replace \"GOOD\" \"true\" -->\n"
                  "```\ncp n.txt m.txt\nGOOD\nfalse  # line 20\n```\n\n```yaml\nnot: run\n```\n")
    demo, broken = parse_readme(md)
    assert [b.kind for b in demo.blocks] == ["shell", "python", "python"] and broken.blocks[-1].kind == "text"

    def run(section):
        (tmp_path / "plan.json").write_text(json.dumps(section_plan(section).steps))
        return subprocess.run([sys.executable, str(Path(__file__).with_name("readme_snippets.py")),
                               str(tmp_path / "plan.json")], cwd=tmp_path, capture_output=True, text=True)

    assert run(demo).returncode == 0
    failed = run(broken)
    assert failed.returncode == 1
    assert f"SNIPPET FAILED at {md}:21 (exit 1): false" in failed.stderr


def test_install_lines_are_checked_not_run():
    from readme_snippets import Block, install_line, shell_code

    assert install_line('pip install -e ".[diffusion]"') == ["zoo[diffusion]"]
    assert install_line("pip install onnx onnxruntime") == ["onnx", "onnxruntime"]
    code, wanted = shell_code(Block(Path("R.md"), 1, "bash", 'pip install -e ".[diffusion]"\nzoo list'))
    assert wanted == ["zoo[diffusion]"] and code.splitlines()[0].startswith(": checked, not run:")
    assert missing_requirements(["pytest"]) == [] and missing_requirements(["surely-not-installed-xyz"])
