"""SaRA vs LoRA vs full fine-tuning of a Stable Diffusion UNet: trainable parameters, optimiser state, peak memory and
time of one training step (forward + backward + AdamW step), each variant in a fresh process.

The UNet has SD 1.5's architecture (``zoo.diffusion.tiny.sd15_unet_config``) with random weights (no download);
``--width`` scales its channels (1.0 = the real 860M-parameter UNet; the CPU default 0.25 keeps a step to seconds).
Inputs: ``--batch`` noisy latents of ``--latent × --latent`` (64 = 512-px images), 77 text tokens of width 768,
random timesteps; loss = MSE against random noise. Variants:

* ``full`` — AdamW on every weight;
* ``lora`` — peft LoRA on ``to_q/to_k/to_v/to_out.0`` with the rank that matches SaRA's trainable count;
* ``lora_all`` — peft LoRA on every Linear and Conv2d (SaRA's coverage), rank matched the same way;
* ``sara_official`` — SaRA laid out as the official code (sjtuplayer/SaRA ``optim/adamw.py``) lays it out: a dense
  boolean mask per weight kept for the whole run, the weight replaced by a non-leaf tensor whose dense gradient
  is gathered with ``grad[mask]`` (our re-implementation of that layout, see :class:`_OfficialSaRA`);
* ``sara_dense`` — our SaRA with the kernel off: int32 indices of the selected entries, dense weight gradient
  gathered at them;
* ``sara_kernel`` — our SaRA with the sparse weight-gradient kernel for Linear / 1×1 conv weights (no dense ``dW``);
* ``sara_attn_dense`` / ``sara_attn_kernel`` — SaRA on the attention projections only (LoRA's coverage), θ set so
  that it trains as many entries as the all-layer SaRA (and LoRA) do: the like-for-like comparison with ``lora``.

SaRA selects ``|w| < θ`` with θ chosen so that ``--fraction`` of all UNet weights is trainable (default 5.8 %, what
θ = 2e-3 selects on the real SD 1.5 — random weights have another scale), or ``--threshold`` directly.
``peak_mb`` is the process's peak memory during one step above the memory in use before the UNet was built
(weights + gradients + optimiser state + activations); CPU: peak RSS (children run with glibc's mmap threshold
pinned to 64 KiB so that freed tensors leave the RSS at once; repeated runs then agree to ~1 MB), CUDA: peak
allocated. ``adapter_mb`` is what the variant adds to the model's own weights (SaRA: index + original values +
changes; official layout: bool masks + values; LoRA: its factors), each storage counted once. The timed steps
(after one warm-up step) are the memory-measured ones. Timings on a shared CPU are only indicative.

Checks before timing (a :class:`BenchmarkCheckError` stops the benchmark): every variant starts from the same
weights, so its loss at the warm-up step must equal the loss of the unmodified UNet on the same inputs
(``LOSS_RTOL``); the layer rows' gradients of SaRA's values must equal the dense weight gradient ``dyᵀ x`` gathered
at the selected entries (``GRAD_TOL``), which is what both the kernel and dense-then-gather compute. Before the
table is printed, variants that train the same entries with the same AdamW (``sara_official``, ``sara_dense``,
``sara_kernel``; ``sara_attn_dense``, ``sara_attn_kernel``) must reach the same loss after that first step.

    python tools/benchmark.py sara                       # CPU: width 0.25, 32x32 latents, batch 2
    python tools/benchmark.py sara --width 1 --latent 64 --batch 1 --repeat 1 --threads 2   # real size, CPU (~17 min)
    python tools/benchmark.py sara --device cuda --width 1 --latent 64 --batch 4
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from zoo.benchmarks._common import (BenchmarkCheckError, BenchmarkResults, Row, check_close, check_true, memory_in_use,
                                peak_memory, peak_memory_in_use, reset_peak_memory, sync, time_fn)

VARIANTS = ("full", "lora", "lora_all", "sara_official", "sara_dense", "sara_kernel", "sara_attn_dense", "sara_attn_kernel")
LAYER_VARIANTS = ("layer_dense", "layer_kernel")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LAYER_IN, LAYER_OUT, LAYER_TOKENS = 1280, 10240, 1024  # the layer table: SD 1.5's largest Linear, tokens per batch item
SAME_STEP = (("sara_official", "sara_dense", "sara_kernel"), ("sara_attn_dense", "sara_attn_kernel"))
LOSS_RTOL = 1e-5  # warm-up loss vs the unmodified UNet's (zero-initialised deltas: the same function)
STEP_RTOL = 1e-4  # loss after one AdamW step, between variants that train the same entries
GRAD_TOL = 1e-4   # SaRA value gradients vs dense dW gathered, relative to the largest
CHECK_EXIT = 3    # exit status of a child whose check failed: the parent stops instead of skipping the row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--width", type=float, default=None, help="channel scale of SD 1.5's UNet (default: 0.25 CPU, 1 CUDA)")
    parser.add_argument("--latent", type=int, default=None, help="latent side (default: 32 CPU, 64 CUDA)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.058, help="share of UNet weights SaRA trains (sets θ)")
    parser.add_argument("--threshold", type=float, default=None, help="SaRA θ (overrides --fraction)")
    parser.add_argument("--repeat", type=int, default=3, help="timed steps per variant (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="diffusers' gradient checkpointing in the UNet (activations recomputed per block)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--no-layer", dest="layer", action="store_false", help="skip the single-layer backward table")
    parser.add_argument("--only", choices=VARIANTS + LAYER_VARIANTS, help=argparse.SUPPRESS)  # internal: measure one variant here
    parser.add_argument("--out", help=argparse.SUPPRESS)


def _tensor_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes held by ``tensors``, each storage counted once (views and aliases of one weight are one)."""
    storages = {}
    for t in tensors:
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
    return sum(storages.values())


