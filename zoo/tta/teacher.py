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

__all__ = ["ema_update", "stochastic_restore", "TeacherConfig", "TeacherStudentAlgorithm", "AugmentationRNG"]


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
    aug_soft: bool = False  # the official code's soft ranges (get_tta_transforms(soft=True)), unused there by default
    update: bool = True  # false: the no-update control (predictions as the algorithm makes them, nothing trained)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.ema <= 1:
            raise ConfigError(f"tta.ema must be in [0, 1], got {self.ema!r}")
        if not 0 <= self.restore_prob <= 1:
            raise ConfigError(f"tta.restore_prob must be in [0, 1], got {self.restore_prob!r}")
        if self.num_aug < 2:
            raise ConfigError(f"tta.num_aug must be >= 2 (a variance needs two views), got {self.num_aug!r}")


class AugmentationRNG:
    """A random stream of its own for the test-time augmentation, so that the augmented views of a run do not
    depend on the other draws of the update (stochastic restore masks): a run with ``update: false`` sees the same
    views, batch for batch, as the run that adapts (a paired, lockstep control).

    The augmentation draws from torch's global generator (torchvision's random transforms take no generator), so
    :meth:`draw` swaps this stream's state in around the call (``torch.random.fork_rng``; on a CUDA batch the
    device's generator too) and keeps the state it leaves. The stream is seeded once from the initial
    seed of the global generator (:meth:`seed_from_global`, which draws nothing from it), hence by the run's seed."""

    def __init__(self) -> None:
        self.states: dict[str, torch.Tensor] = {}

    def seed_from_global(self) -> None:
        """Start the stream from the global generator's initial seed (``torch.initial_seed()``, the run's seed) mixed
        with a constant, so that it differs from the global stream; the global generator is not advanced (a run
        that resumes mid-stream draws what the uninterrupted one drew)."""
        seed = (torch.initial_seed() * 1_000_003 + 0x5EED) % (2 ** 63)
        self.states = {"cpu": torch.Generator().manual_seed(seed).get_state()}
        self._seed = seed

    def draw(self, fn: Any, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` with the global generator(s) set to this stream's state; the stream advances."""
        if not self.states:
            self.seed_from_global()
        cuda = x.device.type == "cuda"
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.states["cpu"])
            if cuda:
                if "cuda" not in self.states:
                    torch.cuda.manual_seed(self._seed)
                else:
                    torch.cuda.set_rng_state(self.states["cuda"], devices[0])
            out = fn(x)
            self.states["cpu"] = torch.get_rng_state()
            if cuda:
                self.states["cuda"] = torch.cuda.get_rng_state(devices[0])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in self.states.items()} | ({"seed": self._seed} if self.states else {})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._seed = int(state.get("seed", 0))
        self.states = {k: v for k, v in state.items() if k != "seed"}


class TeacherStudentAlgorithm(TTAAlgorithm):
    """A student adapted by Adam and an EMA teacher copied from it at :meth:`setup` (CoTTA, ViDA).

    ``update: false`` gives the algorithm's no-update control: the same predictions pipeline (teacher, augmented
    views, gates, scales), no optimiser step, no EMA, no restore. The augmented views come from a random stream of
    their own (:class:`AugmentationRNG`), the same whether the run updates or not."""

    config: TeacherConfig

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        self.teacher = copy.deepcopy(model)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        if not getattr(self, "aug_rng", None) or not self.aug_rng.states:
            self.aug_rng = AugmentationRNG()
            self.aug_rng.seed_from_global()

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """One augmented view of the batch ``x`` (:func:`zoo.tta.augment.tta_augment` with the config's noise /
        flip / soft ranges), drawn from the augmentation's own random stream."""
        cfg = self.config
        return self.aug_rng.draw(lambda t: tta_augment(t, noise_std=cfg.aug_noise_std, soft=cfg.aug_soft,
                                                       flip=cfg.aug_flip), x)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "teacher": self.teacher.state_dict(), "aug_rng": self.aug_rng.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])
        if "aug_rng" in state:
            self.aug_rng.load_state_dict(state["aug_rng"])
