"""SyntheticShapes: a procedurally generated point-cloud classification set that needs no download.

Every sample is a primitive surface (sphere, cube, torus, helix, ...) with points drawn uniformly by area,
then a random anisotropic scale, a random rotation and Gaussian noise, centred and scaled into the unit
sphere. Samples are a pure function of ``(seed, split, class, index)``, so the set is identical on every
machine, the train / val / test splits come from disjoint seed streams, and a class subset contains exactly the
same clouds as the full set for those classes.

Used by the quick-start demo and by tests: 1,000 clouds of 1,024 points are generated in well under a second.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.registry import register_dataset

__all__ = ["SyntheticShapes", "SHAPE_CLASSES", "sample_shape", "random_rotation"]

#: All shape classes, in label order. ``classes=`` selects a subset (relabelled 0..k-1 in this order).
SHAPE_CLASSES = (
    "sphere", "cube", "cylinder", "cone", "torus",
    "pyramid", "capsule", "octahedron", "helix", "disc",
)

_logger = logging.getLogger("zoo")
_SPLIT_IDS = {"train": 0, "test": 1, "val": 2}
_DEFAULT_SAMPLES_PER_CLASS = {"train": 100, "test": 30, "val": 30}


# --------------------------------------------------------------------------------------------------------------
# Uniform surface samplers. Each takes (rng, n) and returns (n, 3) float64 points of a shape of size ~1.
# --------------------------------------------------------------------------------------------------------------

def _sample_triangles(rng: np.random.Generator, n: int, tris: np.ndarray) -> np.ndarray:
    """``n`` points uniform by area on the triangles ``tris`` (F, 3, 3) -> (n, 3)."""
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    face = rng.choice(len(tris), size=n, p=area / area.sum())
    u, v = rng.random((2, n, 1))
    flip = (u + v) > 1.0  # reflect into the triangle: uniform barycentric coordinates
    u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
    return a[face] + u * (b[face] - a[face]) + v * (c[face] - a[face])


def _sample_disc(rng: np.random.Generator, n: int, radius: float = 1.0, z: float = 0.0) -> np.ndarray:
    """``n`` points uniform on the disc of ``radius`` in the plane ``z`` -> (n, 3)."""
    r = radius * np.sqrt(rng.random(n))
    theta = rng.uniform(0.0, 2.0 * math.pi, n)
    return np.stack([r * np.cos(theta), r * np.sin(theta), np.full(n, z)], axis=1)


def _sample_unit_sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` points uniform on the unit sphere -> (n, 3)."""
    x = rng.standard_normal((n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def _split_by_area(rng: np.random.Generator, n: int, areas: Sequence[float]) -> np.ndarray:
    """How many of ``n`` points go to each surface part, proportional to ``areas`` -> (len(areas),) ints."""
    p = np.asarray(areas, dtype=np.float64)
    return rng.multinomial(n, p / p.sum())


def _sphere(rng, n):
    return _sample_unit_sphere(rng, n)


def _quad(a, b, c, d):
    return [[a, b, c], [a, c, d]]


def _cube_tris() -> np.ndarray:
    tris = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            corners = []
            for s, t in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = [0.0, 0.0, 0.0]
                p[axis], p[(axis + 1) % 3], p[(axis + 2) % 3] = sign, s, t
                corners.append(p)
            tris += _quad(*corners)
    return np.asarray(tris, dtype=np.float64)


def _pyramid_tris() -> np.ndarray:
    base = [[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]]
    apex = [0, 0, 1]
    tris = _quad(*base) + [[base[i], base[(i + 1) % 4], apex] for i in range(4)]
    return np.asarray(tris, dtype=np.float64)


def _octahedron_tris() -> np.ndarray:
    tris = [[[sx, 0, 0], [0, sy, 0], [0, 0, sz]] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    return np.asarray(tris, dtype=np.float64)


def _cube(rng, n):
    return _sample_triangles(rng, n, _CUBE)


def _pyramid(rng, n):
    return _sample_triangles(rng, n, _PYRAMID)


def _octahedron(rng, n):
    return _sample_triangles(rng, n, _OCTAHEDRON)


def _cylinder(rng, n, radius=1.0, half_height=1.0):
    n_side, n_top, n_bottom = _split_by_area(rng, n, [2 * math.pi * radius * 2 * half_height, math.pi * radius**2, math.pi * radius**2])
    theta = rng.uniform(0.0, 2.0 * math.pi, n_side)
    side = np.stack([radius * np.cos(theta), radius * np.sin(theta), rng.uniform(-half_height, half_height, n_side)], 1)
    return np.concatenate([side, _sample_disc(rng, n_top, radius, half_height), _sample_disc(rng, n_bottom, radius, -half_height)])


def _cone(rng, n, radius=1.0, height=2.0):
    slant = math.hypot(radius, height)
    n_side, n_base = _split_by_area(rng, n, [math.pi * radius * slant, math.pi * radius**2])
    s = np.sqrt(rng.random(n_side))  # distance from the apex as a fraction of the slant: area grows with s
    theta = rng.uniform(0.0, 2.0 * math.pi, n_side)
    side = np.stack([s * radius * np.cos(theta), s * radius * np.sin(theta), height / 2 - s * height], 1)
    return np.concatenate([side, _sample_disc(rng, n_base, radius, -height / 2)])


def _torus(rng, n, major=1.0, minor=0.35):
    # The area element is proportional to (R + r cos v): rejection-sample v against that density.
    out = np.empty((0, 2))
    while len(out) < n:
        u, v = rng.uniform(0.0, 2.0 * math.pi, (2, 2 * n))
        keep = rng.random(2 * n) * (major + minor) < major + minor * np.cos(v)
        out = np.concatenate([out, np.stack([u[keep], v[keep]], 1)])
    u, v = out[:n, 0], out[:n, 1]
    ring = major + minor * np.cos(v)
    return np.stack([ring * np.cos(u), ring * np.sin(u), minor * np.sin(v)], 1)


def _capsule(rng, n, radius=0.5, half_height=0.75):
    n_side, n_caps = _split_by_area(rng, n, [2 * math.pi * radius * 2 * half_height, 4 * math.pi * radius**2])
    theta = rng.uniform(0.0, 2.0 * math.pi, n_side)
    side = np.stack([radius * np.cos(theta), radius * np.sin(theta), rng.uniform(-half_height, half_height, n_side)], 1)
    caps = radius * _sample_unit_sphere(rng, n_caps)
    caps[:, 2] += np.where(caps[:, 2] >= 0, half_height, -half_height)  # split the sphere into two hemispheres
    return np.concatenate([side, caps])


def _helix(rng, n, radius=1.0, half_height=1.0, turns=3.0, tube=0.12):
    # A tube around a helix. Points are uniform in (arc length, tube angle), which is uniform by area up to the
    # tube's small curvature correction (tube / radius = 0.12): good enough for a synthetic class.
    t = rng.random(n)
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    angle = 2.0 * math.pi * turns * t
    centre = np.stack([radius * np.cos(angle), radius * np.sin(angle), half_height * (2 * t - 1)], 1)
    tangent = np.stack([-radius * 2 * math.pi * turns * np.sin(angle), radius * 2 * math.pi * turns * np.cos(angle),
                        np.full(n, 2 * half_height)], 1)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.stack([-np.cos(angle), -np.sin(angle), np.zeros(n)], 1)
    binormal = np.cross(tangent, normal)
    return centre + tube * (np.cos(phi)[:, None] * normal + np.sin(phi)[:, None] * binormal)


def _disc(rng, n):
    return _sample_disc(rng, n)


_CUBE = _cube_tris()
_PYRAMID = _pyramid_tris()
_OCTAHEDRON = _octahedron_tris()

_SAMPLERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone, "torus": _torus,
    "pyramid": _pyramid, "capsule": _capsule, "octahedron": _octahedron, "helix": _helix, "disc": _disc,
}
assert tuple(_SAMPLERS) == SHAPE_CLASSES


# --------------------------------------------------------------------------------------------------------------
# Pose, noise and normalisation
# --------------------------------------------------------------------------------------------------------------

def random_rotation(rng: np.random.Generator, mode: str = "so3") -> np.ndarray:
    """A random rotation matrix (3, 3): uniform on SO(3) (``"so3"``), about the z axis (``"z"``) or identity (``"none"``)."""
    if mode == "none":
        return np.eye(3)
    if mode == "z":
        a = rng.uniform(0.0, 2.0 * math.pi)
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    if mode == "so3":
        q = rng.standard_normal(4)  # a normalised Gaussian 4-vector is a uniform unit quaternion
        w, x, y, z = q / np.linalg.norm(q)
        return np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ])
    raise ValueError(f"rotation must be one of 'so3', 'z', 'none'; got {mode!r}")


