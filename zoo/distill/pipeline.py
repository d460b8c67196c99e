"""HeLlO dataset distillation end to end: the stages that the ``hello_distill`` recipe runs, in one run directory.

Every training inside is a nested run in its own sub-directory (finished ones are reused on ``--resume``)::

    teacher/        classify run on data.train_split; a snapshot per epoch (teacher/snapshots/epoch_<n>.pt) --
                    the final one labels stored soft labels, the trajectory gives the projector's weak teachers
    encoder/        the projector's encoder pre-training (encoder.kind: rotation = self-supervised 4-way rotation
                    prediction on the training images, labels unused; or encoder.model.checkpoint_path / a local CLIP)
    projector/      the HeLlO projector: frozen encoder + head (class means / CLIP text embeddings) + the
                    ``hello_projector`` adaptation method trained on the teachers' soft labels + CE;
                    projector.safetensors (adapters + head) and encoder.safetensors (the encoder's weights in fp16,
                    unless encoder.public names a model anyone can download) are what ships with the images
    ipc<k>/         images_<objective>.safetensors (distilled, uint8: rded = RDED selection, label_gap = RDED + our
                    pixel steps), random.safetensors (random real images, for IOR), <images>_soft_labels*.safetensors
                    + views (stored labels; _equal: cut to the projector side's bytes),
                    <images>_<labels>/[ce<w>/]seed<s>/ (student runs; reported/ = the chosen one on data.eval_split)
    real_hard/      students on the whole training split with hard labels (DD-Ranking's Acc(real, hard))
    results.csv, storage.json, metrics.json, per_example.npz, hello_<dataset>.png   (written by ``run`` / ``report``)

Splits: everything trains on ``data.train_split``; every choice (the students' cross-entropy weight among
``students.ce_weights``, per label kind) and every evaluation inside a nested run reads ``data.val_split``; only the
chosen students are evaluated on ``data.eval_split``, the reported numbers.

A study shares one seed's teacher, encoder, projector and image sets between cells: a cell with
``students.labels: []`` prepares them, the others copy them with ``prepare_from`` (its run directory; the settings
that made them must agree) and train one label kind on one image set each (configs/hello/study.yaml).

:class:`HelloPipeline` holds the stages; what one nested training *is* (a ``classify`` recipe on the distill data) is
the recipe's business, handed in as :class:`NestedRecipes`, so this package never imports a recipe.

Reference: HeLlO (Yu et al., "Heavy Labels Out! Dataset Distillation with Label Space Lightening", ICCV 2025,
arXiv 2408.08201); RDED (Sun et al., CVPR 2024) for the image sets; DD-Ranking (HLR / IOR) for the scores.
"""
from __future__ import annotations

import copy
import json
import logging
import statistics
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.distill.data import dataset_targets, image_dataset
from zoo.distill.images import optimise_images, random_image_set, rded_image_set
from zoo.distill.labels import SOFT_LABEL_KINDS, epochs_within_bytes, generate_soft_labels
from zoo.distill.report import plot_results, save_image_grid, write_results_csv
from zoo.distill.rotation import NUM_ROTATIONS
from zoo.distill.storage import (load_image_set, load_module_weights, load_tensors, save_image_set,
                                 save_module_weights, save_tensors)
from zoo.distill.students import StudentTeaching
from zoo.data.loader import build_loader
from zoo.errors import ConfigError
from zoo.hub import load_checkpoint, without_classifier
from zoo.registry import create_model

__all__ = ["HelloPipeline", "NestedRecipes", "ENCODER_FILE"]

_logger = logging.getLogger("zoo")

#: the file the projector's encoder is stored in (projector/), when it must ship with the labels
ENCODER_FILE = "encoder.safetensors"


