"""The interface of a test-time adaptation (TTA) algorithm, its config, and the registry that names them.

A TTA algorithm adapts a source model online, batch by batch, on an unlabelled test stream. It is a pair registered
under one name (the ``name`` of a ``ctta`` config's ``tta:`` section), as the adaptation methods of
:mod:`zoo.adapters` are:

* a **config class** — a dataclass subclassing :class:`TTAConfig` with the algorithm's hyper-parameters and their
  official defaults; the ``tta:`` section is validated against it (an unknown key is an error naming it);
* an **implementation** — a subclass of :class:`TTAAlgorithm`.

::

    @register_tta("tent", config=TentConfig)
    class TentAlgorithm(TTAAlgorithm): ...

    algorithm = build_tta({"name": "tent", "lr": 1e-3})
    model = algorithm.prepare_model(load_source_model(model, weights, algorithm.adapter))
    algorithm.capture_source(model); algorithm.setup(model)
    logits = algorithm.adapt(model, x, ctx)        # scored, then the update of this batch

Algorithms own their optimiser (an Adam built in :meth:`TTAAlgorithm.setup`): CoTTA and ViDA update an EMA teacher
and restore weights *after* the optimiser step of the same batch, which a step whose optimiser is stepped by the
Trainer cannot do. They still back-propagate through the run: ``ctx.manual_backward(loss)`` and
``ctx.optimizer_step(optimizer)`` (:class:`zoo.engine.step.StepContext`: AMP scaling, DDP gradient hooks), and a
decision taken from batch statistics (CoTTA's confidence gate, ViDA's uncertainty) uses the statistic of the whole
batch across processes (:func:`mean_over_processes`). Outside a run, :class:`LocalStep` stands in for the context.

Adding an algorithm is one file in ``zoo/tta/`` (config + implementation) plus its tests; the registry imports the
package's modules on the first lookup.

Reference: the life cycle follows the official Tent / CoTTA / ViDA code (``configure_model``, ``collect_params``,
``forward_and_adapt``, ``reset``); the (config, implementation) pair registry is peft's ``register_peft_method``;
the manual optimisation is Lightning's ``automatic_optimization = False`` + ``manual_backward``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from zoo._registry_base import Registry
from zoo.errors import CheckpointError, ConfigError

__all__ = ["TTAConfig", "AdamTTAConfig", "TTAAlgorithm", "TTA_ALGORITHMS", "register_tta", "get_tta", "tta_names",
           "build_tta", "LocalStep", "mean_over_processes", "read_start_weights", "load_source_model"]

#: every module of ``zoo.tta`` is imported on the first lookup: an algorithm's file registers it
TTA_ALGORITHMS = Registry("test-time adaptation algorithm", populate=("zoo.tta",))


# ============================================================================================ configs
@dataclass
class TTAConfig:
    """What every algorithm's config has: ``name``, the registered algorithm."""

    name: str = ""


@dataclass
class AdamTTAConfig(TTAConfig):
    """An algorithm that trains: its own Adam optimiser (the official codes' ``optim.METHOD: Adam``)."""

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr >= 0:
            raise ConfigError(f"tta.lr must be >= 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"tta.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"tta.weight_decay must be >= 0, got {self.weight_decay!r}")


# ============================================================================================ registry
def register_tta(name: str, *, config: type[TTAConfig]) -> Callable[[type], type]:
    """Class decorator: register a :class:`TTAAlgorithm` subclass as ``name`` with its config class ``config``
    (sets ``cls.name`` and ``cls.config_class``)."""
    return TTA_ALGORITHMS.register_with_config(name, config, base=TTAAlgorithm, config_base=TTAConfig)


def get_tta(name: str) -> type["TTAAlgorithm"]:
    """The algorithm class registered as ``name``; ``KeyError`` naming the closest registered names otherwise."""
    return TTA_ALGORITHMS.get(name)


def tta_names() -> list[str]:
    """Every registered algorithm name, in registration order."""
    return TTA_ALGORITHMS.in_order()


