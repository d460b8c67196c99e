"""Pretrained weights: per-model cfgs, offline-first resolution of weight files, sha256, safe loading.

Resolution order for a model's weights (first hit wins):

1. ``checkpoint_path`` passed to ``create_model`` (any local file; no sha256 unless the cfg overlay gives one),
2. the cfg's ``file`` if it is an existing path,
3. ``$ZOO_HOME/<file>``,
4. the repo's ``checkpoints/<file>``,
5. the cfg's ``url`` (downloaded with ``torch.hub``; fails cleanly offline).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from zoo._introspect import call_with_checked_kwargs

__all__ = [
    "PretrainedCfg",
    "build_model_with_cfg",
    "resolve_weights_file",
    "load_state_dict_file",
    "clean_state_dict",
    "load_weights",
    "sha256sum",
    "CHECKPOINT_DIR",
]

_logger = logging.getLogger(__name__)

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "base_model", "module")
_PREFIXES = ("module.", "_orig_mod.")


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    """What a model's weights are and where they come from.

    Fields mirror timm's ``PretrainedCfg`` where they overlap. ``classifier`` names the head module(s) whose
    weights are dropped when ``num_classes`` differs from the checkpoint's.
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


def sha256sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def _candidate_paths(cfg: PretrainedCfg) -> list[Path]:
    if not cfg.file:
        return []
    file = Path(os.path.expanduser(cfg.file))
    candidates = [file] if file.is_absolute() or file.exists() else []
    if os.environ.get("ZOO_HOME"):
        candidates.append(Path(os.environ["ZOO_HOME"]) / file.name)
    candidates.append(CHECKPOINT_DIR / file)
    return candidates


def resolve_weights_file(cfg: PretrainedCfg, checkpoint_path: str | os.PathLike | None = None,
                         expected_sha256: str | None = None) -> Path:
    """The local weights file for ``cfg`` (see the module docstring for the order), sha256-verified.

    The cfg's ``sha256`` describes the cfg's own file: it is checked for files found through the cfg, not for an
    explicit ``checkpoint_path`` (a user's fine-tuned weights), which is checked against ``expected_sha256`` only.

    Raises:
        FileNotFoundError: nothing found; the message lists every path tried and how to provide the file.
        RuntimeError: the file's sha256 differs from the expected one.
    """
    if checkpoint_path is not None:
        path = Path(os.path.expanduser(str(checkpoint_path)))
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint_path '{path}' does not exist (or is not a file).")
    else:
        expected_sha256 = cfg.sha256
        tried = _candidate_paths(cfg)
        path = next((p for p in tried if p.is_file()), None)
        if path is None and cfg.url:
            path = _download(cfg.url, tried)
        if path is None:
            where = "\n  ".join(str(p) for p in tried) or "(the cfg names no file)"
            raise FileNotFoundError(
                f"No weights found for '{cfg.architecture}'. Tried:\n  {where}\n"
                "Put the file in one of these places, set $ZOO_HOME to its folder, or pass checkpoint_path=..."
            )
    if expected_sha256:
        digest = sha256sum(path)
        if digest != expected_sha256:
            raise RuntimeError(
                f"sha256 mismatch for {path}: expected {expected_sha256}, got {digest}. "
                "The file is corrupt or not the one this model's cfg describes; re-download it or pass the right file."
            )
    return path


def _download(url: str, tried: list[Path]) -> Path | None:
    """Download ``url`` into the torch hub cache; ``None`` (with a warning) when offline."""
    try:
        from torch.hub import download_url_to_file, get_dir

        dest = Path(get_dir()) / "checkpoints" / Path(url).name
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            download_url_to_file(url, str(dest), progress=True)
        return dest
    except Exception as exc:  # network errors vary by platform; report and fall through to FileNotFoundError
        _logger.warning("Could not download %s (%s); looked locally in %s", url, exc, [str(p) for p in tried])
        tried.append(Path(url))
        return None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state dict from ``.safetensors`` or a torch checkpoint (``torch.load(weights_only=True)``).

    Wrapper dicts are returned as they are; see :func:`clean_state_dict` to unwrap them.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(
            f"Could not load {path} with torch.load(weights_only=True): {exc}\n"
            "zoo never unpickles arbitrary objects. If you trust the file, re-save its tensors with "
            "`torch.save(torch.load(path, weights_only=False)['state_dict'], new_path)` and load new_path."
        ) from exc