class NestedRecipes(Protocol):
    """The nested trainings of a distillation, as recipes ``RunContext.train`` can run (built by the recipe from its
    config sections; each trains on ``data.train_split`` and evaluates on ``data.val_split`` unless told)."""

    def teacher(self, model: dict[str, Any]) -> Any:
        """The teacher's classification training of ``model`` (``create_model`` kwargs with ``name``)."""

    def rotation(self, model: dict[str, Any]) -> Any:
        """The encoder's rotation pre-training of ``model``."""

    def projector(self, projector: nn.Module, method: Any, teachers: list[nn.Module]) -> Any:
        """The training of ``method``'s adapters on ``projector`` against ``teachers``."""

    def student(self, model: dict[str, Any], images: torch.Tensor, targets: torch.Tensor, teaching: StudentTeaching,
                classes: Sequence[str], *, seed: int, epochs: int, eval_split: str | None) -> Any:
        """A student ``model`` on ``images (N, C, H, W)`` / ``targets (N,)`` taught by ``teaching``."""


def _mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, population std) of ``values``; std 0 for a single value."""
    return (statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0)


class HelloPipeline:
    """The stages of one HeLlO distillation (see the module docstring) on ``cfg`` (the sections of
    :mod:`zoo.distill.config` as attributes ``data teacher encoder projector images students``, plus ``seed`` and
    ``prepare_from``); ``nested`` builds the nested trainings; ``cpu`` keeps everything on the CPU."""

    def __init__(self, cfg: Any, nested: NestedRecipes, *, cpu: bool = False):
        self.cfg, self.nested, self.cpu = cfg, nested, cpu
        self._pool = None
        #: where selection, image optimisation and relabelling run (the nested trainings follow ``cpu`` too)
        self.device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")

    # ------------------------------------------------------------------ data
    @property
    def pool(self) -> Dataset:
        """The real images of ``data.train_split`` (candidates, class means, relabelling)."""
        if self._pool is None:
            d = self.cfg.data
            self._pool = image_dataset(d.name, d.train_split, root=d.root, image_size=d.image_size)
        return self._pool

    @property
    def class_names(self) -> list[str]:
        """``data.classes``, else the dataset's class names, else ``"0" .. "C-1"``."""
        return list(self.cfg.data.classes) or list(getattr(self.pool, "classes", [])) or \
            [str(i) for i in range(int(dataset_targets(self.pool).max()) + 1)]

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return len(self.class_names)

    @property
    def student_seeds(self) -> list[int]:
        """``students.seeds``, or ``[seed]``."""
        return list(self.cfg.students.seeds) if self.cfg.students.seeds is not None else [self.cfg.seed]

    # ------------------------------------------------------------------ stages
    def teacher_models(self, ctx: Any) -> tuple[nn.Module, list[nn.Module], dict]:
        """(final teacher, the projector's teachers, the teacher run's summary)."""
        t = self.cfg.teacher
        model_kwargs = dict(t.model)
        name = model_kwargs.pop("name")
        weights = model_kwargs.pop("checkpoint_path", None)
        model_kwargs.setdefault("num_classes", self.num_classes)

        def build(path: Any, what: str) -> nn.Module:
            model = create_model(name, **model_kwargs)
            load_checkpoint(model, path, what=what)
            return model.eval()

        if weights:
            teacher = build(weights, "teacher.model.checkpoint_path")
            return teacher, [teacher], {}
        snap_dir = ctx.subdir("teacher") / "snapshots"

        def snapshot(trainer, epoch, metrics):
            if trainer.is_main:
                from zoo.engine.checkpoint import atomic_save

                snap_dir.mkdir(parents=True, exist_ok=True)
                state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
                atomic_save({"model": {k: v.detach().cpu() for k, v in state.items()}}, snap_dir / f"epoch_{epoch}.pt")

        summary = ctx.train(self.nested.teacher({"name": name, **model_kwargs}), "teacher", callbacks=[snapshot])
        final = build(ctx.output_dir / "teacher" / "last.pt", "the teacher run's last.pt")
        if self.cfg.projector.teachers == "last":
            return final, [final], summary
        snaps = sorted(snap_dir.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        return final, [build(p, "a teacher snapshot") for p in snaps] or [final], summary

    def build_encoder(self, ctx: Any) -> tuple[nn.Module, int, Any]:
        """(encoder module ``(B, C, H, W) -> (B, D)``, D, CLIP handle or None) for the projector. An encoder that
        ships with the labels (not ``encoder.public``, not CLIP) is written to ``projector/encoder.safetensors`` in
        the projector's storage dtype and reloaded from it: the projector is trained, and labels the students'
        views, with exactly the weights that are stored."""
        from zoo.adapters.hello import FeatureEncoder, clip_preprocess, load_clip

        e = self.cfg.encoder
        if e.kind == "clip":
            model, enc, dim, backend = load_clip(e.clip_path, e.clip_backend, e.clip_model_name)
            return FeatureEncoder(enc, clip_preprocess), dim, (model, backend)
        kwargs = dict(e.model)
        name = kwargs.pop("name")
        weights = kwargs.pop("checkpoint_path", None)
        if e.kind == "rotation":
            ctx.train(self.nested.rotation({"name": name, **kwargs}), "encoder")
            backbone = create_model(name, **{**kwargs, "num_classes": NUM_ROTATIONS})
            load_checkpoint(backbone, ctx.output_dir / "encoder" / "last.pt", what="the encoder run's last.pt")
        else:
            backbone = create_model(name, **{**kwargs, "num_classes": 0})
            load_checkpoint(backbone, weights, filter_fn=without_classifier(backbone),
                            what="encoder.model.checkpoint_path")
        if hasattr(backbone, "reset_classifier"):
            backbone.reset_classifier(0)
        if not e.public:
            from zoo.adapters.hello import STORAGE_DTYPES

            path = ctx.subdir("projector") / ENCODER_FILE
            if not path.is_file():  # written once (a resumed run reuses it)
                save_module_weights(backbone, path, STORAGE_DTYPES[self.cfg.projector.storage_dtype])
            load_module_weights(backbone, path)
        dim = e.num_features or int(getattr(backbone, "num_features"))
        return FeatureEncoder(backbone.eval()), dim, None

    def build_projector(self, encoder: nn.Module, dim: int, clip: Any) -> tuple[nn.Module, Any]:
        """(the projector with its head initialised -- class means over the training split, or CLIP text
        embeddings -- and the ``hello_projector`` method applied (zero adapters), the method)."""
        from zoo.adapters.hello import HelloProjector, class_mean_features, clip_text_embeddings, init_head

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
        method = p.adapter()
        method.apply(proj)
        return proj, method

    def train_projector(self, ctx: Any, teachers: list[nn.Module]) -> tuple[nn.Module, Path, dict]:
        """Train (or reuse) the projector; returns (the projector *reloaded from its stored file*, the file,
        summary)."""
        encoder, dim, clip = self.build_encoder(ctx)
        proj, method = self.build_projector(encoder, dim, clip)
        summary = ctx.train(self.nested.projector(proj, method, teachers), "projector")
        run_dir = ctx.output_dir / "projector"
        from zoo.engine.checkpoint import read_checkpoint

        method.load_state_dict(proj, read_checkpoint(run_dir / "last.pt", what="the projector run's last.pt")["model"])
        path = run_dir / method.weights_file
        if not path.is_file():
            method.save(proj, run_dir)
        stored = copy.deepcopy(proj)
        method.load(stored, path)  # students use exactly what is stored (rounded to storage_dtype)
        return stored.eval(), path, summary

    def label_side_storage(self, ctx: Any, projector_file: Path) -> dict[str, Any]:
        """The bytes that must ship for projector labels to be regenerated: ``projector`` (adapters + head file),
        ``encoder`` (``encoder.safetensors``; for CLIP, the size of ``encoder.clip_path``), ``encoder_public`` (the
        name of a public encoder, whose bytes are then not counted) and ``projector_side`` (what counts)."""
        from zoo.metrics.distill import storage_report

        e = self.cfg.encoder
        out: dict[str, Any] = {"projector": storage_report({"p": projector_file})["p"]}
        if e.kind == "clip":
            clip = Path(e.clip_path)
            out["encoder"] = (sum(f.stat().st_size for f in clip.rglob("*") if f.is_file()) if clip.is_dir()
                              else clip.stat().st_size)
        else:
            out["encoder"] = storage_report({"e": ctx.output_dir / "projector" / ENCODER_FILE})["e"] \
                if not e.public else None
        public = e.public or (f"CLIP ({e.clip_model_name or Path(e.clip_path).name})" if e.kind == "clip" else None)
        out["encoder_public"] = public
        out["projector_side"] = out["projector"] + (0 if public else int(out["encoder"] or 0))
        return out

    # ------------------------------------------------------------------ image sets and stored labels
    def image_sets(self, ctx: Any, ipc: int, teacher: nn.Module, projector: nn.Module) -> dict[str, Path]:
        """Write (or reuse) ``ipc<k>/images_<objective>.safetensors`` for every ``images.objectives`` (the RDED set
        is selected once; ``label_gap`` optimises a copy of it) and ``ipc<k>/random.safetensors``."""
        im, seed = self.cfg.images, self.cfg.seed
        out = ctx.subdir(f"ipc{ipc}")
        files = {o: out / f"images_{o}.safetensors" for o in im.objectives}
        targets = dataset_targets(self.pool)
        if not all(f.is_file() for f in files.values()):
            images, labels = rded_image_set(self.pool, targets, teacher, self.num_classes, ipc, mipc=im.mipc,
                                            num_crop=im.num_crop, factor=im.factor, scale=im.crop_scale, seed=seed,
                                            device=self.device)
            for objective, path in files.items():
                if path.is_file():
                    continue
                history: list[float] = []
                result = images
                if objective == "label_gap" and im.steps:
                    dev = self.device
                    result, history = optimise_images(images.to(dev), labels.to(dev), teacher.to(dev),
                                                      projector.to(dev), steps=im.steps, lr=im.lr,
                                                      temperature=im.temperature, ce_weight=im.ce_weight,
                                                      scale=im.crop_scale, seed=seed)
                (out / f"image_objective_{objective}.json").write_text(
                    json.dumps({"objective": objective, "history": history}))
                save_image_set(path, result, labels)
        if im.random_baseline:
            files["random"] = out / "random.safetensors"
            if not files["random"].is_file():
                save_image_set(files["random"], *random_image_set(self.pool, targets, self.num_classes, ipc, seed=seed))
        return files

    def stored_labels(self, ctx: Any, ipc: int, kind: str, images: torch.Tensor, teacher: nn.Module,
                      budget_bytes: int | None = None) -> dict[str, Path]:
        """Write (or reuse) the stored soft labels (and views) of one image set (``kind``: an objective or
        ``random``): every epoch's views (``budget_bytes`` None), or as many epochs as fit in ``budget_bytes``
        (``stored_equal``: labels only, the views are regenerated from the seed; never more than the student's
        epochs)."""
        s = self.cfg.students
        out = ctx.subdir(f"ipc{ipc}")
        if budget_bytes is None:
            files = {"labels": out / f"{kind}_soft_labels.safetensors", "views": out / f"{kind}_views.safetensors"}
            epochs = s.epochs
        else:
            files = {"labels": out / f"{kind}_soft_labels_equal.safetensors"}
            epochs = min(s.epochs, epochs_within_bytes(budget_bytes, len(images), self.num_classes, s.label_dtype))
        if not all(f.is_file() for f in files.values()):
            labels, views = generate_soft_labels(teacher.to(self.device), images.to(self.device), epochs,
                                                 self.cfg.seed, scale=s.crop_scale, dtype=s.label_dtype,
                                                 augment=s.augment)
            save_tensors(files["labels"], {"soft_labels": labels})
            if "views" in files:
                save_tensors(files["views"], {"views": views})
        return files

    # ------------------------------------------------------------------ students
    def student(self, images: torch.Tensor, targets: torch.Tensor, labels: str, seed: int, *, epochs: int | None = None,
                soft: dict[str, Path] | None = None, projector: nn.Module | None = None, ce_weight: float = 0.0,
                eval_split: str | None = None) -> Any:
        """A student recipe on ``images`` with label kind ``labels`` (``soft``: the stored files; ``projector``;
        ``ce_weight``: of the cross-entropy term of soft-label kinds), evaluated on ``eval_split`` (default: the
        validation split)."""
        s = self.cfg.students
        epochs = epochs or s.epochs
        stored = {}
        if labels in ("stored", "stored_equal"):
            stored = {"soft_labels": load_tensors(soft["labels"])["soft_labels"]}
            if "views" in soft:
                stored["views"] = load_tensors(soft["views"])["views"]
        teaching = StudentTeaching(labels, len(images), epochs, projector=projector, view_seed=self.cfg.seed,
                                   augment=s.augment, scale=s.crop_scale, temperature=s.temperature,
                                   ce_weight=ce_weight if labels in SOFT_LABEL_KINDS else 0.0, **stored)
        return self.nested.student(s.model | {"num_classes": self.num_classes}, images, targets, teaching,
                                   self.class_names, seed=seed, epochs=epochs, eval_split=eval_split)

    def train_student(self, ctx: Any, name: str, images: torch.Tensor, targets: torch.Tensor, labels: str, seed: int,
                      **kwargs: Any) -> dict[str, Any]:
        """Train the student candidates of one label kind on one image set (one per ``students.ce_weights`` for
        soft labels) into ``name/[ce<w>/]seed<s>``, keep the one with the best ``data.val_split`` top-1 (ties: the
        first listed), and evaluate it on ``data.eval_split`` into ``<its run>/reported/``. Returns ``{top1 (reported),
        val_top1, ce_weight, per_example (reported, 100/0 per example), run}``."""
        weights = list(self.cfg.students.ce_weights) if labels in SOFT_LABEL_KINDS else [0.0]
        best = None
        for w in weights:
            sub = f"{name}/ce{w:g}/seed{seed}" if labels in SOFT_LABEL_KINDS else f"{name}/seed{seed}"
            summ = ctx.train(self.student(images, targets, labels, seed, ce_weight=w, **kwargs), sub)
            val = float(summ["final"]["top1"])
            if best is None or val > best[1]:
                best = (w, val, sub)
        w, val, sub = best
        top1, per_example = self.evaluate_reported(ctx, sub, images, targets, labels, seed, ce_weight=w, **kwargs)
        return {"top1": top1, "val_top1": val, "ce_weight": w, "per_example": per_example, "run": sub}

    def evaluate_reported(self, ctx: Any, sub: str, images: torch.Tensor, targets: torch.Tensor, labels: str,
                          seed: int, **kwargs: Any) -> tuple[float, np.ndarray]:
        """The student of run ``sub`` (its ``last.pt``) on ``data.eval_split``: (top-1, per-example 100/0), written
        to ``<sub>/reported/`` (reused when there)."""
        from zoo.engine.checkpoint import read_checkpoint
        from zoo.engine.evaluate import evaluate_model
        from zoo.studies.per_example import load_per_example

        out = ctx.output_dir / sub / "reported"
        done = out / "metrics.json"
        if not done.is_file():
            recipe = self.student(images, targets, labels, seed, eval_split=self.cfg.data.eval_split, **kwargs)
            model = recipe.build_model()
            state = read_checkpoint(ctx.output_dir / sub / "last.pt", what="a student's last.pt")["model"]
            model.load_state_dict(state)
            out.mkdir(parents=True, exist_ok=True)
            values = evaluate_model(recipe, model, output_dir=out, cpu=True if self.cpu else None)
            done.write_text(json.dumps({"split": self.cfg.data.eval_split, "top1": float(values["top1"])}))
        return float(json.loads(done.read_text())["top1"]), load_per_example(out)["top1"]

    # ------------------------------------------------------------------ sharing a prepared run
    _PREPARED = ("teacher", "encoder", "projector")

    def copy_prepared(self, ctx: Any) -> None:
        """``prepare_from``: copy the teacher, encoder and projector runs and the image sets of a finished run
        (which must have been made with the same data, teacher, encoder, projector and image settings and seed)
        into this run's directory, where the stages below find and reuse them."""
        import shutil

        import yaml

        src = Path(self.cfg.prepare_from)
        cfg_file = src / "config.yaml"
        if not (src / "metrics.json").is_file() or not cfg_file.is_file():
            raise FileNotFoundError(f"prepare_from: {src} is not a finished hello_distill run (no metrics.json / "
                                    "config.yaml); run the preparing cell first")
        theirs = yaml.safe_load(cfg_file.read_text())
        mine = ctx.config
        for key in ("seed", "data", "teacher", "encoder", "projector", "images"):
            a, b = theirs.get(key), mine.get(key)
            if key == "images":
                a = {k: v for k, v in (a or {}).items() if k not in ("objectives", "random_baseline")}
                b = {k: v for k, v in (b or {}).items() if k not in ("objectives", "random_baseline")}
            if a != b:
                raise ConfigError(f"prepare_from: {src} was made with other '{key}' settings ({a!r} there, {b!r} "
                                  "here); prepare with this run's settings")
        missing = [o for o in self.cfg.images.objectives if o not in theirs.get("images", {}).get("objectives", [])]
        if missing:
            raise ConfigError(f"prepare_from: {src} has no image sets for images.objectives {missing}")
        for name in self._PREPARED:
            if (src / name).is_dir() and not (ctx.output_dir / name).exists():
                shutil.copytree(src / name, ctx.output_dir / name)
        names = [f"{prefix}{o}{suffix}" for o in self.cfg.images.objectives
                 for prefix, suffix in (("images_", ".safetensors"), ("image_objective_", ".json"))]
        names += ["random.safetensors"] if self.cfg.images.random_baseline else []
        for ipc in self.cfg.images.ipcs:
            for name in names:
                f, dst = src / f"ipc{ipc}" / name, ctx.output_dir / f"ipc{ipc}" / name
                if f.is_file() and not dst.exists():
                    ctx.subdir(f"ipc{ipc}")
                    shutil.copy2(f, dst)

    # ------------------------------------------------------------------ the run
    def run(self, ctx: Any) -> dict[str, Any]:
        """Every stage in order (finished ones reused); returns the metrics (``ipc<k>/<images>/<labels>/top1`` ...,
        with one image set and one label kind also ``ipc<k>``; ``results``: the table's rows, ``storage_bytes``:
        the size of every file a method stores) and writes ``per_example.npz`` (the reported students' scores)."""
        from zoo.metrics.distill import score_rows, storage_report
        from zoo.studies.per_example import save_per_example

        c, s = self.cfg, self.cfg.students
        torch.manual_seed(c.seed)
        if c.prepare_from:
            self.copy_prepared(ctx)
        teacher, teachers, teacher_summary = self.teacher_models(ctx)
        projector, projector_file, projector_summary = self.train_projector(ctx, teachers)
        storage: dict[str, Any] = self.label_side_storage(ctx, projector_file)
        budget = storage["projector_side"]
        rows: list[dict[str, Any]] = []
        per_example: dict[str, np.ndarray] = {}
        real_top1 = None
        if s.real_epochs and s.labels:
            pool_loader = build_loader(self.pool, c.data.eval_batch_size, shuffle=False)
            xs, ys = zip(*pool_loader)
            real_x, real_y = torch.cat(xs).float(), torch.cat(ys).long()
            accs = [self.train_student(ctx, "real_hard", real_x, real_y, "hard", seed, epochs=s.real_epochs)["top1"]
                    for seed in self.student_seeds]
            real_top1 = _mean_std(accs)
            del real_x, real_y
        for ipc in c.images.ipcs:
            files = self.image_sets(ctx, ipc, teacher, projector)
            for kind, path in files.items():
                if kind != "random":
                    storage[f"ipc{ipc}/images_{kind}"] = storage_report({"x": path})["x"]
                if not s.labels:
                    continue
                images, targets = load_image_set(path)
                for labels in s.labels:
                    soft, epochs_stored, label_bytes = None, None, 0
                    if labels == "stored":
                        soft = self.stored_labels(ctx, ipc, kind, images, teacher)
                        rep = storage_report(soft)
                        storage[f"ipc{ipc}/{kind}/stored_labels"] = label_bytes = rep["labels"]
                        storage[f"ipc{ipc}/{kind}/stored_views"] = rep["views"]
                        epochs_stored = s.epochs
                    elif labels == "stored_equal":
                        soft = self.stored_labels(ctx, ipc, kind, images, teacher, budget_bytes=budget)
                        label_bytes = storage_report(soft)["labels"]
                        storage[f"ipc{ipc}/{kind}/stored_equal_labels"] = label_bytes
                        epochs_stored = int(load_tensors(soft["labels"])["soft_labels"].shape[0])
                    elif labels == "projector":
                        label_bytes = budget
                    outs = [self.train_student(ctx, f"ipc{ipc}/{kind}_{labels}", images, targets, labels, seed,
                                               soft=soft, projector=projector if labels == "projector" else None)
                            for seed in self.student_seeds]
                    accs = [o["top1"] for o in outs]
                    mean, std = _mean_std(accs)
                    row = {"ipc": ipc, "images": kind, "labels": labels, "top1": mean, "top1_std": std,
                           "seeds": len(accs), "val_top1": statistics.fmean(o["val_top1"] for o in outs),
                           "ce_weight": [o["ce_weight"] for o in outs], "label_bytes": label_bytes,
                           "per_seed": accs}
                    if epochs_stored is not None:
                        row["stored_epochs"] = epochs_stored
                    rows.append(row)
                    per_example[f"ipc{ipc}/{kind}/{labels}"] = np.mean([o["per_example"] for o in outs], axis=0)
        metrics: dict[str, Any] = {"storage_bytes": storage, "label_side_bytes": budget}
        if teacher_summary.get("final"):
            metrics["teacher_val_top1"] = float(teacher_summary["final"]["top1"])
        if projector_summary.get("final"):
            metrics["projector_val_top1"] = float(projector_summary["final"]["top1"])
        if real_top1 is not None:
            metrics["real_hard_top1"] = real_top1[0]
        metrics.update(score_rows(rows, None if real_top1 is None else real_top1[0]))
        for r in rows:
            key = f"ipc{r['ipc']}/{r['images']}/{r['labels']}"
            metrics[f"{key}/val_top1"] = r["val_top1"]
            metrics[f"{key}/ce_weight"] = r["ce_weight"][0]
            if "stored_epochs" in r:
                metrics[f"{key}/stored_epochs"] = r["stored_epochs"]
        distilled = [r for r in rows if r["images"] != "random"]
        if distilled and len({(r["images"], r["labels"]) for r in distilled}) == 1:
            # one image set and one label kind (a study cell): short names, one per IPC
            for r in distilled:
                k = f"ipc{r['ipc']}"
                metrics.update({k: r["top1"], f"{k}_val": r["val_top1"], f"{k}_label_bytes": r["label_bytes"],
                                f"{k}_ce_weight": r["ce_weight"][0]})
                if "stored_epochs" in r:
                    metrics[f"{k}_stored_epochs"] = r["stored_epochs"]
                per_example[k] = per_example[f"ipc{r['ipc']}/{r['images']}/{r['labels']}"]
        metrics["results"] = rows
        if per_example:
            save_per_example(ctx.output_dir, per_example)
        return metrics

    def report(self, summary: dict[str, Any], run_dir: Any) -> None:
        """``results.csv``, ``storage.json``, the figure ``hello_<dataset>.png`` and ``ipc<k>/images.png``."""
        out, m = Path(run_dir), summary["final"]
        (out / "storage.json").write_text(json.dumps(m["storage_bytes"], indent=2))
        if not m["results"]:
            return
        write_results_csv(out / "results.csv", m["results"])
        real = m.get("real_hard_top1")
        try:
            plot_results(m["results"], out / f"hello_{self.cfg.data.name}.png", None if real is None else (real, 0.0))
            for ipc in self.cfg.images.ipcs:
                sets = {f"IPC {ipc} {o}": load_image_set(out / f"ipc{ipc}" / f"images_{o}.safetensors")
                        for o in self.cfg.images.objectives}
                if (out / f"ipc{ipc}" / "random.safetensors").is_file():
                    sets[f"IPC {ipc} random real"] = load_image_set(out / f"ipc{ipc}" / "random.safetensors")
                save_image_grid(sets, out / f"ipc{ipc}" / "images.png", per_class=min(ipc, 10))
        except ImportError:
            _logger.warning("matplotlib is not installed: no figure")