def build_tta(section: Mapping[str, Any], adapter: Mapping[str, Any] | None = None,
              where: str = "tta") -> "TTAAlgorithm":
    """The algorithm a config's ``tta:`` section describes (validated against its config class), with the
    adaptation method of the ``adapter:`` section when the algorithm uses one (:attr:`TTAAlgorithm.adapter_name`;
    an empty section gives that method's defaults). Errors name ``tta.<key>`` / ``adapter.<key>``."""
    from zoo.adapters.base import build_adapter
    from zoo.config import validate_config

    cls = TTA_ALGORITHMS.get_for_section(section, where)
    config = validate_config(dict(section), cls.config_class, prefix=f"{where}.", what=f"TTA algorithm '{cls.name}'")
    adapter = dict(adapter or {})
    if cls.adapter_name is None:
        if adapter:
            raise ConfigError(f"adapter: the TTA algorithm '{cls.name}' adapts no adaptation method; remove the "
                              f"'adapter' section (it is for {', '.join(_adapter_users()) or 'none'})")
        return cls(config)
    adapter.setdefault("name", cls.adapter_name)
    if adapter["name"] != cls.adapter_name:
        raise ConfigError(f"adapter.name: the TTA algorithm '{cls.name}' adapts '{cls.adapter_name}' adapters, "
                          f"got {adapter['name']!r}")
    return cls(config, build_adapter(adapter))


def _adapter_users() -> list[str]:
    return [f"tta.name={n}" for n in tta_names() if get_tta(n).adapter_name]


# ============================================================================================ the algorithm
class TTAAlgorithm:
    """One test-time adaptation algorithm.

    Life cycle: :meth:`prepare_model` (when the model is built, on the CPU: what trains, norm layers), then
    :meth:`capture_source` (the source weights), :meth:`setup` (once on the model's device, before the first batch:
    teacher copies, the optimiser), :meth:`adapt` per batch (returns the logits ``(B, C)`` the batch is scored with,
    computed **before** the update the batch causes, then updates), :meth:`reset` (back to the source model).
    :meth:`state_dict` holds what is not in the model's weights (teacher, optimiser) for an exact mid-stream resume.

    ``self.config`` is the validated config; ``self.adapter`` the :class:`~zoo.adapters.base.AdapterMethod` the
    algorithm trains (``None`` unless :attr:`adapter_name` is set).

    After :meth:`adapt`, ``self.extra_predictions`` holds other predictions of the same batch that the run scores
    beside the returned one (``{name: (B, classes) logits}``, the names of :attr:`extra_prediction_names`; e.g.
    CoTTA's plain teacher logits beside its augmentation average), and ``self.logs`` scalars to log
    (``{name: float}``, e.g. whether CoTTA's gate augmented this batch).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[TTAConfig]] = TTAConfig
    #: the adaptation method (``zoo.adapters``) the algorithm adds to the model, or None
    adapter_name: ClassVar[str | None] = None

    def __init__(self, config: TTAConfig | None = None, adapter: Any = None):
        self.config = config if config is not None else self.config_class(name=self.name)
        self.adapter = adapter
        self.optimizer: torch.optim.Optimizer | None = None
        self.source_state: dict[str, torch.Tensor] = {}
        self.extra_predictions: dict[str, torch.Tensor] = {}
        self.logs: dict[str, float] = {}

    @property
    def extra_prediction_names(self) -> tuple[str, ...]:
        """The names of :attr:`extra_predictions` every :meth:`adapt` call sets (none by default)."""
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Make ``model`` (source weights loaded, adapter applied) ready to adapt: trainable flags, norm layers,
        train / eval mode. Returns it."""
        return model

    def capture_source(self, model: nn.Module) -> None:
        """Keep the source weights (stochastic restore, anchor, reset). Called when the model is built, so a resumed
        run keeps the true source state rather than the adapted weights it resumes from."""
        self.source_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def setup(self, model: nn.Module) -> None:
        """Once on the model's device: the source state moved there and the optimiser over :meth:`param_groups`."""
        if not self.source_state:
            self.capture_source(model)
        device = next(model.parameters()).device
        self.source_state = {k: v.to(device) for k, v in self.source_state.items()}
        groups = self.param_groups(model)
        cfg = self.config
        self.optimizer = (torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
                          if groups else None)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (none: nothing is trained)."""
        return []

    def reset(self, model: nn.Module) -> None:
        """Back to the source weights, with a fresh optimiser (``reset_each_shift``)."""
        model.load_state_dict(self.source_state)
        self.setup(model)

    def adapt(self, model: nn.Module, x: torch.Tensor, ctx: Any) -> torch.Tensor:
        """Score the batch ``x`` ``(B, C, H, W)`` and adapt on it: returns the logits ``(B, classes)`` computed before
        this batch's update. ``model`` is the module whose weights are adapted; ``ctx`` the step context (a forward
        whose gradients are back-propagated goes through ``ctx.model``, the run's prepared model)."""
        raise NotImplementedError(f"{type(self).__name__}.adapt")

    def update(self, loss: torch.Tensor, ctx: Any) -> None:
        """One optimiser step on ``loss``: ``ctx.manual_backward`` then ``ctx.optimizer_step`` (zeroes the grads).
        Raises ``FloatingPointError`` naming the algorithm when the loss is not finite."""
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"{self.name}: the adaptation loss is {loss.item()}; lower tta.lr")
        ctx.manual_backward(loss)
        ctx.optimizer_step(self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed stream needs besides the model's weights (the optimiser's state)."""
        return {"optimizer": self.optimizer.state_dict()} if self.optimizer is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (after :meth:`setup`)."""
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])


