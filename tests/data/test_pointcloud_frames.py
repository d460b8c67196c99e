"""One frame for every reader: a hand-made asymmetric chair through OFF, prepare_data's PCD, resampled txt, h5, .dat.

The chair is built in the OFF frame (z up): legs, a seat, a back on the +y side and ONE arm, on the +x side. In the
standard frame (y up: (x, z, y) of the mesh) its back is on +z, its top at the largest y and its arm on +x. A reader
in the wrong frame turns it on its side (up axis), back to front, or mirrors it (handedness): each is caught.
"""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from zoo.data.pointcloud import frames, io
from zoo.data.pointcloud.mesh import sample_mesh_surface
from zoo.data.pointcloud.modelnet import MODELNET10_CLASSES, MODELNET40_CLASSES, ModelNet10
from zoo.data.pointcloud.prepare import prepare_modelnet10
from zoo.errors import ConfigError

CHAIR = MODELNET10_CLASSES.index("chair")


# ----------------------------------------------------------------------------------------------------- the mesh
def _box(lo, hi, base: int) -> tuple[list, list]:
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    v = [[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)]
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    tris = [[base + q[0], base + q[1], base + q[2]] for q in quads] + [[base + q[0], base + q[2], base + q[3]]
                                                                        for q in quads]
    return v, tris


def chair_mesh() -> tuple[np.ndarray, np.ndarray]:
    """OFF frame (z up): 4 legs (z 0..1), seat (z 1..1.2), back on +y (y 0.8..1, z up to 3), one arm on +x."""
    parts = [((-1, -1, 1.0), (1, 1, 1.2)), ((-1, 0.8, 1.2), (1, 1, 3.0)), ((0.8, -1, 1.6), (1, 0.8, 1.8))]
    parts += [((x, y, 0.0), (x + 0.15, y + 0.15, 1.0)) for x in (-1, 0.85) for y in (-1, 0.85)]
    verts, faces = [], []
    for lo, hi in parts:
        v, f = _box(lo, hi, len(verts))
        verts += v
        faces += f
    return np.array(verts, dtype=np.float64), np.array(faces, dtype=np.int64)


def standard_from_off(p: np.ndarray) -> np.ndarray:
    """Written out by hand (independent of zoo.data.pointcloud.frames): standard = (x, z, y) of the OFF mesh."""
    out = np.stack([p[:, 0], p[:, 2], p[:, 1]], axis=1)
    if p.shape[1] == 6:
        out = np.concatenate([out, np.stack([p[:, 3], p[:, 5], p[:, 4]], axis=1)], axis=1)
    return out.astype(np.float32)


def assert_chair_in_standard_frame(xyz: np.ndarray, what: str, tol: float = 0.03) -> None:
    """Up is +y (the top is the back, which is on +z), the only arm is on +x (handedness), in mesh units."""
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    assert np.ptp(y) == pytest.approx(3.0, abs=0.05) and y.min() == pytest.approx(0.0, abs=0.05), f"{what}: up is not y"
    top = y > 2.0
    assert top.sum() > 10 and (z[top] > 0.8 - tol).all(), f"{what}: the back is not on +z (back to front?)"
    arm = (y > 1.6 + tol) & (y < 1.8 - tol) & (z < 0.8 - tol)
    assert arm.sum() > 3 and (x[arm] > 0.8 - tol).all(), f"{what}: the arm is not on +x (mirrored?)"


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    d = torch.cdist(torch.from_numpy(a[:, :3]).double(), torch.from_numpy(b[:, :3]).double())
    return float(d.min(1).values.mean() + d.min(0).values.mean())


def test_the_checks_catch_each_wrong_frame():
    v, f = chair_mesh()
    std = standard_from_off(sample_mesh_surface(v, f, 4000, seed=1))
    assert_chair_in_standard_frame(std, "truth")
    wrong = {"z up (no conversion)": standard_from_off(std[:, :3]),
             "back to front (x, z, -y)": std[:, :3] * [1, 1, -1],
             "mirrored (-x, z, y)": std[:, :3] * [-1, 1, 1]}  # fmt: skip
    for what, pts in wrong.items():
        with pytest.raises(AssertionError):
            assert_chair_in_standard_frame(pts, what)


