"""Readers and writers for point-cloud and mesh files, in numpy: PCD, PLY, OFF, txt/xyz, npy.

Reading never needs open3d: PCD (ascii, binary and binary_compressed), PLY (ascii and binary), OFF and text
files are parsed here. When open3d is installed (``pip install 'zoo[pointcloud]'``),
``read_point_cloud_open3d`` wraps ``open3d.io.read_point_cloud`` and raises on a missing or unreadable file
instead of returning an empty cloud with only a warning.

Point arrays are ``(N, C)`` float32 with xyz first (then normals when asked for).

A truncated or corrupt file raises a ``ValueError`` whose message starts with the file's path and says what is
wrong (e.g. ``PCD binary data is truncated``), never a bare numpy/pickle error without the path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from zoo.data.pointcloud._lzf import lzf_compress, lzf_decompress

__all__ = [
    "open3d_available",
    "read_off",
    "read_pcd",
    "read_pcd_fields",
    "read_ply",
    "read_point_cloud_open3d",
    "read_points",
    "read_txt",
    "require_open3d",
    "write_off",
    "write_pcd",
    "write_ply",
]

PathLike = str | os.PathLike

_OPEN3D_HINT = (
    "open3d is optional: pip install 'zoo[pointcloud]' (the open3d-cpu wheel); on Debian/Ubuntu its wheel also "
    "needs system libraries: apt-get install -y libusb-1.0-0 libgl1 libegl1 libgomp1"
)


def _existing(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No such file: {p}")
    return p


@contextmanager
def _naming(path: Path, what: str) -> Iterator[None]:
    """Re-raise parse errors that do not name ``path`` as a ``ValueError`` that does (and says it is corrupt)."""
    try:
        yield
    except (ValueError, IndexError, EOFError) as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(
            f"{path}: corrupt or truncated {what} file ({type(e).__name__}: {e}); re-download or re-export it"
        ) from e


# ----------------------------------------------------------------------------------------------------- PCD
_PCD_DTYPES = {
    ("F", 4): "f4", ("F", 8): "f8",
    ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
    ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8",
}  # fmt: skip


def _parse_pcd_header(raw: bytes, path: Path) -> tuple[dict[str, list[str]], int]:
    """Header fields and the byte offset where the data starts."""
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise ValueError(f"{path}: not a PCD file (no DATA line in the header)")
        line = raw[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            return header, pos


def _pcd_layout(header: dict[str, list[str]], path: Path) -> tuple[list[str], list[np.dtype], list[int], int]:
    try:
        names = header["FIELDS"]
        sizes = [int(s) for s in header["SIZE"]]
        types = [t.upper() for t in header["TYPE"]]
    except KeyError as e:
        raise ValueError(f"{path}: PCD header has no {e.args[0]} line") from None
    counts = [int(c) for c in header.get("COUNT", ["1"] * len(names))]
    if not len(names) == len(sizes) == len(types) == len(counts):
        raise ValueError(f"{path}: PCD header FIELDS/SIZE/TYPE/COUNT have different lengths")
    try:
        dtypes = [np.dtype("<" + _PCD_DTYPES[(t, s)]) for t, s in zip(types, sizes)]
    except KeyError as e:
        raise ValueError(f"{path}: unsupported PCD field type/size {e.args[0]}") from None
    if "POINTS" in header:
        n = int(header["POINTS"][0])
    else:
        n = int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0])
    return names, dtypes, counts, n


def read_pcd_fields(path: PathLike) -> dict[str, np.ndarray]:
    """All fields of a PCD file (v0.5 - v0.7; ``DATA ascii``, ``binary`` or ``binary_compressed``).

    Returns ``{name: array}``, each ``(N,)`` (or ``(N, count)`` for fields with ``COUNT > 1``) in the stored dtype.
    """
    p = _existing(path)
    raw = p.read_bytes()
    with _naming(p, "PCD"):
        return _pcd_fields(raw, p)


def _pcd_fields(raw: bytes, p: Path) -> dict[str, np.ndarray]:
    header, offset = _parse_pcd_header(raw, p)
    names, dtypes, counts, n = _pcd_layout(header, p)
    kind = header["DATA"][0].lower() if header["DATA"] else ""
    shapes = [(c,) if c > 1 else () for c in counts]
    if kind == "ascii":
        text = raw[offset:].decode("ascii", errors="replace")
        values = np.array(text.split(), dtype=np.float64)
        width = sum(counts)
        if values.size < n * width:
            raise ValueError(f"{p}: PCD ascii data is truncated ({values.size} values, the header needs {n} x {width})")
        table = values[: n * width].reshape(n, width)
        out, col = {}, 0
        for name, dt, c in zip(names, dtypes, counts):
            out[name] = table[:, col : col + c].astype(dt).reshape((n, c) if c > 1 else (n,))
            col += c
        return out
    if kind == "binary":
        record = np.dtype([(f"f{i}", dt, s) for i, (dt, s) in enumerate(zip(dtypes, shapes))])
        if len(raw) - offset < n * record.itemsize:
            raise ValueError(f"{p}: PCD binary data is truncated ({len(raw) - offset} bytes for {n} points)")
        table = np.frombuffer(raw, dtype=record, count=n, offset=offset)
        return {name: np.ascontiguousarray(table[f"f{i}"]) for i, name in enumerate(names)}
    if kind == "binary_compressed":
        if len(raw) - offset < 8:
            raise ValueError(f"{p}: PCD binary_compressed data is truncated (no size header after DATA)")
        compressed, size = (int(v) for v in np.frombuffer(raw, dtype="<u4", count=2, offset=offset))
        body = raw[offset + 8 : offset + 8 + compressed]
        if len(body) < compressed:
            raise ValueError(
                f"{p}: PCD binary_compressed data is truncated ({len(body)} of {compressed} compressed bytes)"
            )
        need = n * sum(c * dt.itemsize for dt, c in zip(dtypes, counts))
        if size < need:
            raise ValueError(f"{p}: PCD binary_compressed data holds {size} bytes, the header needs {need}")
        data = lzf_decompress(body, size) if size else b""
        out, pos = {}, 0
        for name, dt, c in zip(names, dtypes, counts):  # column-major: each field's values are contiguous
            nbytes = n * c * dt.itemsize
            out[name] = np.frombuffer(data, dtype=dt, count=n * c, offset=pos).reshape((n, c) if c > 1 else (n,))
            pos += nbytes
        return out
    raise ValueError(f"{p}: unknown PCD DATA type {kind!r} (expected ascii, binary or binary_compressed)")


def read_pcd(path: PathLike, fields: Sequence[str] = ("x", "y", "z")) -> np.ndarray:
    """The named fields of a PCD file as a ``(N, len(fields))`` float32 array (default xyz)."""
    data = read_pcd_fields(path)
    missing = [f for f in fields if f not in data]
    if missing:
        raise KeyError(f"{path}: PCD file has no field(s) {missing}; it has {list(data)}")
    return np.stack([data[f].astype(np.float32) for f in fields], axis=1)


def write_pcd(
    path: PathLike, points: np.ndarray, fields: Sequence[str] = ("x", "y", "z"), data: str = "binary"
) -> None:
    """Write ``points (N, C)`` as a float32 PCD v0.7 with field names ``fields``.

    ``data``: ``"ascii"``, ``"binary"`` or ``"binary_compressed"`` (LZF, as PCL and open3d write it).
    """
    pts = np.ascontiguousarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != len(fields):
        raise ValueError(f"points must have shape (N, {len(fields)}) for fields {list(fields)}, got {pts.shape}")
    n, c = pts.shape
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(fields)}\nSIZE {' '.join(['4'] * c)}\nTYPE {' '.join(['F'] * c)}\n"
        f"COUNT {' '.join(['1'] * c)}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n"
    ).encode("ascii")
    if data == "ascii":
        body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in pts).encode("ascii")
    elif data == "binary":
        body = pts.astype("<f4").tobytes()
    elif data == "binary_compressed":
        raw = np.ascontiguousarray(pts.astype("<f4").T).tobytes()
        packed = lzf_compress(raw)
        body = np.array([len(packed), len(raw)], dtype="<u4").tobytes() + packed
    else:
        raise ValueError(f"data must be 'ascii', 'binary' or 'binary_compressed', got {data!r}")
    Path(path).write_bytes(header + body)


# ----------------------------------------------------------------------------------------------------- PLY
_PLY_DTYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def _ply_header(raw: bytes, p: Path) -> tuple[str, list[tuple[str, int, list[tuple]]], int]:
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise ValueError(f"{p}: not a PLY file (no 'ply' magic or no 'end_header')")
    offset = raw.find(b"\n", end) + 1
    fmt, elements = "", []
    for line in raw[:end].decode("ascii", errors="replace").splitlines()[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise ValueError(f"{p}: PLY property before any element")
            types = tok[2:4] if tok[1] == "list" else tok[1:2]
            unknown = [t for t in types if t not in _PLY_DTYPES]
            if unknown:
                raise ValueError(f"{p}: unknown PLY property type(s) {unknown} in line {line.strip()!r}")
            if tok[1] == "list":
                elements[-1][2].append((tok[4], "list", _PLY_DTYPES[tok[2]], _PLY_DTYPES[tok[3]]))
            else:
                elements[-1][2].append((tok[2], "scalar", _PLY_DTYPES[tok[1]]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{p}: unknown PLY format {fmt!r}")
    return fmt, elements, offset


def _faces_to_triangles(polys: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Fan-triangulate polygons (list of index arrays, or an (F, k) array) -> (T, 3) int64."""
    if isinstance(polys, np.ndarray):
        if polys.shape[1] == 3:
            return polys.astype(np.int64)
        polys = list(polys)
    tris = [np.stack([np.full(len(f) - 2, f[0]), f[1:-1], f[2:]], axis=1) for f in polys if len(f) >= 3]
    return np.concatenate(tris).astype(np.int64) if tris else np.zeros((0, 3), np.int64)


