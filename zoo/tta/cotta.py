"""``cotta``: continual test-time adaptation with an EMA teacher, augmentation-averaged pseudo-labels and stochastic
restore.

Reference: Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022 (qinenergy/cotta ``cifar/cotta.py``
``forward_and_adapt``, ``collect_params``, ``configure_model``; ``cifar/cfgs/cifar10/cotta.yaml``: Adam lr 1e-3,
MT 0.999, RST 0.01, AP 0.92, 32 views).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.losses import soft_cross_entropy
from zoo.tta.base import mean_over_processes, register_tta
from zoo.tta.norm import use_batch_statistics
from zoo.tta.teacher import TeacherConfig, TeacherStudentAlgorithm, ema_update, stochastic_restore

__all__ = ["CoTTAConfig", "CoTTAAlgorithm", "SCORES", "weight_bias_parameters"]

#: which of CoTTA's two predictions a run scores: the official output (``augmented``: the augmentation average
#: when the gate fires, else the teacher's logits) or the teacher's plain logits on the batch (``teacher``)
SCORES = ("augmented", "teacher")


def weight_bias_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every module's own ``weight`` / ``bias`` (official ``collect_params``: a ViT's
    ``pos_embed`` / ``cls_token`` are not among them, nor trained, nor restored)."""
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in ("weight", "bias")]


@dataclass
class CoTTAConfig(TeacherConfig):
    """``tta:`` section of ``cotta`` (official CIFAR-10 defaults)."""

    lr: float = 1e-3
    restore_prob: float = 0.01
    num_aug: int = 32
    aug_threshold: float = 0.92  # augment only when the anchor's mean confidence is below (official AP)
    score: str = "augmented"  # augmented (official output) | teacher (the teacher's plain logits); the other is logged

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.aug_threshold <= 1.5:
            raise ConfigError(f"tta.aug_threshold must be in [0, 1] (above 1: always augment), got "
                              f"{self.aug_threshold!r}")
        if self.score not in SCORES:
            raise ConfigError(f"tta.score must be one of {', '.join(SCORES)}, got {self.score!r}")


@register_tta("cotta", config=CoTTAConfig)
class CoTTAAlgorithm(TeacherStudentAlgorithm):
    """CoTTA, per batch ``x``: the modules' ``weight`` / ``bias`` trainable (official ``collect_params``), BatchNorm on
    batch statistics; if the frozen source model's (the "anchor") mean max-probability is below ``aug_threshold``
    the EMA teacher's prediction is averaged over ``num_aug`` augmented views, else it is the teacher's logits on
    ``x``; loss = soft cross-entropy of the student to that prediction, one Adam step; EMA teacher update;
    stochastic restore of the trainable elements.

    Both predictions are kept: ``score: augmented`` (official) returns the pseudo-label as the prediction scored and
    logs the teacher's plain logits (``extra_predictions["teacher"]``); ``score: teacher`` the reverse
    (``extra_predictions["augmented"]``). The adaptation is the same either way. ``update: false``: the no-update
    control (the anchor's gate, the source teacher, its augmentation average; nothing trained). Under DDP the
    anchor's confidence is averaged over the whole batch (every process takes the same branch). The official code
    always computes the 32 views and uses them only when the gate fires; here they are computed only then."""

    config: CoTTAConfig

    @property
    def extra_prediction_names(self) -> tuple[str, ...]:
        return ("teacher",) if self.config.score == "augmented" else ("augmented",)

    def prepare_model(self, model):
        model.train()
        use_batch_statistics(model)
        model.requires_grad_(False)
        if self.config.update:
            for _, p in weight_bias_parameters(model):
                p.requires_grad_(True)
        return model

    def setup(self, model):
        super().setup(model)
        self.anchor = copy.deepcopy(model)
        self.anchor.load_state_dict(self.source_state)  # the source model, also in a resumed run
        self.anchor.requires_grad_(False)
        self.anchor.eval()

    def param_groups(self, model):
        params = [p for _, p in weight_bias_parameters(model) if p.requires_grad]
        return [{"params": params}] if params else []

    def adapt(self, model, x, ctx):
        cfg = self.config
        with torch.no_grad():
            anchor_conf = mean_over_processes(self.anchor(x).softmax(1).max(1)[0].mean(), ctx)
            plain = self.teacher(x)
            augmented = bool(anchor_conf < cfg.aug_threshold)
            pseudo = torch.stack([self.teacher(self.augment(x)) for _ in range(cfg.num_aug)]).mean(0) if augmented \
                else plain
        self.logs = {"augmented": float(augmented), "anchor_confidence": float(anchor_conf)}
        if cfg.update:
            with torch.enable_grad():
                self.update(soft_cross_entropy(ctx.model(x), pseudo.softmax(1)), ctx)
            ema_update(self.teacher, model, cfg.ema)
            stochastic_restore(model, self.source_state, cfg.restore_prob, only_weight_bias=True)
        if cfg.score == "augmented":
            self.extra_predictions = {"teacher": plain}
            return pseudo
        self.extra_predictions = {"augmented": pseudo}
        return plain
