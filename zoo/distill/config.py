"""The settings of a HeLlO dataset distillation, one dataclass per config section of the ``hello_distill`` recipe
(peft's rule: a method's config stands beside its implementation, :mod:`zoo.distill.pipeline`).

``data`` (:class:`DistillDataConfig`: the real data and its three splits), ``teacher``, ``encoder`` (the
projector's pre-trained encoder), ``projector`` (the ``hello_projector`` adaptation method and its training),
``images`` (the distilled image sets) and ``students``. Each checks its values when built and names the key to fix.

Reference: HeLlO (Yu et al., "Heavy Labels Out! Dataset Distillation with Label Space Lightening", ICCV 2025,
arXiv 2408.08201); RDED (Sun et al., CVPR 2024) for the image-set settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from zoo.distill.labels import LABEL_DTYPES, LABEL_KINDS
from zoo.errors import ConfigError

__all__ = ["DistillDataConfig", "TeacherSection", "EncoderSection", "ProjectorSection", "ImagesSection",
           "StudentsSection", "IMAGE_OBJECTIVES", "RENAMED_KEYS"]

#: keys of earlier versions of these sections, and what replaced them (setting one is an error that says so)
RENAMED_KEYS = {
    "teacher.checkpoint": "renamed: a trained teacher is teacher.model.checkpoint_path",
    "encoder.checkpoint": "renamed: the encoder's weights are encoder.model.checkpoint_path",
    "images.objective": "replaced by images.objectives, a list of image sets every label kind trains on "
                        "(rded = RDED selection only, label_gap = RDED + pixel steps; 'none' is now 'rded')",
    "students.ce_weight": "replaced by students.ce_weights: candidates chosen on data.val_split per label kind",
    "students.stored_ce_weight": "replaced by students.ce_weights: candidates chosen on data.val_split per label "
                                 "kind (stored labels included)",
}


def _check_scale(name: str, scale: Sequence[float]) -> None:
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"{name} must be [min, max] with 0 < min <= max <= 1, got {list(scale)}")


@dataclass
class DistillDataConfig:
    """Config section ``data``: the real data (``train_split`` = teacher / projector / candidate pool,
    ``val_split`` = every choice and every evaluation inside a nested run, ``eval_split`` = held out, only for the
    reported accuracies of the chosen students)."""

    name: str = "mnist"  # a registered dataset, or imagefolder (root/<split>/<class>/<image>)
    root: str | None = None
    train_split: str = "test[:7000]"
    val_split: str = "test[7000:8000]"
    eval_split: str = "test[8000:]"
    image_size: int = 224  # imagefolder only
    batch_size: int = 64
    eval_batch_size: int = 500
    num_workers: int = 0
    classes: list[str] = field(default_factory=list)  # class names (CLIP text head); default: the dataset's


@dataclass
class TeacherSection:
    """Config section ``teacher`` (``model.checkpoint_path``: a trained teacher instead of training one; then no
    trajectory)."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": "convnet_small"})
    epochs: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"teacher.epochs must be >= 1, got {self.epochs!r}")


@dataclass
class EncoderSection:
    """Config section ``encoder``: the projector's pre-trained encoder (never trained on the teacher's labels)."""

    kind: str = "rotation"  # rotation (self-supervised on data.train_split images) | checkpoint | clip
    model: dict[str, Any] = field(default_factory=lambda: {"name": "convnet_small"})  # + checkpoint_path (kind=checkpoint)
    num_features: int | None = None  # default: the model's num_features
    epochs: int = 3  # rotation pre-training
    lr: float = 3e-3
    clip_path: str | None = None  # kind=clip: a transformers directory or an open_clip checkpoint
    clip_backend: str | None = None  # transformers | open_clip (default from the path)
    clip_model_name: str | None = None  # open_clip architecture, e.g. RN50
    clip_template: str = "a photo of a {}."
    # a public model anyone can download (e.g. "openai/clip RN50"): its bytes are reported but not counted in the
    # label-side bytes; None: the encoder ships with the labels (encoder.safetensors, fp16), as ours must
    public: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("rotation", "checkpoint", "clip"):
            raise ConfigError(f"encoder.kind must be rotation, checkpoint or clip, got {self.kind!r}")
        has_weights = bool(self.model.get("checkpoint_path"))
        if (self.kind == "checkpoint") != has_weights:
            raise ConfigError("encoder.kind=checkpoint needs encoder.model.checkpoint_path (a weights file or run "
                              "directory of encoder.model), and only that kind reads it")
        if self.kind == "clip" and not self.clip_path:
            raise ConfigError("encoder.kind=clip needs encoder.clip_path (a local CLIP checkpoint)")