def _threshold_for_fraction(params: list[torch.Tensor], fraction: float) -> float:
    """θ such that about ``fraction`` of the entries of ``params`` have ``|w| < θ`` (quantile of a uniform sample)."""
    flat = torch.cat([p.detach().flatten().abs() for p in params])
    sample = flat[torch.randint(flat.numel(), (min(flat.numel(), 2_000_000),), generator=torch.Generator().manual_seed(0))]
    return float(torch.quantile(sample.float(), fraction))


def _lora_targets(unet: torch.nn.Module, everywhere: bool) -> list[str]:
    """diffusers' attention projections, or (``everywhere``) every Linear and Conv2d of the UNet (SaRA's coverage)."""
    if not everywhere:
        return LORA_TARGETS
    return [name for name, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def _lora_rank(unet: torch.nn.Module, n_params: int, targets: list[str]) -> int:
    """The LoRA rank whose trainable count is closest to ``n_params`` (per rank: in·k·k + out per layer)."""
    per_rank = 0
    for name, m in unet.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets):
            if isinstance(m, torch.nn.Linear):
                per_rank += m.in_features + m.out_features
            elif isinstance(m, torch.nn.Conv2d):
                per_rank += m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels
    return max(1, round(n_params / per_rank))


class _MaskedWrite(torch.autograd.Function):
    """Official SaRA's ``Sparse`` function: write ``values`` into ``weight`` at ``mask`` (in place) and return it;
    the backward gathers the dense weight gradient at ``mask``."""

    @staticmethod
    def forward(ctx, weight, values, mask):
        ctx.save_for_backward(mask)
        weight[mask] = values
        return weight

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return None, grad[mask], None


class _OfficialSaRA(torch.optim.AdamW):
    """AdamW over SaRA's selected entries with the official code's memory layout (for the benchmark only): per
    parameter a dense bool mask ``|w| < θ`` and a 1-D leaf of the selected values; the module's parameter is
    replaced by the non-leaf output of :class:`_MaskedWrite` (re-created after each step, as the official code does)."""

    def __init__(self, model: torch.nn.Module, threshold: float, lr: float):
        self.slots = []
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is None:
                    continue
                mask = p.detach().abs() < threshold
                values = p.detach()[mask].clone().requires_grad_(True)
                self.slots.append((module, name, p, mask, values))
        super().__init__([s[4] for s in self.slots], lr=lr)
        self._install()

    def _install(self) -> None:
        with torch.enable_grad():
            for module, name, p, mask, values in self.slots:
                module._parameters[name] = _MaskedWrite.apply(p.detach(), values, mask)

    def step(self, closure=None):
        out = super().step(closure)
        self._install()
        return out


