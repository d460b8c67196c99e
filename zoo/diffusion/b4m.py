"""Break-for-Make's stages on a diffusion UNet: which adapters a stage builds, what it trains and with which
optimiser, what it saves (the ``b4m`` recipe wires them to the data and the losses).

A stage is the PLP adapter method (:class:`~zoo.adapters.plp.PLPMethod`, ``adapter.name=plp``) in one of
:data:`STAGES` (:class:`B4MStage`):

* ``content`` / ``style`` — a PLP adapter ``plp``; one AdamW with two groups: the stage's own projection
  (``down``'s learnable columns ``D`` for content, ``up``'s learnable rows ``B`` for style) at ``optim.lr``, the
  other (trained by the auxiliary sets: MCP) at ``aux_lr``. Which loss reaches which projection is the recipe's
  routing (:func:`zoo.adapters.plp.only_projection`);
* ``merge`` — both stage-1 adapters loaded *after* the PLP initialisation (:func:`~zoo.adapters.plp.load_plp`),
  merged (:func:`~zoo.adapters.merge.merge_b4m`: style ``B``, content ``D``, shared frozen parts) into ``plp``
  and fine-tuned with AdamW on ``up`` and ``down`` (``stage2_optimizer="adamw"``: what the official stage 2
  effectively runs) or :class:`~zoo.adapters.adamwr.AdamWr` alone (``"adamwr"``: the paper's update);
* ``ziplora`` — ZipLoRA's learned mergers over the two frozen stage-1 adapters
  (:func:`~zoo.adapters.merge.add_ziplora`), trained with AdamW on :func:`ziplora_distill_loss` and the merger
  similarity; saved folded into a rank ``r_c + r_s`` diffusers LoRA file;
* ``joint`` — one PLP adapter (``adapter.frozen=0``: a plain LoRA) on content and style images together.

Deviations from the official code (ICTMCG/Break-for-make ``code/train_*.py``), on purpose:

* stage 2's optimiser is a choice (``b4m.stage2_optimizer``). The official builds AdamW(up), AdamW(down) and
  AdamWr(pairs) and steps all three in a row; the first two zero the gradients before AdamWr runs: replayed in plain
  PyTorch its AdamWr raises on ``None`` gradients, under accelerate it sees zeros and moves nothing, so the
  official's effective stage 2 is plain AdamW at 1e-4 (``adamw``, the default); ``adamwr`` runs AdamWr alone, the
  update the paper describes;
* the two sets of a stage-2 step get independent noise and timesteps (the official shares them);
* the frozen PLP parts are buffers (bitwise unchanged; the official's weight decay shrinks them slightly);
* auxiliary loaders restart from their beginning when a run resumes.
Reference: Xu et al., "Break-for-Make: Modular Low-Rank Adaptations for Composable Content-Style Customization",
arXiv 2403.19456 (ACM TOG 2025), official code ICTMCG/Break-for-make ``code/train_*.py``; ZipLoRA (Shah et al.
2023), community ``mkshing/ziplora-pytorch``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.adapters.plp import PLP, PLPConfig, PLPMethod, load_plp
from zoo.data.images.glyphs import GLYPHS
from zoo.data.images.style_digits import BACKGROUNDS, STYLES
from zoo.errors import ConfigError

__all__ = ["two_set_step", "ziplora_step", "LORA_FILE", "CONTENT", "STYLE", "ZIPLORA", "STAGES", "ROUTINGS", "STAGE2_OPTIMIZERS",
           "B4MStage",
           "ziplora_distill_loss", "B4MSection", "B4MDataSection", "snapshot_dir", "StepSnapshots"]

_logger = logging.getLogger("zoo")
LORA_FILE = "pytorch_lora_weights.safetensors"  # what every stage saves (diffusers' LoRA format)
CONTENT, STYLE, ZIPLORA = "b4m_content", "b4m_style", "ziplora"  # adapter names of the loaded stage-1 adapters
STAGES = ("content", "style", "merge", "ziplora", "joint")
ROUTINGS = ("separate", "official")  # stage 1: which projections each loss's gradient reaches
STAGE2_OPTIMIZERS = ("adamw", "adamwr")  # merge: the official's effective AdamW, or AdamWr alone (the paper's)


class B4MStage(PLPMethod):
    """The PLP adapter as stage ``stage`` of Break-for-Make trains it (see the module doc).

    Args:
        config: the ``adapter`` section (:class:`~zoo.adapters.plp.PLPConfig`).
        stage: one of :data:`STAGES`.
        content_adapter, style_adapter: the stage-1 run directories or LoRA files (``merge``, ``ziplora``).
        weights: initial scales ``(content D, style B)`` of the merge / ZipLoRA's initial mergers.
        aux_lr: stage 1's learning rate of the auxiliary projection.
        reg: AdamWr's preconditioner ridge (``merge``).
        stage2_optimizer: ``merge``'s optimiser, one of :data:`STAGE2_OPTIMIZERS`.
    """

    def __init__(self, config: PLPConfig, stage: str, *, content_adapter: str | None = None,
                 style_adapter: str | None = None, weights: Sequence[float] = (1.0, 1.0), aux_lr: float = 1e-5,
                 reg: float = 0.0, stage2_optimizer: str = "adamw"):
        super().__init__(config)
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got '{stage}'")
        if stage2_optimizer not in STAGE2_OPTIMIZERS:
            raise ValueError(f"stage2_optimizer must be one of {', '.join(STAGE2_OPTIMIZERS)}, "
                             f"got '{stage2_optimizer}'")
        self.stage2_optimizer = stage2_optimizer
        self.stage = stage
        self.content_adapter, self.style_adapter = content_adapter, style_adapter
        self.weights = tuple(float(w) for w in weights)
        self.aux_lr, self.reg = aux_lr, reg
        self.delta_names = (ZIPLORA if stage == "ziplora" else PLP,)  # the trained adapter

    @property
    def adapter(self) -> str:
        """The trained adapter: ``plp``, or ``ziplora`` (the mergers) in the ziplora stage."""
        return self.delta_names[0]

    def apply(self, unet: nn.Module) -> nn.Module:
        from zoo.adapters.merge import add_ziplora, merge_b4m

        if self.stage in ("merge", "ziplora"):
            load_plp(unet, self.content_adapter, self.config, name=CONTENT)
            load_plp(unet, self.style_adapter, self.config, name=STYLE)
        if self.stage == "merge":
            merge_b4m(unet, CONTENT, STYLE, name=PLP, weights=self.weights, remove_sources=True)
        elif self.stage == "ziplora":
            add_ziplora(unet, CONTENT, STYLE, name=ZIPLORA, weights=self.weights)
        else:
            super().apply(unet)
        return unet

    def configure_optimizer(self, unet: nn.Module, optim_cfg: Any, total_steps: Callable[[], int]) -> torch.optim.Optimizer:
        """The stage's optimiser (see the module doc); ``optim_cfg``: the recipe's ``optim`` section."""
        from zoo.adapters.adamwr import AdamWr, adamwr_groups
        from zoo.adapters.model import adapter_param_groups, adapter_parameters

        kw = dict(betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
        if self.stage == "ziplora":
            return torch.optim.AdamW(adapter_parameters(unet, [ZIPLORA]), lr=optim_cfg.lr, weight_decay=0.0, **kw)
        if self.stage == "joint" or (self.stage == "merge" and self.stage2_optimizer == "adamw"):
            return torch.optim.AdamW(adapter_parameters(unet, [PLP]), lr=optim_cfg.lr,
                                     weight_decay=optim_cfg.weight_decay, **kw)
        if self.stage == "merge":
            return AdamWr(adamwr_groups(unet, PLP), lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay, reg=self.reg,
                          **kw)
        main, aux = ("down", "up") if self.stage == "content" else ("up", "down")
        groups = adapter_param_groups(unet, {f"{PLP}.{main}": {"lr": optim_cfg.lr}, f"{PLP}.{aux}": {"lr": self.aux_lr}})
        return torch.optim.AdamW(groups, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay, **kw)

    def load_state_dict(self, unet: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Strict for the trained adapter (the frozen stage-1 adapters of ``merge`` / ``ziplora`` are not saved)."""
        from zoo.adapters.model import load_adapter_state_dict
        from zoo.errors import CheckpointError

        result = load_adapter_state_dict(unet, state, strict=False)
        bad = [k for k in result["missing"] if f".{self.adapter}." in k] + result["unexpected"]
        if bad:
            raise CheckpointError(f"checkpoint does not match the {self.adapter} adapter: {bad[:10]}")

    def save_pipeline_file(self, unet: nn.Module, directory: str | Path) -> Path:
        """diffusers' LoRA file of the trained adapter (ZipLoRA: the mergers folded into rank ``r_c + r_s``
        factors, the model unchanged)."""
        if self.adapter != ZIPLORA:
            return super().save_pipeline_file(unet, directory)
        from zoo.adapters.merge import ziplora_diffusers_state
        from zoo.files import write_safetensors_file

        return write_safetensors_file(ziplora_diffusers_state(unet, ZIPLORA), Path(directory) / self.pipeline_file,
                                      metadata={"format": "pt"})


