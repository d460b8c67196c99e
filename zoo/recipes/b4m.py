"""Break-for-Make (Xu et al., 2024 / ACM TOG 2025) on the ``sd_finetune`` recipe: PLP content/style adapters,
MCP stage 1 and the merged stage 2 with AdamWr.

One recipe, three stages (``b4m.stage``), each an ordinary resumable run (``configs/b4m/pipeline_*.yaml`` chains
them with ``${stage:NAME}``):

* ``content`` — a PLP adapter (:mod:`zoo.adapters.plp`, adapter ``"plp"``) on the UNet attention projections;
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
  and ``b4m.content_root``, each with its captions — with
  :class:`zoo.adapters.adamwr.AdamWr` (lr ``optim.lr``, weight decay ``optim.weight_decay``, ``b4m.reg``).

Two baselines run as stages of the same recipe: ``ziplora`` (ZipLoRA's learned per-column mergers over the two
frozen stage-1 adapters, :func:`zoo.adapters.merge.add_ziplora`: the merged UNet matches the content adapter on
the content images and the style adapter on the style images, plus ``b4m.similarity_lambda`` times the merger
similarity) and ``joint`` (one adapter trained on ``data.root`` holding content and style images together; set
``model.plp.frozen=0`` for a plain LoRA).

Each stage saves ``pytorch_lora_weights.safetensors`` (diffusers' format: ``pipe.load_lora_weights`` and
``tools/sample.py`` read it) and ``samples.png`` (the ``sample.prompts`` without / with the adapter).

Deviations from the official code (ICTMCG/Break-for-make ``code/train_*.py``), on purpose:

* stage 2 runs AdamWr alone. The official builds AdamW(up), AdamW(down) and AdamWr(pairs) and steps all three in a
  row; the first two zero the gradients before AdamWr runs, so its AdamWr sees zero gradients (torch < 2) or
  ``None`` ones (torch >= 2, where ``zero_grad`` sets ``None`` by default) — my reading of the code, not run;
* the two sets of a stage-2 step get independent noise and timesteps (the official shares them);
* the frozen PLP parts are buffers (bitwise unchanged; the official's weight decay shrinks them slightly);
* auxiliary loaders restart from their beginning when a run resumes.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from zoo.adapters.adamwr import AdamWr, adamwr_groups
from zoo.adapters.lora_formats import save_diffusers_lora
from zoo.adapters.merge import add_ziplora, load_plp, merge_b4m, ziplora_diffusers_state, ziplora_loss
from zoo.adapters.plp import PLP, PLPConfig, add_plp, plp_deltas
from zoo.config import ConfigError
from zoo.data.images.folder import CaptionedImageFolder, find_captioned_images
from zoo.data.images.glyphs import GLYPHS, build_b4m_sets
from zoo.data.images.style_digits import BACKGROUNDS, STYLES
from zoo.diffusion.methods import LORA_FILE, AdapterMethod, LoRAMethod, register_adapter_method
from zoo.diffusion.pretrained import PRETRAINED_PIPELINES, pretrained_pipeline_dir
from zoo.engine.data import build_loader
from zoo.adapters.model import (
    adapter_param_groups,
    adapter_parameters,
    adapter_state_dict,
    enable_adapter,
    load_adapter_state_dict,
    set_active_adapters,
)
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.recipes.sd_finetune import SDFinetuneConfig, SDFinetuneRecipe, SDModelConfig

__all__ = ["B4MSection", "B4MModelConfig", "B4MConfig", "PLPMethod", "B4MRecipe", "STAGES", "B4MDataSection",
           "B4MDataConfig", "B4MDataRecipe"]

_logger = logging.getLogger("zoo")
CONTENT, STYLE, ZIPLORA = "b4m_content", "b4m_style", "ziplora"  # adapter names of the loaded stage-1 adapters
STAGES = ("content", "style", "merge", "ziplora", "joint")
ROUTINGS = ("separate", "official")  # stage 1: which projections each loss's gradient reaches


@dataclass
class B4MSection:
    """Config section ``b4m``. The image folders of all stages live here, so that one set of command-line
    overrides serves the whole pipeline; each stage picks its own (``data.root``, when set, wins as the main set)."""

    stage: str = "content"  # content | style | merge
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
    similarity_lambda: float = 0.01  # ziplora: weight of the merger similarity term (mkshing/ziplora-pytorch)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"b4m.stage must be one of {', '.join(STAGES)}, got '{self.stage}'")
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
class B4MModelConfig(SDModelConfig):
    """Config section ``model``: ``sd_finetune``'s, with ``adapter: plp`` and the ``plp`` sub-section."""

    adapter: str = "plp"
    plp: PLPConfig = field(default_factory=PLPConfig)


@dataclass
class B4MConfig(SDFinetuneConfig):
    recipe: str = "b4m"
    model: B4MModelConfig = field(default_factory=B4MModelConfig)
    b4m: B4MSection = field(default_factory=B4MSection)