def measure(variant: str, args: argparse.Namespace) -> dict:
    """Build the UNet and the variant's optimiser, and measure one training step (in this process)."""
    from zoo.adapters import sara
    from zoo.diffusion.tiny import build_unet, sd15_unet_config

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    import diffusers.models.unets.unet_2d_condition  # noqa: F401  (imports before the baseline: same for all variants)
    import peft  # noqa: F401

    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA context outside the measurement
    gc.collect()
    base_mem = memory_in_use(device)  # the inputs below count in the peak, as the UNet's weights do
    g = torch.Generator(device="cpu").manual_seed(0)
    B, L = args.batch, args.latent
    x = torch.randn(B, 4, L, L, generator=g).to(device)
    target = torch.randn(B, 4, L, L, generator=g).to(device)
    text = torch.randn(B, 77, 768, generator=g).to(device)
    t = torch.randint(0, 1000, (B,), generator=g).to(device)
    unet = build_unet(sd15_unet_config(width=args.width, sample_size=args.latent)).to(device)
    if args.grad_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()

    def loss_fn() -> torch.Tensor:
        return torch.nn.functional.mse_loss(unet(x, t, text).sample, target)

    with torch.no_grad():
        base_loss = float(loss_fn())  # the unmodified UNet: every variant must start from this function
    n_total = sum(p.numel() for p in unet.parameters())
    base_bytes = _tensor_bytes([*unet.parameters(), *unet.buffers()])
    theta = args.threshold or _threshold_for_fraction(list(unet.parameters()), args.fraction)
    n_sara = sum(int((p.detach().abs() < theta).sum()) for p in unet.parameters())
    info: dict = {"threshold": theta, "unet_params": n_total}
    if variant == "full":
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    elif variant in ("lora", "lora_all"):
        from peft import LoraConfig

        targets = _lora_targets(unet, variant == "lora_all")
        rank = _lora_rank(unet, n_sara, targets)
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))
        opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)
        info[f"{variant}_rank"] = rank
    elif variant == "sara_official":
        unet.requires_grad_(False)
        opt = _OfficialSaRA(unet, theta, lr=5e-4)
        info["mask_mb"] = sum(s[3].numel() for s in opt.slots) / 2**20
    elif variant.startswith("sara_attn"):
        attn = [p for n, m in unet.named_modules() if any(n.endswith("." + t) for t in LORA_TARGETS) for p in m.parameters()]
        theta_attn = _threshold_for_fraction(attn, n_sara / sum(p.numel() for p in attn))
        opt = sara.SaRAOptimizer(unet, threshold=theta_attn, lr=5e-4, kernel=variant.endswith("kernel"),
                                 targets=LORA_TARGETS)
    else:
        opt = sara.SaRAOptimizer(unet, threshold=theta, lr=5e-4, kernel=variant == "sara_kernel")
    trainable = sum(p.numel() for g in opt.param_groups for p in g["params"])
    extra = [s[3] for s in getattr(opt, "slots", [])] + [p for g in opt.param_groups for p in g["params"]]
    adapter_bytes = _tensor_bytes([*unet.parameters(), *unet.buffers(), *extra]) - base_bytes

    def step() -> torch.Tensor:
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    loss0 = float(step())  # warm-up: optimiser state exists from here on
    sync(device)
    check_true(abs(loss0 - base_loss) <= LOSS_RTOL * abs(base_loss), "sara", variant,
               f"gives loss {loss0:.8g} at its initial weights where the unmodified UNet gives {base_loss:.8g} "
               f"(relative difference {abs(loss0 - base_loss) / abs(base_loss):.1e} > {LOSS_RTOL:.0e}): it does not "
               f"start from the same model")
    with torch.no_grad():
        loss1 = float(loss_fn())  # after one AdamW step: compared across variants that train the same entries
    state_bytes = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))

    # After the warm-up every step holds the same tensors, so the peak over the timed steps is one step's peak:
    # the timed steps are also the measured ones (a real-size CPU step takes ~30 s)
    reset_peak_memory(device)
    seconds = time_fn(step, warmup=0, repeat=args.repeat, device=device)
    peak = peak_memory_in_use(device) - base_mem
    return {"name": variant, "trainable_M": trainable / 1e6, "opt_state_mb": state_bytes / 2**20,
            "adapter_mb": adapter_bytes / 2**20,
            "peak_mb": peak / 2**20, "time_ms": seconds * 1e3, "loss0": loss0, "loss1": loss1, **info}


