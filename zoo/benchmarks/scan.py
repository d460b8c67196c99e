"""Selective scan (Mamba's S6 recurrence), forward + backward: our kernels against the reference.

Shapes ``(batch, D, N, L)``: PoinTramba's mixer (d_model 384 x expand 2 -> D=768, N=16) at ``(32, 768, 16, 512)``
and a long sequence ``(2, 768, 16, 8192)``. Inputs as Mamba passes them: input-dependent ``B``/``C``
``(batch, N, L)``, ``D``, gate ``z``, ``delta_bias`` and softplus. Rows:

* ``reference`` — :func:`selective_scan_ref`, autograd through its loop over L (the baseline).
* ``zoo_cpu`` — the chunked PyTorch path with its hand-written backward (:mod:`cuda_ext.selective_scan.cpu`).
* ``mambapy_pscan`` — mamba.py's Blelloch ``pscan`` (``pip install mambapy``; skipped when absent), with the same
  softplus / D / z around it, autograd for the rest.
* GPU (``--device cuda``): ``zoo_triton`` and ``mamba_ssm`` (when its CUDA kernel is installed) next to the
  reference.

Before any row is timed, every row's output and the gradients of all eight inputs are checked against the
reference (computed in float32) on a slice of the very inputs it is timed on (the first ``CHECK_BATCH`` sequences
and ``CHECK_DIM`` channels, full length; channels are independent, so the slice is the same computation): a row
that disagrees stops the benchmark with a :class:`BenchmarkCheckError` naming the row and the tensor. This runs
with ``--skip-reference`` too. Every row, the reference included, gets one untimed warm-up call.

``time_ms`` is the median wall time of forward + backward (gradients of all eight inputs), ``cpu_ms`` its process
CPU time on the CPU (all threads; with ``--threads 1`` it is immune to other jobs sharing the cores), ``fwd_ms``
forward only; ``peak_mb`` the extra memory of one forward + backward, each measured in a fresh subprocess on the CPU
(so that memory freed by an earlier row cannot hide a peak) and with ``max_memory_allocated`` on CUDA.

    python tools/benchmark.py scan [--quick] [--device cpu|cuda|all] [--threads 1] [--skip-reference]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo.benchmarks._common import BenchmarkResults, Row, check_close, peak_memory, time_fn

CPU_CONFIGS = [(32, 768, 16, 512), (2, 768, 16, 8192)]
QUICK_CONFIGS = [(8, 256, 16, 256), (1, 256, 16, 2048)]
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
CHECK_BATCH, CHECK_DIM = 2, 32  # the slice of the timed inputs on which every row is checked against the reference
CHECK_TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}  # error / max|reference|


# ----------------------------------------------------------------------------------------------------- inputs
def make_inputs(batch, dim, dstate, seqlen, device="cpu", dtype=torch.float32, seed=0):
    """Mamba-like inputs, all leaves requiring grad: u/delta/z (batch, D, L), A (D, N) < 0, B/C (batch, N, L)."""
    g = torch.Generator().manual_seed(seed)
    t = dict(
        u=torch.randn(batch, dim, seqlen, generator=g),
        delta=torch.randn(batch, dim, seqlen, generator=g) * 0.5 - 2.0,
        A=-torch.exp(torch.log(torch.arange(1, dstate + 1, dtype=torch.float32)).repeat(dim, 1)
                     + 0.1 * torch.randn(dim, dstate, generator=g)),
        B=torch.randn(batch, dstate, seqlen, generator=g),
        C=torch.randn(batch, dstate, seqlen, generator=g),
        D=torch.ones(dim),
        z=torch.randn(batch, dim, seqlen, generator=g),
        delta_bias=torch.rand(dim, generator=g) - 4.0,
    )
    low = ("u", "delta", "B", "C", "z")
    return {k: v.to(device=device, dtype=dtype if k in low else torch.float32).requires_grad_() for k, v in t.items()}


# ----------------------------------------------------------------------------------------------------- runners
def _scan(backend):
    from cuda_ext.selective_scan import selective_scan_fn, selective_scan_ref

    if backend == "reference":
        return lambda **kw: selective_scan_ref(**kw, delta_softplus=True)
    name = {"zoo_cpu": "cpu", "zoo_triton": "triton", "mamba_ssm": "mamba_ssm"}[backend]
    return lambda **kw: selective_scan_fn(**kw, delta_softplus=True, backend=name)


def _mambapy(u, delta, A, B, C, D, z, delta_bias):
    """mamba.py's selective scan (pscan over (batch, L, D, N)) with the same softplus / D / z gate around it."""
    from mambapy.pscan import pscan

    dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (batch, L, D)
    x = u.transpose(1, 2)
    deltaA = torch.exp(dt.unsqueeze(-1) * A)
    BX = dt.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1)
    hs = pscan(deltaA, BX)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3) + D * x
    return (y * F.silu(z.transpose(1, 2))).transpose(1, 2)