def ziplora_distill_loss(model: nn.Module, denoise: Callable[[], torch.Tensor], teacher: str) -> torch.Tensor:
    """ZipLoRA's matching term: MSE between the merged UNet's prediction ``denoise()`` (with adapter
    ``ziplora`` active) and the ``teacher`` adapter's alone (no gradient) on the same inputs; the active adapters
    are ``[ziplora]`` afterwards."""
    from zoo.adapters.model import set_active_adapters

    try:
        set_active_adapters(model, [teacher])
        with torch.no_grad():
            target = denoise()
    finally:
        set_active_adapters(model, [ZIPLORA])
    return F.mse_loss(denoise().float(), target.float())


# ====================================================================================================== settings
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

    def required_main_root(self) -> str:
        """:meth:`main_root`, or a ``ConfigError`` naming the key to set when there is none."""
        if not self.main_root():
            key = {"content": "b4m.content_root (or data.root)", "joint": "data.root"}.get(
                self.stage, "b4m.style_root (or data.root)")
            raise ConfigError(f"{key} is required for b4m.stage={self.stage}: a folder of images with captions "
                              "(metadata.jsonl or same-name .txt files)")
        return self.main_root()

    def stage_method(self, config: PLPConfig) -> "B4MStage":
        """The PLP method ``config`` (the ``adapter`` section) as this stage trains it (:class:`B4MStage`)."""
        return B4MStage(config, self.stage, content_adapter=self.content_adapter, style_adapter=self.style_adapter,
                        weights=(self.content_weight, self.style_weight), aux_lr=self.aux_lr, reg=self.reg,
                        stage2_optimizer=self.stage2_optimizer)

    def second_roots(self) -> list[str]:
        """The folders of the stage's second loss: auxiliary sets (stage 1) or the content images (merge, ziplora)."""
        if self.stage in ("merge", "ziplora"):
            return [self.content_root] if self.content_root else []
        if self.stage == "joint":
            return []
        return list(self.style_aux_roots if self.stage == "content" else self.content_aux_roots)

    def check_inputs(self, caption_column: str | None = None, image_column: str | None = None) -> None:
        """The stage-1 runs a ``merge`` / ``ziplora`` stage loads and its content images are given and hold a
        :data:`LORA_FILE`, and every second set is a folder of captioned images (``caption_column`` /
        ``image_column`` of its ``metadata.jsonl``); ``ConfigError`` naming the key otherwise. Warns when stage 1's
        auxiliary projection cannot learn (``aux_lr`` 0)."""
        from zoo.data.images.folder import find_captioned_images

        two_sets = self.stage in ("merge", "ziplora")
        for key in ("content_root", "content_adapter", "style_adapter") if two_sets else ():
            if not getattr(self, key):
                raise ConfigError(f"b4m.{key} is required for b4m.stage={self.stage} (the content images / the "
                                  "stage-1 run directories; configs/b4m/pipeline_*.yaml sets the adapters with "
                                  "${stage:NAME})")
        for key in ("content_adapter", "style_adapter") if two_sets else ():
            p = Path(getattr(self, key))
            if not (p / LORA_FILE).is_file() and not p.is_file():
                raise ConfigError(f"b4m.{key}: no {LORA_FILE} in {p} (run the stage-1 {key.split('_')[0]} stage "
                                  "first)")
        if not two_sets and self.second_roots() and not self.aux_lr:
            _logger.warning("b4m.aux_lr is 0: the auxiliary projection does not learn")
        key = {"content": "b4m.style_aux_roots", "style": "b4m.content_aux_roots"}.get(self.stage, "b4m.content_root")
        for i, root in enumerate(self.second_roots()):
            try:
                find_captioned_images(root, caption_column=caption_column, image_column=image_column)
            except (ValueError, FileNotFoundError) as exc:
                msg = str(exc).replace(" (config key data.root)", "")
                raise ConfigError(f"{key}{'' if two_sets else f'[{i}]'}: {msg}") from None


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