# ----------------------------------------------------------------------------------------------------- every reader
@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same chair (class 'chair' in every split) in all five layouts, and the ground truth (standard frame)."""
    root = tmp_path_factory.mktemp("frames")
    v, f = chair_mesh()
    truth = standard_from_off(sample_mesh_surface(v, f, 2048, seed=0))  # (2048, 6) xyz + normals, standard frame

    src = root / "ModelNet10"  # the official OFF layout: every class folder needs a mesh, all chairs here
    for c in MODELNET10_CLASSES:
        for split in ("train", "test"):
            (src / c / split).mkdir(parents=True)
            io.write_off(src / c / split / f"{c}_0001.off", v, f)
    off_only = root / "off_tree"
    (off_only / "chair" / "test").mkdir(parents=True)
    io.write_off(off_only / "chair" / "test" / "chair_0001.off", v, f)
    for c in MODELNET10_CLASSES:
        (off_only / c / "train").mkdir(parents=True, exist_ok=True)
        (off_only / c / "test").mkdir(parents=True, exist_ok=True)
    done = prepare_modelnet10(src, root / "pcd", num_points=512, sampler="numpy", progress=False, log=lambda s: None)
    assert not done["failed"]

    txt = root / "modelnet40_normal_resampled"  # x,y,z,nx,ny,nz per line, ModelNet10 split files
    (txt / "chair").mkdir(parents=True)
    (txt / "modelnet10_shape_names.txt").write_text("\n".join(MODELNET10_CLASSES) + "\n")
    (txt / "modelnet10_test.txt").write_text("chair_0001\n")
    (txt / "chair" / "chair_0001.txt").write_text("\n".join(",".join(repr(float(c)) for c in r) for r in truth))

    h5 = root / "modelnet40_ply_hdf5_2048"  # ModelNet40's h5 with an airplane before the chair: ModelNet10 skips it
    h5.mkdir()
    with h5py.File(h5 / "ply_data_test0.h5", "w") as h:
        h["data"] = np.stack([truth[:, :3] * 0.5, truth[:, :3]])
        h["normal"] = np.stack([truth[:, 3:], truth[:, 3:]])
        h["label"] = np.array([[MODELNET40_CLASSES.index("airplane")], [MODELNET40_CLASSES.index("chair")]], np.uint8)
    (h5 / "test_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_test0.h5\n")

    dat = root / "dat"  # Point-BERT: [list of (P, 6) float32, list of (1,) int labels]
    dat.mkdir()
    (dat / "modelnet10_shape_names.txt").write_text("\n".join(MODELNET10_CLASSES) + "\n")
    with open(dat / "modelnet10_test_2048pts_fps.dat", "wb") as fh:
        pickle.dump([[truth], [np.array([CHAIR], np.int32)]], fh)
    return {"root": root, "truth": truth, "pcd": root / "pcd", "off": off_only, "txt": txt, "h5": h5, "dat": dat}


def _read(folder, fmt: str, **kw):
    ds = ModelNet10(folder, split="test", format=fmt, num_points=None, normalize=False, cache=False,
                    off_points=2048, off_backend="numpy", **kw)  # fmt: skip
    rows = [i for i in range(len(ds)) if ds.labels[i] == CHAIR]
    return ds, ds[rows[0]][0].numpy()


@pytest.mark.parametrize("fmt", ["txt", "h5", "dat"])
def test_standard_formats_return_the_stored_points_unchanged(layouts, fmt):
    ds, pts = _read(layouts[fmt], fmt, use_normals=True)
    assert ds.source_frame == "standard" and ds.frame == "standard" and len(ds) == 1
    np.testing.assert_array_equal(pts, layouts["truth"])
    assert_chair_in_standard_frame(pts, fmt)


@pytest.mark.parametrize("fmt", ["pcd", "off"])
def test_mesh_frame_formats_are_converted_to_the_same_frame(layouts, fmt):
    """prepare_data's PCD (written in the standard frame, recorded in its manifest) and the raw OFF meshes (z up,
    converted on reading) give the same chair, in the same frame and handedness, as the standard files."""
    ds, pts = _read(layouts[fmt], fmt)
    assert ds.source_frame == ("standard" if fmt == "pcd" else "off_mesh")
    assert_chair_in_standard_frame(pts, fmt)
    truth = layouts["truth"]
    same = chamfer(pts, truth)
    assert same < 0.2  # other random samples of the same surface (512 or 2048 points on a chair 3 units tall)
    for wrong in ([1, 1, -1], [-1, 1, 1]):  # back to front, mirrored: farther (only the arm differs when mirrored)
        assert chamfer(pts, truth[:, :3] * wrong) > 1.25 * same


def test_pcd_tree_in_the_off_frame_is_converted_and_the_frame_option_overrides(layouts, tmp_path):
    """A PCD tree sampled from the meshes without conversion (like shared/data/modelnet10: no manifest) is read as
    'off_mesh'; frame= overrides the format's frame."""
    raw = tmp_path / "raw_pcd"
    (raw / "chair" / "test").mkdir(parents=True)
    for c in MODELNET10_CLASSES:
        (raw / c / "test").mkdir(parents=True, exist_ok=True)
        (raw / c / "train").mkdir(parents=True, exist_ok=True)
    stored = layouts["truth"][:, [0, 2, 1]]  # what a z-up sampler stores
    io.write_pcd(raw / "chair" / "test" / "chair_0001.pcd", stored)
    ds, pts = _read(raw, "pcd")
    assert ds.source_frame == "off_mesh"
    np.testing.assert_allclose(pts, layouts["truth"][:, :3], atol=1e-6)
    _, as_is = _read(raw, "pcd", frame="standard")
    with pytest.raises(AssertionError):
        assert_chair_in_standard_frame(as_is, "declared standard")  # stays z up: the user's declaration is obeyed
    _, mapped = _read(raw, "pcd", frame="x,z,y")  # an explicit axis map: the same as 'off_mesh'
    np.testing.assert_array_equal(mapped, pts)


