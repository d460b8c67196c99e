"""Surface sampling of triangle meshes (ModelNet OFF files -> point clouds): uniform and Poisson-disk.

``sample_mesh_surface`` is a numpy sampler with the distribution of open3d's
``TriangleMesh.sample_points_uniformly``: a triangle with probability proportional to its area, then a uniform
point inside it (``p = (1 - sqrt(r1)) a + sqrt(r1) (1 - r2) b + sqrt(r1) r2 c``), with the triangle's unit normal.
``sample_off`` reads an OFF file and samples it with open3d when installed (``backend="auto"``), else numpy.

``sample_mesh_poisson_disk`` gives evenly spaced (blue-noise) samples: open3d's
``TriangleMesh.sample_points_poisson_disk`` (``backend="open3d"``), or ``poisson_disk_eliminate``, a numpy port of
the same algorithm (weighted sample elimination, Yuksel 2015, with open3d's constants since 0.17:
``init_factor * n`` uniform samples, ``alpha=8``, ``beta=0.65``, ``gamma=1.5``,
``r_max = 2 sqrt(area / n / (2 sqrt 3))``; the sample of largest weight is removed until ``n`` are left; survivors
keep their order). Given the same initial samples (open3d's ``pcl=`` argument) both keep exactly the same points
(checked with open3d 0.20); they differ only in the random initial samples.

All samplers are deterministic for a given ``seed``; the backends give different draws of the same distribution.
"""

from __future__ import annotations

import numpy as np

from zoo.data.pointcloud.io import PathLike, open3d_available, read_off, require_open3d

__all__ = [
    "poisson_disk_eliminate",
    "resolve_backend",
    "sample_mesh_open3d",
    "sample_mesh_poisson_disk",
    "sample_mesh_surface",
    "sample_off",
    "triangle_areas",
]