def measure_layer(variant: str, args: argparse.Namespace) -> dict:
    """Backward of one SaRA Linear the size of SD 1.5's largest (GEGLU 1280 -> 10240) over ``batch·1024`` tokens.

    Before timing, the gradients of SaRA's values are checked against :func:`check_layer_grads`."""
    from zoo.adapters import sara

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(LAYER_IN, LAYER_OUT)).to(device)
    theta = _threshold_for_fraction([layer[0].weight], args.fraction)
    sara.apply_sara(layer, theta, kernel=variant == "layer_kernel")
    x = torch.randn(args.batch * LAYER_TOKENS, LAYER_IN, device=device, requires_grad=True)
    y = layer(x)
    gy = torch.randn_like(y)

    def backward() -> None:
        y.backward(gy, retain_graph=True)
        layer.zero_grad(set_to_none=True)
        x.grad = None

    y.backward(gy, retain_graph=True)
    check_layer_grads(variant, layer, x.detach(), gy)
    layer.zero_grad(set_to_none=True)
    x.grad = None
    backward()  # warm-up
    sync(device)
    peak = peak_memory(backward, device)
    seconds = time_fn(backward, warmup=0, repeat=args.repeat, device=device)
    return {"name": variant, "trainable_M": sara.num_sara_parameters(layer) / 1e6, "peak_mb": peak / 2**20,
            "time_ms": seconds * 1e3}


def check_layer_grads(variant: str, layer: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor) -> None:
    """SaRA's value gradients in ``layer`` (a Sequential around one SaRA Linear, after ``y.backward(gy)``) against the
    dense gradients ``dW = gyᵀ x`` (out, in) and ``db = Σ gy`` gathered at the selected entries (times the delta's
    scale): what dense-then-gather and the sparse kernel must both compute. ``x (T, in)``, ``gy (T, out)``."""
    from zoo.adapters import sara

    dense = {"weight": (gy.double().T @ x.double()).flatten(), "bias": gy.double().sum(0)}
    entries = sara.sara_entries(layer)
    check_true(bool(entries), "sara", variant, "has no SaRA entries to check")
    for _, _, delta, p in entries:
        values = delta.values(p)
        check_true(values.grad is not None, "sara", variant, f"computes no gradient for the SaRA values of {p}")
        want = dense[p][delta.index(p).long()] * float(delta.scale)
        check_close("sara", variant, f"the gradient of its {p} values", values.grad, want, GRAD_TOL,
                    against="dense dW gathered")


def check_same_step(rows: list[dict]) -> None:
    """All rows start from the same loss (same weights and inputs), and the variants of each :data:`SAME_STEP`
    group reach the same loss after one AdamW step (they train the same entries the same way)."""
    first = rows[0]
    for r in rows[1:]:
        check_true(abs(r["loss0"] - first["loss0"]) <= LOSS_RTOL * abs(first["loss0"]), "sara", r["name"],
                   f"started from loss {r['loss0']:.8g}, {first['name']!r} from {first['loss0']:.8g}: the rows did "
                   f"not measure the same UNet and inputs")
    by_name = {r["name"]: r for r in rows}
    for group in SAME_STEP:
        present = [by_name[n] for n in group if n in by_name]
        for r in present[1:]:
            a, b = r["loss1"], present[0]["loss1"]
            check_true(abs(a - b) <= STEP_RTOL * abs(b), "sara", r["name"],
                       f"reaches loss {a:.8g} after one AdamW step where {present[0]['name']!r} reaches {b:.8g} "
                       f"(relative difference {abs(a - b) / abs(b):.1e} > {STEP_RTOL:.0e}), though both train the "
                       f"same entries with the same optimiser")