# ====================================================================================================== method
@register_adapter_method("plp")
class PLPMethod(AdapterMethod):
    """Break-for-Make's PLP adapter as an ``sd_finetune`` adapter method (``model.adapter=plp``): applies the
    adapter of the recipe's stage, builds its optimiser, saves the diffusers LoRA file. ``self.b4m`` (the ``b4m``
    section) is set by :class:`B4MRecipe`; without it the method trains a plain stage-1 content adapter."""

    artefact = LORA_FILE
    detect_priority = 1000  # its files are plain diffusers LoRA files (LoRAMethod reads them)

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.b4m: B4MSection = B4MSection()

    def apply(self, unet, cfg):
        self.cfg = cfg
        b = self.b4m
        plp_cfg = getattr(cfg, "plp", None) or PLPConfig()  # sd_finetune's model section has no plp: defaults
        if b.stage in ("merge", "ziplora"):
            load_plp(unet, b.content_adapter, plp_cfg, name=CONTENT)
            load_plp(unet, b.style_adapter, plp_cfg, name=STYLE)
        if b.stage == "merge":
            merge_b4m(unet, CONTENT, STYLE, name=PLP, weights=(b.content_weight, b.style_weight), remove_sources=True)
        elif b.stage == "ziplora":
            add_ziplora(unet, CONTENT, STYLE, name=ZIPLORA, weights=(b.content_weight, b.style_weight))
        else:
            add_plp(unet, plp_cfg, name=PLP)
        return unet

    @property
    def adapter(self) -> str:
        """The trained adapter: ``plp``, or ``ziplora`` (the mergers) in the ziplora stage."""
        return ZIPLORA if self.b4m.stage == "ziplora" else PLP

    def trainable_parameters(self, unet):
        return adapter_parameters(unet, [self.adapter])

    def configure_optimizer(self, unet, optim_cfg, total_steps):
        b = self.b4m
        if b.stage == "ziplora":
            return torch.optim.AdamW(adapter_parameters(unet, [ZIPLORA]), lr=optim_cfg.lr, betas=tuple(optim_cfg.betas),
                                     eps=optim_cfg.eps, weight_decay=0.0)
        if b.stage == "joint":  # one LoRA on content + style images (model.plp.frozen: 0 for a plain LoRA)
            return torch.optim.AdamW(adapter_parameters(unet, [PLP]), lr=optim_cfg.lr, betas=tuple(optim_cfg.betas),
                                     eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
        if b.stage == "merge":
            return AdamWr(adamwr_groups(unet, PLP), lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                          weight_decay=optim_cfg.weight_decay, reg=b.reg)
        main, aux = ("down", "up") if b.stage == "content" else ("up", "down")
        groups = adapter_param_groups(unet, {f"{PLP}.{main}": {"lr": optim_cfg.lr}, f"{PLP}.{aux}": {"lr": b.aux_lr}})
        return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                                 weight_decay=optim_cfg.weight_decay)

    def state_dict(self, unet):
        return adapter_state_dict(unet, [self.adapter])

    def load_state_dict(self, unet, state):
        result = load_adapter_state_dict(unet, state, strict=False)  # the frozen stage-1 adapters are not saved
        bad = [k for k in result["missing"] if f".{self.adapter}." in k] + result["unexpected"]
        if bad:
            raise RuntimeError(f"checkpoint does not match the {self.adapter} adapter: {bad[:10]}")

    def save(self, unet, output_dir):
        path = Path(output_dir) / LORA_FILE
        if self.adapter == ZIPLORA:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            save_file(ziplora_diffusers_state(unet, ZIPLORA), str(tmp), metadata={"format": "pt"})
            os.replace(tmp, path)
            return path
        return save_diffusers_lora(unet, path, PLP)

    @classmethod
    def load(cls, pipe, path):
        return LoRAMethod.load(pipe, path)

    def switch(self, pipe, unet, load_base):
        return lambda on: enable_adapter(unet, self.adapter, on)


