"""Metric objects: ``update`` with a batch's per-example outputs, ``compute`` once over all of them.

The one evaluation path of the zoo (:func:`zoo.engine.evaluate.evaluation_loop`, also the stream loop of test-time
adaptation) gathers every batch's per-example outputs across processes **once, in one place**
(:meth:`MetricSet.update`: ``accelerator.gather_for_metrics``, which drops the examples a distributed sampler
repeated to even out the last batch), then updates every metric with the same global batch on every process. So a
metric sees each example of the dataset exactly once whatever the number of processes, ``compute`` needs no more
communication, and every process gets the same numbers (mmengine's ``BaseMetric``, torchmetrics' ``Metric``).

A metric is a small class::

    class MeanSquaredError(Metric):
        keys = ("pred", "target")                       # the outputs it reads (per-example, dim 0 = examples)
        def compute_from(self, pred, target):           # all examples of the evaluation, concatenated
            return {"mse": float(((pred - target) ** 2).mean())}

The default state keeps the per-example tensors it reads (on the CPU) and concatenates them in ``compute``;
metrics over large outputs reduce them per batch instead (override :meth:`Metric.update` / :meth:`Metric.compute`).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch

__all__ = ["Metric", "MeanMetric", "MetricSet", "as_metric_set", "check_per_example"]


class Metric:
    """Accumulates per-example outputs over an evaluation and computes named scalars from all of them.

    Subclasses set :attr:`keys` (the outputs they read) and implement :meth:`compute_from`, or override
    :meth:`update` / :meth:`compute` for a running reduction.
    """

    #: the names of the per-example outputs (``(N, ...)`` tensors) this metric reads
    keys: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything seen (called before each evaluation)."""
        self._parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.keys}

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        """Add one (already gathered) batch: ``outputs[k]`` is ``(n, ...)`` for every ``k`` in :attr:`keys`."""
        missing = [k for k in self.keys if k not in outputs]
        if missing:
            raise KeyError(f"{type(self).__name__} reads outputs {list(self.keys)}; the evaluation step returned "
                           f"{sorted(outputs)} (missing {missing})")
        for k in self.keys:
            self._parts[k].append(outputs[k].detach().cpu())

    @property
    def num_examples(self) -> int:
        """Examples seen since the last :meth:`reset`."""
        first = self._parts.get(self.keys[0], []) if self.keys else []
        return sum(int(t.shape[0]) for t in first)

    def compute(self) -> dict[str, Any]:
        """The metric values over every example seen (the same on every process)."""
        if self.keys and not self.num_examples:
            raise RuntimeError(f"{type(self).__name__}.compute: no examples were evaluated (empty loader?)")
        return self.compute_from(**{k: torch.cat(v) for k, v in self._parts.items()})

    def compute_from(self, **outputs: torch.Tensor) -> dict[str, Any]:
        """Metric values from the concatenated per-example outputs (``outputs[k]``: ``(N, ...)``)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither compute_from nor compute")

    def per_example(self) -> dict[str, torch.Tensor]:
        """The per-example outputs seen, concatenated (``{k: (N, ...)}``): what a study's paired bootstrap reads."""
        return {k: torch.cat(v) for k, v in self._parts.items() if v}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What was seen so far (saved with a run that stops mid-evaluation, e.g. mid stream domain)."""
        return self.per_example()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict` (after :meth:`reset`)."""
        self.reset()
        for k, v in state.items():
            self._parts[k] = [v]


class MeanMetric(Metric):
    """The mean of per-example values: ``{name: mean of outputs[key]}`` (e.g. PSNR per image -> mean PSNR).

    Args:
        key: the per-example output ``(N,)`` to average.
        name: the metric's name (default: ``key``).
        scale: multiplies the mean (e.g. 100 for a percentage from 0/1 values).
    """

    def __init__(self, key: str, name: str | None = None, scale: float = 1.0):
        self.keys = (key,)
        self.name = name or key
        self.scale = scale
        super().__init__()

    def compute_from(self, **outputs: torch.Tensor) -> dict[str, Any]:
        values = outputs[self.keys[0]].double()
        return {self.name: float(values.mean()) * self.scale}


class MetricSet:
    """Several metrics updated together from one evaluation step's outputs; the one place outputs are gathered.

    Args:
        metrics: the :class:`Metric` objects (their names must not clash).
    """

    def __init__(self, metrics: Iterable[Metric]):
        self.metrics = list(metrics)
        if not self.metrics:
            raise ValueError("MetricSet needs at least one metric")

    @property
    def keys(self) -> set[str]:
        """Every output some metric reads."""
        return {k for m in self.metrics for k in m.keys}

    def reset(self) -> None:
        for m in self.metrics:
            m.reset()

    def update(self, outputs: Mapping[str, torch.Tensor], accelerator: Any = None) -> dict[str, torch.Tensor]:
        """Gather the per-example ``outputs`` of one batch across processes (once; padding of the last batch
        dropped) and update every metric with them. Outputs no metric reads are not gathered. Returns the gathered
        outputs."""
        wanted = {k: v for k, v in outputs.items() if k in self.keys}
        check_per_example(wanted)
        if accelerator is not None:
            wanted = accelerator.gather_for_metrics(wanted)
        for m in self.metrics:
            m.update(wanted)
        return wanted

    def compute(self) -> dict[str, Any]:
        """Every metric's values, merged (a name computed twice is an error)."""
        out: dict[str, Any] = {}
        for m in self.metrics:
            values = m.compute()
            clash = set(values) & set(out)
            if clash:
                raise ValueError(f"metrics compute the same name(s) {sorted(clash)}; rename one")
            out.update(values)
        return out

    def state_dict(self) -> list[dict[str, torch.Tensor]]:
        """Every metric's state (see :meth:`Metric.state_dict`)."""
        return [m.state_dict() for m in self.metrics]

    def load_state_dict(self, state: list[dict[str, torch.Tensor]]) -> None:
        """Inverse of :meth:`state_dict`."""
        if len(state) != len(self.metrics):
            raise ValueError(f"metric state for {len(state)} metrics, this set has {len(self.metrics)}")
        for m, s in zip(self.metrics, state):
            m.load_state_dict(s)

    def per_example(self) -> dict[str, torch.Tensor]:
        """Every metric's per-example outputs (see :meth:`Metric.per_example`)."""
        out: dict[str, torch.Tensor] = {}
        for m in self.metrics:
            out.update(m.per_example())
        return out


def check_per_example(outputs: Mapping[str, Any]) -> None:
    """Raise unless every output is a tensor with a leading example dimension, the same for all."""
    sizes = {}
    for k, v in outputs.items():
        if not isinstance(v, torch.Tensor) or v.ndim == 0:
            raise TypeError(f"evaluation output '{k}' must be a per-example tensor (N, ...); got "
                            f"{type(v).__name__}{'' if not isinstance(v, torch.Tensor) else ' of shape ()'}")
        sizes[k] = int(v.shape[0])
    if len(set(sizes.values())) > 1:
        raise ValueError(f"evaluation outputs have different numbers of examples: {sizes}")


def as_metric_set(metrics: MetricSet | Metric | Sequence[Metric]) -> MetricSet:
    """A :class:`MetricSet` from one metric, a list of them or a set."""
    if isinstance(metrics, MetricSet):
        return metrics
    if isinstance(metrics, Metric):
        return MetricSet([metrics])
    return MetricSet(metrics)
