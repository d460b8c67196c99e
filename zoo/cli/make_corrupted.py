"""``zoo make-corrupted`` (``tools/make_corrupted.py``): write a ``-C`` version of an image dataset in the released CIFAR-10-C ``.npy`` layout.

    zoo make-corrupted --dataset mnist --split "test[8000:]" --out data/mnist_c --severities 5

writes ``<out>/<corruption>.npy`` (uint8 ``(5·N, 32, 32, 3)``, severities 1..5 stacked; severities not asked for
hold the clean images) and ``<out>/labels.npy``, readable with ``build_dataset("cifar10_c", root=<out>,
split=<corruption>, severity=s)``. Images are made uint8 RGB ``size``×``size`` first (grey replicated, smaller
images zero-padded centrally: MNIST 28 -> 32). Corruptions: :mod:`zoo.data.images.corruptions` (CIFAR-10-C
parameters; frost with generated textures, motion blur and snow without ImageMagick).
"""
from __future__ import annotations

import argparse
import time
from zoo.cli._common import fail
from zoo.errors import USER_ERRORS, ConfigError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); returns the exit status (2: a user error, one ``error:`` line)."""
    from zoo.data import build_dataset
    from zoo.data.images.cifar_c import images_as_uint8_rgb, write_corrupted
    from zoo.data.images.corruptions import CORRUPTIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="a registered dataset name (zoo.data.list_datasets())")
    p.add_argument("--root", default=None, help="the dataset's root (default: the dataset's own default)")
    p.add_argument("--split", default="test", help='e.g. "test[8000:]" for MNIST')
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--corruptions", default="all", help=f"comma-separated, or 'all' ({', '.join(CORRUPTIONS)})")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma-separated severities to corrupt")
    p.add_argument("--size", type=int, default=32, help="image side after padding (the CIFAR constants need 32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    names = list(CORRUPTIONS) if args.corruptions == "all" else [c.strip() for c in args.corruptions.split(",")]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        p.error(f"unknown corruption(s) {unknown}; choose from {', '.join(CORRUPTIONS)}")
    try:
        severities = [int(s) for s in args.severities.split(",")]
    except ValueError:
        p.error(f"--severities must be comma-separated integers in 1..5, got {args.severities!r}")
    if any(not 1 <= s <= 5 for s in severities):
        p.error(f"--severities must be in 1..5, got {severities}")
    try:
        dataset = build_dataset(args.dataset, root=args.root, split=args.split)
        images, labels = images_as_uint8_rgb(dataset, args.size)
        start = time.time()
        out = write_corrupted(images, labels, args.out, names, severities, seed=args.seed,
                              progress=lambda n: print(f"{n}: done ({time.time() - start:.0f} s)", flush=True))
    except KeyError as exc:  # the dataset registry: an unknown name, with the closest ones
        return fail(ConfigError(f"--dataset: {exc.args[0]}"))
    except USER_ERRORS as exc:
        return fail(exc)
    print(f"wrote {len(names)} corruptions × {len(images)} images to {out}")
    return 0