def clean_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap ``{'base_model'|'state_dict'|'model'|...: sd}`` containers and strip ``module.``/``_orig_mod.`` prefixes."""
    sd: Any = obj
    while isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        key = next((k for k in _WRAPPER_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
        if key is None:
            raise ValueError(f"Checkpoint holds no tensors; top-level keys: {sorted(sd)[:20]}")
        sd = sd[key]
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    cfg: PretrainedCfg | None = None,
    filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    strict: bool = True,
) -> None:
    """Load ``state_dict`` into ``model``, converting foreign keys and adapting the classifier.

    ``filter_fn(state_dict, model)`` converts foreign checkpoints. Classifier tensors (``cfg.classifier``) whose
    shape differs from the model's (another ``num_classes``) are dropped with a warning, keeping the model's
    fresh initialisation. Any other missing or unexpected key raises ``RuntimeError`` listing them (or only
    warns with ``strict=False``): nothing is silently ignored.
    """
    sd = clean_state_dict(state_dict)
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    model_sd = model.state_dict()
    reinit = []
    for prefix in cfg.classifier_names if cfg else ():
        for k in [k for k in sd if k == prefix or k.startswith(prefix + ".")]:
            if k in model_sd and model_sd[k].shape != sd[k].shape:
                reinit.append(k)
                del sd[k]
    if reinit:
        _logger.warning(
            "num_classes differs from the checkpoint: re-initialised %s (checkpoint has %s classes)",
            sorted(reinit), cfg.num_classes if cfg and cfg.num_classes else "other",
        )
    shape_mismatch = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(model_sd[k].shape)}"
                      for k, v in sd.items() if k in model_sd and v.shape != model_sd[k].shape]
    if shape_mismatch:
        raise RuntimeError("Checkpoint/model shape mismatch:\n  " + "\n  ".join(shape_mismatch))
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if k not in reinit]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        msg = (f"Checkpoint does not match {type(model).__name__}: "
               f"{len(missing)} missing key(s) {missing[:20]}, {len(unexpected)} unexpected key(s) {unexpected[:20]}")
        if strict:
            raise RuntimeError(msg + "\nPass a checkpoint of this architecture, or convert it with the model's checkpoint_filter_fn.")
        _logger.warning(msg)


def build_model_with_cfg(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool = False,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    checkpoint_filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    pretrained_strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls(**kwargs)`` for registered ``variant`` and load weights when asked.

    Used by every entry point: ``num_classes`` defaults to the cfg's when pretrained weights are loaded; the
    model gets a ``pretrained_cfg`` attribute. Weights load when ``pretrained`` or ``checkpoint_path`` is given.
    """
    from zoo.registry import get_pretrained_cfg

    cfg = get_pretrained_cfg(variant)
    if pretrained_cfg_overlay:
        cfg = cfg.replace(**pretrained_cfg_overlay)
    load = pretrained or checkpoint_path is not None
    if load and cfg.num_classes is not None:
        kwargs.setdefault("num_classes", cfg.num_classes)
    model = call_with_checked_kwargs(model_cls, f"model '{variant}'", **kwargs)
    model.pretrained_cfg = cfg
    if load:
        overlay_sha = (pretrained_cfg_overlay or {}).get("sha256")
        path = resolve_weights_file(cfg, checkpoint_path, expected_sha256=overlay_sha)
        _logger.info("Loading %s weights from %s", variant, path)
        load_weights(model, load_state_dict_file(path), cfg, checkpoint_filter_fn, strict=pretrained_strict)
    return model
