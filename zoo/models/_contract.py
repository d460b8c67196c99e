"""The zoo's model contract (timm's), and the helpers the models and recipes share to keep it.

Every classifier in ``zoo.models``:

* ``forward(x) -> logits (B, num_classes)``, a tensor, in training and in evaluation mode;
* ``forward_features(x) -> (B, num_features)`` and ``forward_head(x, pre_logits=False)``, with
  ``forward_head(forward_features(x)) == forward(x)`` in eval mode; ``pre_logits=True`` gives the
  ``(B, head_hidden_size)`` features the final Linear classifies;
* ``forward_intermediates(x, indices=None, norm=False, stop_early=False, intermediates_only=False)``:
  ``(final_features, [intermediates])`` as timm — ``indices`` an int (the last n blocks) or a list of block
  indices (negative from the end), ``None`` all; ``final_features`` is what ``forward_head`` takes;
  ``intermediates_only`` returns just the list. ``feature_info[i]`` gives block i's module name, ``num_chs``
  and layout (``fmt``: ``"NLC"`` for ``(B, L, C)`` tokens / points, ``"NCHW"`` for images);
* ``get_classifier()`` / ``reset_classifier(num_classes)`` (0: the classifier becomes an identity and
  ``forward`` returns the pre-logits), ``num_classes``, ``num_features``, ``head_hidden_size``;
* ``auxiliary_losses() -> dict[str, Tensor]``: the weighted auxiliary losses of the last training-mode
  ``forward`` (PoinTramba's GLR and importance losses, PointNet's feature-transform regulariser), cleared by
  the call; ``{}`` after an eval-mode forward or when the weights are zero. Recipes call
  :func:`pop_auxiliary_losses` (which unwraps DDP / accelerate / ``torch.compile`` and answers ``{}`` for a model
  without the method, e.g. a timm model) and add the values to their task loss.

Why the auxiliary losses are computed in ``forward`` and kept on the module:

* Not a dict returned by ``forward`` (what PoinTramba and PointNet did before): every caller then had to know
  which models return what (``out["logits"]`` in a recipe, a benchmark, voting, BatchNorm recalibration, an
  EMA evaluation, a timm-style feature extractor), and ``forward`` changed type between train and eval mode.
* Not a separate call computing the losses after ``forward`` (``model.compute_losses(x)``): under DDP the
  recipe calls the *wrapped* model, and DDP only synchronises gradients of parameters used inside the wrapped
  ``forward``. A second call on the unwrapped module would run the projection heads outside DDP's forward: their
  gradients would not be all-reduced (replicas drift), or DDP would report them as unused parameters, and a
  second pass over the network would double the cost.
* So ``forward`` computes them (training mode, non-zero weights), stores them on the module and ties them to
  the returned logits with a zero-gradient edge (:func:`tie_to_output`), so that DDP's
  ``find_unused_parameters=True`` search, which walks the graph from ``forward``'s outputs, also finds the
  parameters only the auxiliary losses use. The recipe pops them right after the call.

Each ``forward`` replaces the stored losses (several forwards before one pop keep the last one's), and a
stored loss holds its autograd graph until it is popped or replaced. The stored losses are not part of the
state dict, nor of a pickle / ``copy.deepcopy`` of the model.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from zoo.layers.features import feature_take_indices

__all__ = [
    "AuxiliaryLossMixin",
    "pop_auxiliary_losses",
    "split_model_output",
    "loss_with_auxiliary",
    "unwrap_model",
    "tie_to_output",
    "feature_take_indices",
    "check_finite_points",
    "check_input_dtype",
    "check_image_input",
    "DropFcHeadMixin",
]

_MAX_WRAPPERS = 8


class AuxiliaryLossMixin:
    """Storage of the auxiliary losses of a model's last ``forward`` (mix into an ``nn.Module``).

    The model calls ``self._set_auxiliary_losses(losses)`` in every ``forward`` (``{}`` in eval mode);
    :meth:`auxiliary_losses` hands them out once.
    """

    def _set_auxiliary_losses(self, losses: Mapping[str, torch.Tensor]) -> None:
        self.__dict__["_aux_losses"] = dict(losses)

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The weighted auxiliary losses ``{name: scalar tensor}`` of the last ``forward``, then forgets them.

        Empty after an eval-mode forward, when every auxiliary weight is zero, or when already popped.
        """
        losses = self.__dict__.get("_aux_losses") or {}
        self.__dict__["_aux_losses"] = {}
        return dict(losses)

    def __getstate__(self):  # pickle / deepcopy (e.g. an EMA copy): never carry a live graph along
        state = dict(self.__dict__)
        state["_aux_losses"] = {}
        return state


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DDP / DataParallel / accelerate (``.module``) and ``torch.compile`` (``._orig_mod``)
    wrappers; a model that implements ``auxiliary_losses`` itself is not unwrapped further."""
    for _ in range(_MAX_WRAPPERS):
        if hasattr(model, "auxiliary_losses"):
            return model
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


def pop_auxiliary_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.auxiliary_losses()`` through any DDP / accelerate / ``torch.compile`` wrapper; ``{}`` for a model
    without the method (a timm model, a plain ``nn.Module``)."""
    inner = unwrap_model(model)
    method = getattr(inner, "auxiliary_losses", None)
    if method is None:
        return {}
    losses = method()
    if not isinstance(losses, Mapping) or not all(isinstance(v, torch.Tensor) for v in losses.values()):
        raise TypeError(f"{type(inner).__name__}.auxiliary_losses() must return a dict of tensors, got "
                        f"{type(losses).__name__}; see zoo/models/_contract.py for the contract.")
    return dict(losses)