def sample_shape(
    name: str,
    rng: np.random.Generator,
    num_points: int = 1024,
    noise: float = 0.01,
    scale_range: tuple[float, float] = (0.8, 1.25),
    rotation: str = "so3",
) -> np.ndarray:
    """One posed, noisy, normalised cloud of shape ``name`` -> (num_points, 3) float32.

    Steps: area-uniform surface sample of the canonical shape (size ~1), per-axis scale drawn from
    ``scale_range``, rotation (see :func:`random_rotation`), i.i.d. Gaussian noise of std ``noise``, random
    point order, then centring on the centroid and scaling so the farthest point lies on the unit sphere.
    """
    try:
        sampler = _SAMPLERS[name]
    except KeyError:
        raise ValueError(f"Unknown shape {name!r}; available: {', '.join(SHAPE_CLASSES)}") from None
    pts = sampler(rng, num_points)
    pts = pts * rng.uniform(scale_range[0], scale_range[1], size=3)
    pts = pts @ random_rotation(rng, rotation).T
    if noise > 0:
        pts = pts + noise * rng.standard_normal(pts.shape)
    pts = pts[rng.permutation(num_points)]
    pts = pts - pts.mean(axis=0)
    pts = pts / max(float(np.linalg.norm(pts, axis=1).max()), 1e-12)
    return pts.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------