def test_normals_turn_with_the_points(layouts):
    _, pts = _read(layouts["off"], "off", use_normals=True)
    xyz, n = pts[:, :3], pts[:, 3:]
    seat_top = (np.abs(xyz[:, 1] - 1.2) < 1e-4) & (np.abs(xyz[:, 0]) < 0.7) & (xyz[:, 2] < 0.7)
    assert seat_top.sum() > 5 and (np.abs(n[seat_top, 1]) > 0.99).all()  # the seat's normal is along the up axis y


# ----------------------------------------------------------------------------------------------------- frames module
def test_axis_maps_parse_apply_and_describe():
    off = frames.parse_frame("off_mesh")
    assert off == frames.parse_frame("x,z,y") == frames.parse_frame("off") and off.determinant == -1  # a mirror
    assert frames.parse_frame("x,z,-y").determinant == 1 and frames.canonical_frame("X, Z, Y") == "off_mesh"
    p = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(frames.to_standard(p, "x,z,-y"), [[0, 2, -1, 3, 5, -4], [6, 8, -7, 9, 11, -10]])
    t = torch.from_numpy(p)
    assert torch.equal(frames.to_standard(t, "off_mesh"), torch.from_numpy(p[:, [0, 2, 1, 3, 5, 4]]))
    assert frames.to_standard(t, "standard") is t
    for bad in ("y-up", "x,x,z", "x,z", None):
        with pytest.raises(ValueError, match="standard.*off_mesh.*axis map"):
            frames.parse_frame(bad)
    with pytest.raises(ValueError, match="unquoted 'off' as false; write off_mesh"):
        frames.parse_frame(False)  # what data.kwargs.frame=off becomes
    with pytest.raises(ValueError, match="unknown point-cloud frame 'zup'"):
        ModelNet10("nowhere", frame="zup")  # fails before any file is looked for


