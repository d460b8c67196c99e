"""Break-for-Make (Xu et al., 2024 / ACM TOG 2025) on the ``sd_finetune`` recipe: the stages of :mod:`zoo.diffusion.b4m`
(``b4m.stage``: ``content``, ``style``, ``merge``; baselines ``ziplora``, ``joint``), each an ordinary resumable run
(``configs/b4m/pipeline_*.yaml`` chains them with ``${stage:NAME}``), a PLP adapter (``adapter.name=plp``).

Config keys. A stage's main set is ``data.root``, else ``b4m.content_root`` (content) / ``b4m.style_root`` (style,
merge, ziplora). Its second sets are MCP's auxiliary sets (``b4m.style_aux_roots`` in the content stage,
``b4m.content_aux_roots`` in the style stage; the auxiliary projection learns at ``b4m.aux_lr``, official 1e-5, the
stage's own at ``optim.lr``, official 1e-4; ``b4m.routing``: ``official`` -- both losses reach both projections,
as the official's two optimisers on accumulated gradients do; ``separate`` -- each loss its own projection, the
paper's description) or the content images (merge, ziplora). ``merge`` and ``ziplora`` load ``b4m.content_adapter``
/ ``b4m.style_adapter`` (stage-1 run directories or LoRA files); ``merge`` steps ``b4m.stage2_optimizer``
(``adamw``: the official's effective stage 2, or ``adamwr`` with ``b4m.reg``) and, with ``b4m.snapshot_every``,
writes the adapter every N steps to ``steps/step<N>/`` for choosing the step on validation; ``ziplora`` weighs the
merger similarity by ``b4m.similarity_lambda``; ``joint`` trains one adapter on ``data.root`` holding both sets
(``adapter.frozen=0``: a plain LoRA).

Each stage saves ``pytorch_lora_weights.safetensors`` (diffusers' format: ``pipe.load_lora_weights`` and
``tools/sample.py`` read it) and ``samples.png``. Deviations from the official code, on purpose:
:mod:`zoo.diffusion.b4m`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from zoo.config import ConfigError
from zoo.data.images.folder import CaptionedImageFolder
from zoo.data.images.glyphs import build_b4m_sets
from zoo.diffusion.b4m import B4MDataSection, B4MSection, StepSnapshots, two_set_step, ziplora_step
from zoo.data.loader import build_loader, cycle_loader
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.recipes.sd_finetune import SDFinetuneConfig, SDFinetuneRecipe

__all__ = ["B4MConfig", "B4MRecipe", "B4MDataConfig", "B4MDataRecipe"]


@dataclass
class B4MConfig(SDFinetuneConfig):
    recipe: str = "b4m"
    adapter: dict[str, Any] = field(default_factory=lambda: {"name": "plp"})  # adapter.name=plp + PLP's config
    b4m: B4MSection = field(default_factory=B4MSection)


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
        d.root = d.root or b.required_main_root()
        super().__init__(cfg)
        self.adapter = b.stage_method(self.adapter.config)
        b.check_inputs(d.caption_column, d.image_column)
        self._aux_iters: list[Iterator[Any]] | None = None
        self._snapshots = StepSnapshots(b.snapshot_every, cfg.trainer.grad_accum_steps)  # b4m.snapshot_every

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
                cycle_loader(build_loader(self._folder(root), b.aux_batch_size or d.batch_size, shuffle=True,
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
        b = self.cfg.b4m
        self._snapshots.before_batch(self.adapter, model)
        n_aux = len(b.second_roots())
        if b.stage == "ziplora":
            return ziplora_step(model, lambda: self._denoiser(model, batch),
                                lambda: self._denoiser(model, self._aux_batch(0, ctx.device)), b.similarity_lambda,
                                ctx.backward)
        if b.stage == "joint":
            return super().train_step(model, batch, ctx)
        second = [lambda i=i: self._loss(model, self._aux_batch(i, ctx.device)) for i in range(n_aux)]
        return two_set_step(model, b.stage, b.routing, lambda: self._loss(model, batch), second, ctx.backward)

    def save_outputs(self, model: nn.Module, output_dir: Any) -> dict[str, Any]:
        """:meth:`SDFinetuneRecipe.save_outputs`, and each snapshot of ``b4m.snapshot_every`` as
        ``<run>/steps/step<N>/pytorch_lora_weights.safetensors`` (the official saves a checkpoint every 50 stage-2
        steps; the last step is the run's own file)."""
        values = super().save_outputs(model, output_dir)
        self._snapshots.write(self.adapter, model, self.save_adapter, output_dir)
        return values

    def recipe_state(self) -> dict[str, Any]:
        return self._snapshots.state_dict()

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        self._snapshots.load_state_dict(state)

    def _denoiser(self, model: nn.Module, batch: Any) -> Any:
        """The UNet's prediction on ``batch`` noised at random timesteps, as a call (ZipLoRA asks it twice)."""
        from zoo.diffusion.denoising import add_training_noise

        latents, text, cond = self._encode(batch, sample=True)
        noisy, _, t = add_training_noise(self.components.noise_scheduler, latents)
        return lambda: model(noisy, t, text, added_cond_kwargs=cond, return_dict=False)[0]


# ====================================================================================================== data stage
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
