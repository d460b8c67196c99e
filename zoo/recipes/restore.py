"""Image restoration: pre-training (e.g. PROD) and adaptation (full fine-tuning, uniform LoRA, CoLoRA), PSNR / SSIM.

Recipes:

* ``restore`` -- train a restoration model on ``(lq, gt)`` pairs with an L1, MSE or PSNR loss (NAFNet's PSNRLoss,
  ``10/ln10 · mean_b log(mse_b + 1e-8)``), evaluate PSNR / SSIM with BasicSR's conventions
  (:mod:`zoo.metrics.image`; outputs clamped to [0, 1] and rounded to 8 bits, as saved PNGs are) on whole images,
  optionally with tiled inference (``eval.tile`` / ``eval.tile_overlap``). ``init_checkpoint`` starts from
  pre-trained weights; ``method.name`` picks what trains: ``full`` (every parameter), ``lora`` (uniform LoRA on
  every conv at ``method.budget``), ``colora`` (a short full fine-tuning probe of ``method.probe_steps``, FAIG
  contributions over ``method.faig_batches`` training batches with ``method.faig_steps`` path points, per-layer
  ranks under the same budget: :mod:`zoo.adapters.colora`). Only the adapters train (from the pre-trained
  weights); the allocation is written to ``colora_allocation.json`` in the run directory. Metrics include
  ``trainable_params`` and ``tuned_percent``.
* ``restore_eval`` -- evaluate ``init_checkpoint`` as it is (the "no adaptation" row of a study); owns its run.

:func:`tiled_forward` runs a model tile by tile (``tile`` pixels with at least ``overlap`` shared between
neighbours); every output pixel is taken from the tile in which it lies farthest from a tile edge (the overlaps
are split in the middle), so the result equals the whole-image output exactly for a model whose receptive-field
radius is at most ``overlap // 2`` (and approximately for NAFNet, whose channel attention is global).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.data import build_dataset
from zoo.engine.data import build_loader
from zoo.errors import ConfigError
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.registry import create_model

__all__ = ["tiled_forward", "tile_starts", "psnr_loss", "restoration_loss", "DatasetSpec", "RestoreDataConfig",
           "RestoreLossConfig", "AdaptMethodConfig", "RestoreEvalConfig", "RestoreConfig", "RestoreRecipe",
           "RestoreEvalRecipe", "load_init_weights"]

_logger = logging.getLogger("zoo")


# ================================================================================================ tiled inference
def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` with at least ``overlap`` shared between
    neighbours; the last tile ends at ``size``. One tile at 0 when ``tile >= size``."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    if stride < 1:
        raise ValueError(f"tile_overlap ({overlap}) must be smaller than tile ({tile})")
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _regions(starts: list[int], tile: int, size: int) -> list[tuple[int, int]]:
    """The part ``[lo, hi)`` of the output each tile provides: overlaps split at their middle."""
    out = []
    for i, s in enumerate(starts):
        lo = 0 if i == 0 else (s + min(starts[i - 1] + tile, size)) // 2
        hi = size if i == len(starts) - 1 else (starts[i + 1] + min(s + tile, size)) // 2
        out.append((lo, hi))
    return out


@torch.no_grad()
def tiled_forward(model: nn.Module, x: torch.Tensor, tile: int, overlap: int = 32) -> torch.Tensor:
    """``model`` applied tile by tile, ``(B, C, H, W) -> (B, C', H, W)`` for a same-size image-to-image model.

    Tiles are ``tile x tile`` (clipped to the image), neighbours share at least ``overlap`` pixels, and each output
    pixel comes from the tile where it is farthest from an inner tile edge (at least ``overlap // 2`` pixels of
    context on every side). ``tile <= 0`` runs the whole image at once.
    """
    if tile <= 0:
        return model(x)
    if x.ndim != 4:
        raise ValueError(f"tiled_forward expects (B, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    ry, rx = _regions(ys, th, h), _regions(xs, tw, w)
    out = None
    for y, (y0, y1) in zip(ys, ry):
        for xx, (x0, x1) in zip(xs, rx):
            piece = model(x[:, :, y:y + th, xx:xx + tw])
            if out is None:
                out = piece.new_zeros(x.shape[0], piece.shape[1], h, w)
            out[:, :, y0:y1, x0:x1] = piece[:, :, y0 - y:y1 - y, x0 - xx:x1 - xx]
    return out


# ================================================================================================ losses
def psnr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NAFNet's PSNRLoss (loss weight 1): ``10 / ln 10 · mean_b log(mean_chw (pred - target)² + 1e-8)``, i.e. minus
    the mean PSNR (dB, peak 1) up to the 1e-8; ``(B, C, H, W)`` each."""
    mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
    return 10.0 / math.log(10.0) * torch.log(mse + 1e-8).mean()


def restoration_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``"l1"``, ``"mse"`` or ``"psnr"`` (:func:`psnr_loss`) between ``(B, C, H, W)`` tensors."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "psnr":
        return psnr_loss(pred, target)
    raise ValueError(f"unknown loss '{kind}'; choose l1, mse or psnr")


# ================================================================================================ config
@dataclass
class DatasetSpec:
    """A dataset by registry name: ``name``, ``root``, ``split`` and its keyword arguments."""

    name: str = "degraded_patches"
    root: Any = None  # a folder, a list of folders, or "a,b" (degraded_* datasets)
    split: str = "all"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RestoreDataConfig:
    """Config section ``data``: the training and evaluation datasets and loader settings."""

    train: DatasetSpec = field(default_factory=DatasetSpec)
    eval: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="degraded_images"))
    batch_size: int = 8
    num_workers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers!r}")


