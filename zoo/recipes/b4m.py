"""Break-for-Make (Xu et al., 2024 / ACM TOG 2025) on the ``sd_finetune`` recipe: PLP content/style adapters,
MCP stage 1 and the merged stage 2 with AdamWr.

One recipe, three stages (``b4m.stage``), each an ordinary resumable run (``configs/b4m/pipeline_*.yaml`` chains
them with ``${stage:NAME}``):

* ``content`` — a PLP adapter (:mod:`zoo.adapters.plp`, ``adapter.name=plp``) on the UNet attention projections;
  every step back-propagates the **content** loss (``b4m.content_root``: the subject's images and captions) and
  the mean loss over the **auxiliary style sets** (``b4m.style_aux_roots``; MCP). One AdamW with two groups:
  the learnable columns ``D`` of ``down`` at ``optim.lr`` (official 1e-4), the learnable rows ``B`` of ``up`` at
  ``b4m.aux_lr`` (official 1e-5). ``b4m.routing``: ``official`` (default) — both losses reach both projections,
  as the official's two optimisers on accumulated gradients do (its one-step delay of the auxiliary gradient
  into ``down`` is not kept); ``separate`` — the content loss reaches ``D`` only and the auxiliary loss ``B``
  only (the paper's description; the other projection's ``requires_grad`` is off during that backward).
* ``style`` — the swap: the style loss (``b4m.style_root``) for ``up``, the auxiliary content sets
  (``b4m.content_aux_roots``) for ``down``; ``down`` at ``b4m.aux_lr``, ``up`` at ``optim.lr``.
* ``merge`` — loads both stage-1 adapters (``b4m.content_adapter`` / ``b4m.style_adapter``: their run directories
  or LoRA files) *after* initialising the PLP adapter (so, unlike the official, nothing overwrites the loaded
  content columns), merges them (:func:`zoo.adapters.merge.merge_b4m`: style ``up``, content ``down``, shared frozen
  parts) and fine-tunes the merged adapter on both sets — ``b4m.style_root`` (the official's ``instance_data_dir``)
  and ``b4m.content_root``, each with its captions — with ``b4m.stage2_optimizer``: ``adamw`` (default; AdamW on
  ``up`` and ``down``, lr ``optim.lr``, weight decay ``optim.weight_decay`` — what the official stage 2 effectively
  runs, see below) or ``adamwr`` (:class:`zoo.adapters.adamwr.AdamWr` alone, ``b4m.reg``: the paper's
  Riemannian-preconditioned update). ``b4m.snapshot_every: 50`` writes the adapter every 50 steps to
  ``steps/step<N>/`` (the official saves a checkpoint every 50 stage-2 steps) for choosing the step on validation.

Two baselines run as stages of the same recipe: ``ziplora`` (ZipLoRA's learned per-column mergers over the two
frozen stage-1 adapters, :func:`zoo.adapters.merge.add_ziplora`: the merged UNet matches the content adapter on
the content images and the style adapter on the style images, plus ``b4m.similarity_lambda`` times the merger
similarity) and ``joint`` (one adapter trained on ``data.root`` holding content and style images together; set
``adapter.frozen=0`` for a plain LoRA). What each stage builds, trains and saves is :mod:`zoo.diffusion.b4m`.

Each stage saves ``pytorch_lora_weights.safetensors`` (diffusers' format: ``pipe.load_lora_weights`` and
``tools/sample.py`` read it) and ``samples.png`` (the ``sample.prompts`` without / with the adapter).

Deviations from the official code (ICTMCG/Break-for-make ``code/train_*.py``), on purpose:

* stage 2's optimiser is a choice (``b4m.stage2_optimizer``). The official builds AdamW(up), AdamW(down) and
  AdamWr(pairs) and steps all three in a row; the first two zero the gradients before AdamWr runs: replayed in plain
  PyTorch its AdamWr raises on ``None`` gradients, under accelerate it sees zeros and moves nothing, so the
  official's effective stage 2 is plain AdamW at 1e-4 (``adamw``, the default); ``adamwr`` runs AdamWr alone, the
  update the paper describes;
* the two sets of a stage-2 step get independent noise and timesteps (the official shares them);
* the frozen PLP parts are buffers (bitwise unchanged; the official's weight decay shrinks them slightly);
* auxiliary loaders restart from their beginning when a run resumes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from zoo.config import ConfigError
from zoo.data.images.folder import CaptionedImageFolder, find_captioned_images
from zoo.data.images.glyphs import GLYPHS, build_b4m_sets
from zoo.data.images.style_digits import BACKGROUNDS, STYLES
from zoo.diffusion.b4m import CONTENT, ROUTINGS, STAGE2_OPTIMIZERS, STAGES, STYLE, B4MStage, ziplora_distill_loss
from zoo.engine.data import build_loader
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.recipes.sd_finetune import SDFinetuneConfig, SDFinetuneRecipe

__all__ = ["B4MSection", "B4MConfig", "B4MRecipe", "B4MDataSection", "B4MDataConfig", "B4MDataRecipe",
           "snapshot_dir"]

_logger = logging.getLogger("zoo")
LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class B4MSection:
    """Config section ``b4m``. The image folders of all stages live here, so that one set of command-line
    overrides serves the whole pipeline; each stage picks its own (``data.root``, when set, wins as the main set)."""

    stage: str = "content"  # content | style | merge | ziplora | joint
    content_root: str | None = None  # the subject's images (content stage: main set; merge: second set)
    style_root: str | None = None  # the style's images (style stage and merge: main set)
    style_aux_roots: list[str] = field(default_factory=list)  # content stage (MCP): auxiliary style sets -> up
    content_aux_roots: list[str] = field(default_factory=list)  # style stage (MCP): auxiliary content sets -> down
    aux_lr: float = 1.0e-5  # stage 1: lr of the auxiliary projection (official learning_rate_2)
    routing: str = "official"  # stage 1: official (each loss -> both projections) | separate (-> its own only)
    aux_batch_size: int | None = None  # default: data.batch_size
    content_adapter: str | None = None  # merge: the content run's directory or its LoRA file
    style_adapter: str | None = None  # merge: the style run's directory or its LoRA file
    content_weight: float = 1.0  # merge: initial scale of the content columns D
    style_weight: float = 1.0  # merge: initial scale of the style rows B
    reg: float = 0.0  # merge: AdamWr's preconditioner ridge (official --optimizer_reg, default 0)
    # merge: adamw (the official's effective stage 2: its AdamW(up) and AdamW(down) zero the gradients before its
    # AdamWr steps) | adamwr (the Riemannian-preconditioned AdamWr alone, as the paper describes)
    stage2_optimizer: str = "adamw"
    snapshot_every: int | None = None  # write the adapter every N optimiser steps to steps/step<N>/ (official: 50)
    similarity_lambda: float = 0.01  # ziplora: weight of the merger similarity term (mkshing/ziplora-pytorch)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"b4m.stage must be one of {', '.join(STAGES)}, got '{self.stage}'")
        if self.stage2_optimizer not in STAGE2_OPTIMIZERS:
            raise ConfigError(f"b4m.stage2_optimizer must be one of {', '.join(STAGE2_OPTIMIZERS)}, got "
                              f"'{self.stage2_optimizer}'")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise ConfigError(f"b4m.snapshot_every must be >= 1 or null, got {self.snapshot_every}")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"b4m.routing must be one of {', '.join(ROUTINGS)}, got '{self.routing}'")
        if not self.aux_lr >= 0:
            raise ConfigError(f"b4m.aux_lr must be >= 0, got {self.aux_lr}")
        if self.reg < 0:
            raise ConfigError(f"b4m.reg must be >= 0, got {self.reg}")

    def main_root(self) -> str | None:
        """The folder of the stage's main loss (the style images in merge / ziplora; joint: data.root only)."""
        return {"content": self.content_root, "joint": None}.get(self.stage, self.style_root)

    def second_roots(self) -> list[str]:
        """The folders of the stage's second loss: auxiliary sets (stage 1) or the content images (merge, ziplora)."""
        if self.stage in ("merge", "ziplora"):
            return [self.content_root] if self.content_root else []
        if self.stage == "joint":
            return []
        return list(self.style_aux_roots if self.stage == "content" else self.content_aux_roots)


