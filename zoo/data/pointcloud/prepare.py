"""Build the ModelNet point-cloud layout the shipped numbers use, from the official Princeton OFF meshes.

Input (``ModelNet10.zip`` from http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip, or
``ModelNet40.zip`` from http://modelnet.cs.princeton.edu/ModelNet40.zip, unzipped):
``<src>/<class>/{train,test}/<class>_NNNN.off`` for the 10 (40) classes (``<src>`` may also be the folder that holds
``ModelNet10/`` / ``ModelNet40/``). Some official OFF files have the header glued to the counts (``OFF490 518 0``):
``read_off`` accepts them.

Output: ``<out>/<class>/{train,test}/<class>_NNNN.pcd``, binary PCD v0.7, fields ``x y z`` float32, ``num_points``
(1024) points per shape, Poisson-disk sampled on the mesh surface, not normalised, **in the standard frame**
(y up, the frame of ``modelnet40_normal_resampled`` / ``modelnet40_ply_hdf5_2048`` / Point-BERT's ``.dat``): each
point is ``(x, z, y)`` of the OFF mesh's ``(x, y, z)`` (see ``zoo.data.pointcloud.frames`` for how that map was
settled). ``zoo.data.build_dataset("modelnet10", root=<out>)`` reads it. A hidden ``<out>/.prepare_data.json``
records the settings and ``"frame": "standard"`` (the reader takes the PCD tree's frame from it), and
``<out>/README.md`` says the same for people; a rerun resumes (finished files are skipped) and a run with other
settings, or into an output of the tool's earlier versions (raw OFF frame, no ``frame`` recorded), refuses to mix
its files in (``overwrite=True`` rebuilds).

``shared/data/modelnet10`` (3991 train / 908 test) is the same layout but in the raw OFF frame (it was sampled
before the tool converted; it has no ``.prepare_data.json``): the reader converts it when it loads it.

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

from zoo.data.pointcloud.frames import STANDARD, to_standard
from zoo.data.pointcloud.io import read_off, read_pcd_fields, write_pcd
from zoo.data.pointcloud.mesh import resolve_backend, sample_mesh_poisson_disk

__all__ = [
    "MODELNET10_OFFICIAL_COUNTS",
    "MODELNET10_URL",
    "MODELNET_SOURCES",
    "OutputConflict",
    "SourceLayoutError",
    "find_modelnet10_source",
    "find_modelnet_source",
    "plan_modelnet",
    "plan_modelnet10",
    "prepare_modelnet",
    "prepare_modelnet10",
    "shape_seed",
]

MODELNET10_URL = "http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip"
MODELNET10_OFFICIAL_COUNTS = {"train": 3991, "test": 908}
MODELNET_SOURCES = {  # dataset -> (download folder name, url, official shape counts)
    "modelnet10": ("ModelNet10", MODELNET10_URL, MODELNET10_OFFICIAL_COUNTS),
    "modelnet40": ("ModelNet40", "http://modelnet.cs.princeton.edu/ModelNet40.zip", {"train": 9843, "test": 2468}),
}
MANIFEST = ".prepare_data.json"  # the reader (zoo.data.pointcloud.modelnet.format_frame) takes the frame from it
SPLITS = ("train", "test")
FRAME = STANDARD  # the frame the tool writes; the meshes are in the "off_mesh" frame
_SETTINGS = ("dataset", "frame", "num_points", "sampler", "init_factor", "seed")  # what makes two outputs "the same"


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


def _classes(dataset: str = "modelnet10") -> list[str]:
    from zoo.data.pointcloud.modelnet import MODELNET10_CLASSES, MODELNET40_CLASSES

    return list(MODELNET10_CLASSES if dataset == "modelnet10" else MODELNET40_CLASSES)


def _check_dataset(dataset: str) -> tuple[str, str, dict[str, int]]:
    if dataset not in MODELNET_SOURCES:
        raise ValueError(f"dataset must be one of {sorted(MODELNET_SOURCES)}, got {dataset!r}")
    return MODELNET_SOURCES[dataset]


def find_modelnet_source(dataset: str, src: str | os.PathLike) -> Path:
    """The folder holding the ``<class>/{train,test}/*.off`` trees of ``dataset`` (``"modelnet10"`` /
    ``"modelnet40"``): ``src`` itself or ``src/ModelNet10`` (``src/ModelNet40``).

    Raises ``SourceLayoutError`` naming the missing class / split folders, the expected layout and the download.
    """
    folder, url, _ = _check_dataset(dataset)
    classes = _classes(dataset)
    root = Path(src).expanduser()
    expected = (
        f"Expected the official layout <src>/<class>/{{train,test}}/<class>_NNNN.off for the classes "
        f"{', '.join(classes)}.\nDownload and unzip {url}, then pass --src <the {folder} folder>."
    )
    if not root.is_dir():
        raise SourceLayoutError(f"--src {root} is not a folder.\n{expected}")
    candidates = [root, root / folder]
    base = next((c for c in candidates if any((c / k).is_dir() for k in classes)), None)
    if base is None:
        raise SourceLayoutError(f"--src {root} holds none of the {folder} class folders.\n{expected}")
    problems = []
    for cls in classes:
        for split in SPLITS:
            d = base / cls / split
            if not d.is_dir():
                problems.append(f"  - {d} (missing folder)")
            elif next(d.glob("*.off"), None) is None:
                problems.append(f"  - {d} (no .off files)")
    if problems:
        listing = "\n".join(problems)
        raise SourceLayoutError(f"{base} is not a complete {folder} download:\n{listing}\n{expected}")
    return base


def find_modelnet10_source(src: str | os.PathLike) -> Path:
    """``find_modelnet_source("modelnet10", src)``."""
    return find_modelnet_source("modelnet10", src)


def shape_seed(seed: int, rel: str) -> int:
    """Seed of one shape: a function of the run's ``seed`` and the shape's ``<class>/<split>/<name>`` (< 2**31)."""
    return (zlib.crc32(rel.encode()) ^ (int(seed) * 0x9E3779B1)) & 0x7FFFFFFF


def plan_modelnet(dataset: str, src: Path, out: Path, seed: int) -> list[ShapeJob]:
    """Every mesh of the (checked) source tree, sorted by class, split and natural name order."""
    from zoo.data.pointcloud._common import natural_sorted

    jobs = []
    for cls in _classes(dataset):
        for split in SPLITS:
            for f in natural_sorted((src / cls / split).glob("*.off")):
                rel = f"{cls}/{split}/{f.stem}"
                jobs.append(ShapeJob(f, out / cls / split / f"{f.stem}.pcd", rel, shape_seed(seed, rel)))
    return jobs


def plan_modelnet10(src: Path, out: Path, seed: int) -> list[ShapeJob]:
    """``plan_modelnet("modelnet10", ...)``."""
    return plan_modelnet("modelnet10", src, out, seed)


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
        pts = to_standard(pts, "off_mesh")  # OFF (z up) -> the standard frame (y up): (x, z, y)
        if not np.isfinite(pts).all():
            raise ValueError("the mesh has NaN/inf vertex coordinates")
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(job.dst, pts)
    except (ValueError, RuntimeError, OSError) as e:
        msg = str(e)
        return job.rel, msg if msg.startswith(str(job.src)) else f"{job.src}: {msg}"
    return job.rel, None


def _settings(dataset: str, num_points: int, sampler: str, init_factor: float, seed: int) -> dict[str, Any]:
    return {"dataset": dataset, "frame": FRAME, "num_points": int(num_points), "sampler": sampler,
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
            hint = (" (a frame of None: written by an earlier version of this tool, in the raw OFF frame)"
                    if "frame" in diff and diff["frame"][0] is None else "")
            raise OutputConflict(
                f"--out {out} was built with other settings ({changes}){hint}; its files would be mixed with new "
                f"ones. Rerun with the same settings to resume, pass --overwrite to rebuild it, or choose another "
                f"--out."
            )
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise OutputConflict(
            f"--out {out} is not empty ({shown}) and was not written by this tool (no {MANIFEST}). Choose a new or "
            f"empty folder, or pass --overwrite to write the ModelNet layout into it (its "
            f"<class>/{{train,test}}/*.pcd files are replaced)."
        )


def _clean(out: Path, jobs: Sequence[ShapeJob], overwrite: bool, dataset: str = "modelnet10") -> None:
    """Remove temporary files of an interrupted run; with ``overwrite`` also .pcd files not in this source."""
    wanted = {j.dst for j in jobs}
    for cls in _classes(dataset):
        for split in SPLITS:
            d = out / cls / split
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if f.name.startswith(".") and ".pcd.tmp" in f.name:
                    f.unlink()
                elif overwrite and f.suffix == ".pcd" and f not in wanted:
                    f.unlink()


def _readme(dataset: str, manifest: dict[str, Any]) -> str:
    """The ``README.md`` written into the output folder: layout, frame and how it was made."""
    return (
        f"# {MODELNET_SOURCES[dataset][0]} point clouds (written by tools/prepare_data.py {dataset})\n\n"
        f"Layout: {manifest['layout']}.\n\n"
        f"Frame: **standard** (y up), the frame of modelnet40_normal_resampled, modelnet40_ply_hdf5_2048 and "
        f"Point-BERT's .dat files: each point is (x, z, y) of the Princeton OFF mesh's (x, y, z). "
        f"zoo's ModelNet reader reads the frame from .prepare_data.json.\n\n"
        f"Sampling: {manifest['num_points']} Poisson-disk points per mesh ({manifest['sampler']}, init_factor "
        f"{manifest['init_factor']}, seed {manifest['seed']}), not normalised. Source: {manifest['source']}.\n"
    )


def prepare_modelnet(
    dataset: str,
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
    """Sample every mesh of ``dataset`` (``"modelnet10"`` / ``"modelnet40"``) in ``src`` into the standard-frame
    PCD layout under ``out`` (see the module docstring).

    Returns a summary: ``{"out", "sampler", "frame", "counts": {split: shapes}, "written", "skipped", "failed":
    [(rel, message)]}``. Raises ``SourceLayoutError`` (bad ``src``) or ``OutputConflict`` (``out`` holds something
    else) before writing anything. A shape that fails (e.g. a corrupt mesh) is reported in ``failed`` and the
    others are still written; rerunning retries only the missing ones.
    """
    folder = _check_dataset(dataset)[0]
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if init_factor <= 1:
        raise ValueError(f"init_factor must be > 1, got {init_factor}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    base = find_modelnet_source(dataset, src)
    out = Path(out).expanduser()
    sampler = resolve_backend(sampler)
    settings = _settings(dataset, num_points, sampler, init_factor, seed)
    _check_output(out, settings, overwrite)
    jobs = plan_modelnet(dataset, base, out, seed)
    out.mkdir(parents=True, exist_ok=True)
    layout = ("<class>/{train,test}/<class>_NNNN.pcd, binary PCD v0.7, x y z float32, standard frame (y up: "
              "(x, z, y) of the OFF mesh), not normalised")
    manifest = {**settings, "complete": False, "source": str(base.resolve()), "layout": layout}
    if sampler == "open3d":
        import open3d

        manifest["open3d"] = open3d.__version__
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.md").write_text(_readme(dataset, manifest))
    _clean(out, jobs, overwrite, dataset)

    todo = [j for j in jobs if overwrite or not _is_finished(j.dst, num_points)]
    log(
        f"{folder} {base} -> {out}: {len(jobs)} shapes, {len(jobs) - len(todo)} already done, sampling "
        f"{len(todo)} with {sampler} Poisson-disk ({num_points} points, init_factor {init_factor}), written in the "
        f"standard frame (y up)"
    )
    failed = _run(todo, num_points, init_factor, sampler, workers, progress, folder)

    counts = {s: sum(1 for j in jobs if f"/{s}/" in j.rel) for s in SPLITS}
    if not failed:
        manifest.update(complete=True, counts=counts)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return {"out": out, "sampler": sampler, "frame": FRAME, "counts": counts, "written": len(todo) - len(failed),
            "skipped": len(jobs) - len(todo), "failed": failed}  # fmt: skip


def prepare_modelnet10(src: str | os.PathLike, out: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """``prepare_modelnet("modelnet10", src, out, **kwargs)``: the layout of the shipped ModelNet10 numbers."""
    return prepare_modelnet("modelnet10", src, out, **kwargs)


def _run(todo: Sequence[ShapeJob], num_points: int, init_factor: float, sampler: str, workers: int,
         progress: bool, name: str = "ModelNet10") -> list[tuple[str, str]]:  # fmt: skip
    """Sample the jobs (in a spawn process pool when ``workers > 1``) with a tqdm bar -> failures."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"{name} -> pcd", unit="shape", disable=not progress or None)
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
