"""A procedural part-labelled shape set written in the ShapeNetPart layout (for runs without the real data).

Five ShapeNetPart categories are built from surface-sampled primitives, each primitive carrying a part label of its
category's official range (``SEG_CLASSES``), with random proportions, optional parts, Gaussian noise and a random
rotation about the up axis (y, as in ShapeNet):

============  ==========================================================================================
category      parts (global label: what)
============  ==========================================================================================
Airplane      0 fuselage (ellipsoid), 1 wings (thin box), 2 tail (fin + stabiliser), 3 engines (2 cylinders, p=0.7)
Chair         12 back, 13 seat, 14 legs (4 boxes), 15 arms (p=0.5)
Lamp          24 base (flat cylinder), 25 shade (frustum), 27 pole (thin cylinder); 26 never occurs
Mug           36 handle (torus arc), 37 body (open cylinder with a bottom)
Table         47 top (box or disc), 48 legs (4, or 1 central pedestal for round tops), 49 shelf (p=0.5)
============  ==========================================================================================

:func:`write_synthetic_shapenetpart` writes ``synsetoffset2category.txt`` (the generated categories, in the real
file's order),
``train_test_split/shuffled_{train,val,test}_file_list.json`` and ``<synset>/<token>.txt`` files with rows
``x y z nx ny nz part_label`` (the category file lists only the generated categories; their indices stay the
global ShapeNetPart ones) -- :class:`zoo.data.pointcloud.shapenetpart.ShapeNetPart` reads it as the real data.
The data is synthetic: numbers measured on it are not ShapeNetPart numbers.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from zoo.data.pointcloud.shapenetpart import CATEGORIES, SEG_CLASSES, SYNSETS

__all__ = ["SYNTHETIC_CATEGORIES", "make_shape", "write_synthetic_shapenetpart"]

SYNTHETIC_CATEGORIES = ("Airplane", "Chair", "Lamp", "Mug", "Table")
_ROW_FORMAT = "%.6f %.6f %.6f %.6f %.6f %.6f %d"  # x y z nx ny nz part_label, as the real files
Primitive = tuple[int, float, Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]]


# ----------------------------------------------------------------------------------------------------- primitives
def _box(center, size) -> tuple[float, Callable]:
    """Surface of an axis-aligned box: ``(area, sampler(rng, n) -> (points (n, 3), normals (n, 3)))``."""
    c, s = np.asarray(center, float), np.asarray(size, float)
    faces = []  # (axis, sign, area)
    for ax in range(3):
        a, b = [i for i in range(3) if i != ax]
        for sign in (-1.0, 1.0):
            faces.append((ax, sign, s[a] * s[b]))
    areas = np.array([f[2] for f in faces])

    def sample(rng, n):
        which = rng.choice(6, size=n, p=areas / areas.sum())
        pts = (rng.random((n, 3)) - 0.5) * s
        nrm = np.zeros((n, 3))
        for k, (ax, sign, _) in enumerate(faces):
            m = which == k
            pts[m, ax] = sign * s[ax] / 2
            nrm[m, ax] = sign
        return pts + c, nrm

    return float(areas.sum()), sample


def _cylinder(center, radius, height, caps=(True, True), r_top=None) -> tuple[float, Callable]:
    """A y-axis cylinder (or frustum with ``r_top``) side plus optional bottom / top discs."""
    c = np.asarray(center, float)
    r0, r1 = float(radius), float(radius if r_top is None else r_top)
    slant = np.hypot(height, r0 - r1)
    side = np.pi * (r0 + r1) * slant
    areas = np.array([side, np.pi * r0**2 * caps[0], np.pi * r1**2 * caps[1]])

    def sample(rng, n):
        which = rng.choice(3, size=n, p=areas / areas.sum())
        th = rng.random(n) * 2 * np.pi
        t = rng.random(n)
        pts, nrm = np.zeros((n, 3)), np.zeros((n, 3))
        r = r0 + (r1 - r0) * t
        s = which == 0
        pts[s] = np.stack([r[s] * np.cos(th[s]), (t[s] - 0.5) * height, r[s] * np.sin(th[s])], 1)
        ny = (r0 - r1) / slant
        nrm[s] = np.stack([np.cos(th[s]) * height / slant, np.full(s.sum(), ny), np.sin(th[s]) * height / slant], 1)
        for k, (rad, y, sign) in ((1, (r0, -height / 2, -1.0)), (2, (r1, height / 2, 1.0))):
            m = which == k
            rr = rad * np.sqrt(rng.random(m.sum()))
            pts[m] = np.stack([rr * np.cos(th[m]), np.full(m.sum(), y), rr * np.sin(th[m])], 1)
            nrm[m, 1] = sign
        return pts + c, nrm

    return float(areas.sum()), sample


def _cylinder_z(center, radius, length) -> tuple[float, Callable]:
    """A z-axis cylinder with both caps (engines)."""
    area, s = _cylinder((0, 0, 0), radius, length)

    def sample(rng, n):
        p, q = s(rng, n)
        return p[:, [0, 2, 1]] + np.asarray(center, float), q[:, [0, 2, 1]]

    return area, sample


def _ellipsoid(center, radii) -> tuple[float, Callable]:
    a, b, c = radii
    p = 1.6075
    area = 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)

    def sample(rng, n):
        u = rng.normal(size=(n, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        pts = u * np.asarray(radii)
        nrm = pts / np.asarray(radii) ** 2
        return pts + np.asarray(center, float), nrm / np.linalg.norm(nrm, axis=1, keepdims=True)

    return float(area), sample


def _torus_arc(center, major, minor, start, stop) -> tuple[float, Callable]:
    """Part of a torus in the x-y plane (a mug handle), angles ``start..stop`` about the ring."""
    area = (stop - start) * major * 2 * np.pi * minor

    def sample(rng, n):
        u = start + rng.random(n) * (stop - start)
        v = rng.random(n) * 2 * np.pi
        ring = np.stack([np.cos(u), np.sin(u), np.zeros(n)], 1)
        nrm = ring * np.cos(v)[:, None] + np.array([0.0, 0.0, 1.0]) * np.sin(v)[:, None]
        return major * ring + minor * nrm + np.asarray(center, float), nrm

    return float(area), sample


# ----------------------------------------------------------------------------------------------------- categories
def _airplane(rng) -> list[Primitive]:
    length, radius = rng.uniform(1.6, 2.2), rng.uniform(0.11, 0.17)
    span, chord = rng.uniform(1.3, 2.0), rng.uniform(0.28, 0.45)
    wing_z = rng.uniform(-0.15, 0.15)
    tail_z = -length / 2 + 0.12
    prims = [
        (0, *_ellipsoid((0, 0, 0), (radius, radius, length / 2))),
        (1, *_box((0, 0, wing_z), (span, 0.03, chord))),
        (2, *_box((0, radius + 0.15, tail_z), (0.03, rng.uniform(0.25, 0.4), 0.25))),
        (2, *_box((0, radius * 0.5, tail_z), (rng.uniform(0.5, 0.8), 0.025, 0.18))),
    ]
    if rng.random() < 0.7:
        off = rng.uniform(0.3, 0.5) * span / 2
        for side in (-1, 1):
            prims.append((3, *_cylinder_z((side * off, -0.09, wing_z + 0.05), 0.06, rng.uniform(0.25, 0.4))))
    return prims


def _chair(rng) -> list[Primitive]:
    w, d = rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1)
    seat_h, leg_h, back_h = 0.08, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.2)
    leg = rng.uniform(0.05, 0.09)
    prims = [(13, *_box((0, leg_h, 0), (w, seat_h, d))),
             (12, *_box((0, leg_h + back_h / 2, -d / 2 + 0.04), (w, back_h, 0.08)))]
    for sx in (-1, 1):
        for sz in (-1, 1):
            prims.append((14, *_box((sx * (w / 2 - leg), leg_h / 2, sz * (d / 2 - leg)), (leg, leg_h, leg))))
    if rng.random() < 0.5:
        for sx in (-1, 1):
            prims.append((15, *_box((sx * (w / 2 + 0.04), leg_h + 0.28, 0), (0.08, 0.06, d * 0.8))))
    return prims


def _lamp(rng) -> list[Primitive]:
    base_r, pole_h = rng.uniform(0.25, 0.4), rng.uniform(1.0, 1.6)
    shade_h, shade_r = rng.uniform(0.35, 0.55), rng.uniform(0.3, 0.5)
    return [
        (24, *_cylinder((0, 0.04, 0), base_r, 0.08)),
        (27, *_cylinder((0, 0.08 + pole_h / 2, 0), rng.uniform(0.02, 0.04), pole_h, caps=(False, False))),
        (25, *_cylinder((0, 0.08 + pole_h, 0), shade_r, shade_h, caps=(False, False), r_top=shade_r * 0.55)),
    ]


def _mug(rng) -> list[Primitive]:
    r, h = rng.uniform(0.3, 0.45), rng.uniform(0.7, 1.1)
    major = rng.uniform(0.18, 0.28)
    return [
        (37, *_cylinder((0, h / 2, 0), r, h, caps=(True, False))),
        (36, *_torus_arc((r, h / 2, 0), major, 0.04, -np.pi / 2, np.pi / 2)),
    ]


def _table(rng) -> list[Primitive]:
    h = rng.uniform(0.7, 1.0)
    prims: list[Primitive] = []
    if rng.random() < 0.35:  # round table on a pedestal
        r = rng.uniform(0.6, 0.9)
        prims.append((47, *_cylinder((0, h, 0), r, 0.06)))
        prims.append((48, *_cylinder((0, h / 2, 0), 0.07, h, caps=(False, False))))
        prims.append((48, *_cylinder((0, 0.02, 0), r * 0.5, 0.04)))
        if rng.random() < 0.5:
            prims.append((49, *_cylinder((0, h * 0.35, 0), r * 0.6, 0.03)))
        return prims
    w, d, leg = rng.uniform(1.2, 2.0), rng.uniform(0.7, 1.1), rng.uniform(0.06, 0.1)
    prims.append((47, *_box((0, h, 0), (w, 0.06, d))))
    for sx in (-1, 1):
        for sz in (-1, 1):
            prims.append((48, *_box((sx * (w / 2 - leg), h / 2, sz * (d / 2 - leg)), (leg, h, leg))))
    if rng.random() < 0.5:
        prims.append((49, *_box((0, h * 0.3, 0), (w - 2 * leg, 0.03, d - 2 * leg))))
    return prims


_BUILDERS = {"Airplane": _airplane, "Chair": _chair, "Lamp": _lamp, "Mug": _mug, "Table": _table}


def make_shape(category: str, rng: np.random.Generator, num_points: int = 2500, noise: float = 0.005
               ) -> np.ndarray:
    """One synthetic shape of ``category``: ``(num_points, 7)`` float32 rows ``x y z nx ny nz part_label``.

    Points are spread over the primitives in proportion to their area, jittered by ``noise`` (Gaussian, in units of
    the shape's size), centred and rotated by a random angle about the y axis (normals rotated with them).
    """
    if category not in _BUILDERS:
        raise ValueError(f"make_shape: no synthetic builder for {category!r}; available: {', '.join(_BUILDERS)}.")
    prims = _BUILDERS[category](rng)
    areas = np.array([a for _, a, _ in prims])
    counts = rng.multinomial(num_points, areas / areas.sum())
    pts, nrm, lab = [], [], []
    for (label, _, sample), n in zip(prims, counts):
        if n:
            p, q = sample(rng, int(n))
            pts.append(p)
            nrm.append(q)
            lab.append(np.full(int(n), label))
    xyz, normals, labels = np.concatenate(pts), np.concatenate(nrm), np.concatenate(lab)
    xyz = xyz - xyz.mean(0)
    xyz += rng.normal(scale=noise * np.abs(xyz).max(), size=xyz.shape)
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    xyz, normals = xyz @ rot.T, normals @ rot.T
    assert set(labels.tolist()) <= set(SEG_CLASSES[category])
    return np.concatenate([xyz, normals, labels[:, None]], axis=1).astype(np.float32)


def write_synthetic_shapenetpart(
    out: str | os.PathLike,
    counts: Mapping[str, int] | None = None,
    categories: Sequence[str] = SYNTHETIC_CATEGORIES,
    num_points: int = 2500,
    seed: int = 0,
) -> Path:
    """Write a synthetic ShapeNetPart-layout dataset under ``out`` and return ``out``.

    ``counts``: shapes per category and split (default ``{"train": 80, "val": 15, "test": 30}``); every shape gets
    a random hex token and its own seeded generator (the set is a function of ``seed`` and the arguments).
    """
    counts = dict(counts or {"train": 80, "val": 15, "test": 30})
    root = Path(out)
    (root / "train_test_split").mkdir(parents=True, exist_ok=True)
    unknown = [c for c in categories if c not in _BUILDERS]
    if unknown:
        raise ValueError(f"write_synthetic_shapenetpart: no synthetic builder for {unknown}; available: "
                         f"{', '.join(_BUILDERS)}.")
    listed = [c for c in CATEGORIES if c in set(categories)]  # the real file's order; indices stay the global ones
    (root / "synsetoffset2category.txt").write_text("".join(f"{c}\t{SYNSETS[c]}\n" for c in listed))
    lists: dict[str, list[str]] = {s: [] for s in ("train", "val", "test")}
    master = np.random.default_rng(seed)
    for cat in categories:
        folder = root / SYNSETS[cat]
        folder.mkdir(exist_ok=True)
        for split in ("train", "val", "test"):
            for _ in range(counts.get(split, 0)):
                token = master.bytes(16).hex()
                rng = np.random.default_rng(master.integers(2**63))
                np.savetxt(folder / f"{token}.txt", make_shape(cat, rng, num_points), fmt=_ROW_FORMAT)
                lists[split].append(f"shape_data/{SYNSETS[cat]}/{token}")
    for split, entries in lists.items():
        order = master.permutation(len(entries))
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(
            json.dumps([entries[i] for i in order]))
    return root