# ====================================================================================================== steps
def two_set_step(model: nn.Module, stage: str, routing: str, main: Callable[[], torch.Tensor],
                 second: Sequence[Callable[[], torch.Tensor]],
                 backward: Callable[[torch.Tensor], None]) -> dict[str, torch.Tensor]:
    """The backward passes of one step of a two-set stage: ``main()`` is the stage's own loss (content / style
    images; merge: the style images), ``second[i]()`` the loss on the ``i``-th second set (stage 1: the auxiliary
    sets, whose mean counts; merge: the content images). Stage 1 routes the main loss to its own projection and the
    auxiliary mean to the other (:func:`~zoo.adapters.plp.only_projection`; ``routing="official"``: both reach
    both); ``merge`` back-propagates both into the merged adapter. One graph alive at a time. Returns the losses
    to log (``loss`` their sum)."""
    from zoo.adapters.plp import only_projection

    if stage == "merge":
        style = main()
        backward(style)
        content = second[0]()
        backward(content)
        return {"loss": (style + content).detach(), "loss_style": style.detach(), "loss_content": content.detach()}
    main_proj, aux_proj = ("down", "up") if stage == "content" else ("up", "down")
    if routing == "official":  # both losses reach both projections (the two groups' lrs differ)
        main_proj = aux_proj = None
    with only_projection(model, main_proj):
        loss = main()
        backward(loss)
    out = {"loss_main": loss.detach()}
    if second:
        aux = 0.0
        with only_projection(model, aux_proj):
            for term_fn in second:  # one graph at a time; the gradients add up to the mean's
                term = term_fn() / len(second)
                backward(term)
                aux = aux + term.detach()
        out["loss_aux"] = aux
    out["loss"] = sum(out.values())
    return out


