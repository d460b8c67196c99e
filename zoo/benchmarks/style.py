"""Style fine-tuning of the shipped ``tiny_t2i_mnist``: full vs LoRA vs SaRA on real weights, with the generation
metrics of :mod:`zoo.metrics.generation`.

The style set: ``--num-images`` digits of MNIST t10k[:8000] (the model's training split) rendered in ``--style``
(skimage texture in the strokes, coloured background; :func:`zoo.data.images.style_digits.build_style_set`),
captioned "a handwritten digit seven in brick style". Each method fine-tunes the UNet with the ``sd_finetune``
recipe (``configs/sara/mnist_style_<method>.yaml``: ``--steps`` steps of batch ``--batch``, one run per seed):

* ``sara`` — the entries with ``|w| < θ``, θ the ``--fraction`` quantile of all UNet ``|w|`` (what θ = 2e-3 does
  on SD 1.5: a fixed share of the weights);
* ``lora`` — LoRA on ``to_q/to_k/to_v/to_out.0`` with the rank whose parameter count is closest to SaRA's;
* ``full`` — every UNet weight.

Columns, per method (mean over seeds; ``base`` = the shipped model): ``style_gram`` / ``style_colour`` — the
style distances of images generated for the *style prompt* (``--per-digit`` per digit) to the style set (lower =
more of the style); ``fid_style`` / ``fid_plain`` — prompt fidelity (%, the shipped digit classifier) of
style-prompt and plain-prompt ("a handwritten digit seven") images, classified through
:func:`~zoo.metrics.generation.stroke_mask` (the classifier knows only white-on-black digits; ``fid_plain_raw``:
plain images classified as they are, which drops when the style leaks into them): the plain one is the
retained prior;
``fd_plain`` — Fréchet distance (classifier features) of the plain-prompt images to ``--real`` held-out digits
(t10k[8000:]); ``plain_gram`` — style distance of the *plain-prompt* images to the style set (how much the style
leaks into prompts without it; the base model's value is the no-leak reference); ``trainable``, ``state_mb`` (the
exact bytes the method keeps to train: added tensors + gradients + optimiser state, what SaRA's memory claim is
about; :mod:`zoo.diffusion.memory`), ``peak_mb`` (in
a fresh process: peak RSS during the first training step above the RSS just before it — activations,
gradients and the optimiser state it creates) and ``step_ms`` (median of ``--time-repeat`` further steps;
forward + backward + optimiser step, SaRA's nuclear-norm loss included).

Checks before anything is timed or reported: the LoRA rank gives a trainable count within 10 % of SaRA's (or
the closest rank possible), every fine-tuned adapter loads back into the pipeline and changes its output for the
style prompt (a run that trained nothing would report the base model's numbers).

    python tools/benchmark.py style                              # brick, 300 steps, 1 seed (~10 min, 1 thread)
    python tools/benchmark.py style --seeds 0 1 2 --json runs/style_bench/brick.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from zoo.benchmarks._common import BenchmarkResults, Row, check_true

METHODS = ("full", "lora", "sara")
CONFIGS = {m: f"sara/mnist_style_{m}" for m in METHODS}  # packaged config names (zoo.resources.find_config)
COLUMNS = ("style_gram", "style_colour", "fid_style", "fid_plain", "fid_plain_raw", "fd_plain", "plain_gram")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", help="diffusers folder of the base model (default: the shipped tiny_t2i_mnist)")
    p.add_argument("--style", default="brick", help="brick | grass | gravel")
    p.add_argument("--num-images", type=int, default=20, help="images in the style set")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per fine-tuning run")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--fraction", type=float, default=0.05, help="share of UNet weights SaRA trains (sets θ)")
    p.add_argument("--per-digit", type=int, default=20, help="generated images per digit and prompt kind")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the generated images")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--real", type=int, default=1000, help="held-out real digits for fd_plain")
    p.add_argument("--real-split", default="test[8000:]", help="MNIST split of the real digits")
    p.add_argument("--style-split", default="test[:8000]", help="MNIST split the style set's digits come from")
    p.add_argument("--data-root", help="MNIST folder (default: the shared sample data)")
    p.add_argument("--classifier", help="digit classifier weights (default: the shipped one)")
    p.add_argument("--out", default="runs/style_bench", help="style set and run directories go here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--time-repeat", type=int, default=3)
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiply each config's optim.lr (1e-3 SaRA/LoRA, 1e-4 full)")
    p.add_argument("--reuse-runs", action="store_true", help="evaluate finished fine-tuning runs in --out again "
                   "instead of training them anew")
    p.add_argument("--figure", help="PNG: one row per method (first seed), digits 0-9, style prompt then plain prompt")


# ---------------------------------------------------------------------------------------------------- pieces
def sara_threshold(unet: torch.nn.Module, fraction: float) -> float:
    """θ such that ``fraction`` of all UNet parameter entries have ``|w| < θ``."""
    w = torch.cat([p.detach().abs().flatten().float() for p in unet.parameters()])
    k = max(1, int(round(fraction * w.numel())))
    return float(w.kthvalue(k).values) * (1 + 1e-6)


def _count(method: str, pipe_dir: Path, **cfg: Any) -> int:
    """Trainable parameters of ``method`` (``cfg``: its adapter settings) applied to a fresh copy of the UNet."""
    from diffusers import UNet2DConditionModel

    from zoo.adapters.base import build_adapter

    unet = UNet2DConditionModel.from_pretrained(str(pipe_dir / "unet"), **_fp32())
    adapter = build_adapter({"name": method, **cfg})
    return adapter.num_trainable(adapter.apply(unet))


def _fp32() -> dict:
    from zoo.diffusion.pipeline import dtype_kwargs

    return dtype_kwargs(torch.float32)


def matched_lora_rank(pipe_dir: Path, target: int) -> tuple[int, int]:
    """``(rank, trainable)`` of the LoRA whose trainable count is closest to ``target``."""
    per_rank = _count("lora", pipe_dir, rank=1)
    rank = max(1, round(target / per_rank))
    return rank, per_rank * rank


def real_digits(split: str, n: int, root: str | None) -> torch.Tensor:
    """``(n, 3, 32, 32)`` held-out MNIST digits in [0, 1] (padded, grey replicated)."""
    from zoo.data.images.mnist import MNIST
    from zoo.data.images.style_digits import pad_digit

    ds = MNIST(root=root, split=split)
    x = ds.data[:n].float().div(255.0)[:, None]
    return pad_digit(x).expand(-1, 3, -1, -1).contiguous()


def evaluate_pipe(pipe: Any, classifier: Any, style_images: torch.Tensor, real_feats: torch.Tensor, style: str,
                  per_digit: int, steps: int, guidance: float, seed: int) -> dict[str, float]:
    """The metric columns (see the module doc) of ``pipe``."""
    from zoo.diffusion.generate import generate_digits
    from zoo.metrics.generation import (classifier_logits_features, frechet_distance, prompt_fidelity, stroke_mask,
                                        style_distance)

    digits = [d for d in range(10) for _ in range(per_digit)]
    kw = dict(seed=seed, num_inference_steps=steps, guidance_scale=guidance)
    styled = generate_digits(pipe, digits, suffix=f" in {style} style", **kw)
    plain = generate_digits(pipe, digits, **kw)
    s = style_distance(styled, style_images)
    feats = classifier_logits_features(classifier, plain)[1]
    return {
        "style_gram": s["gram"], "style_colour": s["colour"],
        "fid_style": prompt_fidelity(classifier, stroke_mask(styled), digits)["fidelity"],
        "fid_plain": prompt_fidelity(classifier, stroke_mask(plain), digits)["fidelity"],
        "fid_plain_raw": prompt_fidelity(classifier, plain, digits)["fidelity"],
        "fd_plain": frechet_distance(feats, real_feats) if len(plain) > 1 else float("nan"),
        "plain_gram": style_distance(plain, style_images)["gram"],
        "_styled": styled, "_plain": plain,
    }


def measure_step(config: str | Path, overrides: list[str], repeat: int, threads: int = 1) -> dict[str, Any]:
    """The counted and measured memory and the time of ``sd_finetune`` training steps, in a fresh process:
    :func:`zoo.diffusion.memory.measure_training_step` (the SaRA study's memory table uses the same function) —
    ``state_bytes`` (trained tensors + gradients + optimiser state, exact), ``peak_step_bytes`` (peak RSS during the
    first step, which also creates the optimiser state, above the RSS before it) and ``step_ms`` (median of
    ``repeat`` further steps)."""
    from zoo.diffusion.memory import measure_training_step

    return measure_training_step(config, overrides, repeat=repeat, threads=threads)


# ---------------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> list[dict]:
    from zoo.cli import run_training
    from zoo.data.images.style_digits import STYLES, build_style_set, style_images_tensor
    from zoo.diffusion.pipeline import load_pipeline
    from zoo.diffusion.pretrained import pretrained_pipeline_dir
    from zoo.diffusion.adapters import load_adapter
    from zoo.metrics.generation import classifier_logits_features, load_digit_classifier

    bench = "style"
    if args.style not in STYLES:
        raise SystemExit(f"--style must be one of {', '.join(STYLES)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    pipe_dir = Path(args.pipeline) if args.pipeline else pretrained_pipeline_dir("tiny_t2i_mnist")
    style_dir = build_style_set(out / f"style_{args.style}", args.style, args.num_images, root=args.data_root,
                                split=args.style_split)
    style_images = style_images_tensor(style_dir)
    classifier = load_digit_classifier(args.classifier)
    real_feats = classifier_logits_features(classifier, real_digits(args.real_split, args.real, args.data_root))[1]

    from diffusers import UNet2DConditionModel

    threshold = sara_threshold(UNet2DConditionModel.from_pretrained(str(pipe_dir / "unet"), **_fp32()), args.fraction)
    n_sara = _count("sara", pipe_dir, threshold=threshold)
    rank, n_lora = matched_lora_rank(pipe_dir, n_sara)
    per_rank = n_lora // rank
    check_true(abs(n_lora - n_sara) <= max(0.1 * n_sara, per_rank / 2), bench, "lora",
               f"trains {n_lora} parameters at rank {rank}, SaRA {n_sara}")
    print(f"SaRA θ = {threshold:.3g} ({args.fraction:.1%} of the UNet: {n_sara} entries); LoRA rank {rank}: {n_lora}")
    method_overrides = {"sara": [f"adapter.threshold={threshold}"], "lora": [f"adapter.rank={rank}"], "full": []}
    if args.lr_scale != 1.0:
        from zoo.config import load_config

        for m in method_overrides:
            method_overrides[m].append(f"optim.lr={float(load_config(str(CONFIGS[m])).optim.lr) * args.lr_scale}")

    def load_base() -> Any:
        pipe = load_pipeline(pipe_dir, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    ev = dict(per_digit=args.per_digit, steps=args.sample_steps, guidance=args.guidance)
    base_per_seed = [evaluate_pipe(load_base(), classifier, style_images, real_feats, args.style, seed=s, **ev)
                     for s in args.seeds]
    rows = [Row("base", trainable=0, **_mean(base_per_seed))]
    figure_rows = [("base", base_per_seed[0])]
    per_run: list[dict] = [{"method": "base", "seed": s, **_public(m)} for s, m in zip(args.seeds, base_per_seed)]
    for method in args.methods:
        results = []
        common = [f"model.pretrained={pipe_dir}", f"data.root={style_dir}", f"trainer.max_steps={args.steps}",
                  f"data.batch_size={args.batch}", *method_overrides[method]]
        for seed in args.seeds:
            run_dir = out / f"{args.style}_{method}_seed{seed}"
            if not (args.reuse_runs and (run_dir / "metrics.json").is_file()):
                run_training(str(CONFIGS[method]), common + [f"seed={seed}"], run_dir, overwrite=True)
            pipe = load_base()
            load_adapter(pipe, run_dir, method)
            m = evaluate_pipe(pipe, classifier, style_images, real_feats, args.style, seed=seed, **ev)
            base = base_per_seed[args.seeds.index(seed)]
            check_true(not torch.equal(m["_styled"], base["_styled"]), bench, method,
                       "generates exactly the base model's images after fine-tuning (nothing was trained or loaded)")
            results.append(m)
            if seed == args.seeds[0]:
                figure_rows.append((method, m))
            per_run.append({"method": method, "seed": seed, **_public(m)})
        measured = measure_step(CONFIGS[method], common, args.time_repeat, args.threads)
        peak = measured["peak_step_bytes"]
        trainable = {"sara": n_sara, "lora": n_lora}.get(method) or _count("full", pipe_dir)
        rows.append(Row(method, trainable=trainable, **_mean(results), step_ms=measured["step_ms"],
                        state_mb=measured["state_bytes"] / 2**20, peak_mb=None if peak is None else peak / 2**20))
    tables = BenchmarkResults("style", args)
    table = tables.add("methods", f"style fine-tuning of tiny_t2i_mnist ({args.style}, {args.steps} steps x batch "
                                  f"{args.batch}, seeds {args.seeds})", rows, baseline="base", ratios={})
    if args.figure:
        save_figure(figure_rows, args.per_digit, args.figure)
    tables.write(runs=per_run, threshold=threshold, lora_rank=rank,
                 args={k: v for k, v in vars(args).items() if k not in ("func", "command_line")})
    return table


def save_figure(rows: list[tuple[str, dict]], per_digit: int, path: str) -> None:
    """One row per method: the first image of each digit for the style prompt, then for the plain prompt."""
    from PIL import Image

    from zoo.diffusion.sampling import make_grid

    def pil(t):
        return Image.fromarray((t.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())

    grid = [[pil(m[key][d * per_digit]) for key in ("_styled", "_plain") for d in range(10)] for _, m in rows]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    make_grid(grid, [name for name, _ in rows], [str(d) for d in range(10)] * 2, min_size=32,
              col_groups=[("style prompt (digits 0-9)", 10), ("plain prompt (digits 0-9)", 10)],
              title="Style fine-tuning: each method's samples, same seed per digit").save(path)


def _public(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith("_")}


def _mean(results: list[dict]) -> dict[str, float]:
    out = {}
    for c in COLUMNS:
        vals = [r[c] for r in results]
        out[c] = statistics.fmean(vals)
        if len(vals) > 1:
            out[c + "_sd"] = statistics.stdev(vals)
    return out
