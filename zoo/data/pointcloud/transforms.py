"""Point-cloud augmentations, registered by name so configs can list them.

Every transform takes one cloud ``(N, C)`` or a batch ``(B, N, C)`` (on any device) and draws its random
parameters per cloud, so the same object serves in a Dataset (per item, on the CPU) and in a training step (per
batch, on the GPU, as the official recipes do). Columns ``0:3`` are xyz; rotations also turn normals (``3:6``).

Randomness comes from torch: ``generator=`` (at construction or per call) or else the global torch RNG, which
DataLoader seeds differently in each worker, so runs are reproducible with ``torch.manual_seed``. (A generator
given at construction is copied into every worker: they then draw the same numbers. Prefer the global RNG in
Datasets.)

Names: ``normalize``, ``scale_translate``, ``rotate``, ``jitter``, ``random_dropout``, ``resample``, ``shuffle``::

    t = build_transforms(["normalize", {"name": "scale_translate", "scale_low": 2 / 3}, "shuffle"])
    points = t(points)

Official recipes (PointMamba ``tools/runner_finetune.py``, per batch on the GPU) are in ``POINTMAMBA_RECIPES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from zoo._registry_base import Registry
from zoo.data.pointcloud.frames import STANDARD_UP_AXIS

__all__ = [
    "POINTMAMBA_RECIPES",
    "TRANSFORMS",
    "Compose",
    "Jitter",
    "NormalizeUnitSphere",
    "PointTransform",
    "RandomDropout",
    "Resample",
    "RotateAxis",
    "ScaleTranslate",
    "Shuffle",
    "build_transform",
    "build_transforms",
    "list_transforms",
    "register_transform",
]

TRANSFORMS = Registry("point-cloud transform")

# What PointMamba's fine-tuning loop applies to each batch on the GPU (dataset items are all stored points,
# shuffled for training). Evaluation takes the FPS subset (start index 0); voting: see zoo.data.pointcloud.voting.
POINTMAMBA_RECIPES: dict[str, dict[str, list]] = {
    "modelnet40": {
        "train": [{"name": "resample", "num_points": 1024, "method": "fps_random"}, "scale_translate"],
        "test": [{"name": "resample", "num_points": 1024, "method": "fps"}],
    },
    "scanobjectnn": {
        "train": [{"name": "resample", "num_points": 2048, "method": "fps_random"}, "rotate"],
        "test": [{"name": "resample", "num_points": 2048, "method": "fps"}],
    },
}


def register_transform(name: str) -> Callable:
    """Register a transform class (or factory) under ``name``."""
    return TRANSFORMS.register(name)


def list_transforms(filter: str = "") -> list[str]:
    """Registered transform names matching the fnmatch pattern ``filter``."""
    return TRANSFORMS.names(filter)


def _batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or x.shape[-1] < 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"point-cloud transforms take (N, C) or (B, N, C) tensors with C >= 3, got {shape}")
    return (x[None], True) if x.dim() == 2 else (x, False)


def _uniform(shape, low: float, high: float, g: torch.Generator | None, device) -> torch.Tensor:
    """U[low, high) drawn with ``g`` (on its device) or the global RNG (on ``device``), returned on ``device``."""
    r = torch.rand(shape, generator=g, device=g.device if g is not None else device)
    return (low + (high - low) * r).to(device)


class PointTransform:
    """Base class: ``__call__(x (N, C) | (B, N, C), generator=None) -> same rank``; subclasses implement ``apply``."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        xb, single = _batched(x)
        out = self.apply(xb, generator if generator is not None else self.generator)
        return out[0] if single else out

    def apply(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # (B, N, C) -> (B, N', C)
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "generator")
        return f"{type(self).__name__}({args})"


@register_transform("normalize")
class NormalizeUnitSphere(PointTransform):
    """Centre xyz on the centroid and scale so the farthest point is at distance 1 (PointMamba ``pc_normalize``)."""

    def apply(self, x, g):
        xyz = x[..., :3] - x[..., :3].mean(dim=1, keepdim=True)
        scale = xyz.norm(dim=-1).amax(dim=1).clamp_min(torch.finfo(x.dtype).tiny)[:, None, None]
        return torch.cat([xyz / scale, x[..., 3:]], dim=-1)