def test_frame_mismatch_is_refused_naming_both_frames_and_the_option():
    frames.check_frame("standard", "standard")
    frames.check_frame(None, "off_mesh")  # a model that records nothing passes
    with pytest.raises(ConfigError) as err:
        frames.check_frame("standard", "off_mesh", model="'m'", dataset="the dataset D")
    msg = str(err.value)
    assert "'standard' frame" in msg and "'off_mesh' frame" in msg and "data.kwargs.frame=off_mesh" in msg
    assert "'m'" in msg and "the dataset D" in msg
    with pytest.raises(ConfigError, match="'off_mesh' frame.*re-train it in the standard frame"):
        frames.check_frame("off_mesh", "standard")
    with pytest.raises(ConfigError, match="data.kwargs.normalize=true"):
        frames.check_normalization("unit_sphere", "none")


def _txt_modelnet10(root, points: int = 1100):
    """A tiny ModelNet10 test split in the resampled-txt layout: one random cloud per class."""
    folder = root / "modelnet40_normal_resampled"
    rng = np.random.default_rng(0)
    (folder).mkdir(parents=True)
    (folder / "modelnet10_shape_names.txt").write_text("\n".join(MODELNET10_CLASSES) + "\n")
    ids = []
    for c in MODELNET10_CLASSES:
        (folder / c).mkdir()
        (folder / c / f"{c}_0001.txt").write_text(
            "\n".join(",".join(f"{v:.5f}" for v in r) for r in rng.normal(size=(points, 6))))
        ids.append(f"{c}_0001")
    (folder / "modelnet10_test.txt").write_text("\n".join(ids) + "\n")
    return root


def test_eval_refuses_shipped_weights_in_another_frame_before_any_number(tmp_path, monkeypatch, capsys):
    """tools/eval.py --pretrained: a checkpoint whose cfg records another frame (or normalisation) than the data's is
    an error naming both, before evaluation starts."""
    from zoo import pretrained_cfg
    from zoo.cli import eval_main
    from zoo.registry import get_pretrained_cfg

    root = _txt_modelnet10(tmp_path)
    name = "pointramba_small_modelnet10"
    args = ["--config", "configs/pointramba/modelnet10_small.yaml", "--model", name, "--pretrained",
            f"data.root={root}", "data.eval_batch_size=5"]  # fmt: skip
    shipped = get_pretrained_cfg(name)  # (registers the model)
    assert shipped.frame == "standard" and shipped.normalization == "unit_sphere"
    monkeypatch.setitem(pretrained_cfg._PRETRAINED_CFGS, name, shipped.replace(frame="off_mesh"))
    import zoo.recipes.classify as classify

    monkeypatch.setattr(classify.ClassifyRecipe, "evaluate", lambda *a, **k: pytest.fail("evaluated anyway"))
    assert eval_main(args) == 2
    err = capsys.readouterr().err
    assert "frame mismatch" in err and "'off_mesh' frame" in err and "'standard' frame" in err and name in err
    monkeypatch.undo()
    monkeypatch.setattr(classify.ClassifyRecipe, "evaluate", lambda *a, **k: pytest.fail("evaluated anyway"))
    assert eval_main([*args, "data.kwargs.normalize=false"]) == 2
    err = capsys.readouterr().err
    assert "normalisation mismatch" in err and "data.kwargs.normalize=true" in err


def test_rotate_turns_about_the_standard_up_axis():
    from zoo.data.pointcloud.transforms import RotateAxis

    x = torch.randn(4, 64, 6)
    g = torch.Generator().manual_seed(0)
    y = RotateAxis()(x, generator=g)
    assert RotateAxis().axis == "up" and frames.STANDARD_UP_AXIS == "y"
    assert torch.equal(y[..., 1], x[..., 1]) and torch.equal(y[..., 4], x[..., 4])  # heights (and up normals) kept
    assert not torch.allclose(y[..., 0], x[..., 0])


def test_prepare_manifest_records_the_frame(layouts):
    manifest = json.loads((layouts["pcd"] / ".prepare_data.json").read_text())
    assert manifest["frame"] == "standard"