# ============================================================================================ outside a run
class LocalStep:
    """What :meth:`TTAAlgorithm.adapt` needs of a step when it is called outside a run (a benchmark, a notebook):
    ``model`` (forwarded for the loss), a plain backward and optimiser step, one process, no mixed precision.

    Inside a run the Trainer's :class:`zoo.engine.step.StepContext` plays this part."""

    accelerator = None

    def __init__(self, model: nn.Module):
        self.model = model

    def manual_backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, *, zero_grad: bool = True) -> bool:
        optimizer.step()
        if zero_grad:
            optimizer.zero_grad(set_to_none=True)
        return True


def mean_over_processes(value: torch.Tensor, ctx: Any) -> torch.Tensor:
    """The mean of ``value`` over the run's processes (each process holds its share of the batch, equal shares:
    the loader pads the last batch), so that a decision taken from a batch statistic is the same on every process
    and equals the one-process decision; ``value`` itself on one process or outside a run."""
    accelerator = getattr(ctx, "accelerator", None)
    if accelerator is None or accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.detach().clone(), reduction="mean")


# ============================================================================================ source weights
def read_start_weights(path: str, what: str = "model.checkpoint_path") -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (a weights file or a run directory: :func:`zoo.hub.resolve_checkpoint`),
    containers unwrapped and ``module.`` prefixes stripped (:func:`zoo.hub.clean_state_dict`)."""
    from zoo.hub import clean_state_dict, load_state_dict_file, resolve_checkpoint

    return clean_state_dict(load_state_dict_file(resolve_checkpoint(path, what=what)))


def load_source_model(model: nn.Module, state: Mapping[str, torch.Tensor] | None, adapter: Any = None) -> nn.Module:
    """Load the starting weights ``state`` (``None``: keep the model's own) and add ``adapter`` (an
    :class:`~zoo.adapters.base.AdapterMethod` or ``None``), in the order the weights need: a plain model's weights
    (a source model) are loaded before the adapter wraps its layers; a model that already holds this adapter (an
    adapter warm-up run, an official checkpoint: ``adapter.holds_adapted_model(state)``) after, so the file's
    adapter weights are kept. Returns ``model``.

    Plain weights go through :func:`zoo.hub.load_weights` (the model's ``checkpoint_filter_fn`` for official layouts;
    a classifier of another class count is an error, not a silent re-initialisation)."""
    from zoo.hub import PretrainedCfg, load_weights

    adapted = state is not None and adapter is not None and adapter.holds_adapted_model(state)
    if state is not None and not adapted:
        if adapter is None and _holds_deltas(state):
            raise CheckpointError("the starting weights hold adapter deltas (keys with '.deltas.'); this run adds no "
                                  "adapter: give the source model's weights, or the algorithm that uses this adapter")
        cfg = getattr(model, "pretrained_cfg", None)  # timm models carry a dict of their own there
        load_weights(model, state, cfg if isinstance(cfg, PretrainedCfg) else None,
                     getattr(model, "checkpoint_filter_fn", None), strict=True, allow_head_reinit=False)
    if adapter is not None:
        adapter.apply(model)
    if adapted:
        adapter.load_state_dict(model, state)
    return model


def _holds_deltas(state: Mapping[str, torch.Tensor]) -> bool:
    return any(".deltas." in k for k in state)
