"""Uniform surface sampling of triangle meshes (ModelNet OFF files -> point clouds).

``sample_mesh_surface`` is a numpy sampler with the distribution of open3d's
``TriangleMesh.sample_points_uniformly``: a triangle with probability proportional to its area, then a uniform
point inside it (``p = (1 - sqrt(r1)) a + sqrt(r1) (1 - r2) b + sqrt(r1) r2 c``), with the triangle's unit normal.
``sample_off`` reads an OFF file and samples it with open3d when installed (``backend="auto"``), else numpy.
Both are deterministic for a given ``seed``; the two backends give different draws of the same distribution.
"""

from __future__ import annotations

import numpy as np

from zoo.data.pointcloud.io import PathLike, open3d_available, read_off, require_open3d

__all__ = ["resolve_backend", "sample_mesh_open3d", "sample_mesh_surface", "sample_off", "triangle_areas"]


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