@dataclass
class RestoreLossConfig:
    """Config section ``loss``: ``type`` l1 | mse | psnr."""

    type: str = "l1"

    def __post_init__(self) -> None:
        if self.type not in ("l1", "mse", "psnr"):
            raise ConfigError(f"loss.type must be l1, mse or psnr, got {self.type!r}")


@dataclass
class AdaptMethodConfig:
    """Config section ``method``: what trains. ``full``; ``lora`` (uniform, ``uniform_mode`` ratio | rank);
    ``colora`` (FAIG ranks). ``budget``: LoRA parameters, an int or a fraction of the model's parameters."""

    name: str = "full"
    budget: float = 0.07
    alpha: float = 1.0  # CoLoRA: contribution exponent
    beta: float = 0.2  # CoLoRA: share of the budget spread uniformly (by layer size)
    uniform_mode: str = "ratio"
    probe_steps: int = 50  # CoLoRA: full fine-tuning steps of the probe model FAIG compares with
    probe_lr: float = 1e-4
    faig_steps: int = 20  # M, points on the integration path (FAIG's default 100)
    faig_batches: int = 2

    def __post_init__(self) -> None:
        if self.name not in ("full", "lora", "colora"):
            raise ConfigError(f"method.name must be full, lora or colora, got {self.name!r}")
        if self.uniform_mode not in ("ratio", "rank"):
            raise ConfigError(f"method.uniform_mode must be ratio or rank, got {self.uniform_mode!r}")
        if not self.budget > 0:
            raise ConfigError(f"method.budget must be > 0 (parameters or a fraction), got {self.budget!r}")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"method.beta must be in [0, 1], got {self.beta!r}")
        for key in ("probe_steps", "faig_steps", "faig_batches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {getattr(self, key)!r}")


@dataclass
class RestoreEvalConfig:
    """Config section ``eval``: tiled inference and metric conventions."""

    tile: int = 0  # 0: whole images
    tile_overlap: int = 32
    crop_border: int = 0
    test_y_channel: bool = False
    save_images: int = 0  # final evaluation: write the first N (input | output | gt) triplets as PNG

    def __post_init__(self) -> None:
        if self.tile and self.tile_overlap >= self.tile:
            raise ConfigError(f"eval.tile_overlap ({self.tile_overlap}) must be smaller than eval.tile ({self.tile})")
        if self.tile < 0 or self.tile_overlap < 0 or self.crop_border < 0:
            raise ConfigError("eval.tile, eval.tile_overlap and eval.crop_border must be >= 0")


@dataclass
class RestoreConfig(RecipeConfig):
    """Config of the ``restore`` / ``restore_eval`` recipes."""

    recipe: str = "restore"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "nafnet_tiny"})
    init_checkpoint: str | None = None  # a run's best.pt / last.pt, or a weights file (official .pth included)
    data: RestoreDataConfig = field(default_factory=RestoreDataConfig)
    loss: RestoreLossConfig = field(default_factory=RestoreLossConfig)
    method: AdaptMethodConfig = field(default_factory=AdaptMethodConfig)
    eval: RestoreEvalConfig = field(default_factory=RestoreEvalConfig)


