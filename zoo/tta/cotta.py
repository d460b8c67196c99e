"""``cotta``: continual test-time adaptation with an EMA teacher, augmentation-averaged pseudo-labels and stochastic
restore.

Reference: Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022 (qinenergy/cotta ``cifar/cotta.py``
``forward_and_adapt``; ``cifar/cfgs/cifar10/cotta.yaml``: Adam lr 1e-3, MT 0.999, RST 0.01, AP 0.92, 32 views).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from zoo.errors import ConfigError
from zoo.losses import soft_cross_entropy
from zoo.tta.base import mean_over_processes, register_tta
from zoo.tta.norm import use_batch_statistics
from zoo.tta.teacher import TeacherConfig, TeacherStudentAlgorithm, ema_update, stochastic_restore

__all__ = ["CoTTAConfig", "CoTTAAlgorithm"]


@dataclass
class CoTTAConfig(TeacherConfig):
    """``tta:`` section of ``cotta`` (official CIFAR-10 defaults)."""

    lr: float = 1e-3
    restore_prob: float = 0.01
    num_aug: int = 32
    aug_threshold: float = 0.92  # augment only when the anchor's mean confidence is below (official AP)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.aug_threshold <= 1:
            raise ConfigError(f"tta.aug_threshold must be in [0, 1], got {self.aug_threshold!r}")


@register_tta("cotta", config=CoTTAConfig)
class CoTTAAlgorithm(TeacherStudentAlgorithm):
    """CoTTA, per batch ``x``: all parameters trainable, BatchNorm on batch statistics; if the frozen source model's
    (the "anchor") mean max-probability is below ``aug_threshold`` the EMA teacher's prediction is averaged over
    ``num_aug`` augmented views, else it is the teacher's logits on ``x``; loss = soft cross-entropy of the student
    to that prediction, one Adam step; EMA teacher update; stochastic restore of ``weight`` / ``bias`` elements.
    The prediction scored is the teacher's. Under DDP the anchor's confidence is averaged over the whole batch
    (every process takes the same branch)."""

    config: CoTTAConfig

    def prepare_model(self, model):
        model.train()
        use_batch_statistics(model)
        model.requires_grad_(True)
        return model

    def setup(self, model):
        super().setup(model)
        self.anchor = copy.deepcopy(model)
        self.anchor.load_state_dict(self.source_state)  # the source model, also in a resumed run
        self.anchor.requires_grad_(False)
        self.anchor.eval()

    def param_groups(self, model):
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def adapt(self, model, x, ctx):
        cfg = self.config
        with torch.no_grad():
            anchor_conf = mean_over_processes(self.anchor(x).softmax(1).max(1)[0].mean(), ctx)
            pred = self.teacher(x)
            if anchor_conf < cfg.aug_threshold:
                pred = torch.stack([self.teacher(self.augment(x)) for _ in range(cfg.num_aug)]).mean(0)
        with torch.enable_grad():
            self.update(soft_cross_entropy(ctx.model(x), pred.softmax(1)), ctx)
        ema_update(self.teacher, model, cfg.ema)
        stochastic_restore(model, self.source_state, cfg.restore_prob, only_weight_bias=True)
        return pred
