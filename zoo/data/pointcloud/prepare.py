"""Build the ModelNet10 point-cloud layout the shipped numbers use, from the official Princeton OFF meshes.

Input (``ModelNet10.zip`` from http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip, unzipped):
``<src>/<class>/{train,test}/<class>_NNNN.off`` for the 10 classes (``<src>`` may also be the folder that holds
``ModelNet10/``). Some official OFF files have the header glued to the counts (``OFF490 518 0``): ``read_off``
accepts them.

Output: ``<out>/<class>/{train,test}/<class>_NNNN.pcd``, binary PCD v0.7, fields ``x y z`` float32, ``num_points``
(1024) points per shape, Poisson-disk sampled on the mesh surface, raw mesh coordinates (not normalised): the
layout of ``shared/data/modelnet10`` (3991 train / 908 test), which ``zoo.data.build_dataset("modelnet10",
root=<out>)`` reads. A hidden ``<out>/.prepare_data.json`` records the settings, so a rerun resumes (finished files
are skipped) and a run with other settings refuses to mix its files in (``overwrite=True`` rebuilds).

Sampling (``sampler``): ``"open3d"`` is ``TriangleMesh.sample_points_poisson_disk(num_points, init_factor=5)``;
``"numpy"`` is the same weighted sample elimination ported to numpy (``mesh.poisson_disk_eliminate``: given the same
initial samples both keep the same points), with numpy's random initial samples; ``"auto"`` takes open3d when it
imports. Each shape's seed is derived from ``seed`` and its ``<class>/<split>/<name>`` only, so the result does not
depend on the order, the number of workers or on resuming.

Which sampler made ``shared/data/modelnet10``: the files do not say (open3d and ``write_pcd`` write the same PCD
header) and the exact points cannot be reproduced (random initial samples, unknown seed). Their statistics are
consistent with open3d >= 0.17's ``sample_points_poisson_disk`` (init_factor 5): on the ~12 % of shapes whose
meshes are clean, nearest-neighbour distances have a coefficient of variation of 0.074-0.081 (10th-50th
percentile) and min/mean 0.86, as open3d 0.20 gives on clean meshes (0.071-0.082, 0.86-0.88), while open3d < 0.17
(beta 0.5) gives 0.085-0.10, dense uniform + farthest-point sampling 0.10 and uniform sampling 0.5; the other
shapes show the clustered spacing that the same elimination produces on meshes with duplicated or internal faces.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data.pointcloud.io import read_off, read_pcd_fields, write_pcd
from zoo.data.pointcloud.mesh import resolve_backend, sample_mesh_poisson_disk

__all__ = [
    "MODELNET10_OFFICIAL_COUNTS",
    "MODELNET10_URL",
    "OutputConflict",
    "SourceLayoutError",
    "find_modelnet10_source",
    "plan_modelnet10",
    "prepare_modelnet10",
    "shape_seed",
]

MODELNET10_URL = "http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip"
MODELNET10_OFFICIAL_COUNTS = {"train": 3991, "test": 908}
MANIFEST = ".prepare_data.json"
SPLITS = ("train", "test")
_SETTINGS = ("dataset", "num_points", "sampler", "init_factor", "seed")  # what makes two outputs "the same"


class SourceLayoutError(FileNotFoundError):
    """``--src`` is not the official ModelNet10 layout (the message lists what is missing)."""


class OutputConflict(FileExistsError):
    """``--out`` holds something else (other settings, or files this tool did not write): refused without overwrite."""


@dataclass(frozen=True)
class ShapeJob:
    """One mesh to sample: ``src`` (.off) -> ``dst`` (.pcd), with its own ``seed``."""

    src: Path
    dst: Path
    rel: str  # "<class>/<split>/<name>"
    seed: int


def _classes() -> list[str]:
    from zoo.data.pointcloud.modelnet import MODELNET10_CLASSES

    return list(MODELNET10_CLASSES)


def find_modelnet10_source(src: str | os.PathLike) -> Path:
    """The folder holding the 10 ``<class>/{train,test}/*.off`` trees: ``src`` itself or ``src/ModelNet10``.

    Raises ``SourceLayoutError`` naming the missing class / split folders, the expected layout and the download.
    """
    root = Path(src).expanduser()
    expected = (
        f"Expected the official layout <src>/<class>/{{train,test}}/<class>_NNNN.off for the classes "
        f"{', '.join(_classes())}.\nDownload and unzip {MODELNET10_URL}, then pass --src <the ModelNet10 folder>."
    )
    if not root.is_dir():
        raise SourceLayoutError(f"--src {root} is not a folder.\n{expected}")
    candidates = [root, root / "ModelNet10"]
    base = next((c for c in candidates if any((c / k).is_dir() for k in _classes())), None)
    if base is None:
        raise SourceLayoutError(f"--src {root} holds none of the ModelNet10 class folders.\n{expected}")
    problems = []
    for cls in _classes():
        for split in SPLITS:
            d = base / cls / split
            if not d.is_dir():
                problems.append(f"  - {d} (missing folder)")
            elif next(d.glob("*.off"), None) is None:
                problems.append(f"  - {d} (no .off files)")
    if problems:
        listing = "\n".join(problems)
        raise SourceLayoutError(f"{base} is not a complete ModelNet10 download:\n{listing}\n{expected}")
    return base


def shape_seed(seed: int, rel: str) -> int:
    """Seed of one shape: a function of the run's ``seed`` and the shape's ``<class>/<split>/<name>`` (< 2**31)."""
    return (zlib.crc32(rel.encode()) ^ (int(seed) * 0x9E3779B1)) & 0x7FFFFFFF


def plan_modelnet10(src: Path, out: Path, seed: int) -> list[ShapeJob]:
    """Every mesh of the (checked) source tree, sorted by class, split and natural name order."""
    from zoo.data.pointcloud._common import natural_sorted

    jobs = []
    for cls in _classes():
        for split in SPLITS:
            for f in natural_sorted((src / cls / split).glob("*.off")):
                rel = f"{cls}/{split}/{f.stem}"
                jobs.append(ShapeJob(f, out / cls / split / f"{f.stem}.pcd", rel, shape_seed(seed, rel)))
    return jobs


def _is_finished(path: Path, num_points: int) -> bool:
    """A complete output file: a PCD with exactly x y z and ``num_points`` finite points."""
    if not path.is_file():
        return False
    try:
        fields = read_pcd_fields(path)
    except (ValueError, KeyError):
        return False
    return list(fields) == ["x", "y", "z"] and all(
        v.shape == (num_points,) and np.isfinite(v).all() for v in fields.values()
    )


def _write_atomic(path: Path, xyz: np.ndarray) -> None:
    """Binary PCD written to a hidden temporary file, then renamed: a file at ``path`` is always complete."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write_pcd(tmp, xyz, data="binary")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sample_job(job: ShapeJob, num_points: int, init_factor: float, sampler: str) -> tuple[str, str | None]:
    """Sample and write one shape -> ``(rel, None)`` or ``(rel, error message naming the file)``."""
    try:
        vertices, faces = read_off(job.src, dtype=np.float64)
        pts = sample_mesh_poisson_disk(vertices, faces, num_points, job.seed, init_factor, backend=sampler)[:, :3]
        if not np.isfinite(pts).all():
            raise ValueError("the mesh has NaN/inf vertex coordinates")
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(job.dst, pts)
    except (ValueError, RuntimeError, OSError) as e:
        msg = str(e)
        return job.rel, msg if msg.startswith(str(job.src)) else f"{job.src}: {msg}"
    return job.rel, None


def _settings(num_points: int, sampler: str, init_factor: float, seed: int) -> dict[str, Any]:
    return {"dataset": "modelnet10", "num_points": int(num_points), "sampler": sampler,
            "init_factor": float(init_factor), "seed": int(seed)}  # fmt: skip


def _check_output(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse an output folder that holds another dataset/settings or foreign files, unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise OutputConflict(f"--out {out} exists and is not a folder")
    if not out.is_dir() or overwrite:
        return
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except ValueError:
            old = {}
        diff = {k: (old.get(k), settings[k]) for k in _SETTINGS if old.get(k) != settings[k]}
        if diff:
            changes = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise OutputConflict(
                f"--out {out} was built with other settings ({changes}); its files would be mixed with new ones. "
                f"Rerun with the same settings to resume, pass --overwrite to rebuild it, or choose another --out."
            )
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise OutputConflict(
            f"--out {out} is not empty ({shown}) and was not written by this tool (no {MANIFEST}). Choose a new or "
            f"empty folder, or pass --overwrite to write the ModelNet10 layout into it (its "
            f"<class>/{{train,test}}/*.pcd files are replaced)."
        )


def _clean(out: Path, jobs: Sequence[ShapeJob], overwrite: bool) -> None:
    """Remove temporary files of an interrupted run; with ``overwrite`` also .pcd files not in this source."""
    wanted = {j.dst for j in jobs}
    for cls in _classes():
        for split in SPLITS:
            d = out / cls / split
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if f.name.startswith(".") and ".pcd.tmp" in f.name:
                    f.unlink()
                elif overwrite and f.suffix == ".pcd" and f not in wanted:
                    f.unlink()


def prepare_modelnet10(
    src: str | os.PathLike,
    out: str | os.PathLike,
    num_points: int = 1024,
    sampler: str = "auto",
    init_factor: float = 5.0,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Sample every ModelNet10 mesh of ``src`` into the PCD layout under ``out`` (see the module docstring).

    Returns a summary: ``{"out", "sampler", "counts": {split: shapes}, "written", "skipped", "failed": [(rel,
    message)]}``. Raises ``SourceLayoutError`` (bad ``src``) or ``OutputConflict`` (``out`` holds something else)
    before writing anything. A shape that fails (e.g. a corrupt mesh) is reported in ``failed`` and the others
    are still written; rerunning retries only the missing ones.
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if init_factor <= 1:
        raise ValueError(f"init_factor must be > 1, got {init_factor}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    base = find_modelnet10_source(src)
    out = Path(out).expanduser()
    sampler = resolve_backend(sampler)
    settings = _settings(num_points, sampler, init_factor, seed)
    _check_output(out, settings, overwrite)
    jobs = plan_modelnet10(base, out, seed)
    out.mkdir(parents=True, exist_ok=True)
    layout = "<class>/{train,test}/<class>_NNNN.pcd, binary PCD v0.7, x y z float32, raw coordinates"
    manifest = {**settings, "complete": False, "source": str(base.resolve()), "layout": layout}
    if sampler == "open3d":
        import open3d

        manifest["open3d"] = open3d.__version__
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    _clean(out, jobs, overwrite)

    todo = [j for j in jobs if overwrite or not _is_finished(j.dst, num_points)]
    log(
        f"ModelNet10 {base} -> {out}: {len(jobs)} shapes, {len(jobs) - len(todo)} already done, sampling "
        f"{len(todo)} with {sampler} Poisson-disk ({num_points} points, init_factor {init_factor})"
    )
    failed = _run(todo, num_points, init_factor, sampler, workers, progress)

    counts = {s: sum(1 for j in jobs if f"/{s}/" in j.rel) for s in SPLITS}
    if not failed:
        manifest.update(complete=True, counts=counts)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return {"out": out, "sampler": sampler, "counts": counts, "written": len(todo) - len(failed),
            "skipped": len(jobs) - len(todo), "failed": failed}  # fmt: skip


def _run(todo: Sequence[ShapeJob], num_points: int, init_factor: float, sampler: str, workers: int,
         progress: bool) -> list[tuple[str, str]]:  # fmt: skip
    """Sample the jobs (in a spawn process pool when ``workers > 1``) with a tqdm bar -> failures."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="ModelNet10 -> pcd", unit="shape", disable=not progress or None)
    failed, pool = [], None
    try:
        if workers == 1 or len(todo) <= 1:
            results = (_sample_job(j, num_points, init_factor, sampler) for j in todo)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            args = ([num_points] * len(todo), [init_factor] * len(todo), [sampler] * len(todo))
            results = pool.map(_sample_job, todo, *args, chunksize=4)
        for rel, err in results:
            if err is not None:
                failed.append((rel, err))
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return failed
