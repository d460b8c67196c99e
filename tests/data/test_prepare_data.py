"""tools/prepare_data.py modelnet10|modelnet40: official OFF layout (tiny meshes) -> 1024-point binary PCD layout in the
standard frame (y up: (x, z, y) of the mesh)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zoo.data import build_dataset
from zoo.data.pointcloud import io
from zoo.data.pointcloud.mesh import poisson_disk_eliminate, sample_mesh_poisson_disk, sample_mesh_surface
from zoo.data.pointcloud.modelnet import MODELNET10_CLASSES, MODELNET40_CLASSES
from zoo.data.pointcloud.prepare import (
    OutputConflict,
    SourceLayoutError,
    find_modelnet10_source,
    prepare_modelnet,
    prepare_modelnet10,
    shape_seed,
)

REPO = Path(__file__).resolve().parents[2]
HAS_OPEN3D = io.open3d_available()


def box(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """An axis-aligned box as 8 vertices and 6 quads (OFF polygons with 4 indices, as ModelNet has)."""
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    v = np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)], dtype=np.float64)
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    return v, np.array(quads)


def write_off_polys(path: Path, v: np.ndarray, polys: np.ndarray, glued: bool = False) -> None:
    head = f"OFF{len(v)} {len(polys)} 0" if glued else f"OFF\n{len(v)} {len(polys)} 0"
    lines = [head] + [" ".join(repr(float(c)) for c in r) for r in v]
    lines += [f"{len(p)} " + " ".join(map(str, p)) for p in polys]
    path.write_text("\n".join(lines) + "\n")


def official_tree(root: Path, train: int = 1, test: int = 1, classes=MODELNET10_CLASSES,
                  folder: str = "ModelNet10") -> dict[str, tuple]:  # fmt: skip
    """ModelNet10/<class>/{train,test}/<class>_NNNN.off: boxes of class-dependent size in raw (big) coordinates."""
    meshes = {}
    for i, c in enumerate(classes):
        for split, n in (("train", train), ("test", test)):
            d = root / folder / c / split
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                idx = j + 1 + (100 if split == "test" else 0)
                lo = np.array([10.0 * i, -5.0, 2.0 + j])
                hi = lo + np.array([20.0 + i, 8.0 + j, 30.0])
                v, f = box(lo, hi)
                write_off_polys(d / f"{c}_{idx:04d}.off", v, f, glued=(c == "chair" and split == "train"))
                meshes[f"{c}/{split}/{c}_{idx:04d}"] = (lo, hi)
    return meshes


def on_box_surface(xyz: np.ndarray, lo, hi, tol: float = 1e-3) -> np.ndarray:
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    inside = ((xyz >= lo - tol) & (xyz <= hi + tol)).all(1)
    on_face = (np.isclose(xyz, lo, atol=tol) | np.isclose(xyz, hi, atol=tol)).any(1)
    return inside & on_face


def nn_cv(xyz: np.ndarray) -> float:
    """Coefficient of variation of nearest-neighbour distances (0.5 for uniform samples, < 0.15 for Poisson-disk)."""
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nn = d.min(1)
    return float(nn.std() / nn.mean())


# ----------------------------------------------------------------------------------------------------- end to end
def test_tool_builds_the_shipped_layout_that_modelnet10_loads(tmp_path):
    meshes = official_tree(tmp_path)
    out = tmp_path / "data" / "modelnet10"
    run = subprocess.run(
        [sys.executable, "tools/prepare_data.py", "modelnet10", "--src", str(tmp_path / "ModelNet10"),
         "--out", str(out), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "10 train / 10 test shapes" in run.stdout and f"data.root={out}" in run.stdout
    assert "standard frame (y up)" in run.stdout
    manifest = json.loads((out / ".prepare_data.json").read_text())
    assert manifest["frame"] == "standard" and manifest["complete"]
    assert "(x, z, y) of the OFF mesh" in manifest["layout"]
    assert "Frame: **standard** (y up)" in (out / "README.md").read_text()
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.pcd"))
    assert files == sorted(f"{rel}.pcd" for rel in meshes)  # <class>/{train,test}/<class>_NNNN.pcd, nothing else
    reference = tmp_path / "ref.pcd"
    for rel, (lo, hi) in meshes.items():
        f = out / f"{rel}.pcd"
        fields = io.read_pcd_fields(f)
        assert list(fields) == ["x", "y", "z"]
        assert all(a.dtype == np.float32 and a.shape == (1024,) for a in fields.values())
        xyz = np.stack(list(fields.values()), 1)
        io.write_pcd(reference, xyz, data="binary")
        assert f.read_bytes() == reference.read_bytes()  # binary PCD v0.7 with the shared data's exact header
        mesh_xyz = xyz[:, [0, 2, 1]].astype(np.float64)  # the standard frame holds (x, z, y) of the mesh
        assert on_box_surface(mesh_xyz, lo, hi).all()  # on the surface, in the mesh's units
        assert not on_box_surface(xyz.astype(np.float64), lo, hi).all()  # ... and not in the OFF frame
        assert np.ptp(xyz, 0).max() > 20  # not normalised into the unit sphere
    assert nn_cv(np.stack(list(io.read_pcd_fields(out / "chair/train/chair_0001.pcd").values()), 1)) < 0.2

    for split in ("train", "test"):
        ds = build_dataset("modelnet10", root=str(out), split=split, num_points=1024, cache=False)
        assert ds.format == "pcd" and ds.classes == MODELNET10_CLASSES and len(ds) == 10
        assert ds.source_frame == "standard"  # read from .prepare_data.json: no second conversion
        np.testing.assert_array_equal(ds.raw_points(0), io.read_pcd(out / ds.source(0)))
        assert ds.labels.tolist() == list(range(10))
        x, y = ds[MODELNET10_CLASSES.index("chair")]  # the glued-header mesh
        assert x.shape == (1024, 3) and y == MODELNET10_CLASSES.index("chair")
    ds = build_dataset("modelnet10", root=str(out.parent), split="test", cache=False)  # data.root=<parent> works too
    assert len(ds) == 10


def test_help_says_which_sampler_and_the_layout():
    run = subprocess.run([sys.executable, "tools/prepare_data.py", "modelnet10", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    for phrase in ("sample_points_poisson_disk", "numpy", "shared/data/modelnet10", "binary PCD", "--overwrite",
                   "ModelNet10.zip", "not normalised", "standard frame (y up",
                   "(x, z, y) of the OFF mesh"):  # fmt: skip
        assert phrase in text, phrase


def test_modelnet40_writes_its_40_classes_in_the_standard_frame(tmp_path):
    meshes = official_tree(tmp_path, classes=MODELNET40_CLASSES, folder="ModelNet40", test=0)
    for c in MODELNET40_CLASSES:  # ModelNet40 needs every split folder: one test mesh per class
        official_tree(tmp_path, train=0, classes=[c], folder="ModelNet40")
    out = tmp_path / "m40"
    done = prepare_modelnet("modelnet40", tmp_path, out, num_points=32, sampler="numpy", progress=False,
                            log=lambda s: None)  # fmt: skip
    assert done["counts"] == {"train": 40, "test": 40} and not done["failed"] and done["frame"] == "standard"
    ds = build_dataset("modelnet40", root=str(out), split="train", num_points=None, normalize=False, cache=False)
    assert ds.classes == MODELNET40_CLASSES and len(ds) == 40 and ds.source_frame == "standard"
    lo, hi = meshes["airplane/train/airplane_0001"]
    assert on_box_surface(ds[0][0].numpy()[:, [0, 2, 1]].astype(np.float64), lo, hi).all()
    with pytest.raises(SourceLayoutError, match="ModelNet40.zip"):
        prepare_modelnet("modelnet40", tmp_path / "ModelNet40" / "airplane", tmp_path / "x", progress=False)


# ----------------------------------------------------------------------------------------------------- resume, refuse
def _prepare(src, out, **kw):
    kw = {"num_points": 64, "sampler": "numpy", "progress": False, "log": lambda s: None, **kw}
    return prepare_modelnet10(src, out, **kw)


def test_rerun_skips_finished_files_and_redoes_missing_or_broken_ones(tmp_path):
    official_tree(tmp_path)
    out = tmp_path / "out"
    first = _prepare(tmp_path, out)  # the folder holding ModelNet10/ is accepted
    assert first["written"] == 20 and first["skipped"] == 0 and not first["failed"]
    keep = (out / "bed/train/bed_0001.pcd").read_bytes()
    (out / "sofa/test/sofa_0101.pcd").unlink()
    broken = out / "desk/train/desk_0001.pcd"
    broken.write_bytes(broken.read_bytes()[:300])  # e.g. a disk that filled up
    (out / "desk/train/.desk_0002.pcd.tmp123").write_bytes(b"partial")  # left by a killed run
    again = _prepare(tmp_path, out)
    assert again["written"] == 2 and again["skipped"] == 18
    assert (out / "bed/train/bed_0001.pcd").read_bytes() == keep
    assert io.read_pcd(broken).shape == (64, 3) and not list(out.rglob("*.tmp*"))
    # the same shape gets the same points whatever else was done: its seed depends on its name only
    redo = _prepare(tmp_path, tmp_path / "other")
    assert (tmp_path / "other/bed/train/bed_0001.pcd").read_bytes() == keep and redo["written"] == 20


def test_refuses_a_different_output_unless_overwrite(tmp_path):
    official_tree(tmp_path)
    out = tmp_path / "out"
    _prepare(tmp_path, out)
    before = (out / "bed/train/bed_0001.pcd").read_bytes()
    with pytest.raises(OutputConflict, match=r"other settings \(num_points: 64 there, 32 now\).*--overwrite"):
        _prepare(tmp_path, out, num_points=32)
    assert (out / "bed/train/bed_0001.pcd").read_bytes() == before  # nothing touched
    stale = out / "bed/train/bed_9999.pcd"
    stale.write_bytes(before)
    done = _prepare(tmp_path, out, num_points=32, overwrite=True)
    assert done["written"] == 20 and io.read_pcd(out / "bed/train/bed_0001.pcd").shape == (32, 3)
    assert not stale.exists()  # a .pcd that is not in the source would be loaded as a shape: removed

    old_version = tmp_path / "old_version"  # written before the tool converted: raw OFF frame, no "frame" key
    _prepare(tmp_path, old_version)
    manifest = json.loads((old_version / ".prepare_data.json").read_text())
    del manifest["frame"]
    (old_version / ".prepare_data.json").write_text(json.dumps(manifest))
    with pytest.raises(OutputConflict, match=r"frame: None there, 'standard' now\).*raw OFF frame.*--overwrite"):
        _prepare(tmp_path, old_version)
    assert build_dataset("modelnet10", root=str(old_version), cache=False).source_frame == "off_mesh"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflict, match=r"not empty \(notes.txt\) and was not written by this tool"):
        _prepare(tmp_path, foreign)
    _prepare(tmp_path, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"  # overwrite replaces only the layout's .pcd files
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _prepare(tmp_path, empty)["written"] == 20


def test_wrong_source_layout_is_a_clear_error(tmp_path):
    with pytest.raises(SourceLayoutError, match="(?s)is not a folder.*ModelNet10.zip"):
        find_modelnet10_source(tmp_path / "nowhere")
    (tmp_path / "some_folder").mkdir()
    with pytest.raises(SourceLayoutError, match="holds none of the ModelNet10 class folders"):
        find_modelnet10_source(tmp_path / "some_folder")
    official_tree(tmp_path)
    src = tmp_path / "ModelNet10"
    for f in (src / "toilet" / "test").iterdir():
        f.unlink()
    (src / "sofa" / "train").rename(src / "sofa" / "training")
    with pytest.raises(SourceLayoutError) as err:
        find_modelnet10_source(src)
    msg = str(err.value)
    assert f"{src / 'sofa' / 'train'} (missing folder)" in msg and f"{src / 'toilet' / 'test'} (no .off files)" in msg
    assert "<src>/<class>/{train,test}/<class>_NNNN.off" in msg
    run = subprocess.run([sys.executable, "tools/prepare_data.py", "modelnet10", "--src", str(src), "--out",
                          str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()  # nothing written


def test_a_corrupt_mesh_is_reported_by_name_and_the_rest_is_written(tmp_path):
    official_tree(tmp_path)
    bad = tmp_path / "ModelNet10" / "table" / "train" / "table_0001.off"
    bad.write_text(bad.read_text()[:60])
    done = _prepare(tmp_path, tmp_path / "out")
    assert done["written"] == 19 and len(done["failed"]) == 1
    assert done["failed"][0][0] == "table/train/table_0001" and done["failed"][0][1].startswith(str(bad))
    assert not (tmp_path / "out" / "table/train/table_0001.pcd").exists()


def test_shape_seed_depends_on_name_and_seed_only():
    assert shape_seed(0, "bed/train/bed_0001") == shape_seed(0, "bed/train/bed_0001")
    assert len({shape_seed(s, r) for s in (0, 1) for r in ("bed/train/bed_0001", "bed/train/bed_0002")}) == 4
    assert 0 <= shape_seed(12345, "x") < 2**31


# ----------------------------------------------------------------------------------------------------- the sampler
def test_numpy_poisson_disk_is_evenly_spaced_raw_and_seeded():
    v, quads = box((100.0, 0.0, 0.0), (130.0, 20.0, 10.0))
    tris = io._faces_to_triangles(quads)
    a = sample_mesh_poisson_disk(v, tris, 512, seed=3, backend="numpy")
    assert a.shape == (512, 6) and a.dtype == np.float32
    assert on_box_surface(a[:, :3].astype(np.float64), (100, 0, 0), (130, 20, 10)).all()
    np.testing.assert_allclose(np.linalg.norm(a[:, 3:], axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(a, sample_mesh_poisson_disk(v, tris, 512, seed=3, backend="numpy"))
    uniform = sample_mesh_surface(v, tris, 512, seed=3)[:, :3]
    assert nn_cv(a[:, :3]) < 0.15 < 0.4 < nn_cv(uniform)  # blue noise, not uniform random
    with pytest.raises(ValueError, match="init_factor must be > 1"):
        sample_mesh_poisson_disk(v, tris, 16, init_factor=1.0, backend="numpy")
    with pytest.raises(ValueError, match="at most 12288.*Install open3d"):
        poisson_disk_eliminate(np.zeros((12289, 3)), 10, 1.0)


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not importable (pip install 'zoo[pointcloud]')")
def test_numpy_elimination_keeps_exactly_the_points_open3d_keeps():
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh.create_sphere(10, 20)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    init = sample_mesh_surface(v, f, 1280, seed=7)[:, :3].astype(np.float64)
    ours = init[poisson_disk_eliminate(init, 256, mesh.get_surface_area())]
    pcl = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(init))
    theirs = np.asarray(mesh.sample_points_poisson_disk(256, pcl=pcl).points)
    np.testing.assert_array_equal(ours, theirs)  # same survivors, same order
    a = sample_mesh_poisson_disk(v, f, 256, seed=1, backend="open3d")
    np.testing.assert_array_equal(a, sample_mesh_poisson_disk(v, f, 256, seed=1, backend="open3d"))  # seeded


@pytest.mark.slow
def test_workers_give_the_same_files(tmp_path):
    official_tree(tmp_path)
    _prepare(tmp_path, tmp_path / "one")
    _prepare(tmp_path, tmp_path / "two", workers=2)
    for f in (tmp_path / "one").rglob("*.pcd"):
        assert f.read_bytes() == (tmp_path / "two" / f.relative_to(tmp_path / "one")).read_bytes()
