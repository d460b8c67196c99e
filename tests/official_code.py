"""Running an official code base's own files in a test, offline: read them from a checkout or the fetched git
mirror, and import them from a temporary folder with the CUDA-only (or unneeded) modules stubbed.

Used by the parity tests (NAFNet, BasicSR's PSNR/SSIM, PoinTramba part segmentation); each test skips cleanly
when :func:`official_sources` finds nothing.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
MIRRORS = REPO.parent / ".mirror"  # fetch's mirrors: ../.mirror/<owner>+<name>/repo (bare git directories)


def official_sources(files: Sequence[str], env_var: str, repo: str) -> dict[str, str] | None:
    """``{path: text}`` of ``files`` (paths inside the official repository ``repo`` = ``"owner/name"``), read from
    the checkout ``$env_var`` when it has them all, else from ``HEAD`` of the mirror ``../.mirror/owner+name/repo``;
    ``None`` when neither is there (or a file is missing)."""
    root = os.environ.get(env_var)
    if root and all((Path(root) / f).is_file() for f in files):
        return {f: (Path(root) / f).read_text() for f in files}
    git_dir = MIRRORS / repo.replace("/", "+") / "repo"
    if not git_dir.exists():
        return None
    try:
        return {f: subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{f}"], check=True,
                                  capture_output=True, text=True, timeout=30).stdout for f in files}
    except (OSError, subprocess.SubprocessError):
        return None


def _owned(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@contextlib.contextmanager
def imported_official(root: Path, sources: Mapping[str, str], module: str, *, packages: Sequence[str] = (),
                      files: Mapping[str, str] | None = None,
                      stubs: Mapping[str, types.ModuleType] | None = None,
                      quiet: Sequence[type[Warning]] = ()) -> Iterator[types.ModuleType]:
    """Write ``sources`` (and the extra ``files``, ``{path: text}``) under ``root``, make each folder of
    ``packages`` a package (empty ``__init__.py`` unless ``files`` gives one), put ``stubs`` into
    ``sys.modules`` and yield ``importlib.import_module(module)`` (warnings of the ``quiet`` categories ignored
    while importing) with ``root`` first on ``sys.path``. Every module under the top-level names written,
    imported or stubbed is set aside before and restored after, so the official code never mixes with an
    installed package of the same name."""
    written = {**sources, **(files or {})}
    for rel, text in written.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in packages:
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "__init__.py").touch()
    stubs = dict(stubs or {})
    tops = sorted({n.split(".")[0] for n in (module, *packages, *stubs)}
                  | {Path(rel).parts[0].removesuffix(".py") for rel in written})
    saved = {k: v for k, v in sys.modules.items() if _owned(k, tops)}
    for k in saved:
        del sys.modules[k]
    sys.modules.update(stubs)
    sys.path.insert(0, str(root))
    try:
        with warnings.catch_warnings():
            for category in quiet:
                warnings.simplefilter("ignore", category)
            imported = importlib.import_module(module)
        yield imported
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if _owned(k, tops)]:
            del sys.modules[k]
        sys.modules.update(saved)
