"""Image folders with captions, as used to fine-tune text-to-image models on a style or a subject.

Two on-disk layouts are read (the ones users already have):

* sidecar captions: ``root/**/name.png`` with an optional ``root/**/name.txt`` holding the caption;
* 🤗 ``ImageFolder`` metadata: ``root/metadata.jsonl`` with one JSON object per line, ``{"file_name": "a.png",
  "text": "a caption"}`` (column names configurable); files listed there are the dataset.

Images without a caption get ``default_caption``; every caption gets ``prefix`` (SaRA trains with captions
like ``"Barbie style, " + caption``). Samples are ``{"pixel_values": (3, R, R) float in [-1, 1], "caption": str}``
after resizing the short side to ``resolution`` (bilinear), a random or centre crop, and an optional random
horizontal flip — the transforms of diffusers' ``train_text_to_image`` scripts.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from zoo.data.registry import register_dataset

__all__ = ["IMAGE_EXTENSIONS", "CaptionedImageFolder", "find_captioned_images", "captioned_images", "image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def find_captioned_images(
    root: str | os.PathLike,
    *,
    caption_column: str = "text",
    image_column: str = "file_name",
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> list[tuple[Path, str | None]]:
    """``[(image path, caption or None)]`` from ``metadata.jsonl`` if present, else from the files (sorted).

    Raises ``FileNotFoundError`` for a missing root or a file named in the metadata that does not exist, and
    ``ValueError`` for an empty folder or a malformed metadata line (each message names the path).
    """
    if root is None:
        raise ValueError("the image folder is not set (config key data.root)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (config key data.root)")
    meta = root / "metadata.jsonl"
    items: list[tuple[Path, str | None]] = []
    if meta.is_file():
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name = row[image_column]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{meta}:{n}: expected a JSON object with '{image_column}' (and '{caption_column}'), "
                                 f"got {line[:80]!r} ({exc})") from None
            path = root / name
            if not path.is_file():
                raise FileNotFoundError(f"{meta}:{n} names {name}, but {path} does not exist")
            caption = row.get(caption_column)
            if isinstance(caption, list):  # several captions: the first (diffusers picks a random one in training)
                caption = caption[0] if caption else None
            items.append((path, caption))
    else:
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file()):
            txt = path.with_suffix(".txt")
            items.append((path, txt.read_text().strip() if txt.is_file() else None))
    if not items:
        raise ValueError(f"no images found in {root}: put image files ({', '.join(extensions)}) there, optionally "
                         "with same-name .txt captions or a metadata.jsonl (file_name, text)")
    return items


class CaptionedImageFolder(Dataset):
    """Images and captions from a folder (see the module doc).

    Args:
        root: the folder.
        resolution: output side ``R`` (short side resized to ``R``, then cropped to ``R × R``).
        center_crop: centre crop (default: random crop).
        random_flip: random horizontal flip with probability 0.5.
        prefix: prepended to every caption.
        default_caption: caption of images that have none.
        caption_column, image_column: metadata.jsonl keys.
        repeats: the file list is repeated this many times (small style sets, longer epochs).
        limit: keep only the first ``limit`` images (before repeating).
        transform: replaces the default image transform (PIL image -> tensor).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        resolution: int = 512,
        center_crop: bool = False,
        random_flip: bool = True,
        prefix: str = "",
        default_caption: str = "",
        caption_column: str = "text",
        image_column: str = "file_name",
        repeats: int = 1,
        limit: int | None = None,
        transform: Callable | None = None,
    ):
        from torchvision import transforms as T

        self.root = Path(root) if root is not None else None
        items = find_captioned_images(root, caption_column=caption_column, image_column=image_column)
        if limit is not None:
            items = items[: int(limit)]
        self.items = items
        self.repeats = max(1, int(repeats))
        self.prefix = prefix
        self.default_caption = default_caption
        self.resolution = int(resolution)
        self.transform = transform or T.Compose([
            T.Resize(self.resolution, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(self.resolution) if center_crop else T.RandomCrop(self.resolution),
            T.RandomHorizontalFlip() if random_flip else T.Lambda(lambda x: x),
            T.ToTensor(),
            T.Normalize([0.5], [0.5]),
        ])

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def caption(self, i: int) -> str:
        """The full caption (prefix included) of sample ``i``."""
        cap = self.items[i % len(self.items)][1]
        return self.prefix + (cap if cap else self.default_caption)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        path, _ = self.items[i % len(self.items)]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except OSError as exc:  # a corrupt or truncated file: a user error (one error: line), naming the file
            from zoo.errors import DataError

            raise DataError(f"cannot read image {path}: {exc}; replace or remove the file") from exc
        return {"pixel_values": self.transform(image), "caption": self.caption(i)}


@register_dataset("captioned_images")
def captioned_images(root: str | None = None, split: str = "train", **kwargs: Any) -> CaptionedImageFolder:
    """``CaptionedImageFolder(root, ...)``; ``split`` other than train uses centre crops without flips."""
    if split != "train":
        kwargs.setdefault("center_crop", True)
        kwargs.setdefault("random_flip", False)
    return CaptionedImageFolder(root, **kwargs)


@register_dataset("imagefolder")
def image_folder(root: str | None = None, split: str = "train", image_size: int = 224) -> Dataset:
    """torchvision's ``ImageFolder`` at ``root/<split>`` (``<class>/<image>``; ImageNet's train / val folders) as
    ``(image (3, image_size, image_size) float in [0, 1], label)``: resized and centre-cropped to ``image_size``."""
    from torchvision import datasets, transforms

    folder = Path(root or ".") / split
    if not folder.is_dir():
        raise FileNotFoundError(f"data.root/{split}: no folder {folder} (ImageFolder layout <class>/<image>)")
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()])
    return datasets.ImageFolder(str(folder), transform=tf)


def collate_captioned(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``pixel_values`` and list the captions."""
    return {"pixel_values": torch.stack([b["pixel_values"] for b in batch]), "caption": [b["caption"] for b in batch]}
