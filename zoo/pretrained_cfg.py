"""``PretrainedCfg`` (what a model's weights are and where they come from), ``PipelineCfg`` (a shipped pipeline
folder) and the stores of registered cfgs: the one source of truth of the shipped weights
(``checkpoints/manifest.yaml`` is generated from them: :mod:`zoo.manifest`).

Weights are named as timm names them, ``<architecture>.<tag>`` (``pointramba_small.modelnet10``): the architecture
is a registered model, the tag one set of weights for it. ``default_cfgs`` next to a model holds its untagged cfg
(``"pointramba_small"``: architecture facts, usually no weights) and its tagged ones
(``"pointramba_small.modelnet10"``); a tagged cfg may list ``aliases``, older model names that build the same model
and load the same weights (``pointramba_small_modelnet10``).

A leaf module: it imports nothing from ``zoo.hub`` or ``zoo.registry``, so both can import it without a cycle.
``zoo.registry.register_model`` fills the store; ``zoo.hub.build_model_with_cfg`` reads it.

Reference: timm ``timm/models/_pretrained.py`` (``PretrainedCfg``, ``DefaultCfg`` with tags) and
``timm/models/_registry.py`` (``split_model_name_tag``, ``get_arch_pretrained_cfgs``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["PretrainedCfg", "PipelineCfg", "split_model_name", "set_pretrained_cfg", "lookup_pretrained_cfg",
           "has_pretrained_cfg", "names_with_weights", "pretrained_tags", "default_tag", "weights_cfgs",
           "register_pipeline_cfg", "pipeline_cfgs"]


def split_model_name(name: str) -> tuple[str, str | None]:
    """``"pointramba_small.modelnet10"`` -> ``("pointramba_small", "modelnet10")``; no tag -> ``(name, None)``."""
    arch, dot, tag = name.partition(".")
    return (arch, tag) if dot and tag else (arch, None)


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    """What a model's weights are and where they come from.

    Fields mirror timm's ``PretrainedCfg`` where they overlap. ``classifier`` names the head module(s) whose
    weights are dropped when ``num_classes`` differs from the checkpoint's. For point clouds, ``frame`` is the
    coordinate frame the weights were trained in (``"standard"``: y up, the community files; see
    ``zoo.data.pointcloud.frames``) and ``normalization`` the per-cloud normalisation (``"unit_sphere"`` or
    ``"none"``); evaluation refuses data that records another one. ``tag`` names the weights of a tagged cfg
    (:attr:`name` is ``architecture.tag``); ``model_args`` are the constructor arguments those weights need
    (``{"in_chans": 3}``), applied like ``num_classes`` when the tag is asked for.
    """

    architecture: str | None = None
    tag: str | None = None  # the weights' tag: create_model("<architecture>.<tag>")
    file: str | None = None
    url: str | None = None
    sha256: str | None = None
    num_classes: int | None = None
    model_args: Mapping[str, Any] | None = None  # constructor arguments these weights need, e.g. {"in_chans": 3}
    aliases: tuple[str, ...] | None = None  # other registered model names that load these weights
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
    train_time_s: float | None = None  # wall time of the training that made the weights (see notes for the machine)
    paper: str | None = None
    origin_url: str | None = None
    notes: str | None = None

    @property
    def name(self) -> str | None:
        """The weights' model name: ``architecture.tag`` for tagged weights, else the architecture."""
        return f"{self.architecture}.{self.tag}" if self.tag and self.architecture else self.architecture

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