def read_ply(path: PathLike) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read a PLY file (ascii or binary): ``(vertex properties {name: (N,)}, triangles (F, 3) int64 or None)``.

    Polygon faces are fan-triangulated; other elements are skipped.
    """
    p = _existing(path)
    raw = p.read_bytes()
    with _naming(p, "PLY"):
        return _ply_data(raw, p)


def _ply_data(raw: bytes, p: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    fmt, elements, offset = _ply_header(raw, p)
    vertex, faces = {}, None
    if fmt == "ascii":
        lines = [ln for ln in raw[offset:].decode("ascii", errors="replace").split("\n") if ln.strip()]
        pos = 0
        for name, count, props in elements:
            block = lines[pos : pos + count]
            pos += count
            if len(block) < count:
                raise ValueError(f"{p}: PLY ascii data is truncated ({len(block)} of {count} '{name}' lines)")
            if all(kind == "scalar" for _, kind, *_ in props):
                table = np.array(" ".join(block).split(), dtype=np.float64).reshape(count, len(props))
                if name == "vertex":
                    vertex = {pn: table[:, i].astype(dt) for i, (pn, _, dt) in enumerate(props)}
            elif name == "face":
                polys = []
                for line in block:
                    tok = line.split()
                    k = int(tok[0])
                    polys.append(np.array(tok[1 : 1 + k], dtype=np.int64))
                faces = _faces_to_triangles(polys)
        return vertex, faces
    endian = "<" if fmt == "binary_little_endian" else ">"
    for name, count, props in elements:
        if all(kind == "scalar" for _, kind, *_ in props):
            dt = np.dtype([(pn, endian + t) for pn, _, t in props])
            if len(raw) - offset < count * dt.itemsize:
                raise ValueError(
                    f"{p}: PLY binary data is truncated ({max(len(raw) - offset, 0)} bytes left for {count} "
                    f"'{name}' records of {dt.itemsize} bytes)"
                )
            table = np.frombuffer(raw, dtype=dt, count=count, offset=offset)
            offset += count * dt.itemsize
            if name == "vertex":
                vertex = {pn: table[pn].astype(table[pn].dtype.newbyteorder("=")) for pn, *_ in props}
            continue
        if len(props) != 1:
            raise ValueError(f"{p}: PLY element '{name}' mixes list and scalar properties; not supported")
        _, _, count_t, index_t = props[0]
        ct, it = np.dtype(endian + count_t), np.dtype(endian + index_t)
        if count and len(raw) - offset < ct.itemsize:
            raise ValueError(f"{p}: PLY binary data is truncated (no '{name}' data)")
        k = int(np.frombuffer(raw, dtype=ct, count=1, offset=offset)[0]) if count else 0
        fixed = np.dtype([("n", ct), ("i", it, (k,))])
        table = np.frombuffer(raw, dtype=fixed, count=count, offset=offset) if count else None
        if table is not None and np.all(table["n"] == k):  # fast path: every polygon has k vertices
            polys, offset = table["i"].astype(np.int64), offset + count * fixed.itemsize
        else:
            polys = []
            for _ in range(count):
                m = int(np.frombuffer(raw, dtype=ct, count=1, offset=offset)[0])
                polys.append(np.frombuffer(raw, dtype=it, count=m, offset=offset + ct.itemsize).astype(np.int64))
                offset += ct.itemsize + m * it.itemsize
        if name == "face":
            faces = _faces_to_triangles(polys)
    return vertex, faces


def write_ply(
    path: PathLike,
    points: np.ndarray,
    names: Sequence[str] = ("x", "y", "z"),
    faces: np.ndarray | None = None,
    binary: bool = False,
) -> None:
    """Write float32 vertex properties ``points (N, len(names))`` and optional triangles ``faces (F, 3)`` as PLY."""
    pts = np.ascontiguousarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != len(names):
        raise ValueError(f"points must have shape (N, {len(names)}) for properties {list(names)}, got {pts.shape}")
    fmt = "binary_little_endian" if binary else "ascii"
    head = [f"ply\nformat {fmt} 1.0\nelement vertex {len(pts)}\n"] + [f"property float {n}\n" for n in names]
    if faces is not None:
        head.append(f"element face {len(faces)}\nproperty list uchar int vertex_indices\n")
    head.append("end_header\n")
    out = "".join(head).encode("ascii")
    if binary:
        out += pts.astype("<f4").tobytes()
        if faces is not None:
            rec = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
            rec["n"], rec["i"] = 3, faces
            out += rec.tobytes()
    else:
        out += "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in pts).encode("ascii")
        if faces is not None:
            out += "".join(f"3 {a} {b} {c}\n" for a, b, c in np.asarray(faces, dtype=np.int64)).encode("ascii")
    Path(path).write_bytes(out)


# ----------------------------------------------------------------------------------------------------- OFF
_OFF_MAGIC = re.compile(r"^\s*(C?N?OFF)\s*", re.IGNORECASE)


def read_off(path: PathLike, dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read an OFF mesh: ``(vertices (V, 3) dtype, triangles (F, 3) int64)``; polygons are fan-triangulated.

    Accepts the ModelNet quirk where the counts follow ``OFF`` on the same line (``OFF1234 5678 0``), comments and
    blank lines, and per-face colour values after the indices. ``dtype``: float32 (default) or float64 (the
    coordinates as written, e.g. to sample surfaces in double precision as open3d does).
    """
    p = _existing(path)
    with _naming(p, "OFF"):
        return _off_mesh(p, np.dtype(dtype))


