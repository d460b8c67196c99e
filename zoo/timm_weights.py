"""Pretrained weights of timm models, offline first: ``create_model("timm/resnet18", pretrained=True)`` (and timm's
``hf-hub:ORG/NAME`` names) load from the local Hugging Face cache when the files are there, download through timm
when the hub can be reached, and otherwise fail at once with a message that says where the files were looked for
and how to provide them -- instead of huggingface_hub's retries (about 25 s offline) ending in
``LocalEntryNotFoundError``.

The cache is huggingface_hub's (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) in its snapshot layout::

    models--timm--resnet18.a1_in1k/refs/main                       # the commit hash of "main"
    models--timm--resnet18.a1_in1k/snapshots/<hash>/model.safetensors
    models--timm--resnet18.a1_in1k/snapshots/<hash>/config.json    # what hf-hub: names read

Weights timm takes from a url (torchvision's) are looked for in torch's hub cache (``<torch hub>/checkpoints/``).

Reference: timm ``timm/models/_builder.py`` (``_resolve_pretrained_source``: a cfg ``file`` wins over the hub),
``timm/models/_hub.py`` (``load_model_config_from_path`` behind ``local-dir:`` names); huggingface_hub
``try_to_load_from_cache``.
"""
from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["HF_WEIGHT_FILES", "hf_cache_dir", "cached_hf_file", "hub_reachable", "resolve_timm_pretrained"]

#: the weight files timm looks for in a hub repository, in its order of preference
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_TRUE = ("1", "true", "yes", "on")


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _split_revision(repo: str) -> tuple[str, str | None]:
    repo_id, at, revision = repo.partition("@")
    return repo_id, (revision if at else None)


def cached_hf_file(repo: str, filenames: tuple[str, ...] | list[str]) -> Path | None:
    """The first of ``filenames`` that the local cache holds for hub repository ``repo`` (``ORG/NAME[@revision]``),
    or ``None``. Never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, revision = _split_revision(repo)
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache_dir()), revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


@functools.lru_cache(maxsize=8)
def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub can be reached: not with ``HF_HUB_OFFLINE=1``, else a TCP connection to
    ``$HF_ENDPOINT`` (default huggingface.co:443) within ``timeout`` seconds (remembered per endpoint)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    return bool(url.hostname) and _reachable(url.hostname, port, timeout)


def _offline_error(what: str, looked: list[str], download: str) -> FileNotFoundError:
    where = "\n  ".join(looked)
    return FileNotFoundError(
        f"{what}: pretrained=True, but the weights are not in the local caches and the Hugging Face hub cannot be "
        f"reached (offline, or HF_HUB_OFFLINE=1). Looked in:\n  {where}\nFix: on a machine with internet run "
        f"{download} and copy its cache folder ({hf_cache_dir()}) here (or point $HF_HUB_CACHE at a copy), or pass "
        "checkpoint_path=<a local weights file>.")


def resolve_timm_pretrained(name: str) -> tuple[str, dict[str, Any]]:
    """Where ``timm.create_model(name, pretrained=True)`` should read its weights, without waiting on the network:
    ``(name for timm, pretrained_cfg_overlay)``.

    * a timm registry name (``resnet18``, ``resnet18.a1_in1k``): its cfg's hub repository in the local cache ->
      ``(name, {"file": cached file})``; a url's file in torch's hub cache likewise;
    * ``hf-hub:ORG/NAME[@rev]``: a cached snapshot holding ``config.json`` and weights -> ``("local-dir:<snapshot>",
      {})`` (timm reads both from the folder);
    * not cached but the hub is reachable -> ``(name, {})``: timm downloads as usual.

    Raises:
        FileNotFoundError: not cached and the hub cannot be reached (at once; the message names the cache paths
            looked in and how to provide the files), or a timm model without pretrained weights.
    """
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:"):]
        config = cached_hf_file(repo, ["config.json"])
        weights = cached_hf_file(repo, list(HF_WEIGHT_FILES))
        if config is not None and weights is not None and config.parent == weights.parent:
            return f"local-dir:{config.parent}", {}
        if hub_reachable():
            return name, {}
        repo_id, _ = _split_revision(repo)
        folder = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
        raise _offline_error(name, [f"{folder} (config.json and one of {', '.join(HF_WEIGHT_FILES)})"],
                             f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"")
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise FileNotFoundError(f"timm/{name} has no pretrained weights in timm; build it with pretrained=False or "
                                "pass checkpoint_path=<a weights file> (timm's pretrained names: "
                                "timm.list_models(pretrained=True))")
    looked = []
    if cfg.hf_hub_id:
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(HF_WEIGHT_FILES)
        found = cached_hf_file(cfg.hf_hub_id, files)
        if found is not None:
            return name, {"file": str(found)}
        repo_id, _ = _split_revision(cfg.hf_hub_id)
        looked.append(f"{hf_cache_dir() / ('models--' + repo_id.replace('/', '--'))} ({' or '.join(files)})")
    if cfg.url:
        import torch.hub

        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if local.is_file():
            return name, {"file": str(local)}
        looked.append(str(local))
    if cfg.file and Path(cfg.file).is_file():
        return name, {}
    if hub_reachable():
        return name, {}
    tagged = f"{cfg.architecture}.{cfg.tag}" if getattr(cfg, "tag", None) else name
    raise _offline_error(f"timm/{name}", looked,
                         f"python -c \"import timm; timm.create_model('{tagged}', pretrained=True)\"")
