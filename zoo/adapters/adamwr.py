"""AdamWr: AdamW on Riemannian-preconditioned gradients of low-rank factor pairs (Break-for-Make stage 2).

The official ``code/custom_optimizer.py`` (ICTMCG/Break-for-make; the "scaled AdamW" of Zhang & Pilanci 2024,
*Riemannian Preconditioned LoRA*). For a pair ``p0 = down (r, in)``, ``p1 = up (out, r)`` with gradients
``g0``, ``g1``, one step is::

    c1 = (p0 p0ᵀ + reg·I_r)⁻¹   if ‖p0 p0ᵀ‖_F > 1e-6 else I_r        (both from the weights before the step)
    c0 = (p1ᵀ p1 + reg·I_r)⁻¹   if ‖p1ᵀ p1‖_F > 1e-6 else I_r
    ĝ1 = g1 c1                  ĝ0 = (g0ᵀ c0)ᵀ
    for (p, ĝ):  m ← β1 m + (1-β1) ĝ;  v ← β2 v + (1-β2) ĝ²;  p ← p − lr · m̂ / (√v̂ + eps)   (m̂, v̂: bias-corrected)
    p ← p − lr · wd · p          (decoupled weight decay, after the update, as the official)

PLP pairs (:class:`~zoo.layers.lora.LowRankDelta` with frozen parts): the trained tensors are only the learnable
columns of ``down`` / rows of ``up``; the preconditioners use the *full* factors (frozen parts included), which is
what the official computes on its full, gradient-masked weights: its masked gradient rows/columns stay zero after
preconditioning (``c`` acts on the rank dimension only), so the learnable parts get the same update. Deviation:
the frozen parts get no weight decay here (they are buffers); the official decays them too.

Conv factors ``down (r, in, *k)`` are flattened to ``(r, in·k)``. State is per parameter (``exp_avg``,
``exp_avg_sq``, ``step``), so ``state_dict`` / resume work as for torch's optimisers.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

__all__ = ["AdamWr", "adamwr_groups", "precondition"]


def _inv_or_eye(gram: torch.Tensor, reg: float) -> torch.Tensor:
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    if torch.linalg.norm(gram) > 1e-6:
        return torch.linalg.inv(gram + reg * eye)
    return eye


def precondition(down: torch.Tensor, up: torch.Tensor, g_down: torch.Tensor, g_up: torch.Tensor,
                 reg: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The scaled gradients ``(ĝ_down, ĝ_up)`` of one pair: ``down (r, n)``, ``up (m, r)`` full factors,
    ``g_down (r, n')`` and ``g_up (m', r)`` the gradients of their trained columns / rows."""
    c1 = _inv_or_eye(down @ down.t(), reg)
    c0 = _inv_or_eye(up.t() @ up, reg)
    return (g_down.t() @ c0).t(), g_up @ c1


class AdamWr(torch.optim.Optimizer):
    """AdamW on preconditioned gradients of ``(down, up)`` pairs (see the module doc).

    Args:
        params: param groups, each ``{"params": [down, up], ...}`` (exactly one pair per group, as the official),
            or a list of ``(down, up)`` tuples. A group may carry ``"down_full"`` / ``"up_full"``: callables
            returning the full factors (frozen parts included; default: the parameters themselves), set by
            :func:`adamwr_groups` for PLP deltas.
        lr, betas, eps, weight_decay: as AdamW (official defaults of stage 2: lr 1e-4, wd 1e-2, eps 1e-8).
        reg: the preconditioner's ridge ``reg · I`` (``--optimizer_reg``, official default 0).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, reg: float = 0.0):
        groups, full = [], []
        for g in params:
            g = dict(g) if isinstance(g, dict) else {"params": list(g)}
            if len(g["params"]) != 2:
                raise ValueError(f"AdamWr: each param group is one (down, up) pair, got {len(g['params'])} tensors")
            # kept outside param_groups: state_dict() must not pickle the modules behind these callables
            full.append((g.pop("down_full", None), g.pop("up_full", None)))
            groups.append(g)
        if not groups:
            raise ValueError("AdamWr got no (down, up) pairs")
        super().__init__(groups, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, reg=reg))
        self._full = full

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, (down_full, up_full) in zip(self.param_groups, self._full):
            down, up = group["params"]
            if down.grad is None and up.grad is None:
                continue
            full_d = down if down_full is None else down_full()
            full_u = up if up_full is None else up_full()
            r = full_u.shape[1]
            cdt = torch.promote_types(down.dtype, torch.float32)  # fp32 maths for half-precision factors
            d2 = full_d.detach().reshape(r, -1).to(cdt)
            u2 = full_u.detach().reshape(-1, r).to(cdt)
            g_d = torch.zeros_like(down) if down.grad is None else down.grad
            g_u = torch.zeros_like(up) if up.grad is None else up.grad
            sd, su = precondition(d2, u2, g_d.reshape(r, -1).to(cdt), g_u.reshape(-1, r).to(cdt), group["reg"])
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p, g in ((down, sd.reshape(down.shape)), (up, su.reshape(up.shape))):
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=cdt)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=cdt)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_hat = m / (1 - beta1 ** t)
                v_hat = v / (1 - beta2 ** t)
                p.add_((m_hat / (v_hat.sqrt() + eps)).to(p.dtype), alpha=-lr)
            if wd:
                for p in (down, up):
                    p.add_(p, alpha=-lr * wd)
        return loss


def adamwr_groups(model: nn.Module, adapter: str, **options: Any) -> list[dict[str, Any]]:
    """One AdamWr param group per layer of low-rank adapter ``adapter`` with trainable factors:
    ``{"params": [delta.down, delta.up], "down_full": delta.down_weight, "up_full": delta.up_weight, **options}``
    (the full factors include PLP's frozen parts)."""
    from zoo.layers.lora import LowRankDelta
    from zoo.adapters.model import iter_lora_layers

    groups = []
    for path, layer in iter_lora_layers(model):
        d = layer.deltas[adapter] if adapter in layer.deltas else None
        if not isinstance(d, LowRankDelta) or not (d.down.requires_grad and d.up.requires_grad):
            continue
        groups.append({"params": [d.down, d.up], "down_full": d.down_weight, "up_full": d.up_weight,
                       "name": f"{path}.{adapter}", **options})
    if not groups:
        raise ValueError(f"no trainable low-rank adapter named '{adapter}' in the model (AdamWr needs its down/up "
                         "pairs)")
    return groups