_ELIMINATION_MAX_POINTS = 12_288  # the numpy elimination holds an (M, M) float32 weight matrix (576 MB at this M)


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Areas of the triangles ``faces (F, 3)`` of ``vertices (V, 3)`` -> ``(F,)`` float64."""
    v = np.asarray(vertices, dtype=np.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def _check_mesh(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"expected vertices (V, 3) and faces (F, 3), got {vertices.shape} and {faces.shape}")
    areas = triangle_areas(vertices, faces) if len(faces) else np.zeros(0)
    if not np.isfinite(areas).all() or areas.sum() <= 0:
        raise ValueError("mesh has no triangle of positive area: nothing to sample")
    return areas


def sample_mesh_surface(
    vertices: np.ndarray, faces: np.ndarray, num_points: int, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """Area-weighted uniform samples on a triangle mesh: ``(V, 3), (F, 3) -> (num_points, 6)`` float32 (xyz, normal).

    ``seed`` is an int or a ``numpy.random.Generator`` (never numpy's global RNG).
    """
    areas = _check_mesh(np.asarray(vertices), np.asarray(faces))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cdf = np.cumsum(areas)
    tri = np.searchsorted(cdf, rng.random(num_points) * cdf[-1], side="right").clip(max=len(areas) - 1)
    r1, r2 = rng.random(num_points), rng.random(num_points)
    s = np.sqrt(r1)
    v = np.asarray(vertices, dtype=np.float64)
    a, b, c = v[faces[tri, 0]], v[faces[tri, 1]], v[faces[tri, 2]]
    pts = (1 - s)[:, None] * a + (s * (1 - r2))[:, None] * b + (s * r2)[:, None] * c
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n, axis=1, keepdims=True).clip(min=1e-30)
    return np.concatenate([pts, n], axis=1).astype(np.float32)


def sample_mesh_open3d(vertices: np.ndarray, faces: np.ndarray, num_points: int, seed: int = 0) -> np.ndarray:
    """The same sampling with open3d's ``sample_points_uniformly`` -> ``(num_points, 6)`` float32 (xyz, normal)."""
    o3d = require_open3d()
    _check_mesh(np.asarray(vertices), np.asarray(faces))
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(vertices, dtype=np.float64)),
        o3d.utility.Vector3iVector(np.asarray(faces, dtype=np.int32)),
    )
    mesh.compute_triangle_normals()
    o3d.utility.random.seed(int(seed))
    cloud = mesh.sample_points_uniformly(number_of_points=num_points, use_triangle_normal=True)
    return np.concatenate([np.asarray(cloud.points), np.asarray(cloud.normals)], axis=1).astype(np.float32)


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"open3d"`` when importable else ``"numpy"``; checks the name."""
    if backend not in ("auto", "numpy", "open3d"):
        raise ValueError(f"mesh sampling backend must be 'auto', 'numpy' or 'open3d', got {backend!r}")
    if backend == "auto":
        return "open3d" if open3d_available() else "numpy"
    return backend


def sample_off(path: PathLike, num_points: int, seed: int = 0, backend: str = "auto") -> np.ndarray:
    """Read an OFF mesh and sample ``num_points`` surface points -> ``(num_points, 6)`` float32 (xyz, normal)."""
    vertices, faces = read_off(path)
    try:
        if resolve_backend(backend) == "open3d":
            return sample_mesh_open3d(vertices, faces, num_points, seed)
        return sample_mesh_surface(vertices, faces, num_points, seed)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------------------------- Poisson disk
def poisson_disk_eliminate(points: np.ndarray, num_points: int, surface_area: float) -> np.ndarray:
    """Weighted sample elimination (open3d's ``sample_points_poisson_disk`` core) in numpy.

    ``points (M, 3)`` uniform surface samples of a mesh of area ``surface_area`` -> indices ``(num_points,)`` int64
    (ascending) of the samples to keep. Each sample's weight is ``sum_j (1 - max(d_ij, r_min) / r_max) ** 8``
    over the others within ``r_max``; the heaviest is removed and its neighbours' weights updated, until
    ``num_points`` remain. Exact (dense ``(M, M)`` weights), so ``M`` is limited to 12,288 samples; larger
    inputs need open3d.
    """
    pts = np.asarray(points, dtype=np.float64)
    m = len(pts)
    if num_points < 1 or num_points > m:
        raise ValueError(f"num_points must be in [1, {m}] (the number of initial samples), got {num_points}")
    if m > _ELIMINATION_MAX_POINTS:
        raise ValueError(
            f"numpy Poisson-disk elimination of {m} samples needs an ({m}, {m}) matrix; it supports at most "
            f"{_ELIMINATION_MAX_POINTS} (num_points * init_factor). Install open3d (pip install 'zoo[pointcloud]')."
        )
    if num_points == m:
        return np.arange(m, dtype=np.int64)
    beta, gamma = 0.65, 1.5  # open3d >= 0.17 (0.5 before, open3d PR #5789); alpha = 8 below
    r_max = 2.0 * np.sqrt((surface_area / num_points) / (2.0 * np.sqrt(3.0)))
    r_min = r_max * beta * (1.0 - (num_points / m) ** gamma)
    pts = pts - pts.mean(axis=0)  # small coordinates: the |a|^2 + |b|^2 - 2ab distances stay accurate
    sq = (pts**2).sum(axis=1)
    weights_ij = np.empty((m, m), dtype=np.float32)
    for s in range(0, m, 1024):  # row blocks of (1 - max(d, r_min) / r_max)^8, 0 beyond r_max; in place (fast)
        z = pts[s : s + 1024] @ pts.T
        z *= -2.0
        z += sq[s : s + 1024, None]
        z += sq[None, :]  # squared distances
        np.maximum(z, r_min * r_min, out=z)
        np.sqrt(z, out=z)
        z *= -1.0 / r_max
        z += 1.0
        np.maximum(z, 0.0, out=z)
        z *= z
        z *= z
        z *= z
        weights_ij[s : s + 1024] = z
    np.fill_diagonal(weights_ij, 0.0)
    weights = weights_ij.sum(axis=1, dtype=np.float64)
    for _ in range(m - num_points):
        i = int(np.argmax(weights))  # the heaviest remaining sample (removed ones are -inf)
        weights -= weights_ij[i]
        weights[i] = -np.inf
    return np.flatnonzero(np.isfinite(weights)).astype(np.int64)


def sample_mesh_poisson_disk(
    vertices: np.ndarray,
    faces: np.ndarray,
    num_points: int,
    seed: int = 0,
    init_factor: float = 5.0,
    backend: str = "auto",
) -> np.ndarray:
    """Poisson-disk (evenly spaced) samples on a triangle mesh: ``(V, 3), (F, 3) -> (num_points, 6)`` float32.

    Columns: xyz in the mesh's own coordinates (not normalised), then the unit normal of the sampled triangle.
    ``backend``: ``"open3d"`` (``TriangleMesh.sample_points_poisson_disk(num_points, init_factor)`` after
    ``open3d.utility.random.seed(seed)``), ``"numpy"`` (``sample_mesh_surface`` of ``init_factor * num_points``
    samples, then ``poisson_disk_eliminate``) or ``"auto"`` (open3d when it imports).
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    areas = _check_mesh(v, f)
    if init_factor <= 1:
        raise ValueError(f"init_factor must be > 1 (initial samples per output point), got {init_factor}")
    if resolve_backend(backend) == "open3d":
        o3d = require_open3d()
        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f.astype(np.int32)))
        mesh.compute_triangle_normals()
        o3d.utility.random.seed(int(seed))
        cloud = mesh.sample_points_poisson_disk(
            number_of_points=int(num_points), init_factor=float(init_factor), use_triangle_normal=True
        )
        out = np.concatenate([np.asarray(cloud.points), np.asarray(cloud.normals)], axis=1)
    else:
        init = sample_mesh_surface(v, f, int(init_factor * num_points), seed)
        out = init[poisson_disk_eliminate(init[:, :3], int(num_points), float(areas.sum()))]
    if len(out) != num_points:
        raise RuntimeError(f"Poisson-disk sampling returned {len(out)} points, expected {num_points}")
    return out.astype(np.float32)
