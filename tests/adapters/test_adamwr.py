"""AdamWr (Break-for-Make's Riemannian-preconditioned AdamW) against a hand-written transcription of the official
``custom_optimizer.py`` step, on a toy factor pair and on PLP deltas with frozen parts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.adapters.adamwr import AdamWr, adamwr_groups, precondition
from zoo.adapters.model import add_lora, iter_lora_layers


def _official_steps(p0, p1, grads, lr, wd, reg, betas=(0.9, 0.999), eps=1e-8, masks=None):
    """The official AdamWr on one pair (full tensors), written out: returns the factors after each step."""
    p0, p1 = p0.clone().double(), p1.clone().double()
    m = [torch.zeros_like(p0), torch.zeros_like(p1)]
    v = [torch.zeros_like(p0), torch.zeros_like(p1)]
    out = []
    for t, grad_fn in enumerate(grads, start=1):
        d0, d1 = grad_fn(p0, p1)
        if masks is not None:  # the official freezes by multiplying the gradients with 0/1 masks
            d0, d1 = d0 * masks[0], d1 * masks[1]
        g00, g11 = p0 @ p0.T, p1.T @ p1
        eye0, eye1 = torch.eye(p0.shape[0], dtype=p0.dtype), torch.eye(p1.shape[1], dtype=p1.dtype)
        c1 = torch.inverse(g00 + reg * eye0) if torch.linalg.norm(g00) > 1e-6 else eye0
        c0 = torch.inverse(g11 + reg * eye1) if torch.linalg.norm(g11) > 1e-6 else eye1
        s1 = d1 @ c1
        s0 = (d0.T @ c0).T
        for i, (p, s) in enumerate(((p0, s0), (p1, s1))):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * s
            v[i] = betas[1] * v[i] + (1 - betas[1]) * s ** 2
            mh, vh = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            p -= lr * mh / (vh.sqrt() + eps)
        if wd:
            p0 -= lr * wd * p0
            p1 -= lr * wd * p1
        out.append((p0.clone(), p1.clone()))
    return out


def _toy_grads(x, y, n_steps):
    def grad(p0, p1):
        a, b = p0.clone().requires_grad_(True), p1.clone().requires_grad_(True)
        ((x @ a.T @ b.T - y) ** 2).mean().backward()
        return a.grad, b.grad

    return [grad] * n_steps


def test_toy_pair_equals_hand_written_preconditioned_update():
    torch.manual_seed(0)
    r, n, m = 3, 6, 5
    x, y = torch.randn(16, n, dtype=torch.double), torch.randn(16, m, dtype=torch.double)
    p0, p1 = torch.randn(r, n, dtype=torch.double), torch.randn(m, r, dtype=torch.double) * 0.1
    down, up = nn.Parameter(p0.clone()), nn.Parameter(p1.clone())
    opt = AdamWr([(down, up)], lr=1e-2, weight_decay=0.1, reg=0.05)
    expected = _official_steps(p0, p1, _toy_grads(x, y, 4), lr=1e-2, wd=0.1, reg=0.05)
    for e0, e1 in expected:
        opt.zero_grad()
        ((x @ down.T @ up.T - y) ** 2).mean().backward()
        opt.step()
        torch.testing.assert_close(down.detach(), e0, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(up.detach(), e1, rtol=1e-10, atol=1e-12)
    # plain AdamW would differ: the preconditioner matters
    d2, u2 = nn.Parameter(p0.clone()), nn.Parameter(p1.clone())
    adamw = torch.optim.AdamW([d2, u2], lr=1e-2, weight_decay=0.1)
    for _ in range(4):
        adamw.zero_grad()
        ((x @ d2.T @ u2.T - y) ** 2).mean().backward()
        adamw.step()
    assert not torch.allclose(d2, down)


def test_zero_factor_falls_back_to_identity_as_the_official():
    down, up = torch.randn(2, 4), torch.zeros(3, 2)  # up = 0 at LoRA init: ‖p1ᵀp1‖ = 0 -> identity for down
    g_down, g_up = torch.randn(2, 4), torch.randn(3, 2)
    s_down, s_up = precondition(down, up, g_down, g_up)
    torch.testing.assert_close(s_down, g_down)
    torch.testing.assert_close(s_up, g_up @ torch.linalg.inv(down @ down.T))


def test_plp_frozen_parts_equal_the_officials_masked_full_weights():
    """Ours trains only the learnable columns/rows with the full factors in the preconditioner; the official trains
    full weights whose frozen halves get zero gradients. Without weight decay (which the official also applies to
    its frozen halves) both give the same learnable parts and the frozen ones stay put."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(8, 6))
    add_lora(lin, ["0"], rank=3, init="random", frozen_down_cols=4, frozen_up_rows=3, seed=0, name="plp")
    (_, layer), = iter_lora_layers(lin)
    d = layer.deltas["plp"]
    with torch.no_grad():
        d.up.normal_(0, 0.5)
    x, y = torch.randn(32, 8), torch.randn(32, 6)
    p0, p1 = d.down_weight().detach().double(), d.up_weight().detach().double()
    masks = (torch.cat([torch.zeros(3, 4), torch.ones(3, 4)], 1).double(),  # down: first 4 columns frozen
             torch.cat([torch.zeros(3, 3), torch.ones(3, 3)]).double())  # up: first 3 rows frozen
    base_w, base_b = layer.base.weight.detach().double(), layer.base.bias.detach().double()

    def grad(a0, a1):
        a, b = a0.clone().requires_grad_(True), a1.clone().requires_grad_(True)
        out = x.double() @ base_w.T + base_b + (x.double() @ a.T) @ b.T
        ((out - y.double()) ** 2).mean().backward()
        return a.grad, b.grad

    expected = _official_steps(p0, p1, [grad] * 3, lr=1e-2, wd=0.0, reg=0.0, masks=masks)
    frozen = (d.down_frozen.clone(), d.up_frozen.clone())
    opt = AdamWr(adamwr_groups(lin, "plp"), lr=1e-2)
    for e0, e1 in expected:
        opt.zero_grad()
        ((lin(x) - y) ** 2).mean().backward()
        opt.step()
        torch.testing.assert_close(d.down_weight().detach().double(), e0, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(d.up_weight().detach().double(), e1, rtol=1e-4, atol=1e-6)
    assert torch.equal(d.down_frozen, frozen[0]) and torch.equal(d.up_frozen, frozen[1])


def test_state_dict_resume_continues_exactly():
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randn(8, 4)

    def run(steps, resume_at=None):
        torch.manual_seed(1)
        down, up = nn.Parameter(torch.randn(2, 5)), nn.Parameter(torch.randn(4, 2))
        opt = AdamWr([(down, up)], lr=1e-2, weight_decay=0.01)
        for i in range(steps):
            if i == resume_at:
                saved = (opt.state_dict(), down.detach().clone(), up.detach().clone())
                down2, up2 = nn.Parameter(saved[1]), nn.Parameter(saved[2])
                down, up = down2, up2
                opt = AdamWr([(down, up)], lr=1e-2, weight_decay=0.01)
                opt.load_state_dict(saved[0])
            opt.zero_grad()
            ((x @ down.T @ up.T - y) ** 2).mean().backward()
            opt.step()
        return down.detach(), up.detach()

    a, b = run(5), run(5, resume_at=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_groups_must_be_pairs():
    with pytest.raises(ValueError, match="one \\(down, up\\) pair"):
        AdamWr([{"params": [nn.Parameter(torch.ones(1))]}])
    with pytest.raises(ValueError, match="no trainable low-rank adapter"):
        adamwr_groups(nn.Linear(2, 2), "plp")
