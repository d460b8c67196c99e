"""The continual test-time adaptation (CTTA) stream: its protocols, its domains (the ``data`` section of the ``ctta``
recipe), the loaders in stream order, and the stream's summary over domains.

* :data:`PROTOCOLS` — ``continual`` (domains one after the other, no reset: the CoTTA / ViDA protocol),
  ``reset_each_shift`` (back to the source model at every domain: episodic per domain) or ``mixed_domains`` (all
  domains shuffled into one stream named :data:`MIXED`, errors still counted per corruption);
* :class:`CTTADataConfig` and :func:`build_stream` — the corrupted domains (a dataset whose ``split`` is the
  corruption name) as ``(domain, loader)`` pairs;
* :class:`StreamAdaptation` — one algorithm run over the stream: each batch scored, then adapted on;
* :func:`stream_summary` — the mean error over corruptions, per corruption, per corruption family and over all
  examples, from each domain's :class:`zoo.metrics.stream.OnlineErrorMetric` values.

Reference: the CTTA protocol of Wang et al. (CoTTA, CVPR 2022) and Liu et al. (ViDA, ICLR 2024) on CIFAR-10-C
(Hendrycks & Dietterich, ICLR 2019), severity 5, the 15 corruptions in the benchmark's order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from zoo.data import build_dataset
from zoo.data.images.cifar_c import ArrayImageDataset
from zoo.data.images.corruptions import CORRUPTION_FAMILIES, CORRUPTIONS
from zoo.data.loader import build_loader
from zoo.errors import ConfigError

__all__ = ["PROTOCOLS", "MIXED", "CTTADataConfig", "build_stream", "StreamAdaptation", "stream_summary"]

PROTOCOLS = ("continual", "reset_each_shift", "mixed_domains")
MIXED = "mixed"  # the one stream domain of the mixed_domains protocol


@dataclass
class CTTADataConfig:
    """Config section ``data``: the corrupted domains (a dataset whose ``split`` is the corruption name)."""

    name: str = "cifar10_c"  # cifar10_c | cifar100_c (any directory in the released .npy layout)
    root: str | None = None
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))  # the stream order
    severity: int = 5
    num_examples: int | None = None  # per domain (None: all, 10,000 for CIFAR)
    batch_size: int = 40  # the official ViDA CIFAR batch (global: split across processes)
    shuffle: bool = False  # order within a domain (seeded); mixed_domains always shuffles
    num_workers: int = 0
    input_size: int | None = None  # bilinear resize on the device (the official ViT-B/16 runs CIFAR at 384)

    def __post_init__(self) -> None:
        if not 1 <= int(self.severity) <= 5:
            raise ConfigError(f"data.severity must be in 1..5, got {self.severity!r}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size!r}")
        if not self.corruptions:
            raise ConfigError("data.corruptions is empty; list at least one domain")
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise ConfigError(f"data.corruptions: unknown {unknown}; choose from {', '.join(CORRUPTIONS)}")

    def domain(self, corruption: str) -> Any:
        """The dataset of one corruption at ``severity`` (``num_examples`` of it)."""
        return build_dataset(self.name, root=self.root, split=corruption, severity=self.severity,
                             num_examples=self.num_examples)


def build_stream(d: CTTADataConfig, protocol: str, seed: int) -> list[tuple[str, torch.utils.data.DataLoader]]:
    """The ``(domain, loader)`` pairs of a stream in order: one per corruption, or, for ``mixed_domains``, the one
    :data:`MIXED` domain of all corruptions shuffled together (each example's corruption index as a third item)."""
    if protocol == "mixed_domains":
        parts = [d.domain(c) for c in d.corruptions]
        data = ArrayImageDataset(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                                 domains=np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]))
        return [(MIXED, build_loader(data, d.batch_size, shuffle=True, seed=seed, num_workers=d.num_workers))]
    return [(c, build_loader(d.domain(c), d.batch_size, shuffle=d.shuffle, seed=seed, num_workers=d.num_workers))
            for c in d.corruptions]


