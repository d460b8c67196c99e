"""Pretrained weights: per-model cfgs, offline-first resolution of weight files, sha256, safe loading.

Resolution order for a model's weights (first hit wins):

1. ``checkpoint_path`` passed to ``create_model`` (any local file; no sha256 unless the cfg overlay gives one),
2. the cfg's ``file`` if it is an existing path,
3. ``$ZOO_HOME/<file>``,
4. the shipped weights, ``<dir>/<file>`` for each of ``zoo.resources.checkpoint_dirs()`` (the package data of a
   wheel install, or ``checkpoints/`` of a source checkout),
5. the cfg's ``url`` (downloaded with ``torch.hub``; fails cleanly offline).

Files are read with ``zoo.files`` (``weights_only=True``; truncated or corrupt files are reported as such).
``PretrainedCfg`` lives in the leaf module ``zoo.pretrained_cfg`` and is re-exported here.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from zoo._introspect import call_with_checked_kwargs
from zoo.errors import CheckpointError
from zoo.files import read_safetensors_file, read_torch_file
from zoo.pretrained_cfg import PretrainedCfg, lookup_pretrained_cfg, names_with_weights
from zoo.resources import checkpoint_dirs

__all__ = [
    "PretrainedCfg",
    "resolve_checkpoint",
    "load_checkpoint",
    "without_classifier",
    "build_model_with_cfg",
    "resolve_weights_file",
    "load_state_dict_file",
    "clean_state_dict",
    "load_weights",
    "sha256sum",
    "CHECKPOINT_DIR",
]

_logger = logging.getLogger(__name__)

# The first folder of shipped weights (kept for callers that want one path); lookups use checkpoint_dirs().
CHECKPOINT_DIR = next(iter(checkpoint_dirs()), Path(__file__).resolve().parent / "_checkpoints")
# containers of timm / mmengine / Point-BERT (base_model) / BasicSR (params_ema, params: NAFNet, Restormer)
# and PoinTramba part-segmentation main.py (model_state_dict) files
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "base_model", "module", "params_ema", "params",
                 "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


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
    candidates.extend(d / file for d in checkpoint_dirs())
    return candidates


def _no_weights_error(cfg: PretrainedCfg) -> FileNotFoundError:
    with_weights = names_with_weights()
    return FileNotFoundError(
        f"'{cfg.name}' has no pretrained weights (its pretrained cfg names no file or url). "
        f"Models with pretrained weights: {', '.join(with_weights) or 'none'}. "
        "Build it with pretrained=False, or load your own file with checkpoint_path=..."
    )


def resolve_weights_file(cfg: PretrainedCfg, checkpoint_path: str | os.PathLike | None = None,
                         expected_sha256: str | None = None) -> Path:
    """The local weights file for ``cfg`` (see the module docstring for the order), sha256-verified.

    The cfg's ``sha256`` describes the cfg's own file: it is checked for files found through the cfg, not for an
    explicit ``checkpoint_path`` (a user's fine-tuned weights), which is checked against ``expected_sha256`` only.

    Raises:
        FileNotFoundError: nothing found; the message lists every path tried and how to provide the file (or, for
            a model whose cfg names no weights at all, says so and lists the models that have weights).
        RuntimeError: the file's sha256 differs from the expected one.
    """
    if checkpoint_path is not None:
        path = Path(os.path.expanduser(str(checkpoint_path)))
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint_path '{path}' does not exist (or is not a file).")
    else:
        if not cfg.has_weights:
            raise _no_weights_error(cfg)
        expected_sha256 = cfg.sha256
        tried = _candidate_paths(cfg)
        path = next((p for p in tried if p.is_file()), None)
        if path is None and cfg.url:
            path = _download(cfg.url, tried)
        if path is None:
            where = "\n  ".join(str(p) for p in tried) or "(the cfg names no local file)"
            raise FileNotFoundError(
                f"No weights found for '{cfg.name}'. Tried:\n  {where}\n"
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

    Raises:
        FileNotFoundError: no file at ``path``.
        zoo.files.CorruptFileError: the file is truncated or corrupt (message: path, size, re-download it).
        zoo.files.UnsafeCheckpointError: a torch file holds pickled objects that ``weights_only=True`` refuses.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors_file(path, what="weights file")
    return read_torch_file(path, what="weights file")


def clean_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap ``{'base_model'|'state_dict'|'model'|...: sd}`` containers and strip ``module.``/``_orig_mod.`` prefixes."""
    sd: Any = obj
    while isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        key = next((k for k in _WRAPPER_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
        if key is None:
            raise CheckpointError(f"Checkpoint holds no tensors; top-level keys: {sorted(sd)[:20]}")
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


def _class_count(tensors: Mapping[str, torch.Tensor], keys: list[str]) -> int:
    """Output classes of a classifier: dim 0 of its ``*.weight`` (else of the first of ``keys``), e.g. (C, D) -> C."""
    key = next((k for k in keys if k.endswith("weight")), keys[0])
    return int(tensors[key].shape[0])


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    cfg: PretrainedCfg | None = None,
    filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    strict: bool = True,
    allow_head_reinit: bool = True,
) -> None:
    """Load ``state_dict`` into ``model``, converting foreign keys and adapting the classifier.

    ``filter_fn(state_dict, model)`` converts foreign checkpoints. Classifier tensors (``cfg.classifier``) whose
    shape differs from the model's (another ``num_classes``) are dropped with a warning that gives both class
    counts, keeping the model's fresh initialisation; with ``allow_head_reinit=False`` that is a ``RuntimeError``
    instead (evaluation must not run a random head). Any other missing or unexpected key raises ``RuntimeError``
    listing them (or only warns with ``strict=False``): nothing is silently ignored.
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
    if reinit:
        name = (cfg.name if cfg else None) or type(model).__name__
        ckpt_classes, model_classes = _class_count(sd, reinit), _class_count(model_sd, reinit)
        if not allow_head_reinit:
            raise CheckpointError(
                f"'{name}': the checkpoint's classifier has {ckpt_classes} classes but the model was built with "
                f"{model_classes} (num_classes={model_classes}); loading would leave the head {sorted(reinit)} "
                f"randomly initialised, which allow_head_reinit=False forbids (evaluating a random head is "
                f"meaningless). Evaluate on a dataset with the checkpoint's {ckpt_classes} classes"
                + (f" ({cfg.dataset})" if cfg and cfg.dataset else "")
                + ", or fine-tune the model on your dataset first (weights loaded with the default "
                "allow_head_reinit=True re-initialise the head for training)."
            )
        _logger.warning(
            "'%s': num_classes differs from the checkpoint (checkpoint %d classes, model %d): re-initialised %s. "
            "Fine-tune before evaluating (allow_head_reinit=False makes this an error).",
            name, ckpt_classes, model_classes, sorted(reinit),
        )
        for k in reinit:
            del sd[k]
    shape_mismatch = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(model_sd[k].shape)}"
                      for k, v in sd.items() if k in model_sd and v.shape != model_sd[k].shape]
    if shape_mismatch:
        raise CheckpointError("Checkpoint/model shape mismatch:\n  " + "\n  ".join(shape_mismatch))
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if k not in reinit]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        msg = (f"Checkpoint does not match {type(model).__name__}: "
               f"{len(missing)} missing key(s) {missing[:20]}, {len(unexpected)} unexpected key(s) {unexpected[:20]}")
        if strict:
            raise CheckpointError(msg + "\nPass a checkpoint of this architecture, or convert it with the model's checkpoint_filter_fn.")
        _logger.warning(msg)


def build_model_with_cfg(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool = False,
    *,
    pretrained_cfg: PretrainedCfg | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    checkpoint_filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    pretrained_strict: bool = True,
    allow_head_reinit: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls(**kwargs)`` for registered ``variant`` and load weights when asked.

    Used by every entry point: ``num_classes`` defaults to the cfg's when pretrained weights are loaded; the
    model gets a ``pretrained_cfg`` attribute. Weights load when ``pretrained`` or ``checkpoint_path`` is given.
    ``pretrained_cfg``: the cfg of tagged weights (``create_model("arch.tag")`` passes it; default: ``variant``'s
    own); a tagged cfg's ``num_classes`` and ``model_args`` are the defaults whether or not weights load (the user
    asked for that variant). The loading options (``checkpoint_path``, ``pretrained_cfg_overlay``,
    ``checkpoint_filter_fn``, ``pretrained_strict``, ``allow_head_reinit``: see :func:`load_weights`) are keyword
    arguments here, so they never reach ``model_cls``.
    """
    cfg = pretrained_cfg if pretrained_cfg is not None else lookup_pretrained_cfg(variant)
    if pretrained_cfg_overlay:
        cfg = cfg.replace(**pretrained_cfg_overlay)
    load = pretrained or checkpoint_path is not None
    if cfg.tag:
        for key, value in (cfg.model_args or {}).items():
            kwargs.setdefault(key, value)
    if (load or cfg.tag) and cfg.num_classes is not None:
        kwargs.setdefault("num_classes", cfg.num_classes)
    if pretrained and checkpoint_path is None and not cfg.has_weights:
        raise _no_weights_error(cfg)  # before building: the model may be large
    model = call_with_checked_kwargs(model_cls, f"model '{variant}'", **kwargs)
    model.pretrained_cfg = cfg
    model.checkpoint_filter_fn = checkpoint_filter_fn  # so load_checkpoint(model, official_file) converts it too
    if load:
        overlay_sha = (pretrained_cfg_overlay or {}).get("sha256")
        path = resolve_weights_file(cfg, checkpoint_path, expected_sha256=overlay_sha)
        _logger.info("Loading %s weights from %s", cfg.name or variant, path)
        load_weights(model, load_state_dict_file(path), cfg, checkpoint_filter_fn, strict=pretrained_strict,
                     allow_head_reinit=allow_head_reinit)
    return model


def resolve_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint") -> Path:
    """The weights file a user means by ``path``: a file as it is (``.safetensors``, a run's ``best.pt`` /
    ``last.pt``, an official ``.pth``), or a run directory's ``best.pt`` (the checkpoint its run selected), else its
    ``last.pt``. Raises ``FileNotFoundError`` naming ``what`` and the paths tried."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{what}: {p} is a folder without best.pt or last.pt; give a run directory or a "
                                "weights file (.safetensors, .pt, .pth)")
    raise FileNotFoundError(f"{what} not found: {p}")


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, filter_fn: Callable[[dict, nn.Module], dict] | None = None,
                    strict: bool = True, allow_head_reinit: bool = False, what: str = "checkpoint") -> Path:
    """Load the weights at ``path`` into ``model`` -- the one way the zoo starts from weights (``model.checkpoint_path``
    in configs). ``path``: any local file or run directory (:func:`resolve_checkpoint`): our checkpoints (``{"model":
    ...}`` containers unwrapped), safetensors exports, official layouts converted by ``filter_fn`` (default: the
    model's own ``checkpoint_filter_fn``, set by ``create_model``). Missing / unexpected keys are errors naming them
    (``strict``). Returns the file read."""
    file = resolve_checkpoint(path, what=what)
    fn = filter_fn if filter_fn is not None else getattr(model, "checkpoint_filter_fn", None)
    cfg = getattr(model, "pretrained_cfg", None)  # timm models carry a dict here: only ours describe the head
    load_weights(model, load_state_dict_file(file), cfg if isinstance(cfg, PretrainedCfg) else None, fn,
                 strict=strict, allow_head_reinit=allow_head_reinit)
    return file


def without_classifier(model: nn.Module) -> Callable[[dict, nn.Module], dict]:
    """A ``filter_fn`` for :func:`load_checkpoint` into a backbone built without its classifier (``num_classes=0``):
    the model's own filter (official layouts) first, then the checkpoint's classifier tensors
    (``pretrained_cfg.classifier_names``, else ``head``) dropped; any other missing / unexpected key stays an error."""
    own = getattr(model, "checkpoint_filter_fn", None)
    prefixes = tuple(getattr(getattr(model, "pretrained_cfg", None), "classifier_names", None) or ("head",))

    def fn(state: dict, m: nn.Module) -> dict:
        state = own(state, m) if own is not None else state
        keep = m.state_dict()
        return {k: v for k, v in state.items()
                if k in keep or not any(k == p or k.startswith(p + ".") for p in prefixes)}

    return fn