def load_init_weights(model: nn.Module, path: str) -> None:
    """Load ``path`` into ``model`` strictly: a run checkpoint (``{"model": state}``), an official
    ``{'params': state}`` file, or a plain state dict / safetensors file (unwrapped by :func:`zoo.hub.clean_state_dict`)."""
    from zoo.hub import clean_state_dict, load_state_dict_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"init_checkpoint not found: {p} (config key init_checkpoint)")
    result = model.load_state_dict(clean_state_dict(load_state_dict_file(p)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"init_checkpoint {p} does not match {type(model).__name__}: missing "
                           f"{result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}")


# ================================================================================================ recipes
@register_recipe("restore")
class RestoreRecipe(Recipe):
    """Restoration training / adaptation and PSNR / SSIM evaluation (see the module doc)."""

    Config = RestoreConfig
    main_metric = "psnr"

    def __init__(self, cfg: RestoreConfig):
        super().__init__(cfg)
        if "name" not in cfg.model:
            raise ConfigError("config section 'model' needs a 'name' (a registered model, e.g. nafnet_tiny)")
        self.allocation: dict[str, Any] | None = None
        self._known_ranks: dict[str, int] | None = None  # ranks read back from a run's colora_allocation.json

    # ---------------------------------------------------------------- data
    def _dataset(self, spec: DatasetSpec):
        return build_dataset(spec.name, root=spec.root, split=spec.split, **spec.kwargs)

    @cached_property
    def train_dataset(self):
        return self._dataset(self.cfg.data.train)

    @cached_property
    def eval_dataset(self):
        return self._dataset(self.cfg.data.eval)

    def build_dataloaders(self):
        d = self.cfg.data
        train = build_loader(self.train_dataset, d.batch_size, shuffle=True, seed=self.cfg.seed,
                             num_workers=d.num_workers, drop_last=len(self.train_dataset) > d.batch_size,
                             collate_fn=_collate)
        return train, self.build_eval_loader()

    def build_eval_loader(self):
        return build_loader(self.eval_dataset, 1, shuffle=False, num_workers=self.cfg.data.num_workers,
                            collate_fn=_collate)

    # ---------------------------------------------------------------- model
    def _base_model(self, **load: Any) -> nn.Module:
        kwargs = dict(self.cfg.model)
        return create_model(kwargs.pop("name"), **kwargs, **load)

    def build_model(self) -> nn.Module:
        model = self._base_model()
        if self.cfg.init_checkpoint:
            load_init_weights(model, self.cfg.init_checkpoint)
        m = self.cfg.method
        if m.name == "full":
            return model
        from zoo.adapters.colora import (add_colora, colora_ranks, conv_layers, lora_param_count, resolve_budget,
                                         uniform_ranks)

        total = sum(p.numel() for p in model.parameters())
        budget = resolve_budget(model, m.budget)
        info: dict[str, Any] = {"method": m.name, "budget": budget, "model_params": total}
        if self._known_ranks is not None:
            ranks = dict(self._known_ranks)
        elif m.name == "lora":
            ranks = uniform_ranks(model, None, budget, mode=m.uniform_mode)
        else:
            contrib = self._contributions(model)
            ranks = colora_ranks(model, contrib, budget, alpha=m.alpha, beta=m.beta)
            info["contributions"] = contrib
        convs = conv_layers(model)
        info["ranks"] = ranks
        info["lora_params"] = lora_param_count(convs, ranks)
        add_colora(model, ranks, name=m.name)
        self.allocation = info
        return model

    def _contributions(self, model: nn.Module) -> dict[str, float]:
        """CoLoRA's probe: fine-tune a copy of ``model`` (all parameters) for ``probe_steps``, then FAIG between
        ``model`` (baseline) and the probe (target) on ``faig_batches`` training batches."""
        import copy

        from zoo.adapters.colora import faig, layer_contributions

        m = self.cfg.method
        gen_state = torch.get_rng_state()
        torch.manual_seed(self.cfg.seed)
        try:
            loader = build_loader(self.train_dataset, self.cfg.data.batch_size, shuffle=True, seed=self.cfg.seed + 1,
                                  drop_last=len(self.train_dataset) > self.cfg.data.batch_size, collate_fn=_collate)
            probe = copy.deepcopy(model).train()
            opt = torch.optim.Adam(probe.parameters(), lr=m.probe_lr)
            step, batches = 0, []
            while step < m.probe_steps:
                for batch in loader:
                    if len(batches) < m.faig_batches:
                        batches.append((batch["lq"], batch["gt"]))
                    loss = restoration_loss(self.cfg.loss.type, probe(batch["lq"]), batch["gt"])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    if step >= m.probe_steps:
                        break
            probe.eval()
            scores = faig(copy.deepcopy(model).eval(), model.state_dict(), probe.state_dict(), batches,
                          steps=m.faig_steps)
        finally:
            torch.set_rng_state(gen_state)
        return layer_contributions(scores)

    def build_eval_model(self, model_name: str | None = None, pretrained: bool = False,
                         checkpoint_path: str | None = None) -> nn.Module:
        if self.cfg.method.name != "full" and checkpoint_path:
            alloc = Path(checkpoint_path).parent / "colora_allocation.json"
            if alloc.is_file():  # the run's own ranks (no probe / FAIG to redo)
                self._known_ranks = {k: int(v) for k, v in json.loads(alloc.read_text())["ranks"].items()}
            model = self.build_model()  # the adapter structure, then the trained weights
            load_init_weights(model, checkpoint_path)
            return model
        kwargs = dict(self.cfg.model)
        name = model_name or kwargs.pop("name")
        kwargs.pop("name", None)
        model = create_model(name, pretrained=pretrained, **kwargs)
        if checkpoint_path:
            load_init_weights(model, checkpoint_path)
        return model

    # ---------------------------------------------------------------- steps
    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        out = model(batch["lq"])
        loss = restoration_loss(self.cfg.loss.type, out.float(), batch["gt"].float())
        return {"loss": loss}

    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, float]:
        from zoo.metrics.image import psnr, ssim

        ev = self.cfg.eval
        kw = dict(crop_border=ev.crop_border, test_y_channel=ev.test_y_channel, quantize=True)
        sums = torch.zeros(4, dtype=torch.float64)
        n = 0
        saved = []
        for batch in loader:
            lq, gt = batch["lq"].to(accelerator.device), batch["gt"].to(accelerator.device)
            out = tiled_forward(model, lq, ev.tile, ev.tile_overlap).clamp(0, 1)
            p, s = psnr(out, gt, **kw), ssim(out, gt, **kw)
            p0, s0 = psnr(lq, gt, **kw), ssim(lq, gt, **kw)
            sums += torch.stack([p.sum(), s.sum(), p0.sum(), s0.sum()])
            n += len(p)
            if len(saved) < ev.save_images:
                saved.append((batch["name"][0], lq[0].cpu(), out[0].cpu(), gt[0].cpu()))
        metrics = {"psnr": float(sums[0] / n), "ssim": float(sums[1] / n), "input_psnr": float(sums[2] / n),
                   "input_ssim": float(sums[3] / n), "images": n}
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        base = sum(p.numel() for name, p in model.named_parameters() if ".deltas." not in name)
        metrics.update(trainable_params=trainable, tuned_percent=100.0 * trainable / max(base, 1))
        if output_dir is not None and accelerator.is_main_process:
            out_dir = Path(output_dir)
            if self.allocation is not None:
                (out_dir / "colora_allocation.json").write_text(json.dumps(self.allocation, indent=2))
            if saved:
                _save_triplets(saved, out_dir / "images")
        return metrics