def _spawn(variant: str, args: argparse.Namespace) -> dict | None:
    """Measure ``variant`` in a fresh process (isolated peak memory)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, "-m", "zoo", "benchmark", "sara", "--only", variant,
           "--out", out, "--device", args.device, "--width", str(args.width), "--latent", str(args.latent),
           "--batch", str(args.batch), "--fraction", str(args.fraction), "--repeat", str(args.repeat)]
    if args.threshold:
        cmd += ["--threshold", str(args.threshold)]
    if args.grad_checkpointing:
        cmd += ["--grad-checkpointing"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    # glibc: serve every large block by mmap (no dynamic threshold), so freed memory leaves the RSS at once and
    # the peak RSS tracks the tensors actually alive
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode == CHECK_EXIT:
        Path(out).unlink(missing_ok=True)
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"sara: the check of {variant!r} failed"
        raise BenchmarkCheckError(last.removeprefix("BenchmarkCheckError: "))
    if proc.returncode != 0:
        print(f"{variant}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    res = json.loads(Path(out).read_text())
    Path(out).unlink()
    return res


def run(args: argparse.Namespace) -> None:
    cuda = args.device == "cuda"
    args.width = args.width if args.width is not None else (1.0 if cuda else 0.25)
    args.latent = args.latent if args.latent is not None else (64 if cuda else 32)
    if args.only:  # child process: one variant
        try:
            result = (measure_layer if args.only in LAYER_VARIANTS else measure)(args.only, args)
        except BenchmarkCheckError as e:
            print(f"BenchmarkCheckError: {e}", file=sys.stderr)
            raise SystemExit(CHECK_EXIT) from None
        Path(args.out).write_text(json.dumps(result))
        return
    rows, extra = [], {}
    for variant in args.variants:
        res = _spawn(variant, args)
        if res is None:
            continue
        extra |= {k: res.pop(k) for k in ("threshold", "unet_params", "lora_rank", "lora_all_rank", "mask_mb") if k in res}
        rows.append(Row(**res))
    print(f"UNet: SD 1.5 architecture x{args.width:g} channels ({extra.get('unet_params', 0) / 1e6:.1f}M params, random "
          f"weights), latents {args.batch}x4x{args.latent}x{args.latent}, text 77x768, device {args.device}; "
          f"SaRA threshold {extra.get('threshold', float('nan')):.3g}; lora: rank {extra.get('lora_rank', '-')} on "
          f"{', '.join(LORA_TARGETS)}; lora_all: rank {extra.get('lora_all_rank', '-')} on every Linear and Conv2d")
    if not rows:
        raise SystemExit("no variant could be measured")
    check_same_step(rows)
    for r in rows:
        del r["loss0"], r["loss1"]
    baseline = "full" if any(r["name"] == "full" for r in rows) else rows[0]["name"]
    results = BenchmarkResults("sara", args)
    results.add("step", "One training step (fwd + bwd + AdamW)", rows, baseline=baseline,
                ratios={"time_ms": "speedup", "peak_mb": "fraction"},
                columns={"trainable_M": "trainable (M)", "opt_state_mb": "optimiser state",
                         "adapter_mb": "adapter memory", "peak_mb": "peak memory", "time_ms": "step time"})
    layer_rows = [Row(**r) for r in (_spawn(v, args) for v in LAYER_VARIANTS if args.layer) if r is not None]
    if layer_rows:
        results.add("layer", f"Backward of one SaRA Linear {LAYER_IN}->{LAYER_OUT} over {args.batch * LAYER_TOKENS} "
                             f"tokens ({args.fraction:.1%} trainable): dense dW + gather vs sparse kernel",
                    layer_rows, baseline="layer_dense", ratios={"time_ms": "speedup", "peak_mb": "fraction"})
    results.write(config={k: v for k, v in vars(args).items() if k != "command_line"} | extra)