@register_transform("scale_translate")
class ScaleTranslate(PointTransform):
    """Random anisotropic scale ``U[scale_low, scale_high)`` per axis, then shift ``U[-translate_range, +)`` per axis.

    PointMamba ``PointcloudScaleAndTranslate`` defaults (2/3, 3/2, 0.2): the ModelNet40 training augmentation and
    the view transform of test-time voting. Only xyz changes (normals are left as they are, as there).
    """

    def __init__(self, scale_low: float = 2.0 / 3.0, scale_high: float = 3.0 / 2.0, translate_range: float = 0.2,
                 generator: torch.Generator | None = None):  # fmt: skip
        super().__init__(generator)
        if not 0 < scale_low <= scale_high:
            raise ValueError(f"need 0 < scale_low <= scale_high, got {scale_low}, {scale_high}")
        self.scale_low, self.scale_high, self.translate_range = scale_low, scale_high, translate_range

    def apply(self, x, g):
        B = x.shape[0]
        scale = _uniform((B, 1, 3), self.scale_low, self.scale_high, g, x.device).to(x.dtype)
        shift = _uniform((B, 1, 3), -self.translate_range, self.translate_range, g, x.device).to(x.dtype)
        return torch.cat([x[..., :3] * scale + shift, x[..., 3:]], dim=-1)


def rotation_matrices(angle: torch.Tensor, axis: str) -> torch.Tensor:
    """Row-vector rotation matrices ``(B,) -> (B, 3, 3)`` about ``axis`` (``points @ R``), PointMamba's convention."""
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    rows = {
        "x": [[o, z, z], [z, c, s], [z, -s, c]],
        "y": [[c, z, s], [z, o, z], [-s, z, c]],  # PointcloudRotate: [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]
        "z": [[c, s, z], [-s, c, z], [z, z, o]],
    }[axis]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


@register_transform("rotate")
class RotateAxis(PointTransform):
    """Rotate each cloud by a random angle ``U[0, max_angle)`` about the up axis (``axis="up"``, the default).

    ``"up"`` is the up axis of the standard frame every zoo reader returns (y; ``zoo.data.pointcloud.frames``), so
    the rotation turns objects about their vertical whatever format they were read from. ``"x"``, ``"y"``,
    ``"z"`` name an axis explicitly. PointMamba ``PointcloudRotate`` (the ScanObjectNN training augmentation):
    ``points @ R`` with ``R = [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]``. Normals in columns 3:6 are rotated too.
    """

    def __init__(self, axis: str = "up", max_angle: float = 2 * math.pi, generator: torch.Generator | None = None):
        super().__init__(generator)
        if axis not in ("up", "x", "y", "z"):
            raise ValueError(f"axis must be 'up' (the standard frame's y), 'x', 'y' or 'z', got {axis!r}")
        self.axis, self.max_angle = axis, max_angle

    def apply(self, x, g):
        angle = _uniform((x.shape[0],), 0.0, self.max_angle, g, x.device)
        axis = STANDARD_UP_AXIS if self.axis == "up" else self.axis
        R = rotation_matrices(angle.double(), axis).to(x.dtype)
        parts = [x[..., :3] @ R]
        if x.shape[-1] >= 6:
            parts += [x[..., 3:6] @ R, x[..., 6:]]
        else:
            parts.append(x[..., 3:])
        return torch.cat(parts, dim=-1)


@register_transform("jitter")
class Jitter(PointTransform):
    """Add Gaussian noise ``N(0, std)`` clipped to ``[-clip, clip]`` to every coordinate (PointMamba defaults)."""

    def __init__(self, std: float = 0.01, clip: float = 0.05, generator: torch.Generator | None = None):
        super().__init__(generator)
        self.std, self.clip = std, clip

    def apply(self, x, g):
        dev = g.device if g is not None else x.device
        noise = torch.randn(x[..., :3].shape, generator=g, device=dev).to(x.device, x.dtype)
        noise = (noise * self.std).clamp(-self.clip, self.clip)
        return torch.cat([x[..., :3] + noise, x[..., 3:]], dim=-1)


