"""Continual test-time adaptation (CTTA): a source model meets a stream of corrupted domains and adapts online.

Recipes:

* ``ctta`` — the stream: domains one after the other (``continual``, no reset: the CoTTA / ViDA protocol),
  ``reset_each_shift`` (back to the source model at every domain: episodic per domain) or ``mixed_domains``
  (all domains shuffled into one stream, errors still counted per corruption). Every batch is **scored before
  the update it causes**; error per domain and mean go to ``metrics.json``, ``stream/stream.csv``,
  ``errors.csv`` and ``errors.png``. Methods behind one interface (:class:`Method`, registered with
  :func:`register_method`): ``source``, ``bn_adapt``, ``tent``, ``cotta``, ``vida``.
* ``ctta_source`` — trains the source model (the ``classify`` recipe on images made uint8 RGB ``rgb_size``², the
  format of the corrupted stream; MNIST 28×28 grey is padded to 32×32 RGB);
* ``vida_warmup`` — the "source ViDA model" step of the official repo (its issues #7/#8; script not released):
  adapters trained on source data with the backbone frozen (cross-entropy on augmented source images).

Each method owns its optimiser (built once the model is on its device, saved in ``last.pt`` through
``recipe_state``): CoTTA and ViDA must update the EMA teacher and stochastically restore weights *after* the
optimiser step of the same batch, which a step driven by ``ctx.backward`` (the Trainer steps after ``train_step``
returns) cannot do. ``optim`` / ``schedule`` sections are therefore not used by ``ctta``.
"""
from __future__ import annotations

import copy
import csv
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zoo.data import build_dataset
from zoo.data.images.cifar_c import ArrayImageDataset, images_as_uint8_rgb
from zoo.data.images.corruptions import CORRUPTIONS
from zoo.engine.data import build_loader
from zoo.errors import ConfigError
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.recipes.classify import ClassifyConfig, ClassifyRecipe
from zoo.registry import create_model

__all__ = [
    "CTTADataConfig", "CTTAMethodConfig", "CTTAConfig", "CTTARecipe", "Method", "METHODS", "register_method",
    "tta_augment", "softmax_cross_entropy", "ema_update", "stochastic_restore", "CTTASourceRecipe",
    "ViDAWarmupRecipe",
]

_logger = logging.getLogger("zoo")
PROTOCOLS = ("continual", "reset_each_shift", "mixed_domains")


# ============================================================================================ config
@dataclass
class CTTADataConfig:
    """Config section ``data``: the corrupted domains (a dataset whose ``split`` is the corruption name)."""

    name: str = "cifar10_c"  # cifar10_c | cifar100_c (any directory in the released .npy layout)
    root: str | None = None
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))  # the stream order
    severity: int = 5
    num_examples: int | None = None  # per domain (None: all, 10,000 for CIFAR)
    batch_size: int = 40  # the official ViDA CIFAR batch
    shuffle: bool = False  # order within a domain (seeded); mixed_domains always shuffles
    num_workers: int = 0
    input_size: int | None = None  # bilinear resize on the device (the official ViT-B/16 runs CIFAR at 384)

    def __post_init__(self) -> None:
        if not 1 <= int(self.severity) <= 5:
            raise ConfigError(f"data.severity must be in 1..5, got {self.severity!r}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size!r}")
        if not self.corruptions:
            raise ConfigError("data.corruptions is empty; list at least one domain")
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise ConfigError(f"data.corruptions: unknown {unknown}; choose from {', '.join(CORRUPTIONS)}")


