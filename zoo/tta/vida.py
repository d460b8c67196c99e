"""``vida``: ViDA's test-time loop — an EMA teacher, HKA scales of the two ViDA adapters from the teacher's
uncertainty over augmented views, a soft cross-entropy step, stochastic restore.

The adapters themselves (two low-rank deltas per layer, their scales, the official checkpoint layout) are the
adaptation method ``vida`` of :mod:`zoo.adapters.vida` (the ``adapter:`` section); this file is how they are
adapted on a test stream.

HKA (homeostatic knowledge allotment): :func:`hka_uncertainty` / :func:`hka_scales` turn the teacher's logits over
N augmented views into the two scales (the paper's rule, or the released code's, which only ever sets the low
adapter's scale).

Reference: Liu et al., "ViDA: Homeostatic Visual Domain Adapter for Continual Test Time Adaptation", ICLR 2024
(Yangsenqiao/vida ``cifar/vida.py`` ``forward_and_adapt`` / ``set_scale``, ``cifar/cfgs/cifar10/vida.yaml``,
``cifar/conf.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zoo.errors import ConfigError
from zoo.losses import soft_cross_entropy
from zoo.tta.base import mean_over_processes, register_tta
from zoo.tta.norm import use_batch_statistics
from zoo.tta.teacher import TeacherConfig, TeacherStudentAlgorithm, ema_update, stochastic_restore

__all__ = ["ViDATTAConfig", "ViDAAlgorithm", "hka_uncertainty", "hka_scales", "hka_scales_from_uncertainty"]

HKA_VARIANTS = ("paper", "official")
#: ``tta.hka`` values: the two rules, or ``none`` (both scales stay 1; no augmented views are computed)
HKA_CHOICES = (*HKA_VARIANTS, "none")


# ============================================================================================ HKA
def hka_uncertainty(view_logits: torch.Tensor, per_sample: bool = False, factor: float = 0.1) -> torch.Tensor:
    """ViDA's uncertainty from the teacher's logits over ``N`` augmented views ``(N, B, C)``:
    ``factor · mean(var_N(logits))`` (unbiased variance over the views, as ``torch.var`` in the official
    ``forward_and_adapt``), one scalar per batch (official; shape ``()``) or per sample (``(B,)``: mean over
    classes)."""
    if view_logits.dim() != 3 or view_logits.shape[0] < 2:
        raise ValueError(f"hka_uncertainty expects teacher logits (N>=2 views, B, C), got {tuple(view_logits.shape)}")
    var = torch.var(view_logits.float(), dim=0)
    return factor * (var.mean(dim=1) if per_sample else var.mean())


def hka_scales_from_uncertainty(u: torch.Tensor, threshold: float,
                                variant: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """HKA: ``(low_scale, high_scale)`` (shaped as ``u``: ``()`` or ``(B,)``) from the uncertainty ``u``.

    * ``variant="paper"`` (the paper's rule, both adapters): ``u >= threshold`` (uncertain, a new domain):
      ``high = 1 + u``, ``low = 1 - u``; else ``low = 1 + u``, ``high = 1 - u``;
    * ``variant="official"``: the released ``set_scale`` uses ``if hasattr(m, 'scale1') ... elif hasattr(m,
      'scale2')``; every ViDA layer has ``scale1``, so only the low adapter's scale is set and the high one stays
      ``1.0``: ``low`` as above, ``high = 1``.
    """
    if variant not in HKA_VARIANTS:
        raise ValueError(f"hka variant must be 'paper' or 'official', got {variant!r}")
    uncertain = u >= threshold
    low = torch.where(uncertain, 1 - u, 1 + u)
    high = torch.where(uncertain, 1 + u, 1 - u) if variant == "paper" else torch.ones_like(u)
    return low, high


def hka_scales(view_logits: torch.Tensor, threshold: float, variant: str = "paper", per_sample: bool = False,
               factor: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(low_scale, high_scale, uncertainty)`` from the teacher's logits ``(N, B, C)``:
    :func:`hka_uncertainty`, then :func:`hka_scales_from_uncertainty`."""
    u = hka_uncertainty(view_logits, per_sample=per_sample, factor=factor)
    return (*hka_scales_from_uncertainty(u, threshold, variant), u)


# ============================================================================================ the algorithm
@dataclass
class ViDATTAConfig(TeacherConfig):
    """``tta:`` section of ``vida``. Defaults are the official CIFAR-10 ones (``cifar/cfgs/cifar10/vida.yaml`` +
    ``cifar/conf.py``); the adapters' ranks and targets are the ``adapter:`` section (:mod:`zoo.adapters.vida`)."""

    lr: float = 1e-4  # the model's parameters (Adam)
    adapter_lr: float = 1e-5  # the adapters' learning rate (official ViDALR)
    ema_adapter: float = 0.999  # EMA rate of the adapter weights (official MT_ViDA)
    restore_prob: float = 0.1  # the official CIFAR code (its ImageNet code has the restore commented out)
    num_aug: int = 10
    unc_threshold: float = 0.05  # HKA threshold (official --unc_thr: 0.05 CIFAR, 0.2 ImageNet)
    hka: str = "paper"  # paper (both scales) | official (only the low adapter's scale, the released code) | none
    per_sample_uncertainty: bool = False  # one uncertainty (and scale) per sample instead of per batch (official)
    train: str = "all"  # all (official: whole model + adapters) | adapters

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hka not in HKA_CHOICES:
            raise ConfigError(f"tta.hka must be one of {', '.join(HKA_CHOICES)}, got {self.hka!r}")
        if self.train not in ("all", "adapters"):
            raise ConfigError(f"tta.train must be 'all' or 'adapters', got {self.train!r}")
        if not 0 <= self.ema_adapter <= 1:
            raise ConfigError(f"tta.ema_adapter must be in [0, 1], got {self.ema_adapter!r}")
        if self.adapter_lr < 0:
            raise ConfigError(f"tta.adapter_lr must be >= 0, got {self.adapter_lr!r}")


@register_tta("vida", config=ViDATTAConfig)
class ViDAAlgorithm(TeacherStudentAlgorithm):
    """ViDA (official ``cifar/vida.py`` ``forward_and_adapt``), per batch ``x``:

    1. the teacher's logits over ``num_aug`` (10) augmented views -> uncertainty ``u = 0.1·mean(var)`` (per batch;
       per sample with ``per_sample_uncertainty``) -> HKA scales (``hka: paper`` sets both, ``hka: official``
       reproduces the released ``set_scale``, which only ever sets the low adapter's ``scale1``), set in student
       and teacher;
    2. teacher prediction on ``x`` (the prediction scored), student forward, loss = soft cross-entropy to the
       teacher, one Adam step (model lr 1e-4, adapters 1e-5; ``train: all`` trains the whole model as the
       official ``collect_params``, ``train: adapters`` only the adapters);
    3. EMA teacher update (0.999; adapter weights with ``ema_adapter``); stochastic restore of every trainable
       element with probability 0.1.

    ``hka: none`` keeps both scales at 1 and computes no augmented views (the warm-up adapters as they are);
    ``update: false`` skips step 2's optimiser step and step 3 (the no-update control: the warm-up model with the
    same HKA scales, teacher = student = the starting weights). The views come from the augmentation's own random
    stream, so the control sees the views the adapting run sees.

    The teacher's augmented passes of step 1 use the scales of the previous batch, as the official code does (the
    scales are set after them); with per-sample scales the previous batch's mean is used there. Under DDP the
    per-batch uncertainty (and that mean) is taken over the whole batch, so every process sets the same scales.
    ``self.adapter`` is the :class:`zoo.adapters.vida.ViDAMethod` the model carries.
    """

    adapter_name = "vida"
    config: ViDATTAConfig

    def __init__(self, config: ViDATTAConfig | None = None, adapter: Any = None):
        if adapter is None:
            from zoo.adapters.base import build_adapter

            adapter = build_adapter({"name": self.adapter_name})
        super().__init__(config, adapter)
        self.scales: tuple[Any, Any] = (1.0, 1.0)
        self.last_uncertainty: float | None = None

    def prepare_model(self, model):
        if not self.config.update:
            model.requires_grad_(False)
        elif self.config.train == "all":
            model.requires_grad_(True)
        else:
            model.requires_grad_(False)
            for p in self.adapter.trainable_parameters(model, trainable_only=False):
                p.requires_grad_(True)
        use_batch_statistics(model)
        self.scales = (1.0, 1.0)
        return model.train()

    def setup(self, model):
        super().setup(model)
        adapter_ids = {id(p) for p in self.adapter.trainable_parameters(model, trainable_only=False)}
        self.adapter_names = {n for n, p in model.named_parameters() if id(p) in adapter_ids}

    def param_groups(self, model):
        if not self.config.update:
            return []
        adapter_params = self.adapter.trainable_parameters(model)
        adapter_ids = {id(p) for p in adapter_params}
        base = [p for p in model.parameters() if p.requires_grad and id(p) not in adapter_ids]
        groups = [{"params": base, "lr": self.config.lr, "name": "model"}] if base else []
        return groups + [{"params": adapter_params, "lr": self.config.adapter_lr, "name": "vida"}]

    def _set_scales(self, model, low, high) -> None:
        self.adapter.set_scales(model, low, high)
        self.adapter.set_scales(self.teacher, low, high)

    def adapt(self, model, x, ctx):
        cfg = self.config
        low, high = self.scales
        if isinstance(low, torch.Tensor) and low.dim() == 1:  # per-sample scales of the previous batch
            low, high = float(mean_over_processes(low.mean(), ctx)), float(mean_over_processes(high.mean(), ctx))
        self._set_scales(model, low, high)
        with torch.no_grad():
            if cfg.hka != "none":
                views = torch.stack([self.teacher(self.augment(x)) for _ in range(cfg.num_aug)])
                u = hka_uncertainty(views, per_sample=cfg.per_sample_uncertainty)
                if not cfg.per_sample_uncertainty:
                    u = mean_over_processes(u, ctx)
                low, high = hka_scales_from_uncertainty(u, cfg.unc_threshold, cfg.hka)
                self.scales = (low, high)
                self.last_uncertainty = float(mean_over_processes(u.mean(), ctx))
                self.logs = {"uncertainty": self.last_uncertainty,
                             "uncertain": float((u >= cfg.unc_threshold).float().mean())}
                self._set_scales(model, low, high)
            pred = self.teacher(x)
        if cfg.update:
            with torch.enable_grad():
                self.update(soft_cross_entropy(ctx.model(x), pred.softmax(1)), ctx)
            ema_update(self.teacher, model, cfg.ema, adapter_rate=cfg.ema_adapter, adapter_names=self.adapter_names)
            stochastic_restore(model, self.source_state, cfg.restore_prob)
        return pred

    def state_dict(self):
        low, high = self.scales
        return {**super().state_dict(), "scales": [torch.as_tensor(low), torch.as_tensor(high)]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "scales" in state:
            low, high = state["scales"]
            self.scales = tuple(s if s.dim() else float(s) for s in (low, high))
