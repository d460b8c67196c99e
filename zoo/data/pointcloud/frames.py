"""Coordinate frames of point clouds: names, axis maps between on-disk formats, and the checkpoint/data check.

Every reader of the zoo returns clouds in the **standard frame**: the frame of the files the community trains and
evaluates on (PointNet++'s ``modelnet40_normal_resampled`` txt, PointNet's ``modelnet40_ply_hdf5_2048`` h5,
Point-BERT / PointMamba's ``.dat`` pickles, ScanObjectNN's h5, ShapeNetPart's ``..._v0_normal`` txt): **y is up**.

The raw Princeton ModelNet meshes (``.off``) and everything sampled from them without a conversion (e.g. the PCD
tree of ``shared/data/modelnet10``, or PCD trees written by ``tools/prepare_data.py`` before it converted) are in
the **off_mesh frame**: z is up. (Not ``off``: YAML reads an unquoted ``off`` as ``false``; ``"off"`` is accepted
as an alias where it arrives as a string.) Relative to an OFF mesh, a standard file holds ``(x, z, y)``: the y and
z columns swapped, which is a mirror (determinant -1), not a rotation.

How the map was settled (sign of the depth axis included):

* Measured on 61 real shapes (the ModelNet10-class files of ``modelnet40_normal_resampled`` in hansen7/NRS_3D @
  f5f6325) against the Poisson-disk samples of the same meshes (``shared/data/modelnet10``): after unit-sphere
  normalisation, of the 48 signed axis permutations the Chamfer distance (sum of the two mean nearest-neighbour
  distances) is lowest for ``(x, z, y)`` on 41 shapes and within 3 % of the lowest on the other 20 (near-symmetric
  ones); ``(x, z, -y)`` (a rotation about x) puts chairs and toilets back to front (0.21-0.50 against 0.04-0.09);
  ``(-x, z, y)`` (the other rotation with y up) is worse on every one of the 31 shapes whose mirror image differs by
  more than 5 % (e.g. sofa_0678: 0.35 against 0.08). ``tests/data/test_modelnet_frames_real.py`` re-checks this
  when the files are present (``$ZOO_MODELNET_TXT``).
* Sources: Point-BERT's ``datasets/ModelNetDataset.py`` (used by PointMamba and PoinTramba) builds its ``.dat`` from
  the resampled txt with no axis change, so ``.dat`` = txt frame. ModelNet40-C (jiachens/ModelNet40-C,
  ``data/generate_c.py``, ``occlusion``/``lidar``) brings clouds sampled from the OFF meshes into the frame of
  ``modelnet40_ply_hdf5_2048`` with ``p @ Rx(-pi/2) @ Rz(pi)`` = ``(-x, z, y)``: z up becomes y up and the OFF
  +y depth becomes +z, as measured; a product of rotations cannot express the mirror, so its x sign is the
  nearest rotation, not evidence against ``(x, z, y)``. ScanObjectNN's own ``evaluate_real_trained_on_synthetic.py``
  feeds its h5 clouds unchanged to a model trained on the ModelNet40 h5, and PointNet's ``provider.rotate_point_cloud``
  / PointMamba's ``PointcloudRotate`` rotate "about the up direction" with the y-axis matrix: the h5 files are y up.

Frames are named by strings: ``"standard"``, ``"off_mesh"``, or an explicit axis map ``"x,z,-y"`` that says which
column (with its sign) of the file becomes each standard axis, for files in yet another frame.

Reference: PointNet++ (Qi et al., 2017) ``modelnet40_normal_resampled``; Point-BERT (Yu et al., 2022) ModelNet
``.dat``; ModelNet40-C (Sun et al., 2022); ScanObjectNN (Uy et al., 2019).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from zoo.errors import ConfigError

__all__ = [
    "FRAMES",
    "NORMALIZATIONS",
    "OFF_MESH",
    "STANDARD",
    "STANDARD_UP_AXIS",
    "AxisMap",
    "check_frame",
    "canonical_frame",
    "check_normalization",
    "check_pretrained_against_data",
    "describe_frame",
    "parse_frame",
    "to_standard",
]

STANDARD = "standard"
OFF_MESH = "off_mesh"
STANDARD_UP_AXIS = "y"  # the axis "up" means in the standard frame (rotation augmentations turn about it)
NORMALIZATIONS = ("unit_sphere", "none")


@dataclass(frozen=True)
class AxisMap:
    """Which file column becomes each standard axis: ``standard[:, i] = sign[i] * file[:, source[i]]``.

    ``source``: a permutation of ``(0, 1, 2)``; ``sign``: ``+1`` / ``-1`` per standard axis. ``apply`` maps
    ``(..., C)`` arrays or tensors, xyz in columns 0:3 and (when present) normals in 3:6, which turn the same way.
    """

    source: tuple[int, int, int]
    sign: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        """Whether the map leaves clouds unchanged."""
        return self.source == (0, 1, 2) and self.sign == (1, 1, 1)

    @property
    def determinant(self) -> int:
        """+1 for a rotation, -1 for a mirror."""
        m = np.zeros((3, 3))
        for i, (j, s) in enumerate(zip(self.source, self.sign)):
            m[i, j] = s
        return int(round(np.linalg.det(m)))

    def spec(self) -> str:
        """The ``"x,z,-y"`` spelling of this map."""
        return ",".join(("-" if s < 0 else "") + "xyz"[j] for j, s in zip(self.source, self.sign))

    def apply(self, points):
        """``(..., C)`` numpy array or tensor (C >= 3) -> the same in the standard frame (a new array/tensor)."""
        if self.is_identity:
            return points
        cols = list(self.source)
        blocks = [(0, 3)] + ([(3, 6)] if points.shape[-1] >= 6 else [])
        if isinstance(points, torch.Tensor):
            out = points.clone()
            sign = torch.tensor(self.sign, dtype=points.dtype, device=points.device)
        else:
            out = np.array(points, copy=True)
            sign = np.asarray(self.sign, dtype=out.dtype)
        for a, _ in blocks:
            out[..., a : a + 3] = points[..., [a + c for c in cols]] * sign
        return out


_NAMED = {
    STANDARD: AxisMap((0, 1, 2), (1, 1, 1)),
    OFF_MESH: AxisMap((0, 2, 1), (1, 1, 1)),  # standard = (x, z, y) of the OFF mesh (see the module docstring)
}
_ALIASES = {"off": OFF_MESH}
FRAMES = tuple(_NAMED)
_DESCRIPTIONS = {
    STANDARD: "y up, the frame of the community files: modelnet40_normal_resampled txt, modelnet40_ply_hdf5_2048 "
              "h5, Point-BERT .dat, ScanObjectNN h5, ShapeNetPart txt",
    OFF_MESH: "z up, the raw Princeton ModelNet OFF meshes and clouds sampled from them; standard = (x, z, y) of "
              "it",
}  # fmt: skip
_SPEC = re.compile(r"^\s*(-?[xyz])\s*,\s*(-?[xyz])\s*,\s*(-?[xyz])\s*$")


def parse_frame(frame: str) -> AxisMap:
    """The map from frame ``frame`` (``"standard"``, ``"off_mesh"`` (alias ``"off"``) or ``"x,z,-y"``) to the
    standard frame.

    Raises ``ConfigError`` (a ``ValueError``) naming the accepted spellings for anything else.
    """
    if frame is False:  # data.kwargs.frame=off: YAML 1.1 reads the bare word as a boolean
        raise ConfigError("got the boolean False as a point-cloud frame: YAML reads an unquoted 'off' as false; write "
                         "off_mesh (data.kwargs.frame=off_mesh)")
    if not isinstance(frame, str):
        raise ConfigError(f"a point-cloud frame is a string ({', '.join(FRAMES)} or an axis map such as 'x,z,-y'), "
                         f"got {frame!r}")
    key = frame.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _NAMED:
        return _NAMED[key]
    m = _SPEC.match(key)
    axes = [g.lstrip("-") for g in m.groups()] if m else []
    if not m or sorted(axes) != ["x", "y", "z"]:
        raise ConfigError(
            f"unknown point-cloud frame {frame!r}: use one of {', '.join(repr(f) for f in FRAMES)}, or an axis map "
            f"'a,b,c' naming which file axis (with an optional '-') becomes the standard x, y (up) and z, each of "
            f"x, y, z once (e.g. 'x,z,y' is the 'off_mesh' frame)"
        )
    return AxisMap(tuple("xyz".index(a) for a in axes), tuple(-1 if g.startswith("-") else 1 for g in m.groups()))


def canonical_frame(frame: str) -> str:
    """The name of ``frame``: ``"standard"`` / ``"off_mesh"`` when the map equals one, else its ``"x,z,-y"``."""
    amap = parse_frame(frame)
    return next((name for name, m in _NAMED.items() if m == amap), amap.spec())


def describe_frame(frame: str) -> str:
    """A one-line human description of ``frame`` (for error messages and READMEs)."""
    name = canonical_frame(frame)
    return _DESCRIPTIONS.get(name, f"files whose axes map to the standard frame as ({name})")


def to_standard(points, frame: str):
    """``(..., C)`` array or tensor in ``frame`` -> the same cloud in the standard frame (xyz and normals)."""
    return parse_frame(frame).apply(points)


def check_frame(model_frame: str | None, data_frame: str | None, *, model: str = "the model",
                dataset: str = "the dataset") -> None:
    """Refuse to evaluate a model on clouds in another frame than the one it was trained in.

    ``None`` on either side (a model or dataset that does not record a frame) passes. A mismatch raises a
    ``ConfigError`` that names both frames and the dataset option that converts (``data.kwargs.frame``).
    """
    if model_frame is None or data_frame is None:
        return
    if canonical_frame(model_frame) == canonical_frame(data_frame):
        return
    mf, df = canonical_frame(model_frame), canonical_frame(data_frame)
    if mf == STANDARD:
        fix = (f"Every zoo reader converts to the standard frame: if {dataset}'s files are in the '{df}' frame, "
               f"read them with data.kwargs.frame={df} (in Python: frame='{df}'), which converts them; if they are "
               f"already in the standard frame, say so with data.kwargs.frame=standard.")
    else:
        fix = (f"Its weights were trained on clouds in the '{mf}' frame, which the zoo's readers do not return: "
               f"re-train it in the standard frame (the zoo's readers convert with data.kwargs.frame=...), or "
               f"evaluate clouds written in the '{mf}' frame and declared as such.")
    raise ConfigError(
        f"point-cloud frame mismatch: {model} was trained in the '{mf}' frame ({describe_frame(mf)}) but {dataset} "
        f"returns clouds in the '{df}' frame ({describe_frame(df)}); its numbers would be meaningless. {fix}"
    )


def check_normalization(model_norm: str | None, data_norm: str | None, *, model: str = "the model",
                        dataset: str = "the dataset") -> None:
    """Refuse a model trained on ``model_norm``-normalised clouds meeting ``data_norm`` ones (``None`` passes).

    Normalisations: ``"unit_sphere"`` (centred on the centroid, farthest point at distance 1) or ``"none"``. The
    error names both and the option that changes the data's: ``data.kwargs.normalize=true|false``.
    """
    if model_norm is None or data_norm is None or model_norm == data_norm:
        return
    flag = "true" if model_norm == "unit_sphere" else "false"
    raise ConfigError(
        f"point-cloud normalisation mismatch: {model} was trained on '{model_norm}'-normalised clouds but {dataset} "
        f"returns '{data_norm}' ones. Set data.kwargs.normalize={flag} (in Python: normalize={flag.capitalize()})."
    )


def check_pretrained_against_data(model, dataset, name: str | None = None) -> None:
    """Run :func:`check_frame` and :func:`check_normalization` for a model holding its shipped weights.

    ``model.pretrained_cfg`` (a ``PretrainedCfg``) gives the weights' ``frame`` / ``normalization``; ``dataset``
    its ``frame`` / ``normalization`` attributes (missing ones pass). Call it only when the weights are the ones
    the cfg describes (``pretrained=True`` without another checkpoint file).
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is None or isinstance(cfg, dict):  # no cfg, or a timm model's dict cfg: nothing recorded
        return
    who = f"'{name or cfg.architecture}' (pretrained weights)"
    what = f"the dataset {type(dataset).__name__}" + (f" ({dataset.split} split)" if hasattr(dataset, "split") else "")
    check_frame(getattr(cfg, "frame", None), getattr(dataset, "frame", None), model=who, dataset=what)
    check_normalization(getattr(cfg, "normalization", None), getattr(dataset, "normalization", None), model=who,
                        dataset=what)
