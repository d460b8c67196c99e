"""zoo.data.pointcloud.io readers/writers and the mesh sampler: tiny files in every real format, read back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.data.pointcloud import io
from zoo.data.pointcloud._lzf import lzf_compress, lzf_decompress
from zoo.data.pointcloud.mesh import sample_mesh_open3d, sample_mesh_surface, sample_off, triangle_areas

needs_open3d = pytest.mark.skipif(not io.open3d_available(), reason="open3d is not importable (optional extra)")


@pytest.fixture
def pts() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(37, 3)).astype(np.float32) * 10


# ----------------------------------------------------------------------------------------------------- PCD
@pytest.mark.parametrize("data", ["ascii", "binary", "binary_compressed"])
def test_pcd_round_trip_is_exact(tmp_path, pts, data):
    path = tmp_path / f"cloud_{data}.pcd"
    io.write_pcd(path, pts, data=data)
    np.testing.assert_array_equal(io.read_pcd(path), pts)
    np.testing.assert_array_equal(io.read_points(path), pts)


def test_pcd_with_normals_and_mixed_fields(tmp_path, pts):
    normals = np.random.default_rng(1).normal(size=pts.shape).astype(np.float32)
    path = tmp_path / "n.pcd"
    io.write_pcd(path, np.hstack([pts, normals]), fields=("x", "y", "z", "normal_x", "normal_y", "normal_z"))
    np.testing.assert_array_equal(io.read_points(path, with_normals=True), np.hstack([pts, normals]))
    # a hand-written PCD with uint8 labels, a COUNT-2 field, comments, and v0.5-style missing POINTS line
    rec = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("label", "u1"), ("uv", "<f8", (2,))])
    rec["x"], rec["y"], rec["z"], rec["label"], rec["uv"] = (
        [1, 2, 3],
        [4, 5, 6],
        [7, 8, 9],
        [0, 1, 2],
        [[0, 1], [2, 3], [4, 5]],
    )
    header = (
        b"# hand-made\nVERSION .7\nFIELDS x y z label uv\nSIZE 4 4 4 1 8\nTYPE F F F U F\nCOUNT 1 1 1 1 2\n"
        b"WIDTH 3\nHEIGHT 1\nDATA binary\n"
    )
    (tmp_path / "mixed.pcd").write_bytes(header + rec.tobytes())
    fields = io.read_pcd_fields(tmp_path / "mixed.pcd")
    assert fields["label"].tolist() == [0, 1, 2] and fields["label"].dtype == np.uint8
    assert fields["uv"].shape == (3, 2) and fields["uv"][2].tolist() == [4.0, 5.0]
    np.testing.assert_array_equal(io.read_pcd(tmp_path / "mixed.pcd"), [[1, 4, 7], [2, 5, 8], [3, 6, 9]])


def test_pcd_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pcd"):
        io.read_pcd(tmp_path / "missing.pcd")
    (tmp_path / "bad.pcd").write_bytes(b"VERSION 0.7\nFIELDS x y z\n")
    with pytest.raises(ValueError, match="bad.pcd: not a PCD file"):
        io.read_pcd(tmp_path / "bad.pcd")
    (tmp_path / "short.pcd").write_bytes(b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 10\nDATA binary\n" + b"\0" * 12)
    with pytest.raises(ValueError, match="truncated"):
        io.read_pcd(tmp_path / "short.pcd")
    (tmp_path / "nonormal.pcd").write_bytes(b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 1\nDATA ascii\n1 2 3\n")
    with pytest.raises(KeyError, match="no field"):
        io.read_points(tmp_path / "nonormal.pcd", with_normals=True)


@pytest.mark.parametrize("payload", [b"", b"a", b"abcabcabcabcabcabc" * 50, bytes(range(256)) * 40, b"\0" * 5000])
def test_lzf_round_trip(payload):
    packed = lzf_compress(payload)
    assert lzf_decompress(packed, len(payload)) == payload
    if len(payload) > 1000:
        assert len(packed) < len(payload) / 3  # repetitive data really is compressed (back-references used)


def test_lzf_rejects_corrupt_streams():
    with pytest.raises(ValueError, match="back-reference before the start"):
        lzf_decompress(bytes([0x20, 0x05]), 3)
    with pytest.raises(ValueError, match="header says 99"):
        lzf_decompress(lzf_compress(b"hello"), 99)


# ----------------------------------------------------------------------------------------------------- PLY / OFF / txt
@pytest.mark.parametrize("binary", [False, True])
def test_ply_round_trip_with_faces(tmp_path, pts, binary):
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    path = tmp_path / "m.ply"
    io.write_ply(path, pts, faces=faces, binary=binary)
    vertex, f = io.read_ply(path)
    np.testing.assert_array_equal(np.stack([vertex[k] for k in "xyz"], 1), pts)
    np.testing.assert_array_equal(f, faces)
    np.testing.assert_array_equal(io.read_points(path), pts)


def test_ascii_ply_with_quads_and_normals(tmp_path):
    text = (
        "ply\nformat ascii 1.0\ncomment quad\nelement vertex 4\nproperty float x\nproperty float y\n"
        "property float z\nproperty float nx\nproperty float ny\nproperty float nz\nelement face 1\n"
        "property list uchar int vertex_indices\n"
        "end_header\n0 0 0 0 0 1\n1 0 0 0 0 1\n1 1 0 0 0 1\n0 1 0 0 0 1\n4 0 1 2 3\n"
    )
    (tmp_path / "quad.ply").write_text(text)
    _, faces = io.read_ply(tmp_path / "quad.ply")
    np.testing.assert_array_equal(faces, [[0, 1, 2], [0, 2, 3]])
    got = io.read_points(tmp_path / "quad.ply", with_normals=True)
    assert got.shape == (4, 6) and (got[:, 5] == 1).all()


def test_off_round_trip_and_modelnet_quirks(tmp_path):
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0.5]], dtype=np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    io.write_off(tmp_path / "a.off", v, f)
    rv, rf = io.read_off(tmp_path / "a.off")
    np.testing.assert_array_equal(rv, v)
    np.testing.assert_array_equal(rf, f)
    # ModelNet's broken header ("OFF4 1 0" on one line), a comment, a quad with a colour after the indices
    (tmp_path / "b.off").write_text("OFF4 1 0\n# comment\n0 0 0\n1 0 0\n1 1 0\n0 1 0.5\n4 0 1 2 3 255 0 0\n")
    rv, rf = io.read_off(tmp_path / "b.off")
    np.testing.assert_array_equal(rv, v)
    np.testing.assert_array_equal(rf, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_array_equal(io.read_points(tmp_path / "b.off"), v)
    (tmp_path / "c.off").write_text("OFF\n2 1 0\n0 0 0\n1 0 0\n3 0 1 7\n")
    with pytest.raises(ValueError, match="face index out of range"):
        io.read_off(tmp_path / "c.off")
    (tmp_path / "d.off").write_text("PLY\n")
    with pytest.raises(ValueError, match="not an OFF file"):
        io.read_off(tmp_path / "d.off")


def test_txt_modelnet_normal_resampled_lines(tmp_path):
    arr = np.random.default_rng(2).normal(size=(20, 6)).astype(np.float32)
    (tmp_path / "chair_0001.txt").write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in arr) + "\n")
    got = io.read_txt(tmp_path / "chair_0001.txt")
    np.testing.assert_allclose(got, arr, atol=1e-6)
    np.testing.assert_allclose(io.read_points(tmp_path / "chair_0001.txt", with_normals=True), arr, atol=1e-6)
    assert io.read_points(tmp_path / "chair_0001.txt").shape == (20, 3)
    np.save(tmp_path / "a.npy", arr)
    np.testing.assert_array_equal(io.read_points(tmp_path / "a.npy"), arr[:, :3])
    with pytest.raises(ValueError, match="unknown point-cloud extension"):
        io.read_points(tmp_path / "x.obj")


# ----------------------------------------------------------------------------------------------------- mesh sampling
def two_triangles() -> tuple[np.ndarray, np.ndarray]:
    """A unit right triangle in z=0 (area 0.5) and one 3x larger in z=1 (area 1.5)."""
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 1, 1]], dtype=np.float64)
    return v, np.array([[0, 1, 2], [3, 4, 5]])


def test_numpy_mesh_sampler_is_area_weighted_uniform_and_seeded():
    v, f = two_triangles()
    np.testing.assert_allclose(triangle_areas(v, f), [0.5, 1.5])
    s = sample_mesh_surface(v, f, 20000, seed=0)
    assert s.shape == (20000, 6) and s.dtype == np.float32
    on_top = s[:, 2] > 0.5
    assert abs(on_top.mean() - 0.75) < 0.02  # 3:1 area ratio
    bottom = s[~on_top]
    assert (bottom[:, 0] >= 0).all() and (bottom[:, 1] >= 0).all() and (bottom[:, 0] + bottom[:, 1] <= 1 + 1e-6).all()
    assert abs(bottom[:, 0].mean() - 1 / 3) < 0.02  # uniform in a triangle: mean is the centroid
    np.testing.assert_allclose(np.abs(s[:, 5]), 1.0, atol=1e-6)  # unit normals along z
    np.testing.assert_array_equal(sample_mesh_surface(v, f, 100, seed=4), sample_mesh_surface(v, f, 100, seed=4))
    with pytest.raises(ValueError, match="no triangle of positive area"):
        sample_mesh_surface(v, np.array([[0, 0, 0]]), 10)


@needs_open3d
def test_open3d_sampler_has_the_same_distribution():
    v, f = two_triangles()
    a = sample_mesh_open3d(v, f, 20000, seed=1)
    b = sample_mesh_surface(v, f, 20000, seed=1)
    assert abs((a[:, 2] > 0.5).mean() - 0.75) < 0.02
    np.testing.assert_allclose(a[:, :3].mean(0), b[:, :3].mean(0), atol=0.03)
    np.testing.assert_allclose(a[:, :3].std(0), b[:, :3].std(0), atol=0.03)
    np.testing.assert_array_equal(sample_mesh_open3d(v, f, 50, seed=2), sample_mesh_open3d(v, f, 50, seed=2))


def test_sample_off_numpy_backend(tmp_path):
    v, f = two_triangles()
    io.write_off(tmp_path / "m.off", v, f)
    s = sample_off(tmp_path / "m.off", 64, seed=3, backend="numpy")
    np.testing.assert_array_equal(s, sample_mesh_surface(v.astype(np.float32), f, 64, seed=3))
    with pytest.raises(ValueError, match="backend must be"):
        sample_off(tmp_path / "m.off", 8, backend="blender")


# ----------------------------------------------------------------------------------------------------- open3d
@needs_open3d
@pytest.mark.parametrize("data", ["ascii", "binary", "binary_compressed"])
def test_open3d_reads_our_pcd_and_we_read_open3d_pcd(tmp_path, pts, data):
    import open3d as o3d

    io.write_pcd(tmp_path / "ours.pcd", pts, data=data)
    np.testing.assert_array_equal(io.read_point_cloud_open3d(tmp_path / "ours.pcd"), pts)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
    o3d.io.write_point_cloud(
        str(tmp_path / "theirs.pcd"), cloud, write_ascii=data == "ascii", compressed=data == "binary_compressed"
    )
    np.testing.assert_allclose(io.read_pcd(tmp_path / "theirs.pcd"), pts, rtol=1e-6)


@needs_open3d
def test_open3d_wrapper_raises_instead_of_warning(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pcd"):
        io.read_point_cloud_open3d(tmp_path / "nope.pcd")
    (tmp_path / "garbage.pcd").write_bytes(b"not a point cloud at all")
    with pytest.raises(ValueError, match="open3d read no points"):
        io.read_point_cloud_open3d(tmp_path / "garbage.pcd")
    io.write_pcd(tmp_path / "xyz.pcd", np.zeros((3, 3), np.float32))
    with pytest.raises(KeyError, match="no normals"):
        io.read_point_cloud_open3d(tmp_path / "xyz.pcd", with_normals=True)


def test_require_open3d_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_open3d(name, *args, **kwargs):
        if name == "open3d":
            raise ImportError("libusb-1.0.so.0: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open3d)
    with pytest.raises(ImportError, match=r"zoo\[pointcloud\].*apt-get install -y libusb-1.0-0 libgl1 libegl1"):
        io.require_open3d()
    assert io.open3d_available() is False
