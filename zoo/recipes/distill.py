"""Dataset distillation with label-space lightening (HeLlO) and its stored-soft-label / hard-label baselines.

The ``hello_distill`` recipe owns its run (``tools/train.py configs/hello/mnist.yaml``); every training inside it is
a nested run in its own sub-directory (finished ones are reused on ``--resume``)::

    teacher/        classify run on data.train_split; a snapshot per epoch (teacher/snapshots/epoch_<n>.pt) --
                    the final one labels stored soft labels, the trajectory gives the projector's weak teachers
    encoder/        the projector's encoder pre-training (encoder.kind: rotation = self-supervised 4-way rotation
                    prediction on the training images, labels unused; or a checkpoint / a local CLIP)
    projector/      the HeLlO projector: frozen encoder + head (class means / CLIP text embeddings) + "hello"
                    low-rank adapters trained on the teachers' soft labels + CE; projector.safetensors is what is stored
    ipc<k>/         images.safetensors (distilled, uint8), random.safetensors (random real images, for IOR),
                    soft_labels*.safetensors + views*.safetensors (stored labels, one per view per epoch),
                    <syn|rdm>_<hard|stored|projector>/seed<s>/ (student runs)
    real_hard/      students on the whole training split with hard labels (DD-Ranking's Acc(real, hard))
    results.csv, storage.json, metrics.json, hello_<dataset>.png

**Distilled images** (:mod:`zoo.distill.images`): RDED's initialisation (:func:`rded_select`), then
``images.steps`` Adam steps on the pixels that lower the gap between teacher and projector labels on augmented views
(:func:`optimise_images`).

**Students** (:class:`StudentRecipe` in :mod:`zoo.recipes.distill_stages`, one interface, ``labels``, see
:mod:`zoo.distill.labels`): ``hard``; ``stored`` -- before training the teacher labels every augmented view of every
epoch (``students.epochs x N x K`` logits in ``students.label_dtype``, :func:`generate_soft_labels`) and the student
replays them; ``projector`` -- the stored projector labels each view on the fly. Soft-label loss:
``T^2 KL(soft || student) + ce_weight * CE``. All three see the same views (:mod:`zoo.distill.views`); students
differ only in their initialisation seed.

**Report**: per IPC and label kind, held-out top-1 (mean / std over seeds), label bytes (the sizes of the files
written, :func:`zoo.metrics.distill.storage_report`), and DD-Ranking's HLR / IOR / LRS; figures from
:mod:`zoo.distill.report`.
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from zoo.distill.data import IndexedImages, dataset_targets, image_dataset, stack_images
from zoo.distill.images import image_objective, optimise_images, rded_select, stitch_patches
from zoo.distill.labels import LABEL_DTYPES, LABEL_KINDS, generate_soft_labels
from zoo.distill.report import plot_results, save_image_grid
from zoo.distill.storage import load_image_set, save_image_set, save_tensors
from zoo.distill.views import apply_views, view_params
from zoo.engine.data import build_loader
from zoo.engine.optim import OptimConfig, ScheduleConfig
from zoo.engine.trainer import TrainerConfig
from zoo.errors import ConfigError
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.recipes.classify import ClassifyConfig, ClassifyDataConfig, EvalConfig, LossConfig
from zoo.recipes.distill_stages import ProjectorRecipe, RotationPretrainRecipe, StudentRecipe, TeacherRecipe
from zoo.registry import create_model

__all__ = ["view_params", "apply_views", "rded_select", "stitch_patches", "optimise_images", "image_objective",
           "generate_soft_labels", "save_image_set", "load_image_set", "save_image_grid", "plot_results",
           "IndexedImages", "StudentRecipe", "ProjectorRecipe", "RotationPretrainRecipe", "TeacherRecipe",
           "HelloDistillConfig", "HelloDistillRecipe", "LABEL_KINDS"]

_logger = logging.getLogger("zoo")


# ================================================================================================ config
def _check_scale(name: str, scale: Sequence[float]) -> None:
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"{name} must be [min, max] with 0 < min <= max <= 1, got {list(scale)}")


@dataclass
class DistillDataConfig:
    """Config section ``data``: the real data (``train_split`` = teacher / projector / candidate pool,
    ``eval_split`` = held out, only for the reported accuracies)."""

    name: str = "mnist"  # a registered dataset, or imagefolder (root/<split>/<class>/<image>)
    root: str | None = None
    train_split: str = "test[:8000]"
    eval_split: str = "test[8000:]"
    image_size: int = 224  # imagefolder only
    batch_size: int = 64
    eval_batch_size: int = 500
    num_workers: int = 0
    classes: list[str] = field(default_factory=list)  # class names (CLIP text head); default: the dataset's


@dataclass
class TeacherSection:
    """Config section ``teacher``."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": "convnet_small"})
    epochs: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.0
    checkpoint: str | None = None  # a state-dict / last.pt file instead of training (then no trajectory)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"teacher.epochs must be >= 1, got {self.epochs!r}")


