"""BigNAS sandwich step vs independent steps: time and peak memory of training a supernet's children.

Rows (same supernet, same batch, the same 4 children: largest, 2 random, smallest):

* ``sandwich`` -- one ``supernet`` recipe step: 4 forwards, 4 ``backward`` calls (one graph alive at a time),
  one optimiser step (what ``zoo/recipes/supernet.py`` does);
* ``4_independent`` -- 4 separate steps, one child each (forward, backward, optimiser step), e.g. training the
  children one after another; the children learn from labels (no teacher in an independent step);
* ``one_graph`` -- the 4 children's losses summed into one graph and one ``backward`` (what the sandwich step must
  not do: its memory grows with the number of children);
* ``largest_only`` -- one step of the largest child alone (the cost floor of a step).

Checks before timing: the ``sandwich`` gradient equals the sum of the per-child gradients (children run one by one
with the same losses), and ``one_graph`` (with the same losses) gives the same gradient.
``peak_mb``: peak RSS above the RSS before the step (CPU; timings on a shared CPU are indicative).

    python tools/benchmark.py supernet                      # bignas_mnist, batch 64
    python tools/benchmark.py supernet --model bignas_imagenet --batch 8 --resolution-cap 192
"""
from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

from zoo.benchmarks._common import BenchmarkResults, Row, check_close, peak_memory, time_fn

BENCH = "supernet"
GRAD_TOL = 1e-4


class _Ctx:
    """The part of StepContext the recipe's step uses (plain autograd backward)."""

    def __init__(self):
        self.step, self.batch_index, self.optimizer, self.num_backward, self.logged = 0, 0, None, 0, {}

    def backward(self, loss):
        loss.backward()
        self.num_backward += 1

    def log(self, **kw):
        self.logged.update(kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="bignas_mnist", choices=["bignas_mnist", "bignas_imagenet"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num-random", type=int, default=2, help="random children per sandwich step")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)


def _grads(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def run(args: argparse.Namespace) -> int:
    import zoo
    from zoo.models.bignas import resize_input
    from zoo.losses import soft_cross_entropy
    from zoo.nas import sandwich_archs
    from zoo.recipes.supernet import SupernetConfig, SupernetRecipe

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = zoo.create_model(args.model).train()
    with torch.no_grad():  # trained-like residual branches (zero gamma would make children too alike)
        for b in model.residual_blocks():
            b.project.bn.weight.fill_(0.5)
    in_chans, res = model.in_chans, max(model.space.resolutions)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, in_chans, res, res, generator=g)
    y = torch.randint(0, model.num_classes, (args.batch,), generator=g)
    cfg = SupernetConfig(model={"name": args.model})
    cfg.supernet.num_random, cfg.supernet.label_smoothing = args.num_random, 0.0
    recipe = SupernetRecipe(cfg)
    ctx = _Ctx()
    archs = sandwich_archs(model, args.num_random, random.Random(hash((cfg.seed, 0, 0)) & 0xFFFFFFFF))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay put between repeats

    def child_losses():
        """The sandwich losses, child by child (a generator: each graph is used and dropped in turn)."""
        soft = None
        for i, arch in enumerate(archs):
            model.set_subnet(arch)
            logits = model(resize_input(x, arch["resolution"]))
            if i == 0:
                soft = logits.detach().softmax(-1)
                yield F.cross_entropy(logits, y)
            else:
                yield soft_cross_entropy(logits, soft)

    # ---- checks: sandwich == sum of per-child gradients == one graph
    model.zero_grad(set_to_none=True)
    recipe.train_step(model, (x, y), ctx)
    sandwich_grad = _grads(model)
    model.zero_grad(set_to_none=True)
    total = None
    for loss in child_losses():
        loss.backward()
        g_now = _grads(model)
        total = g_now
    check_close(BENCH, "sandwich", "gradient", sandwich_grad, total, GRAD_TOL, against="sum of per-child gradients")
    model.zero_grad(set_to_none=True)
    sum(child_losses()).backward()
    check_close(BENCH, "one_graph", "gradient", _grads(model), total, GRAD_TOL, against="sum of per-child gradients")
    model.zero_grad(set_to_none=True)

    def sandwich():
        recipe.train_step(model, (x, y), _Ctx())
        opt.step()
        opt.zero_grad(set_to_none=True)

    def independent():
        for arch in archs:
            model.set_subnet(arch)
            F.cross_entropy(model(resize_input(x, arch["resolution"])), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.set_subnet(model.max_subnet())

    def one_graph():
        sum(child_losses()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.set_subnet(model.max_subnet())

    def largest():
        model.set_subnet(model.max_subnet())
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    n = len(archs)
    rows = []
    for name, fn in (("sandwich", sandwich), (f"{n}_independent", independent), ("one_graph", one_graph),
                     ("largest_only", largest)):
        t = time_fn(fn, warmup=1, repeat=args.repeat)
        mem = peak_memory(fn)
        rows.append(Row(name, time_ms=1e3 * t, peak_mb=None if mem is None else mem / 2**20, children=n
                        if name != "largest_only" else 1))
    mflops = [model.subnet_flops(a) / 1e6 for a in archs]
    print(f"{args.model}, batch {args.batch}, children MFLOPs {[round(m, 3) for m in mflops]}")
    results = BenchmarkResults("supernet", args)
    results.add("step", f"supernet step ({n} children)", rows, baseline=f"{n}_independent")
    results.write(model=args.model, batch=args.batch, children_mflops=mflops)
    return 0