def split_model_output(out: Any, model: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(logits, aux_losses)`` after ``out = model(inputs)``: ``out`` is the logits tensor (the contract) and the
    auxiliary losses of that forward are popped from ``model`` (:func:`pop_auxiliary_losses`; ``{}`` when ``model`` is
    None). A forward that returns anything else is a ``TypeError`` saying how to follow the contract."""
    if not isinstance(out, torch.Tensor):
        name = type(model).__name__ if model is not None else "the model"
        raise TypeError(f"classify recipe: {name}'s forward returned {type(out).__name__}, expected the logits tensor "
                        "(B, num_classes). Return logits from forward and expose auxiliary losses through an "
                        "auxiliary_losses() method (zoo/models/_contract.py).")
    return out, ({} if model is None else pop_auxiliary_losses(model))


def loss_with_auxiliary(main: torch.Tensor, aux: Mapping[str, torch.Tensor],
                        name: str = "ce") -> dict[str, torch.Tensor]:
    """A training step's losses: ``loss`` = the task loss ``main`` + every auxiliary loss (the one to
    back-propagate), and, to log, ``main`` as ``name`` and each auxiliary loss, detached."""
    losses = {"loss": main + sum(aux.values()) if aux else main, name: main.detach()}
    losses.update({k: v.detach() for k, v in aux.items()})
    return losses


class _Tie(torch.autograd.Function):
    """Identity on ``out`` whose graph also reaches ``deps``; no gradient flows to ``deps`` through it."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, *deps: torch.Tensor) -> torch.Tensor:
        ctx.num_deps = len(deps)
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (grad,) + (None,) * ctx.num_deps