@dataclass
class EncoderSection:
    """Config section ``encoder``: the projector's pre-trained encoder (never trained on the teacher's labels)."""

    kind: str = "rotation"  # rotation (self-supervised on data.train_split images) | checkpoint | clip
    model: dict[str, Any] = field(default_factory=lambda: {"name": "convnet_small"})
    num_features: int | None = None  # default: the model's num_features
    epochs: int = 3  # rotation pre-training
    lr: float = 3e-3
    checkpoint: str | None = None  # kind=checkpoint: a state dict / last.pt of `model`
    clip_path: str | None = None  # kind=clip: a transformers directory or an open_clip checkpoint
    clip_backend: str | None = None  # transformers | open_clip (default from the path)
    clip_model_name: str | None = None  # open_clip architecture, e.g. RN50
    clip_template: str = "a photo of a {}."

    def __post_init__(self) -> None:
        if self.kind not in ("rotation", "checkpoint", "clip"):
            raise ConfigError(f"encoder.kind must be rotation, checkpoint or clip, got {self.kind!r}")
        if self.kind == "checkpoint" and not self.checkpoint:
            raise ConfigError("encoder.kind=checkpoint needs encoder.checkpoint (a weights file)")
        if self.kind == "clip" and not self.clip_path:
            raise ConfigError("encoder.kind=clip needs encoder.clip_path (a local CLIP checkpoint)")


@dataclass
class ProjectorSection:
    """Config section ``projector`` (HeLlO; paper IN-1K: ranks 8 / 128, MSE + CE, 9 trajectory teachers)."""

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
        if self.encoder_rank < 0 or self.head_rank < 0 or self.encoder_rank + self.head_rank == 0:
            raise ConfigError("projector.encoder_rank / projector.head_rank must be >= 0, not both 0")
        if self.storage_dtype not in LABEL_DTYPES:
            raise ConfigError(f"projector.storage_dtype must be one of {sorted(LABEL_DTYPES)}, "
                              f"got {self.storage_dtype!r}")


@dataclass
class ImagesSection:
    """Config section ``images``: the distilled sets (RDED init, then the label-gap objective)."""

    ipcs: list[int] = field(default_factory=lambda: [1, 10, 50])
    mipc: int = 300  # real candidates per class (RDED: 300)
    num_crop: int = 5  # RDED: 5
    factor: int = 1  # RDED: 2 on ImageNet, 1 on CIFAR
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    objective: str = "label_gap"  # label_gap | none (RDED only)
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
        if self.objective not in ("label_gap", "none"):
            raise ConfigError(f"images.objective must be label_gap or none, got {self.objective!r}")
        _check_scale("images.crop_scale", self.crop_scale)