def ziplora_step(model: nn.Module, style: Callable[[], Callable[[], torch.Tensor]],
                 content: Callable[[], Callable[[], torch.Tensor]], similarity_lambda: float,
                 backward: Callable[[torch.Tensor], None]) -> dict[str, torch.Tensor]:
    """One ZipLoRA step (mkshing/ziplora-pytorch): the merged UNet matches the style adapter on the style images and
    the content adapter on the content images (:func:`ziplora_distill_loss`), plus ``similarity_lambda ·
    Σ mean|m_c ⊙ m_s|`` of the mergers; three backward passes. ``style()`` / ``content()`` noise one batch of their
    set and return the UNet's prediction on it (called in that order, each when its term is due)."""
    from zoo.adapters.merge import ziplora_loss

    style_loss = ziplora_distill_loss(model, style(), STYLE)
    backward(style_loss)
    content_loss = ziplora_distill_loss(model, content(), CONTENT)
    backward(content_loss)
    sim = similarity_lambda * ziplora_loss(model, ZIPLORA)
    backward(sim)
    return {"loss": (style_loss + content_loss + sim).detach(), "loss_style": style_loss.detach(),
            "loss_content": content_loss.detach(), "loss_similarity": sim.detach()}


# ====================================================================================================== snapshots
def snapshot_dir(run_dir: str | Path, step: int) -> Path:
    """Where a stage writes its adapter after ``step`` optimiser steps (``b4m.snapshot_every``):
    ``<run_dir>/steps/step<step>`` (five digits)."""
    return Path(run_dir) / "steps" / f"step{step:05d}"


class StepSnapshots:
    """The trained adapter's tensors every ``every`` optimiser steps (``grad_accum`` training batches a step), kept
    in memory (small: the PLP factors) and written by :meth:`write` at the end of the run (the official saves a
    stage-2 checkpoint every 50 steps, for choosing the step on validation). ``every`` None: nothing is kept."""

    def __init__(self, every: int | None, grad_accum: int = 1):
        self.every, self.grad_accum = every, grad_accum
        self.micro_steps = 0  # training batches seen
        self.states: dict[int, dict[str, torch.Tensor]] = {}  # optimiser step -> the adapter's tensors

    def before_batch(self, method: Any, model: nn.Module) -> None:
        """Before a training batch: when ``every`` optimiser steps have just completed, keep a copy of ``method``'s
        tensors of ``model`` (a DDP wrapper is unwrapped) as they are after them; then count the batch."""
        if self.every and not self.micro_steps % self.grad_accum:
            step = self.micro_steps // self.grad_accum
            if step and step % self.every == 0 and step not in self.states:
                unet = getattr(model, "module", model)
                self.states[step] = {k: v.detach().cpu().clone() for k, v in method.state_dict(unet).items()}
        self.micro_steps += 1

    def write(self, method: Any, unet: nn.Module, save: Callable[[nn.Module, Path], Any], run_dir: str | Path) -> None:
        """Load each kept state into ``unet`` and ``save(unet, snapshot_dir(run_dir, step))``; ``unet`` gets its own
        tensors back afterwards (also on an error)."""
        if not self.states:
            return
        final = {k: v.detach().clone() for k, v in method.state_dict(unet).items()}
        try:
            for step, state in sorted(self.states.items()):
                method.load_state_dict(unet, state)
                save(unet, snapshot_dir(run_dir, step))
        finally:
            method.load_state_dict(unet, final)

    def state_dict(self) -> dict[str, Any]:
        """What ``last.pt`` keeps of it (a resumed run continues the count and the kept states)."""
        return {"micro_steps": self.micro_steps, "snapshots": self.states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.micro_steps = int(state.get("micro_steps", 0))
        self.states = dict(state.get("snapshots", {}))
