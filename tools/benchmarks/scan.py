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

``time_ms`` is the median wall time of forward + backward (gradients of all eight inputs), ``cpu_ms`` its process
CPU time on the CPU (all threads; with ``--threads 1`` it is immune to other jobs sharing the cores), ``fwd_ms``
forward only; ``peak_mb`` the extra memory of one forward + backward, each measured in a fresh subprocess on the CPU
(so that memory freed by an earlier row cannot hide a peak) and with ``max_memory_allocated`` on CUDA.

    python tools/benchmark.py scan [--quick] [--device cpu|cuda|all] [--threads 1] [--skip-reference]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._common import Row, peak_memory, print_table, time_fn, write_json

CPU_CONFIGS = [(32, 768, 16, 512), (2, 768, 16, 8192)]
QUICK_CONFIGS = [(8, 256, 16, 256), (1, 256, 16, 2048)]
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


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
    tools = str(Path(__file__).resolve().parents[1])
    spec = json.dumps({"backend": backend, "shape": list(shape), "threads": threads})
    code = (f"import sys; sys.path.insert(0, {tools!r}); "
            "from benchmarks.scan import _peak_worker; _peak_worker(sys.argv[1])")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(tools).parent), os.environ.get("PYTHONPATH", "")]))
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
            continue
        inputs = make_inputs(*shape, device=device, dtype=dtype)
        step = fwd_bwd(backend, inputs)
        fwd = forward_fn(backend)
        slow = device == "cpu" and backend in ("reference", "mambapy_pscan")
        reps, warm = (1, 0) if slow and backend == "reference" else (repeat, 1)
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
    results = []
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
            results.append({"title": title, "rows": print_table(title, rows, baseline=base,
                                                                 ratios={"fwd_ms": "speedup", "time_ms": "speedup",
                                                                         "cpu_ms": "speedup", "peak_mb": "fraction"})})
    write_json(getattr(args, "json", None), results)
