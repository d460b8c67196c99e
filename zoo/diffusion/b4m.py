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

Reference: Xu et al., "Break-for-Make: Modular Low-Rank Adaptations for Composable Content-Style Customization",
arXiv 2403.19456 (ACM TOG 2025), official code ICTMCG/Break-for-make ``code/train_*.py``; ZipLoRA (Shah et al.
2023), community ``mkshing/ziplora-pytorch``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.adapters.plp import PLP, PLPConfig, PLPMethod, load_plp

__all__ = ["CONTENT", "STYLE", "ZIPLORA", "STAGES", "ROUTINGS", "STAGE2_OPTIMIZERS", "B4MStage",
           "ziplora_distill_loss"]

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