def _off_mesh(p: Path, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    lines = [ln.split("#", 1)[0].strip() for ln in p.read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ValueError(f"{p}: empty OFF file")
    m = _OFF_MAGIC.match(lines[0])
    if not m:
        raise ValueError(f"{p}: not an OFF file (first line {lines[0][:40]!r})")
    if m.group(1).upper() != "OFF":
        raise ValueError(f"{p}: only plain 'OFF' meshes are supported, got {m.group(1)!r}")
    rest = lines[0][m.end() :]
    body = lines[1:]
    if not rest:
        if not body:
            raise ValueError(f"{p}: OFF file ends after its 'OFF' line (truncated)")
        rest, body = body[0], body[1:]
    counts = rest.split()
    if len(counts) < 2 or not all(t.lstrip("-").isdigit() for t in counts[:2]):
        raise ValueError(f"{p}: OFF counts line must be '<vertices> <faces> <edges>', got {rest[:40]!r}")
    nv, nf = int(counts[0]), int(counts[1])
    if len(body) < nv + nf:
        raise ValueError(f"{p}: OFF header announces {nv} vertices and {nf} faces but has {len(body)} lines")
    vertices = np.array(" ".join(body[:nv]).split(), dtype=np.float64)
    if vertices.size != 3 * nv:
        vertices = np.array([ln.split()[:3] for ln in body[:nv]], dtype=np.float64)
    vertices = vertices.reshape(nv, 3).astype(dtype)
    face_lines = body[nv : nv + nf]
    try:  # fast path: all triangles, no colours
        table = np.array(" ".join(face_lines).split(), dtype=np.int64).reshape(nf, 4)
        if nf and not np.all(table[:, 0] == 3):
            raise ValueError
        faces = table[:, 1:]
    except ValueError:
        polys = []
        for ln in face_lines:
            tok = ln.split()
            k = int(tok[0])
            polys.append(np.array(tok[1 : 1 + k], dtype=np.int64))
        faces = _faces_to_triangles(polys)
    if faces.size and (faces.min() < 0 or faces.max() >= nv):
        raise ValueError(f"{p}: OFF face index out of range [0, {nv})")
    return vertices, faces.astype(np.int64)


def write_off(path: PathLike, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a triangle mesh ``vertices (V, 3), faces (F, 3)`` as an OFF file."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    lines = ["OFF", f"{len(v)} {len(f)} 0"]
    lines += [" ".join(repr(float(c)) for c in row) for row in v]
    lines += [f"{len(row)} " + " ".join(str(int(i)) for i in row) for row in f]
    Path(path).write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------- text
def read_txt(path: PathLike, delimiter: str | None = None) -> np.ndarray:
    """Read a text point file (ModelNet ``x,y,z,nx,ny,nz`` lines, ``.xyz``, ``.pts``) as ``(N, C)`` float32.

    Commas and whitespace both separate values unless ``delimiter`` is given; the column count is taken from the
    first line.
    """
    p = _existing(path)
    text = p.read_text()
    if delimiter is None:
        text = text.replace(",", " ")
    elif delimiter.strip():
        text = text.replace(delimiter, " ")
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    cols = len(first.split())
    if cols == 0:
        raise ValueError(f"{p}: empty point file (no values)")
    try:
        values = np.array(text.split(), dtype=np.float32)
    except ValueError as e:
        raise ValueError(f"{p}: not a text point file: {e}") from None
    if values.size % cols:
        raise ValueError(f"{p}: rows do not all have {cols} values (truncated last line?)")
    return values.reshape(-1, cols)


def read_points(path: PathLike, with_normals: bool = False) -> np.ndarray:
    """Read xyz (``(N, 3)``) or xyz + normals (``(N, 6)``) float32 from .pcd / .ply / .off / .txt / .xyz / .pts / .npy.

    OFF gives the mesh vertices (use ``zoo.data.pointcloud.mesh.sample_off`` to sample its surface instead).
    """
    p = Path(path)
    ext = p.suffix.lower()
    ncols = 6 if with_normals else 3
    if ext == ".pcd":
        return read_pcd(p, ("x", "y", "z", "normal_x", "normal_y", "normal_z")[:ncols])
    if ext == ".ply":
        vertex, _ = read_ply(p)
        names = ("x", "y", "z", "nx", "ny", "nz")[:ncols]
        missing = [n for n in names if n not in vertex]
        if missing:
            raise KeyError(f"{p}: PLY vertices have no {missing}; they have {list(vertex)}")
        return np.stack([vertex[n].astype(np.float32) for n in names], axis=1)
    if ext == ".off":
        if with_normals:
            raise ValueError(f"{p}: OFF files store no normals; sample the surface with mesh.sample_off instead")
        return read_off(p)[0]
    if ext in (".txt", ".xyz", ".pts", ".csv", ".xyzn"):
        arr = read_txt(p)
    elif ext == ".npy":
        with _naming(p, ".npy"):
            arr = np.load(_existing(p), allow_pickle=False).astype(np.float32)
    else:
        raise ValueError(f"{p}: unknown point-cloud extension {ext!r} (pcd, ply, off, txt, xyz, pts, csv, npy)")
    if arr.ndim != 2 or arr.shape[1] < ncols:
        raise ValueError(f"{p}: expected at least {ncols} columns, got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :ncols])


# ----------------------------------------------------------------------------------------------------- open3d
def open3d_available() -> bool:
    """Whether ``import open3d`` works here (it needs the system libraries named in the install hint)."""
    try:
        import open3d  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def require_open3d():
    """``import open3d``, or an ImportError that says how to install it (extra + system libraries)."""
    try:
        import open3d
    except (ImportError, OSError) as e:
        raise ImportError(f"This feature needs open3d, which failed to import ({e}). {_OPEN3D_HINT}") from e
    return open3d


def read_point_cloud_open3d(path: PathLike, with_normals: bool = False) -> np.ndarray:
    """``open3d.io.read_point_cloud`` as ``(N, 3|6)`` float32; raises where open3d only warns.

    ``FileNotFoundError`` for a missing file, ``ValueError`` when open3d reads no point (bad or unsupported
    file), ``KeyError`` when normals are asked for and the file has none.
    """
    o3d = require_open3d()
    p = _existing(path)
    cloud = o3d.io.read_point_cloud(str(p))
    pts = np.asarray(cloud.points, dtype=np.float32)
    if pts.shape[0] == 0:
        raise ValueError(f"{p}: open3d read no points (unsupported or corrupt file)")
    if with_normals:
        if not cloud.has_normals():
            raise KeyError(f"{p}: the file has no normals")
        pts = np.concatenate([pts, np.asarray(cloud.normals, dtype=np.float32)], axis=1)
    return pts
