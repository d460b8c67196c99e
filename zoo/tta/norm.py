"""Normalisation layers at test time: BatchNorm on the test batch's statistics, the norm layers' affine parameters.

Reference: DequanWang/tent ``tent.py`` (``configure_model``, ``collect_params``), the same in CoTTA's ``cotta.py``.
"""
from __future__ import annotations

from torch import nn

__all__ = ["use_batch_statistics", "norm_affine_parameters"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def use_batch_statistics(model: nn.Module) -> int:
    """Make every BatchNorm layer of ``model`` normalise with the batch's statistics (``track_running_stats=False``,
    running buffers dropped, train mode), as Tent / CoTTA's ``configure_model``. Returns the number of such layers.

    Under DDP each process normalises with its own share of the batch (no SyncBatchNorm), as one GPU of the
    official code does with a batch of that size."""
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
    """``(name, parameter)`` of the affine weights / biases of the BatchNorm, LayerNorm and GroupNorm layers (Tent's
    trainable set; LayerNorm for a ViT, as ViDA's ViT Tent baseline)."""
    out = []
    for mod_name, m in model.named_modules():
        if isinstance(m, _NORMS):
            for pname, p in m.named_parameters(recurse=False):
                out.append((f"{mod_name}.{pname}" if mod_name else pname, p))
    return out