@dataclasses.dataclass(frozen=True)
class PipelineCfg:
    """A shipped pipeline: a folder of several components (a diffusers ``StableDiffusionPipeline``), not one model.

    ``files`` maps each file's path inside ``folder`` to its sha256 (checked on load); ``loader`` is the function
    that loads it (``create_model`` refuses a pipeline name and names it); the other fields as :class:`PretrainedCfg`.
    """

    name: str
    folder: str
    files: Mapping[str, str]
    loader: str  # e.g. "zoo.diffusion.load_pretrained_pipeline"
    kind: str = "diffusers"
    pipeline_class: str | None = None
    dtype: str | None = None  # stored dtype of the weights (loaders cast to float32)
    description: str | None = None
    metrics: Mapping[str, float] | None = None
    dataset: str | None = None
    license: str | None = None
    train_command: str | None = None
    eval_command: str | None = None
    train_time_s: float | None = None
    notes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for printing and JSON."""
        return dataclasses.asdict(self)


_PRETRAINED_CFGS: dict[str, PretrainedCfg] = {}  # model name (architecture, architecture.tag or alias) -> cfg
_PIPELINE_CFGS: dict[str, PipelineCfg] = {}


def set_pretrained_cfg(name: str, cfg: PretrainedCfg | Mapping[str, Any]) -> PretrainedCfg:
    """Store ``cfg`` (a ``PretrainedCfg`` or a dict of its fields) under ``name``: an architecture
    (``"pointramba_small"``) or tagged weights (``"pointramba_small.modelnet10"``, then also under each of its
    ``aliases``). Sets ``architecture`` / ``tag`` from ``name``."""
    if not isinstance(cfg, PretrainedCfg):
        cfg = PretrainedCfg(**dict(cfg))
    arch, tag = split_model_name(name)
    cfg = cfg.replace(architecture=arch, tag=tag, aliases=tuple(cfg.aliases) if cfg.aliases else None)
    _PRETRAINED_CFGS[name] = cfg
    for alias in cfg.aliases or ():
        _PRETRAINED_CFGS[alias] = cfg
    return cfg


def has_pretrained_cfg(name: str) -> bool:
    """Whether ``name`` (an architecture, ``architecture.tag`` or an alias) has a stored cfg."""
    return name in _PRETRAINED_CFGS


def lookup_pretrained_cfg(name: str) -> PretrainedCfg:
    """The stored cfg of ``name`` (architecture, ``architecture.tag`` or alias), or an empty cfg with
    ``architecture=name`` (no name check: see ``zoo.registry.get_pretrained_cfg`` for the lookup that rejects unknown
    names)."""
    return _PRETRAINED_CFGS.get(name) or PretrainedCfg(architecture=name)


def weights_cfgs() -> dict[str, PretrainedCfg]:
    """``{weights name: cfg}`` of every stored cfg with a weights file or url, each once under its own name
    (``architecture.tag`` or the architecture; aliases left out), sorted by name."""
    return {name: cfg for name, cfg in sorted(_PRETRAINED_CFGS.items()) if cfg.has_weights and name == cfg.name}


def names_with_weights() -> list[str]:
    """Sorted names of the stored cfgs that name a weights file or url (``architecture.tag`` for tagged weights)."""
    return list(weights_cfgs())


def pretrained_tags(arch: str) -> list[str]:
    """The tags of architecture ``arch`` that have weights, in the order they were declared."""
    return [cfg.tag for name, cfg in _PRETRAINED_CFGS.items()
            if cfg.architecture == arch and cfg.tag and name == cfg.name and cfg.has_weights]


def default_tag(arch: str) -> str | None:
    """The tag ``create_model(arch, pretrained=True)`` loads when ``arch`` itself names no weights (timm's default
    tag: the first one declared), or ``None``."""
    if lookup_pretrained_cfg(arch).has_weights:
        return None
    tags = pretrained_tags(arch)
    return tags[0] if tags else None


def register_pipeline_cfg(cfg: PipelineCfg) -> PipelineCfg:
    """Store a shipped pipeline's cfg under its ``name``."""
    _PIPELINE_CFGS[cfg.name] = cfg
    return cfg


def pipeline_cfgs() -> dict[str, PipelineCfg]:
    """``{name: cfg}`` of the stored pipeline cfgs (see ``zoo.registry.list_pipelines``, which registers them)."""
    return dict(sorted(_PIPELINE_CFGS.items()))
