"""Reading weight files safely, with errors that name the file and the real cause.

``read_torch_file`` loads with ``torch.load(weights_only=True)`` (zoo never unpickles arbitrary objects);
``read_safetensors_file`` reads ``.safetensors``. A failure is one of:

* the file is missing: ``FileNotFoundError`` with its path;
* the file is truncated or corrupt (an interrupted download or copy, a full disk while saving):
  :class:`CorruptFileError` with the path, the size and "re-download / re-save it";
* a torch file holds pickled objects that ``weights_only=True`` refuses (and is otherwise intact):
  :class:`UnsafeCheckpointError`, naming the refused global and how to re-save the tensors if the file is trusted.
"""
from __future__ import annotations

import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

from zoo.errors import CheckpointError

__all__ = ["CorruptFileError", "UnsafeCheckpointError", "read_torch_file", "read_safetensors_file",
           "write_safetensors_file"]

_ZIP_MAGIC = b"PK\x03\x04"
# torch.load's words for a file that ends early or whose bytes are damaged (zip and legacy formats)
_CORRUPT_MARKERS = ("central directory", "PytorchStreamReader failed", "EOF", "truncated", "corrupt",
                    "not a ZIP archive", "file not found in archive")


class CorruptFileError(CheckpointError):
    """A weights/checkpoint file exists but is truncated or damaged; the message names it, its size and the fix."""


class UnsafeCheckpointError(CheckpointError):
    """A torch file holds pickled objects that ``torch.load(weights_only=True)`` refuses to load."""


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        detail = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{what} {path} {detail}.")
    return path


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n} bytes" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB ({n} bytes)"


def _zip_damage(path: Path) -> str | None:
    """Why the zip archive at ``path`` (torch's format since 1.6) is damaged, or ``None`` when it is intact."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        return f"its zip archive is incomplete ({exc})"
    return f"archive member '{bad}' fails its CRC check" if bad else None


def _legacy_pickles_damage(path: Path) -> str | None:
    """Why the pickle streams of a legacy (pre-zip) torch file are incomplete, or ``None`` when all are whole.

    That format is five pickles (magic number, protocol, system info, the object, storage keys), then raw
    storage bytes; a file cut inside the pickles ends before a STOP opcode.
    """
    with open(path, "rb") as f:
        for index in range(5):
            try:
                for _ in pickletools.genops(f):
                    pass
            except Exception as exc:  # ValueError "pickle exhausted before seeing STOP", or unknown opcodes
                return f"its pickle stream {index + 1} of 5 is incomplete or invalid ({exc})"
    return None


def _torch_damage(path: Path, exc: BaseException) -> str | None:
    """Why ``torch.load`` failed on a damaged file (``None`` when the file looks intact)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == _ZIP_MAGIC:
        return _zip_damage(path)
    damage = _legacy_pickles_damage(path)
    if damage is not None:
        return damage
    message = str(exc)
    if isinstance(exc, EOFError) or any(m in message for m in _CORRUPT_MARKERS):
        return f"it ends early or its bytes are damaged ({_first_line(message) or type(exc).__name__})"
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _refused_global(message: str) -> str | None:
    found = re.search(r"GLOBAL (\S+)", message)
    return found.group(1) if found else None


def _numpy_scalar_globals() -> list:
    """The reconstructors of numpy scalars and dtypes, allowed besides tensors (official training scripts save
    ``np.float64`` metrics beside the weights, e.g. PoinTramba's part-segmentation ``main.py``)."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    names = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
    return [multiarray.scalar, (multiarray.scalar, "numpy.core.multiarray.scalar"),
            (multiarray.scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *(type(np.dtype(n)) for n in names)]


def read_torch_file(path: str | os.PathLike, *, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: whatever the file holds (tensors, dicts, lists,
    numbers), on the CPU. ``what`` names the file in messages ("checkpoint", "weights file", "resume file").

    Raises:
        FileNotFoundError: no file at ``path``.
        CorruptFileError: the file is truncated or corrupt (message: path, size, re-download / re-save it).
        UnsafeCheckpointError: the file is intact but holds pickled objects that ``weights_only=True`` refuses.
        RuntimeError: any other ``torch.load`` failure, with the path and torch's message.
    """
    import torch

    path = _existing_file(path, what.capitalize())
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # classified below; always re-raised with the path
        damage = _torch_damage(path, exc)
        if damage is not None:
            raise CorruptFileError(
                f"{what.capitalize()} {path} ({_size(path)}) is truncated or corrupt: {damage}. Such files come "
                f"from an interrupted download, copy or save (e.g. a full disk), or are not torch.save files at all. "
                f"Re-download it or re-save it from its source."
            ) from exc
        if isinstance(exc, pickle.UnpicklingError):
            refused = _refused_global(str(exc))
            raise UnsafeCheckpointError(
                f"{what.capitalize()} {path} holds pickled Python objects"
                + (f" ({refused})" if refused else "")
                + " that torch.load(weights_only=True) refuses to load. zoo never unpickles arbitrary objects. "
                "If you trust the file, re-save only its tensors: "
                "`torch.save(torch.load(path, weights_only=False)['state_dict'], new_path)`, and load new_path."
            ) from exc
        raise CheckpointError(
            f"Could not read {what} {path} ({_size(path)}) with torch.load(weights_only=True): "
            f"{type(exc).__name__}: {_first_line(str(exc))}. Is it a file written by torch.save?"
        ) from exc


def read_safetensors_file(path: str | os.PathLike, *, what: str = "weights file") -> dict:
    """``safetensors.torch.load_file(path)``: ``{name: tensor}`` on the CPU.

    Raises:
        FileNotFoundError: no file at ``path``.
        CorruptFileError: the header or data cannot be read (a truncated/corrupt file, or not a safetensors file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _existing_file(path, what.capitalize())
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise CorruptFileError(
            f"{what.capitalize()} {path} ({_size(path)}) is truncated or corrupt (or not a safetensors file): "
            f"{exc}. Re-download it or re-export it (e.g. with tools/export_weights.py)."
        ) from exc


def write_safetensors_file(tensors: "dict[str, Any]", path: str | os.PathLike,
                           metadata: "dict[str, str] | None" = None) -> Path:
    """Write ``{name: tensor}`` to the safetensors file ``path`` atomically (a temporary file renamed over it, so
    an interrupted write never leaves a partial file where a good one was); parent folders are created and the
    file gets the usual permissions (0o666 less the umask). Tensors are made contiguous. Returns ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
