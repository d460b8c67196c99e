"""Real ModelNet10 shapes in the two standard public layouts, built from PointNet++'s resampled txt files, so a
ModelNet10 checkpoint can be checked on files in the frame everyone else uses (``zoo prepare-data
modelnet10-layouts``; the frame study ``configs/pointramba/eval_frames_study.yaml``).

* ``<out>/txt/modelnet40_normal_resampled/``: PointNet++'s txt layout (``<class>/<class>_NNNN.txt`` as symlinks
  to the source files, ``modelnet10_shape_names.txt``, a ``modelnet10_test.txt`` listing every ModelNet10-class
  shape found);
* ``<out>/h5/modelnet40_ply_hdf5_2048/``: PointNet's h5 layout (``ply_data_test0.h5`` with ``data`` (S, 2048, 3),
  ``normal`` and ModelNet40 ``label`` (S, 1); ``test_files.txt``) of the same shapes, each a seeded random 2048 of
  its points in random order, as PointNet's files.

Reference: PointNet++ (charlesq34/pointnet2) ``modelnet40_normal_resampled``; PointNet (charlesq34/pointnet)
``modelnet40_ply_hdf5_2048``.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["write_modelnet10_layouts"]


def write_modelnet10_layouts(src: str | Path, out: str | Path, points: int = 2048, seed: int = 0) -> dict[str, object]:
    """Write both layouts of every ModelNet10-class shape of ``src`` (a ``modelnet40_normal_resampled`` folder, or
    its parent) below ``out`` (refused when it exists); returns ``{"txt": root, "h5": root, "shapes": S}``, the two
    ``data.root`` values to evaluate with."""
    import h5py
    import numpy as np

    from zoo.data.pointcloud.io import read_txt
    from zoo.data.pointcloud.modelnet import MODELNET10_CLASSES, MODELNET40_CLASSES

    src, out = Path(src).expanduser(), Path(out)
    if (src / "modelnet40_normal_resampled").is_dir():
        src = src / "modelnet40_normal_resampled"
    files = {c: sorted((src / c).glob(f"{c}_*.txt")) for c in MODELNET10_CLASSES}
    if not any(files.values()):
        raise FileNotFoundError(f"{src}: no ModelNet10-class shapes (<class>/<class>_NNNN.txt, e.g. "
                                f"chair/chair_0001.txt); give PointNet++'s modelnet40_normal_resampled folder")
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out or remove it")
    txt_dir = out / "txt" / "modelnet40_normal_resampled"
    ids = []
    for c in MODELNET10_CLASSES:
        (txt_dir / c).mkdir(parents=True)
        for f in files[c]:
            (txt_dir / c / f.name).symlink_to(f.resolve())
            ids.append(f.stem)
    (txt_dir / "modelnet10_shape_names.txt").write_text("\n".join(MODELNET10_CLASSES) + "\n")
    (txt_dir / "modelnet10_test.txt").write_text("\n".join(ids) + "\n")
    rng = np.random.default_rng(seed)
    clouds = [read_txt(src / i.rsplit("_", 1)[0] / f"{i}.txt") for i in ids]
    picks = [rng.permutation(len(c))[:points] for c in clouds]
    h5_dir = out / "h5" / "modelnet40_ply_hdf5_2048"
    h5_dir.mkdir(parents=True)
    with h5py.File(h5_dir / "ply_data_test0.h5", "w") as h:
        h["data"] = np.stack([c[p, :3] for c, p in zip(clouds, picks)])
        h["normal"] = np.stack([c[p, 3:6] for c, p in zip(clouds, picks)])
        h["label"] = np.array([[MODELNET40_CLASSES.index(i.rsplit("_", 1)[0])] for i in ids], np.uint8)
    (h5_dir / "test_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_test0.h5\n")
    return {"txt": txt_dir.parent, "h5": h5_dir.parent, "shapes": len(ids)}