@register_recipe("restore_eval")
class RestoreEvalRecipe(RestoreRecipe):
    """Evaluate ``init_checkpoint`` (or the bare model) on ``data.eval`` without training: writes ``metrics.json``."""

    def run(self, ctx: Any) -> dict[str, Any]:
        from types import SimpleNamespace

        model = self._base_model()
        if self.cfg.init_checkpoint:
            load_init_weights(model, self.cfg.init_checkpoint)
        model.eval()
        acc = SimpleNamespace(device=torch.device("cpu"), is_main_process=True)
        with torch.no_grad():
            metrics = self.evaluate(model, self.build_eval_loader(), acc, output_dir=ctx.output_dir)
        metrics["trainable_params"], metrics["tuned_percent"] = 0, 0.0
        ctx.write_metrics(metrics)
        return metrics


def _collate(items: list[dict]) -> dict[str, Any]:
    return {"lq": torch.stack([i["lq"] for i in items]), "gt": torch.stack([i["gt"] for i in items]),
            "name": [i["name"] for i in items]}


def _save_triplets(saved: list, folder: Path) -> None:
    """``<name>.png``: input | output | ground truth side by side (8-bit)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, *imgs in saved:
        row = torch.cat(imgs, dim=2).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(row).save(folder / f"{str(name).replace('/', '_').replace(':', '_')}.png")