@dataclass
class CTTAMethodConfig:
    """Config section ``method``. Defaults are the official ones (ViDA ``cifar/cfgs/cifar10/vida.yaml`` +
    ``cifar/conf.py``; CoTTA ``cifar/cfgs/cifar10/cotta.yaml``; Tent / CoTTA learning rate 1e-3)."""

    name: str = "vida"  # source | bn_adapt | tent | cotta | vida
    protocol: str = "continual"  # continual | reset_each_shift | mixed_domains
    lr: float | None = None  # Adam; default tent 1e-3, cotta 1e-3, vida 1e-4 (the model's parameters)
    adapter_lr: float = 1e-5  # vida: the adapters' learning rate (official ViDALR)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    ema: float = 0.999  # teacher EMA rate (official MT)
    ema_adapter: float = 0.999  # vida: EMA rate of the adapter weights (official MT_ViDA)
    restore_prob: float | None = None  # stochastic restore; default cotta 0.01, vida 0.1 (official CIFAR code)
    num_aug: int | None = None  # teacher passes over augmented views; default cotta 32, vida 10
    aug_threshold: float = 0.92  # cotta: augment only when the anchor's mean confidence is below (official AP)
    unc_threshold: float = 0.05  # vida: HKA threshold (official --unc_thr, 0.05 CIFAR, 0.2 ImageNet)
    hka: str = "paper"  # paper (both scales) | official (only the low adapter's scale, the released code)
    per_sample_uncertainty: bool = False  # vida: one uncertainty per sample instead of per batch (official)
    low_rank: int = 1
    high_rank: int = 128
    adapter_targets: list[str] | None = None  # default: Linear layers of attention modules (official)
    vida_checkpoint: str | None = None  # the warm-up ("source ViDA") checkpoint: ours or the official layout
    train: str = "all"  # vida: all (official: whole model + adapters) | adapters
    aug_noise_std: float = 0.005  # the official augmentation's Gaussian noise
    aug_flip: bool = True  # the official augmentation's horizontal flip (false: a deviation, e.g. for digits)

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ConfigError(f"method.name must be one of {', '.join(METHODS)}, got {self.name!r}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"method.protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.hka not in ("paper", "official"):
            raise ConfigError(f"method.hka must be 'paper' or 'official', got {self.hka!r}")
        if self.train not in ("all", "adapters"):
            raise ConfigError(f"method.train must be 'all' or 'adapters', got {self.train!r}")
        for key in ("ema", "ema_adapter"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"method.{key} must be in [0, 1], got {getattr(self, key)!r}")
        if self.restore_prob is not None and not 0 <= self.restore_prob <= 1:
            raise ConfigError(f"method.restore_prob must be in [0, 1] or null, got {self.restore_prob!r}")
        if self.num_aug is not None and self.num_aug < 2:
            raise ConfigError(f"method.num_aug must be >= 2 (a variance needs two views), got {self.num_aug!r}")
        if self.lr is not None and not self.lr >= 0:
            raise ConfigError(f"method.lr must be >= 0, got {self.lr!r}")


@dataclass
class CTTAConfig(RecipeConfig):
    """Config of the ``ctta`` recipe: ``model`` (``create_model`` arguments, ``name`` required),
    ``source_checkpoint`` (the source weights: a run's ``best.pt`` / ``last.pt`` or a state dict file)."""

    recipe: str = "ctta"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "timm/vit_tiny_patch16_224"})
    source_checkpoint: str | None = None
    data: CTTADataConfig = field(default_factory=CTTADataConfig)
    method: CTTAMethodConfig = field(default_factory=CTTAMethodConfig)


