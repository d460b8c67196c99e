"""``PretrainedCfg`` (what a model's weights are and where they come from) and the store of registered cfgs.

A leaf module: it imports nothing from ``zoo.hub`` or ``zoo.registry``, so both can import it without a cycle.
``zoo.registry.register_model`` fills the store; ``zoo.hub.build_model_with_cfg`` reads it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["PretrainedCfg", "set_pretrained_cfg", "lookup_pretrained_cfg", "has_pretrained_cfg",
           "names_with_weights"]


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    """What a model's weights are and where they come from.

    Fields mirror timm's ``PretrainedCfg`` where they overlap. ``classifier`` names the head module(s) whose
    weights are dropped when ``num_classes`` differs from the checkpoint's. For point clouds, ``frame`` is the
    coordinate frame the weights were trained in (``"standard"``: y up, the community files; see
    ``zoo.data.pointcloud.frames``) and ``normalization`` the per-cloud normalisation (``"unit_sphere"`` or
    ``"none"``); evaluation refuses data that records another one.
    """

    architecture: str | None = None
    file: str | None = None
    url: str | None = None
    sha256: str | None = None
    num_classes: int | None = None
    classifier: str | tuple[str, ...] | None = None
    input_size: tuple[int, ...] | None = None  # (C, H, W) for images, (N, 3) for point clouds
    num_points: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    frame: str | None = None  # point clouds: coordinate frame of the training data ("standard" = y up)
    normalization: str | None = None  # point clouds: "unit_sphere" or "none"
    label_names: tuple[str, ...] | None = None
    metrics: Mapping[str, float] | None = None
    dataset: str | None = None
    license: str | None = None
    train_command: str | None = None
    eval_command: str | None = None
    paper: str | None = None
    origin_url: str | None = None
    notes: str | None = None

    @property
    def has_weights(self) -> bool:
        """Whether the cfg names a weights file or url."""
        return bool(self.file or self.url)

    @property
    def classifier_names(self) -> tuple[str, ...]:
        """``classifier`` as a tuple of module names."""
        if self.classifier is None:
            return ()
        return (self.classifier,) if isinstance(self.classifier, str) else tuple(self.classifier)

    def replace(self, **changes: Any) -> "PretrainedCfg":
        """A copy with ``changes`` applied; unknown field names raise ``TypeError`` naming the valid ones."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - valid
        if unknown:
            raise TypeError(f"PretrainedCfg has no field(s) {sorted(unknown)}; valid fields: {sorted(valid)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (tuples kept), for printing and JSON."""
        return dataclasses.asdict(self)


_PRETRAINED_CFGS: dict[str, PretrainedCfg] = {}


def set_pretrained_cfg(name: str, cfg: PretrainedCfg | Mapping[str, Any]) -> PretrainedCfg:
    """Store ``cfg`` (a ``PretrainedCfg`` or a dict of its fields) as model ``name``'s, with ``architecture=name``."""
    if not isinstance(cfg, PretrainedCfg):
        cfg = PretrainedCfg(**dict(cfg))
    cfg = cfg.replace(architecture=name)
    _PRETRAINED_CFGS[name] = cfg
    return cfg


def has_pretrained_cfg(name: str) -> bool:
    """Whether model ``name`` declared a pretrained cfg."""
    return name in _PRETRAINED_CFGS


def lookup_pretrained_cfg(name: str) -> PretrainedCfg:
    """The stored cfg of model ``name``, or an empty cfg with ``architecture=name`` (no name check: see
    ``zoo.registry.get_pretrained_cfg`` for the lookup that rejects unknown model names)."""
    return _PRETRAINED_CFGS.get(name) or PretrainedCfg(architecture=name)


def names_with_weights() -> list[str]:
    """Sorted names of the stored cfgs that name a weights file or url (registered models only)."""
    return sorted(n for n, cfg in _PRETRAINED_CFGS.items() if cfg.has_weights)