@dataclass
class ProjectorSection:
    """Config section ``projector`` (HeLlO; paper IN-1K: ranks 8 / 128, MSE + CE, 9 trajectory teachers). The
    adapter keys (``encoder_rank``, ``head_rank``, ``encoder_targets``, ``alpha``, ``storage_dtype``) configure the
    ``hello_projector`` adaptation method (:meth:`adapter`)."""

    encoder_rank: int = 1
    head_rank: int = 4
    encoder_targets: list[str] | None = None  # module names inside the encoder (default: every conv / linear)
    alpha: float | None = None
    head_init: str = "class_means"  # class_means | text (CLIP)
    normalize: bool = True
    logit_scale: float = 10.0
    teachers: str = "trajectory"  # trajectory (every epoch snapshot of the teacher) | last
    loss: str = "kl"  # kl | mse
    temperature: float = 1.0
    ce_weight: float = 0.5
    augment: bool = True
    epochs: int = 3
    lr: float = 3e-3
    storage_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.head_init not in ("class_means", "text"):
            raise ConfigError(f"projector.head_init must be class_means or text, got {self.head_init!r}")
        if self.teachers not in ("trajectory", "last"):
            raise ConfigError(f"projector.teachers must be trajectory or last, got {self.teachers!r}")
        if self.loss not in ("kl", "mse"):
            raise ConfigError(f"projector.loss must be kl or mse, got {self.loss!r}")
        try:
            self.adapter()
        except ConfigError as exc:
            raise ConfigError(f"projector: {exc}") from None

    def adapter(self) -> Any:
        """The ``hello_projector`` adaptation method these keys describe."""
        from zoo.adapters.base import build_adapter

        return build_adapter({"name": "hello_projector", "encoder_rank": self.encoder_rank,
                              "head_rank": self.head_rank, "alpha": self.alpha,
                              "target_modules": self.encoder_targets, "storage_dtype": self.storage_dtype},
                             where="projector")


#: the distilled image sets: RDED's selection alone, or RDED + our label-gap pixel steps
IMAGE_OBJECTIVES = ("rded", "label_gap")


@dataclass
class ImagesSection:
    """Config section ``images``: the distilled sets, one per entry of ``objectives`` (``rded``: RDED's selection
    and stitching; ``label_gap``: then ``steps`` Adam steps on the pixels against the teacher-projector gap). Every
    label kind trains on each of them, so label kinds compare on the same images."""

    ipcs: list[int] = field(default_factory=lambda: [1, 10, 50])
    mipc: int = 300  # real candidates per class (RDED: 300)
    num_crop: int = 5  # RDED: 5
    factor: int = 1  # RDED: 2 on ImageNet, 1 on CIFAR
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    objectives: list[str] = field(default_factory=lambda: ["rded", "label_gap"])
    steps: int = 30
    lr: float = 0.01
    temperature: float = 1.0
    ce_weight: float = 0.1
    random_baseline: bool = True  # also random real images of the same IPC (DD-Ranking's IOR)

    def __post_init__(self) -> None:
        if not self.ipcs or any(not isinstance(k, int) or k < 1 for k in self.ipcs):
            raise ConfigError(f"images.ipcs must be a list of integers >= 1, got {self.ipcs!r}")
        if self.factor < 1 or self.num_crop < 1 or self.mipc < 1 or self.steps < 0:
            raise ConfigError("images.factor, images.num_crop, images.mipc must be >= 1 and images.steps >= 0")
        bad = [o for o in self.objectives if o not in IMAGE_OBJECTIVES]
        if bad or not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(f"images.objectives must list some of {list(IMAGE_OBJECTIVES)} once each, "
                              f"got {self.objectives!r}")
        _check_scale("images.crop_scale", self.crop_scale)


@dataclass
class StudentsSection:
    """Config section ``students``."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": "convnet_small"})
    labels: list[str] = field(default_factory=lambda: list(LABEL_KINDS))  # []: prepare only (a study's first cell)
    epochs: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    temperature: float = 4.0
    # soft-label kinds: T^2 KL + w * CE on the true class, w chosen among these on data.val_split per IPC, image set
    # and label kind (the paper's beta for projector labels; SRe2L / RDED use 0 for stored labels)
    ce_weights: list[float] = field(default_factory=lambda: [0.0, 0.5])
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    label_dtype: str = "float16"  # stored soft labels
    seeds: list[int] | None = None  # student seeds (default: [seed])
    real_epochs: int = 3  # students on the whole training split (hard labels); 0 = skip (no HLR)

    def __post_init__(self) -> None:
        bad = [k for k in self.labels if k not in LABEL_KINDS]
        if bad:
            raise ConfigError(f"students.labels: unknown label kind(s) {bad}; use some of {list(LABEL_KINDS)}")
        if self.epochs < 1 or self.batch_size < 1 or (self.seeds is not None and not self.seeds):
            raise ConfigError("students.epochs and students.batch_size must be >= 1, students.seeds non-empty")
        if not self.ce_weights or any(w < 0 for w in self.ce_weights):
            raise ConfigError(f"students.ce_weights must list at least one weight >= 0, got {self.ce_weights!r}")
        if self.label_dtype not in LABEL_DTYPES:
            raise ConfigError(f"students.label_dtype must be one of {sorted(LABEL_DTYPES)}, got {self.label_dtype!r}")
        if self.real_epochs < 0:
            raise ConfigError("students.real_epochs must be >= 0")
        _check_scale("students.crop_scale", self.crop_scale)