@dataclass
class B4MConfig(SDFinetuneConfig):
    recipe: str = "b4m"
    adapter: dict[str, Any] = field(default_factory=lambda: {"name": "plp"})  # adapter.name=plp + PLP's config
    b4m: B4MSection = field(default_factory=B4MSection)


def snapshot_dir(run_dir: str | Path, step: int) -> Path:
    """Where a stage writes its adapter after ``step`` optimiser steps (``b4m.snapshot_every``):
    ``<run_dir>/steps/step<step>`` (five digits)."""
    return Path(run_dir) / "steps" / f"step{step:05d}"


def _cycle(loader: Any) -> Iterator[Any]:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("an auxiliary loader of the b4m recipe is empty")


# ====================================================================================================== recipe
@register_recipe("b4m")
class B4MRecipe(SDFinetuneRecipe):
    """Break-for-Make's stages on ``sd_finetune`` (see the module doc)."""

    Config = B4MConfig
    unread_keys = {**SDFinetuneRecipe.unread_keys,
                   "model.plp": "moved: the PLP settings are the adapter section, e.g. adapter.rank"}

    def __init__(self, cfg: B4MConfig):
        from zoo.diffusion.pretrained import PRETRAINED_PIPELINES, pretrained_pipeline_dir

        if cfg.adapter.get("name") != "plp":
            raise ConfigError(f"the b4m recipe trains PLP adapters: adapter.name must be 'plp', got "
                              f"'{cfg.adapter.get('name')}'")
        b, d = cfg.b4m, cfg.data
        if cfg.model.pretrained in PRETRAINED_PIPELINES:  # a shipped pipeline by name, e.g. tiny_t2i_mnist
            try:
                cfg.model.pretrained = str(pretrained_pipeline_dir(cfg.model.pretrained))
            except FileNotFoundError as exc:
                raise ConfigError(f"model.pretrained: {exc}") from None
        if not d.root:
            if not b.main_root():
                key = {"content": "b4m.content_root (or data.root)", "joint": "data.root"}.get(
                    b.stage, "b4m.style_root (or data.root)")
                raise ConfigError(f"{key} is required for b4m.stage={b.stage}: a folder of images with captions "
                                  "(metadata.jsonl or same-name .txt files)")
            d.root = b.main_root()
        super().__init__(cfg)
        self.method = B4MStage(self.method.config, b.stage, content_adapter=b.content_adapter,
                               style_adapter=b.style_adapter, weights=(b.content_weight, b.style_weight),
                               aux_lr=b.aux_lr, reg=b.reg, stage2_optimizer=b.stage2_optimizer)
        if b.stage in ("merge", "ziplora"):
            for key in ("content_root", "content_adapter", "style_adapter"):
                if not getattr(b, key):
                    raise ConfigError(f"b4m.{key} is required for b4m.stage={b.stage} (the content images / the "
                                      "stage-1 run directories; configs/b4m/pipeline_*.yaml sets the adapters with "
                                      "${stage:NAME})")
            for key in ("content_adapter", "style_adapter"):
                p = Path(getattr(b, key))
                if not (p / LORA_FILE).is_file() and not p.is_file():
                    raise ConfigError(f"b4m.{key}: no {LORA_FILE} in {p} (run the stage-1 {key.split('_')[0]} stage "
                                      "first)")
        elif b.second_roots() and not b.aux_lr:
            _logger.warning("b4m.aux_lr is 0: the auxiliary projection does not learn")
        aux_key = {"content": "b4m.style_aux_roots", "style": "b4m.content_aux_roots", "merge": "b4m.content_root",
                   "ziplora": "b4m.content_root", "joint": ""}[b.stage]
        for i, root in enumerate(b.second_roots()):
            try:
                find_captioned_images(root, caption_column=d.caption_column, image_column=d.image_column)
            except (ValueError, FileNotFoundError) as exc:
                msg = str(exc).replace(" (config key data.root)", "")
                raise ConfigError(f"{aux_key}{'' if b.stage in ('merge', 'ziplora') else f'[{i}]'}: {msg}") from None
        self._aux_iters: list[Iterator[Any]] | None = None
        self._micro_steps = 0  # training batches seen (for b4m.snapshot_every)
        self._snapshots: dict[int, dict[str, torch.Tensor]] = {}  # optimiser step -> the adapter's tensors

    # ---------------------------------------------------------------- data
    def _folder(self, root: str) -> Any:
        d = self.cfg.data
        return CaptionedImageFolder(root, resolution=d.resolution, center_crop=d.center_crop, random_flip=d.random_flip,
                                    prefix=d.prefix, default_caption=d.default_caption, caption_column=d.caption_column,
                                    image_column=d.image_column, repeats=d.repeats)

    def _aux_batch(self, i: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The next batch of the ``i``-th second set (auxiliary sets in stage 1, the content images in stage 2)."""
        if self._aux_iters is None:
            b, d = self.cfg.b4m, self.cfg.data
            self._aux_iters = [
                _cycle(build_loader(self._folder(root), b.aux_batch_size or d.batch_size, shuffle=True,
                                    seed=self.cfg.seed + 1 + k, num_workers=d.num_workers, drop_last=False,
                                    collate_fn=self.components.collate()))
                for k, root in enumerate(self.cfg.b4m.second_roots())
            ]
        return {k: v.to(device) for k, v in next(self._aux_iters[i]).items()}

    # ---------------------------------------------------------------- step
    def _loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self._denoising_loss(model, batch)[0]

    def train_step(self, model: nn.Module, batch: Any, ctx: Any) -> dict[str, torch.Tensor]:
        """Stage 1: main loss -> main projection, mean auxiliary loss -> the other one (two backward passes;
        ``b4m.routing=official``: both reach both). Stage 2: both losses -> the merged adapter (AdamWr steps
        once after). ziplora: the two distillation terms and the merger similarity."""
        from zoo.adapters.plp import only_projection

        b = self.cfg.b4m
        self._maybe_snapshot(model)
        self._micro_steps += 1
        n_aux = len(b.second_roots())
        if b.stage == "ziplora":
            return self._ziplora_step(model, batch, ctx)
        if b.stage == "joint":
            return super().train_step(model, batch, ctx)
        if b.stage == "merge":
            main = self._loss(model, batch)
            ctx.backward(main)
            second = self._loss(model, self._aux_batch(0, ctx.device))
            ctx.backward(second)
            return {"loss": (main + second).detach(), "loss_style": main.detach(), "loss_content": second.detach()}
        main_proj, aux_proj = ("down", "up") if b.stage == "content" else ("up", "down")
        if b.routing == "official":  # both losses reach both projections (the two groups' lrs differ)
            main_proj = aux_proj = None
        with only_projection(model, main_proj):
            main = self._loss(model, batch)
            ctx.backward(main)
        out = {"loss_main": main.detach()}
        if n_aux:
            aux = 0.0
            with only_projection(model, aux_proj):
                for i in range(n_aux):  # one graph at a time; the gradients add up to the mean's
                    term = self._loss(model, self._aux_batch(i, ctx.device)) / n_aux
                    ctx.backward(term)
                    aux = aux + term.detach()
            out["loss_aux"] = aux
        out["loss"] = sum(out.values())
        return out

    # ---------------------------------------------------------------- snapshots
    def _maybe_snapshot(self, model: nn.Module) -> None:
        """Before a step: when ``b4m.snapshot_every`` optimiser steps have just completed, keep a copy of the trained
        adapter's tensors as they are after them (small: the PLP factors); the final evaluation writes them."""
        every, accum = self.cfg.b4m.snapshot_every, self.cfg.trainer.grad_accum_steps
        if not every or self._micro_steps % accum:
            return
        step = self._micro_steps // accum
        if step and step % every == 0 and step not in self._snapshots:
            unet = getattr(model, "module", model)
            self._snapshots[step] = {k: v.detach().cpu().clone() for k, v in self.method.state_dict(unet).items()}

    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        """:meth:`SDFinetuneRecipe.evaluate`; the final one (``output_dir``) also writes each snapshot of
        ``b4m.snapshot_every`` as ``<run>/steps/step<N>/pytorch_lora_weights.safetensors`` (the official saves a
        checkpoint every 50 stage-2 steps; the last step is the run's own file)."""
        values = super().evaluate(model, loader, accelerator, output_dir)
        if output_dir is not None and self._snapshots and accelerator.is_main_process:
            unet = accelerator.unwrap_model(model)
            final = {k: v.detach().clone() for k, v in self.method.state_dict(unet).items()}
            try:
                for step, state in sorted(self._snapshots.items()):
                    self.method.load_state_dict(unet, state)
                    self.save_adapter(unet, snapshot_dir(output_dir, step))
            finally:
                self.method.load_state_dict(unet, final)
        return values

    def recipe_state(self) -> dict[str, Any]:
        return {"micro_steps": self._micro_steps, "snapshots": self._snapshots}

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        self._micro_steps = int(state.get("micro_steps", 0))
        self._snapshots = dict(state.get("snapshots", {}))

    def _distill_loss(self, model: nn.Module, batch: Any, teacher: str) -> torch.Tensor:
        """:func:`~zoo.diffusion.b4m.ziplora_distill_loss` on ``batch`` noised at random timesteps."""
        from zoo.diffusion.denoising import add_training_noise

        latents, text, cond = self._encode(batch, sample=True)
        noisy, _, t = add_training_noise(self.components.noise_scheduler, latents)
        return ziplora_distill_loss(model, lambda: model(noisy, t, text, added_cond_kwargs=cond, return_dict=False)[0],
                                    teacher)

    def _ziplora_step(self, model: nn.Module, batch: Any, ctx: Any) -> dict[str, torch.Tensor]:
        """ZipLoRA (mkshing/ziplora-pytorch): the merged UNet matches the style adapter on the style images and the
        content adapter on the content images; plus ``similarity_lambda · Σ mean|m_c ⊙ m_s|``."""
        from zoo.adapters.merge import ziplora_loss

        style = self._distill_loss(model, batch, STYLE)
        ctx.backward(style)
        content = self._distill_loss(model, self._aux_batch(0, ctx.device), CONTENT)
        ctx.backward(content)
        sim = self.cfg.b4m.similarity_lambda * ziplora_loss(model, self.method.adapter)
        ctx.backward(sim)
        return {"loss": (style + content + sim).detach(), "loss_style": style.detach(),
                "loss_content": content.detach(), "loss_similarity": sim.detach()}


# ====================================================================================================== data stage
@dataclass
class B4MDataSection:
    """Config section ``sets`` of the ``b4m_data`` recipe (:func:`zoo.data.images.glyphs.build_b4m_sets`)."""

    glyph: str = "star"
    style: str = "brick"
    aux_styles: list[str] = field(default_factory=lambda: ["grass", "gravel"])
    # MCP's auxiliary subjects of the style run: new glyphs ("a handwritten glyph snq asterisk", as the official's
    # "a photo of snq teapot") or digits (plain, subjects the base model already draws)
    aux_content: list[Any] = field(default_factory=lambda: ["asterisk", "lambda", "hourglass"])
    num_content: int = 8
    num_style: int = 20
    num_aux: int = 10
    mnist_root: str | None = None  # default: the shared data (zoo.data.images.mnist)
    split: str = "test[:7000]"  # the training split (zoo/data/splits.py)
    aux_digits: Any = None  # moved: aux_content
    background: str = "style"  # of the style sets: style (each style's colour) | black (the plain digits')

    def __post_init__(self) -> None:
        if self.glyph not in GLYPHS:
            raise ConfigError(f"sets.glyph must be one of {', '.join(GLYPHS)}, got '{self.glyph}'")
        for key, value in [("style", self.style)] + [(f"aux_styles[{i}]", s) for i, s in enumerate(self.aux_styles)]:
            if value not in STYLES:
                raise ConfigError(f"sets.{key} must be one of {', '.join(STYLES)}, got '{value}'")
        if self.style in self.aux_styles:
            raise ConfigError(f"sets.aux_styles must not contain the target style '{self.style}'")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"sets.background must be one of {', '.join(BACKGROUNDS)}, got '{self.background}'")
        if self.aux_digits is not None:
            raise ConfigError("sets.aux_digits is now sets.aux_content (glyph names or digits), e.g. "
                              "sets.aux_content=[1,4,7] for the plain digits")
        for i, a in enumerate(self.aux_content):
            if isinstance(a, bool) or not (isinstance(a, int) and 0 <= a <= 9 or a in GLYPHS and a != self.glyph):
                raise ConfigError(f"sets.aux_content[{i}] must be a digit 0-9 or a glyph of {', '.join(GLYPHS)} other "
                                  f"than sets.glyph '{self.glyph}', got {a!r}")