@dataclass
class StudentsSection:
    """Config section ``students``."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": "convnet_small"})
    labels: list[str] = field(default_factory=lambda: list(LABEL_KINDS))
    epochs: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    temperature: float = 4.0
    ce_weight: float = 0.0  # projector labels: the paper's beta * CE on the true class
    stored_ce_weight: float = 0.0  # stored labels (SRe2L / RDED train on the soft labels only)
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    label_dtype: str = "float16"  # stored soft labels
    seeds: list[int] = field(default_factory=lambda: [0])
    real_epochs: int = 3  # students on the whole training split (hard labels); 0 = skip (no HLR)

    def __post_init__(self) -> None:
        bad = [k for k in self.labels if k not in LABEL_KINDS]
        if bad or not self.labels:
            raise ConfigError(f"students.labels: unknown label kind(s) {bad}; use some of {list(LABEL_KINDS)}")
        if self.epochs < 1 or self.batch_size < 1 or not self.seeds:
            raise ConfigError("students.epochs and students.batch_size must be >= 1, students.seeds non-empty")
        if self.label_dtype not in LABEL_DTYPES:
            raise ConfigError(f"students.label_dtype must be one of {sorted(LABEL_DTYPES)}, got {self.label_dtype!r}")
        if self.real_epochs < 0:
            raise ConfigError("students.real_epochs must be >= 0")
        _check_scale("students.crop_scale", self.crop_scale)


@dataclass
class HelloDistillConfig(RecipeConfig):
    """Config of the ``hello_distill`` recipe (the trainer / optim / schedule sections are unused: each nested
    training has its own settings in its section)."""

    recipe: str = "hello_distill"
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    encoder: EncoderSection = field(default_factory=EncoderSection)
    projector: ProjectorSection = field(default_factory=ProjectorSection)
    images: ImagesSection = field(default_factory=ImagesSection)
    students: StudentsSection = field(default_factory=StudentsSection)


# ================================================================================================ the recipe
def _classify_cfg(model: dict, data: "DistillDataConfig", *, epochs: int, lr: float, batch_size: int, seed: int,
                  weight_decay: float = 0.0, save_every: int | None = None, warmup_epochs: float = 0.0) -> ClassifyConfig:
    """A ``classify`` config for the nested runs (no tensorboard, no bars, evaluation at the end only)."""
    d = ClassifyDataConfig(name=data.name, root=data.root, batch_size=batch_size, eval_batch_size=data.eval_batch_size,
                           num_workers=data.num_workers, train_split=data.train_split, eval_split=data.eval_split)
    trainer = TrainerConfig(epochs=epochs, eval_every=epochs, save_every=save_every or epochs, log_every=50,
                            tensorboard=False, progress=False)
    return ClassifyConfig(recipe="classify", seed=seed, model=dict(model), data=d, loss=LossConfig(),
                          eval=EvalConfig(topk=[1]), trainer=trainer,
                          optim=OptimConfig(name="adamw", lr=lr, weight_decay=weight_decay),
                          schedule=ScheduleConfig(name="cosine", warmup_epochs=warmup_epochs))


def _read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, a plain ``torch.save`` state dict or a run's ``last.pt`` / ``best.pt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hello_distill: no weights file {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state) if isinstance(state, dict) else state


def _load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    model.load_state_dict(_read_state(path))
    return model


def _mean_std(values: list[float]) -> tuple[float, float]:
    return (statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0)


@register_recipe("hello_distill")
class HelloDistillRecipe(Recipe):
    """HeLlO dataset distillation end to end (teacher, encoder, projector, distilled sets, students, report); see
    the module docstring. Owns its run."""

    Config = HelloDistillConfig
    main_metric = None

    def __init__(self, cfg: HelloDistillConfig):
        super().__init__(cfg)
        self._pool = self._held_out = None
        #: where selection, image optimisation and relabelling run (the nested trainings pick their own)
        self.device = torch.device("cuda" if torch.cuda.is_available() and not cfg.trainer.cpu else "cpu")

    # ------------------------------------------------------------------ data
    @property
    def pool(self) -> Dataset:
        if self._pool is None:
            d = self.cfg.data
            self._pool = image_dataset(d.name, d.train_split, root=d.root, image_size=d.image_size)
        return self._pool

    @property
    def class_names(self) -> list[str]:
        return list(self.cfg.data.classes) or list(getattr(self.pool, "classes", [])) or \
            [str(i) for i in range(int(dataset_targets(self.pool).max()) + 1)]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _nested(self, model: dict, *, epochs: int, lr: float, batch_size: int | None = None, seed: int | None = None,
                weight_decay: float = 0.0, save_every: int | None = None) -> ClassifyConfig:
        d = self.cfg.data
        return _classify_cfg(model, d, epochs=epochs, lr=lr, batch_size=batch_size or d.batch_size,
                             seed=self.cfg.seed if seed is None else seed, weight_decay=weight_decay,
                             save_every=save_every)

    # ------------------------------------------------------------------ stages
    def teacher_models(self, ctx: Any) -> tuple[nn.Module, list[nn.Module], dict]:
        """(final teacher, the projector's teachers, the teacher run's summary)."""
        t = self.cfg.teacher
        model_kwargs = dict(t.model)
        name = model_kwargs.pop("name")
        model_kwargs.setdefault("num_classes", self.num_classes)

        def build() -> nn.Module:
            return create_model(name, **model_kwargs).eval()

        if t.checkpoint:
            teacher = _load_weights(build(), t.checkpoint)
            return teacher, [teacher], {}
        snap_dir = ctx.subdir("teacher") / "snapshots"

        def snapshot(trainer, epoch, metrics):
            if trainer.is_main:
                from zoo.engine.checkpoint import atomic_save

                snap_dir.mkdir(parents=True, exist_ok=True)
                state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
                atomic_save({"model": {k: v.detach().cpu() for k, v in state.items()}}, snap_dir / f"epoch_{epoch}.pt")

        cfg = self._nested({"name": name, **model_kwargs}, epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay,
                           save_every=1)
        cfg.trainer.eval_every = 1
        summary = ctx.train(TeacherRecipe(cfg, self.cfg.data), "teacher", callbacks=[snapshot])
        final = _load_weights(build(), ctx.output_dir / "teacher" / "last.pt")
        if self.cfg.projector.teachers == "last":
            return final, [final], summary
        snaps = sorted(snap_dir.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        return final, [_load_weights(build(), p) for p in snaps] or [final], summary

    def build_encoder(self, ctx: Any) -> tuple[nn.Module, int, Any]:
        """(encoder module ``(B, C, H, W) -> (B, D)``, D, CLIP handle or None) for the projector."""
        from zoo.adapters.hello import FeatureEncoder, load_clip

        e = self.cfg.encoder
        if e.kind == "clip":
            model, enc, dim, backend = load_clip(e.clip_path, e.clip_backend, e.clip_model_name)
            clip_enc = FeatureEncoder(enc, _clip_preprocess)
            return clip_enc, dim, (model, backend)
        kwargs = dict(e.model)
        name = kwargs.pop("name")
        if e.kind == "rotation":
            cfg = self._nested({"name": name, **kwargs}, epochs=e.epochs, lr=e.lr)
            ctx.train(RotationPretrainRecipe(cfg, self.cfg.data), "encoder")
            backbone = _load_weights(create_model(name, **{**kwargs, "num_classes": 4}),
                                     ctx.output_dir / "encoder" / "last.pt")
        else:
            backbone = create_model(name, **{**kwargs, "num_classes": 0})
            state = {k: v for k, v in _read_state(e.checkpoint).items() if not k.startswith("head.")}
            missing, _ = backbone.load_state_dict(state, strict=False)
            if missing:
                raise RuntimeError(f"encoder.checkpoint {e.checkpoint}: keys of {name} missing from the file: "
                                   f"{missing[:10]}")
        if hasattr(backbone, "reset_classifier"):
            backbone.reset_classifier(0)
        dim = e.num_features or int(getattr(backbone, "num_features"))
        return FeatureEncoder(backbone.eval()), dim, None

    def build_projector(self, encoder: nn.Module, dim: int, clip: Any) -> nn.Module:
        """The projector with its head initialised (class means over the training split, or CLIP text embeddings)
        and zero adapters added."""
        from zoo.adapters.hello import HelloProjector, add_projector_adapters, class_mean_features, clip_text_embeddings, init_head

        p = self.cfg.projector
        torch.manual_seed(self.cfg.seed)
        proj = HelloProjector(encoder, dim, self.num_classes, normalize=p.normalize, logit_scale=p.logit_scale,
                              head_init=p.head_init)
        if p.head_init == "text":
            if clip is None:
                raise ConfigError("projector.head_init=text needs encoder.kind=clip (class text embeddings)")
            model, backend = clip
            e = self.cfg.encoder
            vectors = clip_text_embeddings(model, backend, self.class_names, e.clip_template, e.clip_path,
                                           e.clip_model_name)
        else:
            loader = build_loader(self.pool, self.cfg.data.eval_batch_size, shuffle=False)
            vectors = class_mean_features(proj, ((x, y) for x, y in loader), self.num_classes)
        init_head(proj, vectors)
        add_projector_adapters(proj, p.encoder_rank, p.head_rank, p.alpha, p.encoder_targets)
        return proj

    def train_projector(self, ctx: Any, teachers: list[nn.Module]) -> tuple[nn.Module, Path, dict]:
        """Train (or reuse) the projector; returns (the projector *reloaded from its stored file*, the file, summary)."""
        from zoo.adapters.hello import load_projector, save_projector

        encoder, dim, clip = self.build_encoder(ctx)
        proj = self.build_projector(encoder, dim, clip)
        p = self.cfg.projector
        cfg = self._nested({"name": "hello_projector"}, epochs=p.epochs, lr=p.lr)
        recipe = ProjectorRecipe(cfg, self.cfg.data, proj, teachers, p, self.cfg.images.crop_scale)
        summary = ctx.train(recipe, "projector")
        recipe.load_checkpoint_state(proj, torch.load(ctx.output_dir / "projector" / "last.pt", map_location="cpu",
                                                      weights_only=True)["model"])
        path = ctx.output_dir / "projector" / "projector.safetensors"
        if not path.is_file():
            save_projector(proj, path, p.storage_dtype, {"encoder_rank": p.encoder_rank, "head_rank": p.head_rank})
        stored = copy.deepcopy(proj)
        load_projector(stored, path)  # students use exactly what is stored (rounded to storage_dtype)
        return stored.eval(), path, summary

    def image_sets(self, ctx: Any, ipc: int, teacher: nn.Module, projector: nn.Module) -> dict[str, Path]:
        """Write (or reuse) ``ipc<k>/images.safetensors`` (distilled) and ``ipc<k>/random.safetensors``."""
        im = self.cfg.images
        out = ctx.subdir(f"ipc{ipc}")
        files = {"syn": out / "images.safetensors"}
        targets = dataset_targets(self.pool)
        g = torch.Generator().manual_seed(self.cfg.seed * 7 + ipc)
        if not files["syn"].is_file():
            imgs, labs = [], []
            for c in range(self.num_classes):
                idx = torch.nonzero(targets == c).flatten()
                idx = idx[torch.randperm(len(idx), generator=g)[:im.mipc]]
                picked = rded_select(teacher.to(self.device), stack_images(self.pool, idx).to(self.device), c, ipc,
                                     num_crop=im.num_crop, factor=im.factor, scale=im.crop_scale, seed=self.cfg.seed)
                imgs.append(picked.cpu())
                labs.append(torch.full((ipc,), c, dtype=torch.long))
            images, labels = torch.cat(imgs), torch.cat(labs)
            history: list[float] = []
            if im.objective == "label_gap" and im.steps:
                dev = self.device
                images, history = optimise_images(images.to(dev), labels.to(dev), teacher.to(dev), projector.to(dev),
                                                  steps=im.steps, lr=im.lr, temperature=im.temperature,
                                                  ce_weight=im.ce_weight, scale=im.crop_scale, seed=self.cfg.seed)
            (out / "image_objective.json").write_text(json.dumps({"objective": im.objective, "history": history}))
            save_image_set(files["syn"], images, labels)
        if im.random_baseline:
            files["rdm"] = out / "random.safetensors"
            if not files["rdm"].is_file():
                g = torch.Generator().manual_seed(self.cfg.seed * 7919 + ipc)
                idx = torch.cat([torch.nonzero(targets == c).flatten()[
                    torch.randperm(int((targets == c).sum()), generator=g)[:ipc]] for c in range(self.num_classes)])
                save_image_set(files["rdm"], stack_images(self.pool, idx), targets[idx])
        return files

    def stored_labels(self, ctx: Any, ipc: int, kind: str, images: torch.Tensor, teacher: nn.Module) -> dict[str, Path]:
        """Write (or reuse) the stored soft labels and their views for one image set (``kind``: syn | rdm)."""
        s = self.cfg.students
        out = ctx.subdir(f"ipc{ipc}")
        suffix = "" if kind == "syn" else "_rdm"
        files = {"labels": out / f"soft_labels{suffix}.safetensors", "views": out / f"views{suffix}.safetensors"}
        if not (files["labels"].is_file() and files["views"].is_file()):
            labels, views = generate_soft_labels(teacher.to(self.device), images.to(self.device), s.epochs,
                                                 self.cfg.seed, scale=s.crop_scale,
                                                 dtype=s.label_dtype, augment=s.augment)
            save_tensors(files["labels"], {"soft_labels": labels})
            save_tensors(files["views"], {"views": views})
        return files

    def student(self, images: torch.Tensor, targets: torch.Tensor, labels: str, seed: int, *, epochs: int | None = None,
                soft: dict[str, Path] | None = None, projector: nn.Module | None = None) -> StudentRecipe:
        from safetensors.torch import load_file

        s = self.cfg.students
        cfg = self._nested(s.model | {"num_classes": self.num_classes}, epochs=epochs or s.epochs, lr=s.lr,
                           batch_size=s.batch_size, seed=seed, weight_decay=s.weight_decay,
                           save_every=max(1, (epochs or s.epochs) // 4))
        kw: dict[str, Any] = {}
        if labels == "stored":
            kw["soft_labels"] = load_file(str(soft["labels"]))["soft_labels"]
            kw["views"] = load_file(str(soft["views"]))["views"]
        return StudentRecipe(cfg, self.cfg.data, images, targets, labels, projector=projector, view_seed=self.cfg.seed,
                             augment=s.augment, scale=s.crop_scale, temperature=s.temperature,
                             ce_weight=s.stored_ce_weight if labels == "stored" else s.ce_weight,
                             classes=self.class_names, **kw)

    # ------------------------------------------------------------------ the run
    def run(self, ctx: Any) -> dict[str, Any]:
        from zoo.metrics.distill import storage_report

        c, s = self.cfg, self.cfg.students
        torch.manual_seed(c.seed)
        teacher, teachers, teacher_summary = self.teacher_models(ctx)
        projector, projector_file, projector_summary = self.train_projector(ctx, teachers)
        rows: list[dict[str, Any]] = []
        storage: dict[str, Any] = {"projector": storage_report({"projector": projector_file})["projector"]}
        real_top1 = None
        if s.real_epochs:
            pool_loader = build_loader(self.pool, c.data.eval_batch_size, shuffle=False)
            xs, ys = zip(*pool_loader)
            real_x, real_y = torch.cat(xs).float(), torch.cat(ys).long()
            accs = []
            for seed in s.seeds:
                summ = ctx.train(self.student(real_x, real_y, "hard", seed, epochs=s.real_epochs), f"real_hard/seed{seed}")
                accs.append(float(summ["final"]["top1"]))
            real_top1 = _mean_std(accs)
            del real_x, real_y
        for ipc in c.images.ipcs:
            files = self.image_sets(ctx, ipc, teacher, projector)
            storage[f"ipc{ipc}/images"] = storage_report({"x": files["syn"]})["x"]
            for kind, path in files.items():
                images, targets = load_image_set(path)
                soft = self.stored_labels(ctx, ipc, kind, images, teacher) if "stored" in s.labels else None
                if soft is not None:
                    rep = storage_report({"labels": soft["labels"], "views": soft["views"]})
                    storage[f"ipc{ipc}/{kind}/stored_labels"], storage[f"ipc{ipc}/{kind}/stored_views"] = rep["labels"], rep["views"]
                for labels in s.labels:
                    accs = []
                    for seed in s.seeds:
                        recipe = self.student(images, targets, labels, seed, soft=soft,
                                              projector=projector if labels == "projector" else None)
                        summ = ctx.train(recipe, f"ipc{ipc}/{kind}_{labels}/seed{seed}")
                        accs.append(float(summ["final"]["top1"]))
                    mean, std = _mean_std(accs)
                    label_bytes = {"hard": 0, "stored": storage.get(f"ipc{ipc}/{kind}/stored_labels", 0),
                                   "projector": storage["projector"]}[labels]
                    rows.append({"ipc": ipc, "images": kind, "labels": labels, "top1": mean, "top1_std": std,
                                 "seeds": len(accs), "label_bytes": label_bytes, "per_seed": accs})
        metrics = self.report(ctx, rows, storage, real_top1, teacher_summary, projector_summary)
        return metrics

    def report(self, ctx: Any, rows: list[dict], storage: dict, real_top1: tuple[float, float] | None,
               teacher_summary: dict, projector_summary: dict) -> dict[str, Any]:
        """Metrics (``ipc<k>/<labels>/top1`` ...), ``results.csv``, ``storage.json`` and the figure."""
        from zoo.metrics.distill import hard_label_recovery, improvement_over_random, label_robust_score

        def find(ipc, kind, labels):
            return next((r for r in rows if r["ipc"] == ipc and r["images"] == kind and r["labels"] == labels), None)

        metrics: dict[str, Any] = {"storage_bytes": storage}
        if teacher_summary.get("final"):
            metrics["teacher_top1"] = float(teacher_summary["final"]["top1"])
        if projector_summary.get("final"):
            metrics["projector_top1"] = float(projector_summary["final"]["top1"])
        if real_top1 is not None:
            metrics["real_hard_top1"] = real_top1[0]
        for r in rows:
            if r["images"] != "syn":
                metrics[f"ipc{r['ipc']}/random_{r['labels']}/top1"] = r["top1"]
                continue
            key = f"ipc{r['ipc']}/{r['labels']}"
            metrics[f"{key}/top1"] = r["top1"]
            metrics[f"{key}/top1_std"] = r["top1_std"]
            metrics[f"{key}/label_bytes"] = r["label_bytes"]
            hard = find(r["ipc"], "syn", "hard")
            if real_top1 is not None and hard is not None:
                r["hlr"] = hard_label_recovery(real_top1[0], hard["top1"])
                metrics[f"{key}/hlr"] = r["hlr"]
            rdm = find(r["ipc"], "rdm", r["labels"])
            if rdm is not None:
                r["ior"] = improvement_over_random(r["top1"], rdm["top1"])
                metrics[f"{key}/ior"] = r["ior"]
            if "hlr" in r and "ior" in r:
                r["lrs"] = label_robust_score(r["hlr"], r["ior"])
                metrics[f"{key}/lrs"] = r["lrs"]
            stored = find(r["ipc"], "syn", "stored")
            if stored is not None and stored["label_bytes"]:
                r["label_bytes_vs_stored"] = r["label_bytes"] / stored["label_bytes"]
                metrics[f"{key}/label_bytes_vs_stored"] = r["label_bytes_vs_stored"]
        out = Path(ctx.output_dir)
        cols = ["ipc", "images", "labels", "top1", "top1_std", "seeds", "label_bytes", "label_bytes_vs_stored",
                "hlr", "ior", "lrs"]
        with open(out / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items() if k in cols})
        (out / "storage.json").write_text(json.dumps(storage, indent=2))
        metrics["results"] = rows
        try:
            plot_results(rows, out / f"hello_{self.cfg.data.name}.png", real_top1)
            for ipc in self.cfg.images.ipcs:
                sets = {f"IPC {ipc} distilled": load_image_set(out / f"ipc{ipc}" / "images.safetensors")}
                if (out / f"ipc{ipc}" / "random.safetensors").is_file():
                    sets[f"IPC {ipc} random real"] = load_image_set(out / f"ipc{ipc}" / "random.safetensors")
                save_image_grid(sets, out / f"ipc{ipc}" / "images.png", per_class=min(ipc, 10))
        except ImportError:
            _logger.warning("matplotlib is not installed: no figure")
        return metrics


def _clip_preprocess(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIP's input: RGB at 224 px normalised with CLIP's mean / std, from images in [0, 1]."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=x.device).view(1, 3, 1, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != 224 or x.shape[-2] != 224:
        x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
    return model((x - mean) / std)