@register_transform("random_dropout")
class RandomDropout(PointTransform):
    """PointNet++ input dropout: per cloud a ratio ``U[0, max_dropout_ratio)``; each point is dropped with that
    probability and replaced by the cloud's first point (the size stays N). 0.875 is PointNet++'s value
    (``provider.random_point_dropout``); PointMamba's class defaults to 0.5 but its recipes do not use it."""

    def __init__(self, max_dropout_ratio: float = 0.875, generator: torch.Generator | None = None):
        super().__init__(generator)
        if not 0 <= max_dropout_ratio < 1:
            raise ValueError(f"max_dropout_ratio must be in [0, 1), got {max_dropout_ratio}")
        self.max_dropout_ratio = max_dropout_ratio

    def apply(self, x, g):
        B, N, _ = x.shape
        ratio = _uniform((B, 1), 0.0, self.max_dropout_ratio, g, x.device)
        drop = _uniform((B, N), 0.0, 1.0, g, x.device) <= ratio
        return torch.where(drop[..., None], x[:, :1, :].expand_as(x), x)


@register_transform("resample")
class Resample(PointTransform):
    """Resample each cloud to ``num_points`` points.

    Methods: ``"fps"`` (furthest point sampling from index 0, PointMamba's test-time ``misc.fps``), ``"random"``
    (a random subset), ``"first"`` (the first points), ``"fps_random"`` (PointMamba's training step: FPS to
    ``round(num_points * oversample)`` points, 1200 for 1024, then a random ``num_points`` of those).
    Clouds with fewer points are padded with randomly repeated points (any method).
    """

    METHODS = ("fps", "random", "first", "fps_random")

    def __init__(self, num_points: int, method: str = "fps", oversample: float = 1200 / 1024,
                 generator: torch.Generator | None = None):  # fmt: skip
        super().__init__(generator)
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.num_points, self.method, self.oversample = num_points, method, oversample

    def apply(self, x, g):
        from zoo.ops.pointcloud import furthest_point_sample, gather_points

        B, N, _ = x.shape
        n = self.num_points
        if N < n:
            extra = (_uniform((B, n - N), 0.0, 1.0, g, x.device) * N).long().clamp_max(N - 1)
            idx = torch.cat([torch.arange(N, device=x.device).expand(B, N), extra], dim=1)
            return gather_points(x, idx)
        if self.method == "first":
            return x[:, :n]
        if self.method == "random":
            return gather_points(x, _random_subset(B, N, n, g, x.device))
        if self.method == "fps":
            return gather_points(x, furthest_point_sample(x[..., :3], n))
        m = min(N, max(n, round(n * self.oversample)))
        pool = furthest_point_sample(x[..., :3], m)  # (B, m)
        return gather_points(x, pool.gather(1, _random_subset(B, m, n, g, x.device)))


def _random_subset(B: int, N: int, n: int, g, device) -> torch.Tensor:
    """``(B, n)`` indices: a uniformly random n-subset of ``range(N)`` per row (in random order)."""
    return _uniform((B, N), 0.0, 1.0, g, device).argsort(dim=1)[:, :n]


@register_transform("shuffle")
class Shuffle(PointTransform):
    """Randomly permute the points of each cloud (PointMamba shuffles training items in the Dataset)."""

    def apply(self, x, g):
        from zoo.ops.pointcloud import gather_points

        B, N, _ = x.shape
        return gather_points(x, _random_subset(B, N, N, g, x.device))


class Compose:
    """Apply transforms in order; ``generator`` (if given) is passed to those that take one."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, generator=generator) if isinstance(t, (PointTransform, Compose)) else t(x)
        return x

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


def build_transform(spec: str | dict[str, Any] | Callable) -> Callable:
    """One transform from a name (``"shuffle"``), a dict (``{"name": "jitter", "std": 0.02}``) or a callable."""
    from zoo._introspect import call_with_checked_kwargs

    if callable(spec) and not isinstance(spec, (str, dict)):
        return spec
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, dict) or hasattr(spec, "items"):
        kwargs = dict(spec.items())
        if "name" not in kwargs:
            raise ValueError(f"transform spec {kwargs} has no 'name' key; registered: {', '.join(list_transforms())}")
        name = kwargs.pop("name")
    else:
        raise TypeError(f"a transform spec is a name, a dict with 'name', or a callable; got {type(spec).__name__}")
    return call_with_checked_kwargs(TRANSFORMS.get(name), f"transform '{name}'", **kwargs)


def build_transforms(specs: Sequence[str | dict[str, Any] | Callable] | None) -> Compose:
    """A ``Compose`` of ``build_transform(s)`` for each spec (``None`` or ``[]``: identity)."""
    if isinstance(specs, (str, dict)):
        specs = [specs]
    return Compose([build_transform(s) for s in (specs or [])])