@dataclass
class B4MDataConfig(RecipeConfig):
    recipe: str = "b4m_data"
    sets: B4MDataSection = field(default_factory=B4MDataSection)
    # not used here: lets one command line (model.pretrained=..., adapter.rank=..., b4m.routing=...) serve every
    # stage of the pipeline
    model: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)
    b4m: dict[str, Any] = field(default_factory=dict)


@register_recipe("b4m_data")
class B4MDataRecipe(Recipe):
    """The first stage of ``configs/b4m/pipeline_t2i_mnist.yaml``: writes the image folders of the run into its
    run directory (``content/``, ``style/``, ``aux_style_<s>/``, ``aux_content_<d>/``, ``content_eval/``,
    ``joint/``; see :mod:`zoo.data.images.glyphs`), which the later stages read through ``${stage:data}``."""

    Config = B4MDataConfig
    run_shape = "study"

    def run(self, ctx: Any) -> dict[str, Any]:
        s = self.cfg.sets
        sets = build_b4m_sets(ctx.output_dir, glyph=s.glyph, style=s.style, aux_styles=s.aux_styles,
                              aux_content=s.aux_content, num_content=s.num_content, num_style=s.num_style,
                              num_aux=s.num_aux, root=s.mnist_root, split=s.split, seed=self.cfg.seed,
                              background=s.background)
        return {k: ([str(p) for p in v] if isinstance(v, list) else str(v)) for k, v in sets.items()}
