"""Per-batch adaptation cost of the TTA algorithms (``zoo/tta/``), ViDA against Tent in the same run.

One table: rows ``source``, ``bn_adapt``, ``tent`` (the baseline), ``cotta`` (augmentation always on: the
anchor threshold is set to 1), ``vida``; ``time_ms`` is the median wall time of one ``TTAAlgorithm.adapt`` call on
the same batch (prediction + update: ViDA makes ``num_aug`` + 1 teacher passes, one student forward and backward, the
EMA update and the stochastic restore); ``forwards`` counts the model forwards per batch; ``peak_mb`` is the extra
memory of one call.

Before timing, each row is checked to compute what it claims: ``source`` / ``bn_adapt`` return the model's own
logits and change no weight; ``tent`` returns the logits of the weights before its update and changes only norm
affine parameters; ``cotta`` and ``vida`` return the teacher's prediction, call the teacher ``num_aug`` + 1 times
and the student once, and (ViDA) set the adapters' scales to the HKA formula of the teacher's augmented logits.

    python tools/benchmark.py ctta [--batch 40] [--num-aug 10] [--threads 1] [--embed-dim 96 --depth 4]
"""
from __future__ import annotations

import argparse
import copy

import torch

from zoo.benchmarks._common import BenchmarkResults, Row, check_close, check_true, describe_machine, peak_memory, time_fn

_BENCH = "ctta"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--embed-dim", type=int, default=96)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--num-aug", type=int, default=10, help="teacher passes over augmented views (ViDA 10)")
    parser.add_argument("--cotta-aug", type=int, default=32, help="CoTTA's augmented passes (official 32)")
    parser.add_argument("--algorithms", "--methods", dest="algorithms", nargs="+",
                        default=["source", "bn_adapt", "tent", "cotta", "vida"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _model(args):
    from zoo.registry import create_model

    torch.manual_seed(0)
    return create_model("timm/vit_tiny_patch16_224", img_size=args.img_size, patch_size=args.patch_size,
                        embed_dim=args.embed_dim, depth=args.depth, num_heads=max(1, args.embed_dim // 24),
                        num_classes=10)


def _algorithm(name: str, args, device):
    """The algorithm ``name`` (official defaults; CoTTA always augments) and its prepared model on ``device``."""
    from zoo.tta.base import build_tta, load_source_model

    section = {"name": name}
    if name in ("cotta", "vida"):
        section["num_aug"] = args.cotta_aug if name == "cotta" else args.num_aug
    if name == "cotta":
        section["aug_threshold"] = 1.0
    algorithm = build_tta(section)
    model = algorithm.prepare_model(load_source_model(_model(args), None, algorithm.adapter)).to(device)
    algorithm.capture_source(model)
    algorithm.setup(model)
    return algorithm, model


def _count_forwards(module: torch.nn.Module) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    module.register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
    return outputs


def _check(name: str, args, device, x: torch.Tensor) -> int:
    """Run one adapt call on fresh copies and check it; returns the forwards per batch."""
    from zoo.adapters.model import iter_lora_layers
    from zoo.adapters.vida import VIDA_HIGH, VIDA_LOW
    from zoo.tta.base import LocalStep
    from zoo.tta.norm import norm_affine_parameters
    from zoo.tta.vida import hka_scales

    algorithm, model = _algorithm(name, args, device)
    before = copy.deepcopy(model)
    student_out = _count_forwards(model)
    teacher_out = _count_forwards(algorithm.teacher) if hasattr(algorithm, "teacher") else []
    torch.manual_seed(1)
    pred = algorithm.adapt(model, x, LocalStep(model))
    changed = {n for (n, p), q in zip(model.named_parameters(), before.parameters()) if not torch.equal(p, q)}
    if name in ("source", "bn_adapt"):
        with torch.no_grad():
            check_close(_BENCH, name, "logits", pred, before(x), 1e-5, against="the model's forward")
        check_true(not changed, _BENCH, name, f"changed weights {sorted(changed)[:3]}")
    elif name == "tent":
        with torch.no_grad():
            check_close(_BENCH, name, "logits", pred, before(x), 1e-5, against="the weights before the update")
        norm = {n for n, _ in norm_affine_parameters(model)}
        check_true(bool(changed) and changed <= norm, _BENCH, name, f"updated {sorted(changed - norm)[:3]} (not norm affine)")
    else:
        n_aug = algorithm.config.num_aug
        check_true(len(teacher_out) == n_aug + 1 and len(student_out) == 1, _BENCH, name,
                   f"made {len(teacher_out)} teacher and {len(student_out)} student forwards, expected {n_aug + 1} and 1")
        if name == "vida":  # the augmented passes, then the plain one
            expected, what = teacher_out[-1], "the teacher's forward on x"
        else:  # cotta: the plain pass, then the augmented ones, averaged (anchor confidence < threshold 1)
            expected, what = torch.stack(teacher_out[1:]).mean(0), "the teacher's augmentation average"
        check_close(_BENCH, name, "prediction", pred, expected, 1e-6, against=what)
        check_true(bool(changed), _BENCH, name, "changed no weight")
        if name == "vida":
            low, high, _ = hka_scales(torch.stack(teacher_out[:n_aug]), algorithm.config.unc_threshold, algorithm.config.hka)
            low, high = low.float(), high.float()
            layers = [layer for _, layer in iter_lora_layers(model)]
            got = {(float(l.deltas[VIDA_LOW].scale), float(l.deltas[VIDA_HIGH].scale)) for l in layers}
            check_true(got == {(float(low), float(high))}, _BENCH, name,
                       f"set scales {sorted(got)[:2]}, HKA says {(float(low), float(high))}")
    return len(student_out) + len(teacher_out) + (1 if name == "cotta" else 0)  # cotta: + the anchor


def run(args: argparse.Namespace) -> None:
    from zoo.tta.base import LocalStep

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(describe_machine())
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.img_size, args.img_size, device=device)
    forwards = {name: _check(name, args, device, x) for name in args.algorithms}
    print(f"checked: every row computes its algorithm's prediction and update ({', '.join(args.algorithms)})")
    rows = []
    for name in args.algorithms:
        algorithm, model = _algorithm(name, args, device)
        step = LocalStep(model)
        t = time_fn(lambda: algorithm.adapt(model, x, step), warmup=1, repeat=args.repeat, device=device)
        mem = peak_memory(lambda: algorithm.adapt(model, x, step), device)
        rows.append(Row(name, batch=args.batch, forwards=forwards[name], time_ms=1000 * t,
                        ms_per_image=1000 * t / args.batch, peak_mb=None if mem is None else mem / 2**20))
    baseline = "tent" if "tent" in args.algorithms else args.algorithms[0]
    results = BenchmarkResults("ctta", args)
    results.add("per_batch", f"CTTA cost per batch (ViT {args.embed_dim}x{args.depth}, {args.img_size}px, "
                             f"batch {args.batch})", rows, baseline, ratios={"time_ms": "fraction", "peak_mb": "fraction"})
    results.write(algorithms=args.algorithms)