def forward_fn(backend):
    return _mambapy if backend == "mambapy_pscan" else _scan(backend)


def fwd_bwd(backend, inputs):
    """A closure running forward + backward (grads of every input) once."""
    fwd = forward_fn(backend)
    gout = torch.randn_like(inputs["u"])
    leaves = [inputs[k] for k in NAMES]

    def step():
        out = fwd(**inputs)
        torch.autograd.grad(out, leaves, gout)

    return step


# ----------------------------------------------------------------------------------------------------- check
def check_slice(inputs):
    """The first ``CHECK_BATCH`` sequences and ``CHECK_DIM`` channels of ``inputs`` (detached copies).

    u/delta/z ``(batch, D, L)`` -> ``(b, d, L)``; A ``(D, N)`` -> ``(d, N)``; D/delta_bias ``(D,)`` -> ``(d,)``;
    B/C ``(batch, N, L)`` -> ``(b, N, L)``. Channels do not interact, so each row's output on the slice is the
    matching slice of its output on the full inputs.
    """
    b, d = CHECK_BATCH, CHECK_DIM
    cut = {"u": (slice(b), slice(d)), "delta": (slice(b), slice(d)), "z": (slice(b), slice(d)), "A": (slice(d),),
           "D": (slice(d),), "delta_bias": (slice(d),), "B": (slice(b),), "C": (slice(b),)}
    return {k: inputs[k].detach()[cut[k]].clone() for k in NAMES}