@register_dataset("synthetic_shapes")
class SyntheticShapes(Dataset):
    """Procedural point-cloud classification data: ``len(classes) * samples_per_class`` posed primitive surfaces.

    Classes (label order): sphere, cube, cylinder, cone, torus, pyramid, capsule, octahedron, helix, disc.

    Args:
        root: unused (the data is generated); accepted so that ``build_dataset("synthetic_shapes", root=...)`` works.
        split: ``"train"``, ``"val"`` or ``"test"``; each split draws from its own seed stream, disjoint from the others.
        num_points: points per cloud ``N``.
        samples_per_class: clouds per class; default 100 for train, 30 for val/test.
        classes: names of a subset of classes (labels become 0..k-1 in the canonical order above); the clouds of a
            class are the same whether or not other classes are selected.
        seed: base seed; the cloud at (split, class, j) is a pure function of ``(seed, split, class, j)``.
        noise: std of the Gaussian noise added to each coordinate (shapes have size ~1 at that point).
        scale_range: per-axis random scale range (anisotropic stretch) applied before the rotation.
        rotation: ``"so3"`` (uniform random 3D rotation, default), ``"z"`` (about the primitives' own z axis, their
            axis of symmetry; these clouds have no up direction, so no frame is recorded) or ``"none"``.
        transform: optional callable applied to the ``(N, 3)`` float32 tensor in ``__getitem__`` (augmentation).
        drop_nonfinite: as for the datasets read from files: drop clouds with NaN/inf coordinates (logged on the
            ``"zoo"`` logger) instead of raising. Generated clouds are always finite, so this is only the check
            that they are (the option exists so ``data.kwargs.drop_nonfinite`` works with every point-cloud set).

    Items are ``(points, label)``: points a ``(N, 3)`` float32 tensor, centred, max norm 1; label an ``int``.
    All clouds are generated at construction (about 0.1 ms each) and kept as ``self.points`` ``(S, N, 3)`` and
    ``self.labels`` ``(S,)`` int64, sorted by class.
    """

    def __init__(
        self,
        root: str | None = None,
        split: str = "train",
        num_points: int = 1024,
        samples_per_class: int | None = None,
        classes: Sequence[str] | None = None,
        seed: int = 0,
        noise: float = 0.01,
        scale_range: tuple[float, float] = (0.8, 1.25),
        rotation: str = "so3",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        drop_nonfinite: bool = False,
    ):
        if split not in _SPLIT_IDS:
            raise ValueError(f"SyntheticShapes split must be one of {sorted(_SPLIT_IDS)}; got {split!r}")
        if classes is None:
            classes = SHAPE_CLASSES
        elif isinstance(classes, str):
            raise TypeError(f"classes must be a list of names, e.g. ['{classes}']; got the string {classes!r}")
        unknown = [c for c in classes if c not in SHAPE_CLASSES]
        if unknown:
            raise ValueError(f"Unknown SyntheticShapes class(es) {unknown}; available: {', '.join(SHAPE_CLASSES)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes has duplicates: {list(classes)}")
        if int(num_points) < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
        random_rotation(np.random.default_rng(0), rotation)  # validate the mode early

        self.root = root
        self.split = split
        self.classes = [c for c in SHAPE_CLASSES if c in classes]  # canonical order
        self.num_points = int(num_points)
        self.samples_per_class = int(samples_per_class if samples_per_class is not None else _DEFAULT_SAMPLES_PER_CLASS[split])
        if self.samples_per_class < 0:
            raise ValueError(f"samples_per_class must be >= 0, got {samples_per_class}")
        self.seed = int(seed)
        self.noise = float(noise)
        self.scale_range = (float(lo), float(hi))
        self.rotation = rotation
        self.transform = transform

        pts = np.empty((len(self.classes) * self.samples_per_class, self.num_points, 3), dtype=np.float32)
        labels = np.repeat(np.arange(len(self.classes)), self.samples_per_class)
        i = 0
        for label, name in enumerate(self.classes):
            class_id = SHAPE_CLASSES.index(name)
            for j in range(self.samples_per_class):
                rng = np.random.default_rng([self.seed, _SPLIT_IDS[split], class_id, j])
                pts[i] = sample_shape(name, rng, self.num_points, self.noise, self.scale_range, self.rotation)
                i += 1
        bad = np.flatnonzero(~np.isfinite(pts).all(axis=(1, 2)))
        if len(bad) and not drop_nonfinite:
            raise ValueError(
                f"SyntheticShapes ({split} split): {len(bad)} generated clouds have NaN/inf coordinates (samples "
                f"{bad[:5].tolist()}); check noise={noise} and scale_range={tuple(scale_range)}, or pass "
                "drop_nonfinite=True (data.kwargs.drop_nonfinite=true)."
            )
        if len(bad):
            keep = np.setdiff1d(np.arange(len(pts)), bad)
            pts, labels = pts[keep], labels[keep]
            _logger.warning("SyntheticShapes (%s split): dropped %d clouds with NaN/inf coordinates", split, len(bad))
        self.points = torch.from_numpy(pts)
        self.labels = torch.from_numpy(labels).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(points (N, 3) float32, label int)``; ``transform`` (if any) is applied to the points."""
        points = self.points[index]
        if self.transform is not None:
            points = self.transform(points.clone())  # a copy: in-place augmentations must not alter the stored set
        return points, int(self.labels[index])

    @property
    def num_classes(self) -> int:
        """Number of classes in this (possibly subset) dataset."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"SyntheticShapes(split={self.split!r}, samples={len(self)}, classes={len(self.classes)}, "
                f"num_points={self.num_points}, rotation={self.rotation!r}, noise={self.noise}, seed={self.seed})")