# ============================================================================================ pieces
def _gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int = 5) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` (kernel ``exp(-x²/2σ²)`` on ``linspace(-(k-1)/2, (k-1)/2, k)``, normalised,
    reflect padding), separable, as weighted sums of shifted slices (depthwise convolutions are slow on CPU)."""
    half = (kernel_size - 1) * 0.5
    k = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = (k / k.sum()).tolist()
    p = kernel_size // 2
    h, w = x.shape[-2:]
    x = F.pad(x, (p, p, p, p), mode="reflect")
    x = sum(k[i] * x[..., :, i:i + w] for i in range(kernel_size))
    return sum(k[i] * x[..., i:i + h, :] for i in range(kernel_size))


def tta_augment(x: torch.Tensor, noise_std: float = 0.005, soft: bool = False, flip: bool = True) -> torch.Tensor:
    """The official CoTTA / ViDA test-time augmentation (``get_tta_transforms``) of a batch ``(B, C, H, W)`` in
    [0, 1]; as there, one random draw for the whole batch (torchvision transforms applied to a 4-D tensor):
    clip -> colour jitter (brightness [0.6, 1.4], contrast [0.7, 1.3], saturation [0.5, 1.5], hue ±0.06,
    gamma [0.7, 1.3], in random order, as KATANA's ``ColorJitterPro``) -> edge pad H/2 -> random affine (±15°,
    translate 1/16, scale 0.9-1.1, bilinear, zero fill) -> Gaussian blur (5, σ in [0.001, 0.5]) -> centre crop
    H -> horizontal flip (p 0.5; ``flip=False`` drops it, a deviation for images that are not mirror-symmetric
    in meaning, e.g. digits) -> Gaussian noise (σ ``noise_std``) -> clip. ``soft``: the official soft ranges.
    Uses the global torch RNG. Saturation and hue are skipped for grey batches (all channels equal), on which
    they are the identity anyway (they cost most of the time on CPU)."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    def u(lo: float, hi: float) -> float:
        return float(torch.empty(1).uniform_(lo, hi))

    n = x.shape[-1]
    x = x.clamp(0, 1)
    ranges = ([0.8, 1.2], [0.85, 1.15], [0.75, 1.25], [-0.03, 0.03], [0.85, 1.15]) if soft else \
        ([0.6, 1.4], [0.7, 1.3], [0.5, 1.5], [-0.06, 0.06], [0.7, 1.3])
    rgb = x.shape[-3] == 3
    grey = not rgb or bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())
    ops = [TF.adjust_brightness,
           (lambda t, f: TF.adjust_contrast(t, f)) if rgb else (lambda t, f: ((t - t.mean((-3, -2, -1), keepdim=True)) * f + t.mean((-3, -2, -1), keepdim=True))),
           (lambda t, f: t) if grey else TF.adjust_saturation,
           (lambda t, f: t) if grey else TF.adjust_hue,
           lambda t, f: TF.adjust_gamma(t.clamp(0, 1), f)]
    for i in torch.randperm(5).tolist():
        x = ops[i](x, u(*ranges[i])).clamp(0, 1)
    x = TF.pad(x, [n // 2], padding_mode="edge")
    x = T.RandomAffine(degrees=8 if soft else 15, translate=(1 / 16, 1 / 16), scale=(0.95, 1.05) if soft else (0.9, 1.1),
                       interpolation=T.InterpolationMode.BILINEAR)(x)
    x = _gaussian_blur(x, u(0.001, 0.25 if soft else 0.5))
    x = TF.center_crop(x, [n, n])
    if torch.rand(1).item() < 0.5 and flip:
        x = x.flip(-1)
    return (x + torch.randn_like(x) * noise_std).clamp(0, 1)


def softmax_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``-Σ_c softmax(teacher)_c · log_softmax(student)_c`` ``(B,)`` (the official ``softmax_entropy``)."""
    return -(teacher_logits.softmax(1) * student_logits.log_softmax(1)).sum(1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy of ``softmax(logits)`` ``(B,)`` (Tent's loss)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, rate: float, adapter_rate: float | None = None,
               is_adapter: Callable[[str], bool] = lambda n: ".deltas.vida_" in n or "vida_" in n) -> None:
    """``θ_t ← rate·θ_t + (1 − rate)·θ_s`` for every parameter (by name); parameters selected by ``is_adapter``
    use ``adapter_rate`` (ViDA's separate EMA rate for the adapters, official ``update_ema_variables``)."""
    student_params = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        s = student_params[name]
        a = adapter_rate if adapter_rate is not None and is_adapter(name) else rate
        t.mul_(a).add_(s.detach(), alpha=1 - a)


@torch.no_grad()
def stochastic_restore(model: nn.Module, source: dict[str, torch.Tensor], prob: float,
                       only_weight_bias: bool = False) -> None:
    """Reset each element of every trainable parameter to its ``source`` value with probability ``prob`` (CoTTA's
    stochastic restore; official ViDA CIFAR code: all trainable parameters; CoTTA: ``weight`` / ``bias`` only)."""
    if prob <= 0:
        return
    for name, p in model.named_parameters():
        if not p.requires_grad or (only_weight_bias and name.rsplit(".", 1)[-1] not in ("weight", "bias")):
            continue
        mask = torch.rand(p.shape, device=p.device) < prob
        p.copy_(torch.where(mask, source[name].to(p.device, p.dtype), p))


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def use_batch_statistics(model: nn.Module) -> int:
    """BatchNorm layers normalise with the test batch's statistics (``track_running_stats=False``, running
    buffers dropped, as Tent / CoTTA's ``configure_model``). Returns the number of BatchNorm layers."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.train()
            n += 1
    return n


def norm_affine_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the affine weights/biases of BatchNorm, LayerNorm and GroupNorm layers (Tent)."""
    out = []
    for mod_name, m in model.named_modules():
        if isinstance(m, _NORMS):
            for pname, p in m.named_parameters(recurse=False):
                out.append((f"{mod_name}.{pname}" if mod_name else pname, p))
    return out


# ============================================================================================ methods
METHODS: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable:
    """Register a :class:`Method` subclass as ``method.name: <name>``."""
    def deco(cls: type["Method"]) -> type["Method"]:
        METHODS[name] = cls
        cls.name = name
        return cls
    return deco


class Method:
    """One test-time adaptation method.

    Life cycle: :meth:`prepare_model` (when the model is built, on the CPU), :meth:`setup` (once on its device,
    before the first batch: teacher copies, the source state, the optimiser), :meth:`adapt` per batch (returns
    the logits ``(B, C)`` the batch is scored with — computed **before** the update the batch causes — and then
    updates), :meth:`reset` (back to the source model: reset_each_shift). :meth:`state_dict` holds what is not
    in the model's weights (teacher, optimiser), for exact mid-stream resume.
    """

    name: ClassVar[str] = ""
    default_lr: ClassVar[float] = 1e-3

    def __init__(self, cfg: CTTAMethodConfig):
        self.cfg = cfg
        self.optimizer: torch.optim.Optimizer | None = None
        self.source_state: dict[str, torch.Tensor] = {}

    @property
    def lr(self) -> float:
        return self.cfg.lr if self.cfg.lr is not None else self.default_lr

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def capture_source(self, model: nn.Module) -> None:
        """Keep the source weights (stochastic restore, anchor, reset). Called when the model is built, so a
        resumed run keeps the true source state rather than the adapted weights it resumes from."""
        self.source_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def setup(self, model: nn.Module) -> None:
        if not self.source_state:
            self.capture_source(model)
        device = next(model.parameters()).device
        self.source_state = {k: v.to(device) for k, v in self.source_state.items()}
        params = self.param_groups(model)
        self.optimizer = (torch.optim.Adam(params, lr=self.lr, betas=tuple(self.cfg.betas),
                                           weight_decay=self.cfg.weight_decay) if params else None)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return []

    def reset(self, model: nn.Module) -> None:
        model.load_state_dict(self.source_state)
        self.setup(model)

    def adapt(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"{self.name}: the adaptation loss is {loss.item()}; lower method.lr")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()} if self.optimizer is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])


@register_method("source")
class SourceMethod(Method):
    """No adaptation: the source model in eval mode."""

    def prepare_model(self, model):
        model.requires_grad_(False)
        return model.eval()

    @torch.no_grad()
    def adapt(self, model, x):
        model.eval()
        return model(x)


@register_method("bn_adapt")
class BNAdaptMethod(Method):
    """BatchNorm layers normalise with each test batch's statistics; nothing is trained (Schneider et al. 2020,
    the ``norm`` baseline of the Tent / CoTTA code). A model without BatchNorm (a ViT) behaves as ``source``."""

    def prepare_model(self, model):
        model.requires_grad_(False)
        model.eval()
        if use_batch_statistics(model) == 0:
            _logger.warning("bn_adapt: %s has no BatchNorm layer; bn_adapt equals source", type(model).__name__)
        return model

    @torch.no_grad()
    def adapt(self, model, x):
        return model(x)


@register_method("tent")
class TentMethod(Method):
    """Tent (Wang et al. 2021): entropy minimisation of the normalisation layers' affine parameters (BatchNorm
    with test-batch statistics; LayerNorm / GroupNorm affine for a ViT, as ViDA's ViT Tent baseline), Adam lr 1e-3.
    The prediction is the forward that the update is computed from (official Tent), i.e. before the update."""

    def prepare_model(self, model):
        model.requires_grad_(False)
        model.train()
        use_batch_statistics(model)
        for _, p in norm_affine_parameters(model):
            p.requires_grad_(True)
        return model

    def param_groups(self, model):
        return [{"params": [p for _, p in norm_affine_parameters(model) if p.requires_grad]}]

    def adapt(self, model, x):
        with torch.enable_grad():
            logits = model(x)
            self._step(entropy(logits).mean())
        return logits.detach()


class _TeacherMethod(Method):
    """Shared by CoTTA and ViDA: an EMA teacher (and CoTTA's anchor), copied from the model at setup."""

    default_restore: ClassVar[float] = 0.0
    default_num_aug: ClassVar[int] = 10

    def setup(self, model):
        super().setup(model)
        self.teacher = copy.deepcopy(model)
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    @property
    def restore_prob(self) -> float:
        return self.cfg.restore_prob if self.cfg.restore_prob is not None else self.default_restore

    @property
    def num_aug(self) -> int:
        return self.cfg.num_aug if self.cfg.num_aug is not None else self.default_num_aug

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return tta_augment(x, noise_std=self.cfg.aug_noise_std, flip=self.cfg.aug_flip)

    def state_dict(self):
        return {**super().state_dict(), "teacher": self.teacher.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])


@register_method("cotta")
class CoTTAMethod(_TeacherMethod):
    """CoTTA (Wang et al. 2022, official qinenergy/cotta ``cifar/cotta.py``): all parameters trainable (Adam lr
    1e-3), BatchNorm with batch statistics; EMA teacher (0.999); if the frozen source ("anchor") model's mean
    max-probability is below ``aug_threshold`` (0.92) the teacher's prediction is averaged over ``num_aug`` (32)
    augmented views; loss = soft cross-entropy of the student to that prediction; stochastic restore of
    ``weight``/``bias`` elements with probability 0.01. The prediction scored is the teacher's."""

    default_restore = 0.01
    default_num_aug = 32

    def prepare_model(self, model):
        model.train()
        use_batch_statistics(model)
        model.requires_grad_(True)
        return model

    def setup(self, model):
        super().setup(model)
        self.anchor = copy.deepcopy(model)
        self.anchor.load_state_dict(self.source_state)  # the source model, also in a resumed run
        self.anchor.requires_grad_(False)
        self.anchor.eval()

    def param_groups(self, model):
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def adapt(self, model, x):
        with torch.no_grad():
            anchor_conf = self.anchor(x).softmax(1).max(1)[0]
            pred = self.teacher(x)
            if anchor_conf.mean() < self.cfg.aug_threshold:
                pred = torch.stack([self.teacher(self.augment(x)) for _ in range(self.num_aug)]).mean(0)
        with torch.enable_grad():
            self._step(softmax_cross_entropy(model(x), pred).mean())
        ema_update(self.teacher, model, self.cfg.ema)
        stochastic_restore(model, self.source_state, self.restore_prob, only_weight_bias=True)
        return pred


@register_method("vida")
class ViDAMethod(_TeacherMethod):
    """ViDA (official ``cifar/vida.py`` ``forward_and_adapt``), per batch ``x``:

    1. the teacher's logits over ``num_aug`` (10) augmented views -> uncertainty ``u = 0.1·mean(var)`` (per batch;
       per sample with ``per_sample_uncertainty``) -> HKA scales (:func:`zoo.adapters.vida.hka_scales`; ``hka:
       paper`` sets both, ``hka: official`` reproduces the released ``set_scale``, where ``if/elif`` only ever sets
       the low adapter's ``scale1``), set in student and teacher;
    2. teacher prediction on ``x`` (the prediction scored), student forward, loss = soft cross-entropy to the
       teacher, one Adam step (model lr 1e-4, adapters 1e-5: official CIFAR-10 config; ``train: all`` trains the
       whole model as the official ``collect_params``, ``train: adapters`` only the adapters);
    3. EMA teacher update (0.999; adapter weights with ``ema_adapter``, 0.999); stochastic restore of every
       trainable element with probability 0.1 (the official CIFAR code; its ImageNet code has it commented out).

    The teacher's augmented passes of step 1 use the scales of the previous batch, as the official code does (the
    scales are set after them); with per-sample scales the previous batch's mean is used there.
    """

    default_lr = 1e-4
    default_restore = 0.1
    default_num_aug = 10

    def prepare_model(self, model):
        from zoo.adapters.vida import apply_vida, load_vida_state_dict, vida_parameters

        apply_vida(model, self.cfg.low_rank, self.cfg.high_rank, targets=self.cfg.adapter_targets,
                   freeze_base=self.cfg.train == "adapters")
        if self.cfg.vida_checkpoint:
            from zoo.engine.checkpoint import read_checkpoint

            load_vida_state_dict(model, read_checkpoint(self.cfg.vida_checkpoint, what="the ViDA warm-up checkpoint"))
        if self.cfg.train == "all":
            model.requires_grad_(True)
        else:
            model.requires_grad_(False)
            for _, p in vida_parameters(model, trainable_only=False):
                p.requires_grad_(True)
        use_batch_statistics(model)
        self.scales: tuple[Any, Any] = (1.0, 1.0)
        return model.train()

    def param_groups(self, model):
        adapter_ids = {id(p) for p in self._adapter_params(model)}
        base = [p for p in model.parameters() if p.requires_grad and id(p) not in adapter_ids]
        groups = [{"params": base, "lr": self.lr, "name": "model"}] if base else []
        return groups + [{"params": self._adapter_params(model), "lr": self.cfg.adapter_lr, "name": "vida"}]

    @staticmethod
    def _adapter_params(model):
        from zoo.adapters.vida import vida_parameters

        return [p for _, p in vida_parameters(model)]

    def _set_scales(self, model, low, high) -> None:
        from zoo.adapters.vida import set_vida_scales

        set_vida_scales(model, low, high)
        set_vida_scales(self.teacher, low, high)

    def adapt(self, model, x):
        from zoo.adapters.vida import hka_scales

        low, high = self.scales
        if isinstance(low, torch.Tensor) and low.dim() == 1:  # per-sample scales of the previous batch
            low, high = float(low.mean()), float(high.mean())
        self._set_scales(model, low, high)
        with torch.no_grad():
            views = torch.stack([self.teacher(self.augment(x)) for _ in range(self.num_aug)])
            low, high, u = hka_scales(views, self.cfg.unc_threshold, variant=self.cfg.hka,
                                      per_sample=self.cfg.per_sample_uncertainty)
            self.scales = (low, high)
            self.last_uncertainty = float(u.mean())
            self._set_scales(model, low, high)
            pred = self.teacher(x)
        with torch.enable_grad():
            self._step(softmax_cross_entropy(model(x), pred).mean())
        ema_update(self.teacher, model, self.cfg.ema, adapter_rate=self.cfg.ema_adapter)
        stochastic_restore(model, self.source_state, self.restore_prob)
        return pred

    def state_dict(self):
        low, high = self.scales
        return {**super().state_dict(), "scales": [torch.as_tensor(low), torch.as_tensor(high)]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "scales" in state:
            low, high = state["scales"]
            self.scales = tuple(s if s.dim() else float(s) for s in (low, high))


# ============================================================================================ the stream recipe
def _load_source_weights(model: nn.Module, path: str) -> None:
    from zoo.engine.checkpoint import read_checkpoint

    state = read_checkpoint(path, what="the source model checkpoint (source_checkpoint)")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model.load_state_dict(state)


@register_recipe("ctta")
class CTTARecipe(Recipe):
    """Continual test-time adaptation on a stream of corrupted domains (see the module doc)."""

    Config = CTTAConfig
    main_metric = "error"
    main_metric_mode = "min"

    def __init__(self, cfg: CTTAConfig):
        super().__init__(cfg)
        if "name" not in cfg.model:
            raise ConfigError("config section 'model' needs a 'name' (a registered model or timm/<name>)")
        self.method: Method = METHODS[cfg.method.name](cfg.method)
        self._ready = False
        self._pending: dict[str, Any] | None = None

    # ---------------------------------------------------------------- run
    def run(self, ctx: Any) -> dict[str, Any]:
        """The stream in ``<run>/stream`` (a resumable stream-loop run), then ``errors.csv`` / ``errors.png``."""
        summary = ctx.train(self, "stream")
        final = summary.get("final", {})
        self.write_report(final, ctx.output_dir)
        return final

    def write_report(self, final: dict[str, Any], out_dir: Path) -> None:
        """``errors.csv`` (domain, error %) and ``errors.png`` (bar chart, mean as a line) in ``out_dir``."""
        domains = [d for d in self.cfg.data.corruptions if f"error/{d}" in final]
        out_dir = Path(out_dir)
        with open(out_dir / "errors.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["domain", "error"])
            for d in domains:
                w.writerow([d, f"{final[f'error/{d}']:.2f}"])
            w.writerow(["mean", f"{final.get('error', float('nan')):.2f}"])
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(domains) + 2), 3.5))
        ax.bar(range(len(domains)), [final[f"error/{d}"] for d in domains], color="#4c72b0")
        ax.axhline(final.get("error", 0), color="#c44e52", ls="--", label=f"mean {final.get('error', 0):.2f} %")
        ax.set_xticks(range(len(domains)), domains, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("online error (%)")
        ax.set_title(f"{self.cfg.method.name} ({self.cfg.method.protocol})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "errors.png", dpi=120)
        plt.close(fig)

    # ---------------------------------------------------------------- model and data
    def build_model(self) -> nn.Module:
        kwargs = dict(self.cfg.model)
        name = kwargs.pop("name")
        model = create_model(name, **kwargs)
        if self.cfg.source_checkpoint:
            _load_source_weights(model, self.cfg.source_checkpoint)
        model = self.method.prepare_model(model)
        self.method.capture_source(model)
        return model

    def _domain_dataset(self, corruption: str):
        d = self.cfg.data
        return build_dataset(d.name, root=d.root, split=corruption, severity=d.severity, num_examples=d.num_examples)

    def build_stream(self) -> list[tuple[str, torch.utils.data.DataLoader]]:
        d = self.cfg.data
        if self.cfg.method.protocol == "mixed_domains":
            import numpy as np

            parts = [self._domain_dataset(c) for c in d.corruptions]
            data = ArrayImageDataset(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                                     domains=np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]))
            return [("mixed", build_loader(data, d.batch_size, shuffle=True, seed=self.cfg.seed, num_workers=d.num_workers))]
        return [(c, build_loader(self._domain_dataset(c), d.batch_size, shuffle=d.shuffle, seed=self.cfg.seed,
                                 num_workers=d.num_workers)) for c in d.corruptions]

    def configure_optimizer(self, model, cfg):
        return None  # each method owns its optimiser (module doc)

    # ---------------------------------------------------------------- stream
    def _ensure_ready(self, model: nn.Module) -> None:
        if not self._ready:
            self.method.setup(model)
            self._ready = True
            if self._pending is not None:
                self.method.load_state_dict(self._pending)
                self._pending = None

    def on_domain_start(self, model: nn.Module, name: str, index: int) -> None:
        self._ensure_ready(model)
        if index > 0 and self.cfg.method.protocol == "reset_each_shift":
            self.method.reset(model)

    def train_step(self, model: nn.Module, batch: Any, ctx: Any) -> dict[str, Any]:
        model = ctx.accelerator.unwrap_model(model)
        self._ensure_ready(model)
        x, y = batch[0], batch[1]
        if self.cfg.data.input_size and x.shape[-1] != self.cfg.data.input_size:
            s = self.cfg.data.input_size
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)  # as the official loop
        logits = self.method.adapt(model, x)
        right = logits.argmax(1) == y
        out: dict[str, Any] = {"correct": int(right.sum()), "count": len(y)}
        if len(batch) > 2:  # mixed domains: count per corruption
            for i, name in enumerate(self.cfg.data.corruptions):
                sel = batch[2] == i
                out[f"correct/{name}"] = int(right[sel].sum())
                out[f"count/{name}"] = int(sel.sum())
        if hasattr(self.method, "last_uncertainty"):
            ctx.log(uncertainty=self.method.last_uncertainty)
        return out

    def stream_metrics(self, per_domain: dict[str, dict[str, float]]) -> dict[str, Any]:
        """``error`` (mean over domains, %) and ``error/<domain>``; ``error_all`` over all samples."""
        errors: dict[str, float] = {}
        for dname, s in per_domain.items():
            if dname == "mixed":
                for c in self.cfg.data.corruptions:
                    if s.get(f"count/{c}"):
                        errors[c] = 100.0 * (1 - s[f"correct/{c}"] / s[f"count/{c}"])
            else:
                errors[dname] = 100.0 * (1 - s["correct"] / max(s["count"], 1))
        total = sum(s["count"] for s in per_domain.values())
        out: dict[str, Any] = {"error": sum(errors.values()) / max(len(errors), 1),
                               "error_all": 100.0 * (1 - sum(s["correct"] for s in per_domain.values()) / max(total, 1))}
        out.update({f"error/{k}": v for k, v in errors.items()})
        out["domains"] = {k: {"error": v} for k, v in errors.items()}
        return out

    def recipe_state(self) -> dict[str, Any]:
        return {"method": self.method.state_dict()} if self._ready else {}

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        if "method" in state:
            if self._ready:
                self.method.load_state_dict(state["method"])
            else:
                self._pending = state["method"]


# ============================================================================================ source / warm-up
@dataclass
class CTTASourceConfig(ClassifyConfig):
    """``ctta_source``: the ``classify`` config, images made uint8 RGB ``rgb_size``² (grey replicated, padded)."""

    recipe: str = "ctta_source"
    rgb_size: int = 32


@register_recipe("ctta_source")
class CTTASourceRecipe(ClassifyRecipe):
    """Source training for CTTA: the ``classify`` recipe on ``images_as_uint8_rgb`` of the dataset (so the source
    model sees the stream's format: MNIST padded to 32×32 RGB). ``data.train_split`` / ``eval_split`` as usual."""

    Config = CTTASourceConfig

    def _rgb(self, split: str):
        d = self.cfg.data
        images, labels = images_as_uint8_rgb(build_dataset(d.name, root=d.root, split=split, **d.kwargs), self.cfg.rgb_size)
        return ArrayImageDataset(images, labels)

    @cached_property
    def train_dataset(self):
        return self._rgb(self.cfg.data.train_split)

    @cached_property
    def eval_dataset(self):
        return self._rgb(self.cfg.data.eval_split)

    @cached_property
    def calibration_dataset(self):
        return self.train_dataset


@dataclass
class ViDAWarmupSection:
    """Config section ``vida`` of ``vida_warmup``."""

    low_rank: int = 1
    high_rank: int = 128
    targets: list[str] | None = None
    source_checkpoint: str | None = None  # the source model (a ctta_source run's best.pt)
    augment: bool = True  # cross-entropy on tta_augment views (the paper warms up with augmentation)
    augment_flip: bool = True  # the augmentation's horizontal flip (false for digits)

    def __post_init__(self) -> None:
        if self.low_rank < 1 or self.high_rank < 1:
            raise ConfigError(f"vida.low_rank and vida.high_rank must be >= 1, got {self.low_rank}, {self.high_rank}")


@dataclass
class ViDAWarmupConfig(CTTASourceConfig):
    recipe: str = "vida_warmup"
    vida: ViDAWarmupSection = field(default_factory=ViDAWarmupSection)


@register_recipe("vida_warmup")
class ViDAWarmupRecipe(CTTASourceRecipe):
    """The adapter warm-up on source data ("source ViDA model"): the source model with ViDA adapters, backbone
    frozen, adapters trained with cross-entropy on augmented source images (:func:`tta_augment`; each sample of a
    batch gets the batch's draw, as at test time). The official training script is not released; this follows
    the paper's description (frozen backbone, augmentation). ``last.pt`` / ``best.pt`` hold the whole model's
    state dict, which ``method.vida_checkpoint`` of ``ctta`` loads (:func:`zoo.adapters.vida.load_vida_state_dict`)."""

    Config = ViDAWarmupConfig

    def build_model(self) -> nn.Module:
        from zoo.adapters.vida import apply_vida

        model = super().build_model()
        v = self.cfg.vida
        if v.source_checkpoint:
            _load_source_weights(model, v.source_checkpoint)
        return apply_vida(model, v.low_rank, v.high_rank, targets=v.targets, freeze_base=True)

    def optimizer_params(self, model):
        return [p for p in model.parameters() if p.requires_grad]

    def training_step(self, model, batch):
        x, y = batch
        if self.cfg.vida.augment:
            x = tta_augment(x, flip=self.cfg.vida.augment_flip)
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        return {"loss": loss, "ce": loss.detach()}
