"""``zoo prepare-data`` (``tools/prepare_data.py``): build the data layouts the zoo's shipped numbers use from the official downloads.

``zoo prepare-data modelnet10 --src ModelNet10/ --out data/modelnet10`` turns the Princeton ModelNet10
meshes (``<class>/{train,test}/<class>_NNNN.off``) into ``<class>/{train,test}/<class>_NNNN.pcd`` (binary PCD,
x y z float32, 1024 Poisson-disk points per shape, not normalised) in the standard frame (y up, the frame of
``modelnet40_normal_resampled`` / ``modelnet40_ply_hdf5_2048`` / Point-BERT's ``.dat``: ``(x, z, y)`` of the OFF
mesh), the frame the ModelNet10 checkpoints are trained and evaluated in. Then train / evaluate with
``data.root=data/modelnet10``. ``modelnet40`` does the same for ``ModelNet40.zip``. The work is in
``zoo.data.pointcloud.prepare``.

``zoo prepare-data shapenetpart-synthetic --out data/shapenetpart_synthetic`` writes the procedural
part-labelled shapes of ``zoo.data.pointcloud.synthetic_parts`` in the ShapeNetPart layout (synthetic data, for the
part-segmentation runs without the real download).

``zoo prepare-data modelnet10-layouts --src modelnet40_normal_resampled --out data/modelnet10_layouts`` puts the
real ModelNet10-class shapes of PointNet++'s resampled files in PointNet++'s txt layout and PointNet's h5 layout
(``zoo.data.pointcloud.layouts``), the data of the frame check ``configs/pointramba/eval_frames_study.yaml``.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]

_SAMPLER_HELP = """\
Poisson-disk sampler: 'open3d' = open3d's TriangleMesh.sample_points_poisson_disk (init_factor 5; needs
pip install 'zoo[pointcloud]'); 'numpy' = the same weighted sample elimination ported to numpy (same algorithm and
constants, other random draws; about 1 s per shape instead of 0.05 s); 'auto' (default) = open3d when it imports.
Which one made shared/data/modelnet10 cannot be read from the files (same PCD header, random draws, unknown seed);
their spacing statistics are consistent with open3d >= 0.17's sample_points_poisson_disk (see
zoo/data/pointcloud/prepare.py), so 'open3d' is the closest match."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Build the zoo's data layouts from the official downloads.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for dataset, folder, url in (
        ("modelnet10", "ModelNet10", "http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip"),
        ("modelnet40", "ModelNet40", "http://modelnet.cs.princeton.edu/ModelNet40.zip"),
    ):
        m = sub.add_parser(
            dataset,
            help=f"{folder} OFF meshes -> 1024-point binary PCD clouds in the standard frame"
            + (" (the layout of the shipped ModelNet10 numbers)" if dataset == "modelnet10" else ""),
            description=(
                f"Sample every mesh of the official {folder} download ({url}, unzipped: "
                "<src>/<class>/{train,test}/<class>_NNNN.off) into <out>/<class>/{train,test}/<class>_NNNN.pcd: binary "
                "PCD v0.7, fields x y z float32, --num-points per shape, Poisson-disk sampled, not normalised, in the "
                "standard frame (y up, the frame of modelnet40_normal_resampled, modelnet40_ply_hdf5_2048 and "
                "Point-BERT's .dat: each point is (x, z, y) of the OFF mesh; <out>/.prepare_data.json and "
                "<out>/README.md record it, and the zoo's reader reads it from there). shared/data/modelnet10 is the "
                "same layout in the raw OFF frame (z up), which the reader converts. Resumable: finished files are "
                "skipped on a rerun. A non-empty --out that holds other settings (or the raw-frame output of an "
                "earlier version) or other files is refused unless --overwrite.\n\n" + _SAMPLER_HELP
            ),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        m.add_argument("--src", required=True, help=f"the unzipped {folder} folder (or the folder that holds it)")
        m.add_argument("--out", required=True, help=f"output folder, e.g. data/{dataset}")
        m.add_argument("--num-points", type=int, default=1024, help="points per shape (default 1024)")
        m.add_argument("--sampler", choices=("auto", "open3d", "numpy"), default="auto",
                       help="see above (default auto)")
        m.add_argument("--init-factor", type=float, default=5.0, help="initial uniform samples per point (default 5)")
        m.add_argument("--seed", type=int, default=0, help="base seed; each shape's seed also depends on its name")
        m.add_argument("--workers", type=int, default=1,
                       help=f"processes (default 1; this machine has {os.cpu_count()})")
        m.add_argument("--overwrite", action="store_true",
                       help="rebuild --out even if it holds other settings or files")
        m.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = sub.add_parser(
        "shapenetpart-synthetic",
        help="procedural part-labelled shapes (airplanes, chairs, lamps, mugs, tables) in the ShapeNetPart layout",
        description=(
            "Write <out>/synsetoffset2category.txt, <out>/train_test_split/shuffled_{train,val,test}_file_list.json "
            "and <out>/<synset>/<token>.txt (x y z nx ny nz part_label) with the shapes of "
            "zoo.data.pointcloud.synthetic_parts. The data is synthetic: it is not ShapeNetPart."
        ),
    )
    s.add_argument("--out", required=True, help="output folder, e.g. data/shapenetpart_synthetic")
    s.add_argument("--train", type=int, default=80, help="training shapes per category (default 80)")
    s.add_argument("--val", type=int, default=15, help="validation shapes per category (default 15)")
    s.add_argument("--test", type=int, default=30, help="test shapes per category (default 30)")
    s.add_argument("--num-points", type=int, default=2500, help="points per shape file (default 2500)")
    s.add_argument("--seed", type=int, default=0, help="seed of the whole set (default 0)")
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    l = sub.add_parser(
        "modelnet10-layouts",
        help="real ModelNet10 shapes of modelnet40_normal_resampled in the txt and h5 layouts (the frame check)",
        description=("Write <out>/txt/modelnet40_normal_resampled (symlinks + modelnet10_test.txt listing every "
                     "ModelNet10-class shape of --src) and <out>/h5/modelnet40_ply_hdf5_2048 (the same shapes, a "
                     "seeded random 2048 points each, as PointNet's files)."),
    )
    l.add_argument("--src", required=True, help="PointNet++'s modelnet40_normal_resampled folder (or its parent)")
    l.add_argument("--out", required=True, help="output folder (must not exist), e.g. data/modelnet10_layouts")
    l.add_argument("--seed", type=int, default=0, help="seed of the h5 point subsets (default 0)")
    return p


def _modelnet10_layouts(args: argparse.Namespace) -> int:
    from zoo.data.pointcloud.layouts import write_modelnet10_layouts

    try:
        made = write_modelnet10_layouts(args.src, args.out, seed=args.seed)
    except (FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{made['shapes']} shapes: data.root={made['txt']} (txt layout), data.root={made['h5']} (h5 layout); "
          f"the frame study: ZOO_MODELNET_LAYOUTS={args.out} python tools/train.py "
          "configs/pointramba/eval_frames_study.yaml")
    return 0


def _synthetic_shapenetpart(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zoo.data.pointcloud.synthetic_parts import write_synthetic_shapenetpart

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"error: {out} is not empty; pass --overwrite to write into it", file=sys.stderr)
        return 2
    root = write_synthetic_shapenetpart(out, {"train": args.train, "val": args.val, "test": args.test},
                                        num_points=args.num_points, seed=args.seed)
    print(f"{root}: {args.train} / {args.val} / {args.test} train / val / test shapes per category (synthetic). "
          f"Use it with data.root={root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some shapes failed, 2 bad arguments or layout)."""
    args = _parser().parse_args(argv)
    if args.dataset == "shapenetpart-synthetic":
        return _synthetic_shapenetpart(args)
    if args.dataset == "modelnet10-layouts":
        return _modelnet10_layouts(args)
    from zoo.data.pointcloud.prepare import MODELNET_SOURCES, OutputConflict, SourceLayoutError, prepare_modelnet

    try:
        summary = prepare_modelnet(
            args.dataset, args.src, args.out, num_points=args.num_points, sampler=args.sampler,
            init_factor=args.init_factor, seed=args.seed, workers=args.workers, overwrite=args.overwrite,
            progress=not args.no_progress,
        )  # fmt: skip
    except (SourceLayoutError, OutputConflict, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = summary["counts"]
    folder, _, official_counts = MODELNET_SOURCES[args.dataset]
    official = "" if counts == official_counts else (
        f" (the official {folder} has {official_counts['train']} / {official_counts['test']})"
    )
    print(
        f"{summary['out']}: {counts['train']} train / {counts['test']} test shapes{official}; wrote "
        f"{summary['written']}, skipped {summary['skipped']} already done ({summary['sampler']} sampler); "
        f"standard frame (y up), recorded in {summary['out']}/.prepare_data.json and README.md"
    )
    if summary["failed"]:
        print(f"error: {len(summary['failed'])} shapes failed:", file=sys.stderr)
        for _, msg in summary["failed"]:
            print(f"  - {msg}", file=sys.stderr)
        print("Rerun the same command to retry them (finished files are skipped).", file=sys.stderr)
        return 1
    print(f"Use it with data.root={summary['out']} on the command line, or "
          f"zoo.data.build_dataset('{args.dataset}', root='{summary['out']}')")  # fmt: skip
    return 0