class StreamAdaptation:
    """A test-time adaptation algorithm (:class:`zoo.tta.base.TTAAlgorithm`) run over a stream under ``protocol``:
    set up lazily on the model's device (its optimiser), reset at every new domain for ``reset_each_shift``, every
    batch **scored before the update it causes**, each domain's per-example outputs kept (:attr:`examples`, for
    ``per_example.npz``), and its state saved with the run (a resumed stream continues where it stopped).
    ``input_size``: images are resized to it (bilinear) on the device, as the official loop does."""

    def __init__(self, algorithm: Any, protocol: str, input_size: int | None = None):
        self.algorithm, self.protocol, self.input_size = algorithm, protocol, input_size
        self.examples: dict[str, dict[str, torch.Tensor]] = {}  # domain -> its per-example outputs
        self._ready = False
        self._pending: dict[str, Any] | None = None
        self._domain: str | None = None

    def ensure_ready(self, model: torch.nn.Module) -> None:
        """Set the algorithm up on ``model`` (once; a pending resumed state is loaded then)."""
        if not self._ready:
            self.algorithm.setup(model)
            self._ready = True
            if self._pending is not None:
                self.algorithm.load_state_dict(self._pending)
                self._pending = None

    def start_domain(self, model: torch.nn.Module, name: str, index: int) -> None:
        """Before the first batch of domain ``name`` (the ``index``-th)."""
        self._domain = name
        self.ensure_ready(model)
        if index > 0 and self.protocol == "reset_each_shift":
            self.algorithm.reset(model)

    def step(self, model: torch.nn.Module, batch: Sequence[torch.Tensor], ctx: Any) -> None:
        """Score ``batch`` (``x (B, C, H, W)``, ``y (B,)``, for ``mixed_domains`` each example's corruption index),
        then adapt on it (:meth:`TTAAlgorithm.adapt`); ``ctx.record`` gets ``correct`` (``correct_<name>`` for each
        extra prediction of the algorithm, ``group`` when domains are mixed) and ``ctx.log`` the algorithm's
        scalars. ``model``: unwrapped."""
        self._domain = getattr(ctx, "domain", None) or self._domain
        self.ensure_ready(model)
        x, y = batch[0], batch[1]
        if self.input_size and x.shape[-1] != self.input_size:
            x = torch.nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                                align_corners=False)
        logits = self.algorithm.adapt(model, x, ctx)
        recorded = {"correct": (logits.argmax(1) == y).long()}
        for name in self.algorithm.extra_prediction_names:
            recorded[f"correct_{name}"] = (self.algorithm.extra_predictions[name].argmax(1) == y).long()
        if self.protocol == "mixed_domains":
            recorded["group"] = batch[2].long()
        ctx.record(**recorded)
        if self.algorithm.logs:
            ctx.log(**self.algorithm.logs)

    def keep(self, outputs: dict[str, torch.Tensor]) -> None:
        """Keep the current domain's per-example outputs (the ``keep`` of its :class:`OnlineErrorMetric`)."""
        self.examples[self._domain or MIXED] = {k: v.detach().cpu().to(torch.int8) for k, v in outputs.items()}

    def write_report(self, final: dict[str, Any], corruptions: Sequence[str], run_dir: Any) -> None:
        """``errors.csv`` (domain, error %) and ``errors.png`` (:func:`zoo.metrics.stream.save_domain_errors`) of the
        run's ``final`` metrics, and ``per_example.npz``: each kept example's ``error`` and ``error_<name>``, whose
        means are the run's (:func:`zoo.metrics.stream.per_example_errors`; a study's paired bootstrap)."""
        from zoo.metrics.stream import per_example_errors, save_domain_errors
        from zoo.studies.per_example import save_per_example

        order = [d for d in (*corruptions, MIXED) if d in self.examples]
        if order:
            arrays, ids = per_example_errors({d: self.examples[d] for d in order},
                                             self.algorithm.extra_prediction_names)
            save_per_example(run_dir, arrays, example_id=ids)
        errors = {d: final[f"error/{d}"] for d in corruptions if f"error/{d}" in final}
        save_domain_errors(errors, final.get("error", float("nan")), run_dir,
                           title=f"{self.algorithm.name} ({self.protocol})")

    def state_dict(self) -> dict[str, Any]:
        """The algorithm's state (model-side teacher, optimiser) and the kept examples; ``{}`` before set-up."""
        return {"tta": self.algorithm.state_dict(), "examples": self.examples} if self._ready else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (the algorithm's part waits for its set-up when that has not run yet)."""
        self.examples = dict(state.get("examples", {}))
        if "tta" in state:
            if self._ready:
                self.algorithm.load_state_dict(state["tta"])
            else:
                self._pending = state["tta"]


def stream_summary(per_domain: dict[str, dict[str, float]], corruptions: Sequence[str],
                   extra: Sequence[str] = ()) -> dict[str, Any]:
    """``error`` (mean over corruptions, %) and ``error/<corruption>``; ``error_all`` over all examples; the same
    (``error_<name>``, ``error_<name>/<corruption>``) for each extra prediction ``name``; ``family/<f>``: the mean
    error of each corruption category whose corruptions the stream holds (``CORRUPTION_FAMILIES``); ``domains``:
    every corruption's errors. ``per_domain``: each stream domain's metric values (a :data:`MIXED` domain holds
    ``error/<corruption>``)."""
    out: dict[str, Any] = {}
    domains: dict[str, dict[str, float]] = {}
    for prefix in ("error", *(f"error_{n}" for n in extra)):
        errors: dict[str, float] = {}
        for name, m in per_domain.items():
            if name == MIXED:
                errors.update({c: m[f"{prefix}/{c}"] for c in corruptions if f"{prefix}/{c}" in m})
            else:
                errors[name] = m[prefix]
        out[prefix] = sum(errors.values()) / max(len(errors), 1)
        out.update({f"{prefix}/{k}": v for k, v in errors.items()})
        if prefix == "error":
            out.update({f"family/{f}": sum(errors[c] for c in names) / len(names)
                        for f, names in CORRUPTION_FAMILIES.items() if all(c in errors for c in names)})
        for k, v in errors.items():
            domains.setdefault(k, {})[prefix] = v
    total = sum(m["count"] for m in per_domain.values())
    right = sum(m["correct"] for m in per_domain.values())
    out["error_all"] = 100.0 * (1 - right / max(total, 1))
    out["domains"] = domains
    return out