def tie_to_output(out: torch.Tensor, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``out`` unchanged in value, with a zero-gradient graph edge to every loss in ``losses``.

    DDP's ``find_unused_parameters=True`` marks as unused every parameter it cannot reach from ``forward``'s
    outputs, and then fails when such a parameter gets a gradient from an auxiliary loss. The edge makes those
    parameters reachable; gradients still come only from the losses themselves. A no-op without grad.
    """
    deps = [v for v in losses.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    if not deps or not torch.is_grad_enabled():
        return out
    return _Tie.apply(out, *deps)



def check_finite_points(points: torch.Tensor, model_name: str) -> None:
    """Raise a ValueError naming the clouds of ``points (B, N, C)`` that hold NaN or inf coordinates.

    Such a cloud gives non-finite logits (and, in training, a NaN loss) with no other warning.
    """
    finite = torch.isfinite(points).flatten(1).all(dim=1)  # (B,)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero().flatten().tolist()
    shown = ", ".join(str(i) for i in bad[:20]) + (", ..." if len(bad) > 20 else "")
    raise ValueError(
        f"{model_name}: {len(bad)} of the {points.shape[0]} point clouds in the batch contain NaN or inf coordinates "
        f"(batch indices: {shown}); their logits would be non-finite. Clean the data, or drop such clouds when "
        "loading: the point-cloud datasets take drop_nonfinite=True (in a config: data.kwargs.drop_nonfinite=true)."
    )


def check_input_dtype(x: torch.Tensor, model: torch.nn.Module, model_name: str) -> None:
    """Raise a TypeError when the floating-point input ``x`` has another dtype than the model's weights (e.g.
    float64 points from a numpy array into a float32 model), instead of torch's "expected scalar type Double but
    found Float" from deep inside the forward. Under autocast the input dtype is autocast's business."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is None or x.dtype == weight.dtype or torch.is_autocast_enabled(x.device.type):
        return
    raise TypeError(f"{model_name} has {weight.dtype} weights but got {x.dtype} input; convert the input with "
                    f"x.to({weight.dtype}) (numpy arrays are float64: torch.from_numpy(a).float()), or the model "
                    f"with model.to({x.dtype})")


def check_image_input(x: Any, model: torch.nn.Module, model_name: str, channels: int, *, min_size: int = 1,
                      match_dtype: bool = True) -> None:
    """Raise a clear error unless ``x`` is a ``(B, channels, H, W)`` floating-point image batch with ``H, W >=
    min_size`` (and, with ``match_dtype``, of the model's weight dtype: :func:`check_input_dtype`).

    The ``ValueError`` names the expected and the given shape and the likely fix: a missing batch or channel
    dimension (``x.unsqueeze(0)`` / ``x.unsqueeze(1)``) or a channels-last batch (``x.permute(0, 3, 1, 2)``); the
    ``TypeError`` says to convert integer images with ``x.float() / 255``.
    """
    is_tensor = isinstance(x, torch.Tensor)
    ok = is_tensor and x.ndim == 4 and x.shape[1] == channels
    if not ok or x.shape[2] < min_size or x.shape[3] < min_size:
        got = tuple(x.shape) if is_tensor else type(x).__name__
        hint = ""
        if is_tensor and x.ndim == 3:
            hint = " Add the batch dimension with x.unsqueeze(0)." if x.shape[0] == channels else \
                " Add the channel dimension with x.unsqueeze(1)."
        elif is_tensor and x.ndim == 4 and x.shape[-1] == channels:
            hint = " It looks channels-last: pass x.permute(0, 3, 1, 2)."
        size = f" with H, W >= {min_size}" if min_size > 1 else ""
        raise ValueError(f"{model_name} expects images of shape (B, {channels}, H, W){size}, got {got}.{hint}")
    if not x.is_floating_point():
        raise TypeError(f"{model_name} expects floating-point images in [0, 1], got dtype {x.dtype}; use "
                        "x.float() / 255.")
    if match_dtype:
        check_input_dtype(x, model, model_name)


class DropFcHeadMixin:
    """``forward_head`` / ``forward`` / ``get_classifier`` for models whose head is ``self.head`` with a ``drop``
    (dropout) and an ``fc`` (the classifier) and whose ``forward_features`` gives the pooled ``(B, num_features)``."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, num_features) -> (B, num_classes)`` (``pre_logits``: after dropout, before ``fc``)."""
        x = self.head.drop(x)
        return x if pre_logits else self.head.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Input ``-> (B, num_classes)`` logits: ``forward_head(forward_features(x))``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> torch.nn.Module:
        """The classifier (``head.fc``)."""
        return self.head.fc