def _out_and_grads(fwd, inputs, gout):
    """``fwd(**inputs)`` and the gradients of all eight inputs for the upstream gradient ``gout``."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out = fwd(**leaves)
    grads = torch.autograd.grad(out, [leaves[k] for k in NAMES], gout)
    return out.detach(), dict(zip(NAMES, grads))


def check_rows(backends, shape, device, dtype) -> None:
    """Check every row's output and input gradients against the float32 reference before anything is timed.

    The inputs are a :func:`check_slice` of the inputs the rows are timed on (``make_inputs(*shape)``); raises
    :class:`zoo.benchmarks._common.BenchmarkCheckError` naming the first row and tensor that disagree by more than
    ``CHECK_TOL[dtype]`` relative to the reference's largest magnitude.
    """
    sliced = check_slice(make_inputs(*shape, device=device, dtype=dtype))
    gout = torch.randn(sliced["u"].shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    from cuda_ext.selective_scan.reference import selective_scan_ref

    truth = functools.partial(selective_scan_ref, delta_softplus=True)  # the ground truth, not a row's closure
    want_out, want_grads = _out_and_grads(truth, {k: v.float() for k, v in sliced.items()}, gout.float())
    tol = CHECK_TOL[dtype]
    for backend in backends:
        if backend == "reference":
            continue
        out, grads = _out_and_grads(forward_fn(backend), sliced, gout)
        check_close("scan", backend, f"the output {shape}", out, want_out, tol)
        for k in NAMES:
            check_close("scan", backend, f"the gradient of {k} {shape}", grads[k], want_grads[k], tol)
    print(f"  checked against the reference on a {CHECK_BATCH}x{CHECK_DIM}-channel slice: "
          f"{', '.join(b for b in backends if b != 'reference') or 'no other row'}", flush=True)


def available(backend, device):
    if backend == "mambapy_pscan":
        try:
            import mambapy.pscan  # noqa: F401
        except ImportError:
            return False
        return True
    if backend == "mamba_ssm":
        try:
            import selective_scan_cuda  # noqa: F401  (mamba-ssm's compiled kernel)
        except ImportError:
            return False
        return device == "cuda"
    if backend == "zoo_triton":
        from cuda_ext.selective_scan import triton_available

        return device == "cuda" and triton_available()
    return True


# ----------------------------------------------------------------------------------------------------- memory
def _peak_worker(spec: str) -> None:
    """Subprocess entry: build the inputs, run forward + backward once, print the extra peak bytes as JSON."""
    cfg = json.loads(spec)
    torch.set_num_threads(cfg["threads"])
    fwd_bwd(cfg["backend"], make_inputs(2, 8, 4, 16))()  # one-time library buffers (BLAS, OpenMP) not counted
    inputs = make_inputs(*cfg["shape"])
    step = fwd_bwd(cfg["backend"], inputs)
    print(json.dumps({"peak": peak_memory(step, "cpu")}))


def cpu_peak_mb(backend, shape, threads):
    root = str(Path(__file__).resolve().parents[2])  # the checkout (or site-packages) that holds zoo/
    spec = json.dumps({"backend": backend, "shape": list(shape), "threads": threads})
    code = (f"import sys; sys.path.insert(0, {root!r}); "
            "from zoo.benchmarks.scan import _peak_worker; _peak_worker(sys.argv[1])")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe of {backend} failed:\n{res.stderr[-2000:]}")
    peak = json.loads(res.stdout.strip().splitlines()[-1])["peak"]
    return None if peak is None else peak / 2**20


# ----------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help=f"smaller shapes {QUICK_CONFIGS}, fewer repeats")
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"],
                        help="'all': the CPU, plus CUDA when available")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats (the reference gets 1 on the CPU)")
    parser.add_argument("--skip-reference", action="store_true",
                        help="leave the (slow) reference out; ratios are then against zoo_cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="input dtype on CUDA (the CPU rows use float32)")


def _bench(device, shape, backends, repeat, threads, dtype):
    rows = []
    for backend in backends:
        if not available(backend, device):
            print(f"  ({backend}: not available, skipped)")
    backends = [b for b in backends if available(b, device)]
    check_rows(backends, shape, device, dtype)
    for backend in backends:
        inputs = make_inputs(*shape, device=device, dtype=dtype)
        step = fwd_bwd(backend, inputs)
        fwd = forward_fn(backend)
        # every row gets the same untimed warm-up call; the (slow) CPU reference is timed once instead of `repeat`
        reps, warm = (1 if device == "cpu" and backend == "reference" else repeat), 1
        with torch.no_grad():
            fwd_ms = time_fn(lambda: fwd(**inputs), warmup=warm, repeat=reps, device=device) * 1e3
        cpu_times = []  # process CPU time of each timed call: robust when other jobs share the cores

        def timed_step():
            c0 = time.process_time()
            step()
            cpu_times.append(time.process_time() - c0)

        time_ms = time_fn(timed_step, warmup=warm, repeat=reps, device=device) * 1e3
        cpu_ms = statistics.median(cpu_times[warm:]) * 1e3 if device == "cpu" else None
        del step, inputs
        if device == "cpu":
            peak = cpu_peak_mb(backend, shape, threads)
        else:
            inputs = make_inputs(*shape, device=device, dtype=dtype)
            p = peak_memory(fwd_bwd(backend, inputs), device)
            peak = p / 2**20 if p is not None else None
        rows.append(Row(backend, fwd_ms=fwd_ms, time_ms=time_ms, cpu_ms=cpu_ms, peak_mb=peak))
        peak_txt = "-" if peak is None else f"{peak:.0f}"
        cpu_txt = "" if cpu_ms is None else f" (CPU time {cpu_ms:.0f} ms)"
        print(f"  {backend}: fwd {fwd_ms:.0f} ms, fwd+bwd {time_ms:.0f} ms{cpu_txt}, peak {peak_txt} MB", flush=True)
    return rows


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    configs = QUICK_CONFIGS if args.quick else CPU_CONFIGS
    repeat = 2 if args.quick else args.repeat
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else \
        (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = BenchmarkResults("scan", args)
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("scan: --device cuda but torch.cuda.is_available() is False")
        backends = ["reference", "zoo_cpu", "mambapy_pscan"] if device == "cpu" else \
            ["reference", "zoo_triton", "mamba_ssm", "zoo_cpu"]
        if args.skip_reference:
            backends.remove("reference")
        dtype = torch.float32 if device == "cpu" else getattr(torch, args.dtype)
        for shape in configs:
            title = f"selective scan fwd+bwd, {device}, (batch, D, N, L)={shape}, {str(dtype)[6:]}, {threads} threads"
            print(f"\n{title}", flush=True)
            rows = _bench(device, shape, backends, repeat, threads, dtype)
            base = "reference" if not args.skip_reference else backends[0]
            columns = {"fwd_ms": "forward", "time_ms": "fwd+bwd", "peak_mb": "fwd+bwd peak memory"}
            if device == "cpu":
                columns = {"fwd_ms": "forward", "cpu_ms": "fwd+bwd, process CPU time", "time_ms": "fwd+bwd, wall",
                           "peak_mb": "fwd+bwd peak memory"}
            results.add(f"{device}_{'x'.join(map(str, shape))}", title, rows, baseline=base,
                        ratios={"fwd_ms": "speedup", "time_ms": "speedup", "cpu_ms": "speedup", "peak_mb": "fraction"},
                        columns=columns)
    results.write(configs=configs, repeat=repeat, threads=threads)