@contextlib.contextmanager
def only_projection(model: nn.Module, which: str | None) -> Iterator[None]:
    """Within the block only the ``which`` (``"down"`` / ``"up"``) tensors of the PLP adapter require grad, so a
    loss back-propagated there reaches that projection only; the flags are restored after. ``which=None``: no
    change (both projections)."""
    if which is None:
        yield
        return
    deltas = list(plp_deltas(model, PLP).values())
    other = "up" if which == "down" else "down"
    saved = [(getattr(d, other), getattr(d, other).requires_grad) for d in deltas]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


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

    def __init__(self, cfg: B4MConfig):
        if cfg.model.adapter != "plp":
            raise ConfigError(f"the b4m recipe trains PLP adapters: model.adapter must be 'plp', got "
                              f"'{cfg.model.adapter}'")
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
        self.method.b4m = b

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

    # ---------------------------------------------------------------- data
    def _folder(self, root: str) -> Any:
        d = self.cfg.data
        return CaptionedImageFolder(root, resolution=d.resolution, center_crop=d.center_crop, random_flip=d.random_flip,
                                    prefix=d.prefix, default_caption=d.default_caption, caption_column=d.caption_column,
                                    image_column=d.image_column, repeats=d.repeats)

    def aux_roots(self) -> list[str]:
        """The folders of the second loss: auxiliary sets (stage 1) or the content images (stage 2)."""
        return self.cfg.b4m.second_roots()

    def _aux(self) -> list[Iterator[Any]]:
        if self._aux_iters is None:
            b, d = self.cfg.b4m, self.cfg.data
            bs = b.aux_batch_size or d.batch_size
            self._aux_iters = [
                _cycle(build_loader(self._folder(root), bs, shuffle=True, seed=self.cfg.seed + 1 + i,
                                    num_workers=d.num_workers, drop_last=False, collate_fn=self._collate()))
                for i, root in enumerate(self.aux_roots())
            ]
        return self._aux_iters

    def _aux_batch(self, i: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in next(self._aux()[i]).items()}

    # ---------------------------------------------------------------- step
    def _loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return super().training_step(model, batch)["loss"]

    def train_step(self, model: nn.Module, batch: Any, ctx: Any) -> dict[str, torch.Tensor]:
        """Stage 1: main loss -> main projection, mean auxiliary loss -> the other one (two backward passes).
        Stage 2: both losses -> the merged adapter (AdamWr steps once after)."""
        b = self.cfg.b4m
        n_aux = len(self.aux_roots())
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


    def _distill_loss(self, model: nn.Module, batch: Any, teacher: str) -> torch.Tensor:
        """MSE between the ZipLoRA-merged UNet's prediction and the ``teacher`` adapter's (no grad) on the same
        noisy latents, timesteps and captions of ``batch``."""
        sched = self.components.noise_scheduler
        latents, text, cond = self._encode(batch, sample=True)
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
        noisy = sched.add_noise(latents, noise, t)
        try:
            set_active_adapters(model, [teacher])
            with torch.no_grad():
                target = model(noisy, t, text, added_cond_kwargs=cond, return_dict=False)[0]
        finally:
            set_active_adapters(model, [ZIPLORA])
        pred = model(noisy, t, text, added_cond_kwargs=cond, return_dict=False)[0]
        return F.mse_loss(pred.float(), target.float())

    def _ziplora_step(self, model: nn.Module, batch: Any, ctx: Any) -> dict[str, torch.Tensor]:
        """ZipLoRA (mkshing/ziplora-pytorch): the merged UNet matches the style adapter on the style images and the
        content adapter on the content images; plus ``similarity_lambda · Σ mean|m_c ⊙ m_s|``."""
        style = self._distill_loss(model, batch, STYLE)
        ctx.backward(style)
        content = self._distill_loss(model, self._aux_batch(0, ctx.device), CONTENT)
        ctx.backward(content)
        sim = self.cfg.b4m.similarity_lambda * ziplora_loss(model, ZIPLORA)
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
    aux_digits: list[int] = field(default_factory=lambda: [1, 4, 7])
    num_content: int = 8
    num_style: int = 20
    num_aux: int = 10
    mnist_root: str | None = None  # default: the shared data (zoo.data.images.mnist)
    split: str = "test[:8000]"
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


@dataclass
class B4MDataConfig(RecipeConfig):
    recipe: str = "b4m_data"
    sets: B4MDataSection = field(default_factory=B4MDataSection)
    # not used here: lets one command line (model.pretrained=..., b4m.routing=...) serve every stage of the pipeline
    model: dict[str, Any] = field(default_factory=dict)
    b4m: dict[str, Any] = field(default_factory=dict)


@register_recipe("b4m_data")
class B4MDataRecipe(Recipe):
    """The first stage of ``configs/b4m/pipeline_t2i_mnist.yaml``: writes the image folders of the run into its
    run directory (``content/``, ``style/``, ``aux_style_<s>/``, ``aux_content_<d>/``, ``content_eval/``,
    ``joint/``; see :mod:`zoo.data.images.glyphs`), which the later stages read through ``${stage:data}``."""

    Config = B4MDataConfig

    def run(self, ctx: Any) -> dict[str, Any]:
        s = self.cfg.sets
        sets = build_b4m_sets(ctx.output_dir, glyph=s.glyph, style=s.style, aux_styles=s.aux_styles,
                              aux_digits=s.aux_digits, num_content=s.num_content, num_style=s.num_style,
                              num_aux=s.num_aux, root=s.mnist_root, split=s.split, seed=self.cfg.seed,
                              background=s.background)
        return {k: ([str(p) for p in v] if isinstance(v, list) else str(v)) for k, v in sets.items()}
