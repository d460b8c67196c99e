"""What CoTTA and ViDA share: an EMA ("mean") teacher, stochastic restore to the source weights, augmented views.

Reference: Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022 (qinenergy/cotta ``cifar/cotta.py``:
``update_ema_variables``, the stochastic restore in ``forward_and_adapt``); Liu et al., ViDA, ICLR 2024
(Yangsenqiao/vida ``cifar/vida.py``: the same with a second EMA rate for the adapters).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Collection, Mapping

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.tta.augment import tta_augment
from zoo.tta.base import AdamTTAConfig, TTAAlgorithm

__all__ = ["ema_update", "stochastic_restore", "TeacherConfig", "TeacherStudentAlgorithm"]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, rate: float, adapter_rate: float | None = None,
               adapter_names: Collection[str] = ()) -> None:
    """``θ_t ← rate·θ_t + (1 − rate)·θ_s`` for every parameter of ``teacher`` (matched to ``student``'s by name);
    the parameters named in ``adapter_names`` use ``adapter_rate`` instead (ViDA's separate EMA rate for its
    adapters, official ``update_ema_variables``)."""
    student_params = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        a = adapter_rate if adapter_rate is not None and name in adapter_names else rate
        t.mul_(a).add_(student_params[name].detach(), alpha=1 - a)


@torch.no_grad()
def stochastic_restore(model: nn.Module, source: Mapping[str, torch.Tensor], prob: float,
                       only_weight_bias: bool = False) -> None:
    """Reset each element of every trainable parameter of ``model`` to its ``source`` value with probability
    ``prob`` (CoTTA's stochastic restore: ``weight`` / ``bias`` parameters only with ``only_weight_bias``; the
    official ViDA CIFAR code: all trainable parameters). Draws one mask per parameter from the global RNG."""
    if prob <= 0:
        return
    for name, p in model.named_parameters():
        if not p.requires_grad or (only_weight_bias and name.rsplit(".", 1)[-1] not in ("weight", "bias")):
            continue
        mask = torch.rand(p.shape, device=p.device) < prob
        p.copy_(torch.where(mask, source[name].to(p.device, p.dtype), p))


@dataclass
class TeacherConfig(AdamTTAConfig):
    """Settings shared by CoTTA and ViDA (defaults: each algorithm's official ones)."""

    ema: float = 0.999  # teacher EMA rate (official MT)
    restore_prob: float = 0.0  # stochastic restore probability per element
    num_aug: int = 10  # teacher passes over augmented views
    aug_noise_std: float = 0.005  # the official augmentation's Gaussian noise
    aug_flip: bool = True  # the official augmentation's horizontal flip (false: a deviation, e.g. for digits)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.ema <= 1:
            raise ConfigError(f"tta.ema must be in [0, 1], got {self.ema!r}")
        if not 0 <= self.restore_prob <= 1:
            raise ConfigError(f"tta.restore_prob must be in [0, 1], got {self.restore_prob!r}")
        if self.num_aug < 2:
            raise ConfigError(f"tta.num_aug must be >= 2 (a variance needs two views), got {self.num_aug!r}")


class TeacherStudentAlgorithm(TTAAlgorithm):
    """A student adapted by Adam and an EMA teacher copied from it at :meth:`setup` (CoTTA, ViDA)."""

    config: TeacherConfig

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        self.teacher = copy.deepcopy(model)
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """One augmented view of the batch ``x`` (:func:`zoo.tta.augment.tta_augment`, the config's noise / flip)."""
        return tta_augment(x, noise_std=self.config.aug_noise_std, flip=self.config.aug_flip)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])
