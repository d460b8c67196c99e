"""PLP (Break-for-Make's partly learnable projection): geometry, non-zero initial ΔW, frozen parts shared across
runs and bitwise unchanged by training."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from zoo.adapters.plp import (  # noqa: E402
    PLPConfig, SDXL_TARGETS, add_plp, check_shared_frozen, frozen_overlap, frozen_parts, initial_delta_norms,
    plp_deltas,
)
from zoo.errors import CheckpointError, ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SQUARE_ORTH = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q")


def _unet(seed=0, sdxl=False):
    from zoo.diffusion.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed, sdxl=sdxl).unet


def _is_orth(path):
    return path.endswith(SQUARE_ORTH)


def test_official_geometry_frozen_halves_from_disjoint_rows_of_one_orthogonal_basis():
    unet = _unet()
    add_plp(unet, PLPConfig(rank=8, basis_rows=None), name="c")
    deltas = plp_deltas(unet, "c")
    assert len(deltas) == 4 * 8  # 4 transformer blocks x (attn1, attn2) x (q, k, v, out)
    for path, d in deltas.items():
        assert d.frozen_down_cols == d.in_features // 2 and d.frozen_up_rows == d.out_features // 2
        assert d.down.requires_grad and d.up.requires_grad
        assert not any(n.endswith("frozen") for n, _ in d.named_parameters())  # frozen parts are buffers
        C, A = d.down_frozen, d.up_frozen
        if _is_orth(path):
            rows = torch.cat([C.t(), A]).double()  # (fd + fu, r): every row of the basis, each used once
            torch.testing.assert_close(rows.t() @ rows, torch.eye(8, dtype=torch.double), atol=1e-5, rtol=0)
            assert torch.cdist(rows, rows).add(torch.eye(len(rows), dtype=torch.double)).min() > 0  # distinct rows
        else:  # official: to_out.0 and the non-square cross-attention k/v keep N(0, 1/r) / zero
            assert torch.count_nonzero(A) == 0
            assert 0.5 / 8 < C.std().item() < 2 / 8


def test_official_basis_size_1280_gives_the_official_scale():
    unet = _unet()
    add_plp(unet, PLPConfig(rank=8), name="c")  # basis_rows=1280 as the official
    for path, d in plp_deltas(unet, "c").items():
        if _is_orth(path):
            rows = torch.cat([d.down_frozen.t(), d.up_frozen]).double()
            # rows of a (1280, r) matrix with orthonormal columns: mean squared norm r / 1280
            assert rows.pow(2).sum(1).mean().item() == pytest.approx(8 / 1280, rel=0.35)
            assert torch.linalg.eigvalsh(rows.t() @ rows).max().item() <= 1 + 1e-6  # a subset of the rows


def test_initial_delta_is_nonzero_on_the_orthogonal_layers_and_follows_the_block_formula():
    unet = _unet()
    add_plp(unet, PLPConfig(rank=8, alpha=4.0), name="c")
    norms = initial_delta_norms(unet, "c")
    for path, d in plp_deltas(unet, "c").items():
        dw = d.delta_weight()
        fu = d.frozen_up_rows
        assert torch.count_nonzero(dw[fu:]) == 0  # B = 0 at init
        expected_top = d.scaling * d.up_frozen @ d.down_weight()
        torch.testing.assert_close(dw[:fu], expected_top)
        assert (norms[path] > 0) == _is_orth(path)
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 16, 32)
    base = _unet()
    with torch.no_grad():
        assert not torch.allclose(unet(x, t, e).sample, base(x, t, e).sample)  # the adapted UNet differs at step 0


def test_frozen_parts_identical_across_runs_whatever_the_global_rng():
    torch.manual_seed(1)
    a = _unet()
    torch.randn(100)
    add_plp(a, PLPConfig(rank=4), name="content")
    torch.manual_seed(2)
    b = _unet()
    add_plp(b, PLPConfig(rank=4), name="style")
    fa, fb = frozen_parts(a, "content"), frozen_parts(b, "style")
    check_shared_frozen(fa, fb)
    assert all(torch.equal(x, y) for k in fa for x, y in zip(fa[k], fb[k]) if x is not None)
    c = _unet()
    add_plp(c, PLPConfig(rank=4, seed=1), name="other")
    with pytest.raises(CheckpointError, match="same adapter section"):
        check_shared_frozen(fa, frozen_parts(c, "other"))


def test_frozen_parts_bitwise_unchanged_after_training_with_weight_decay():
    unet = _unet()
    add_plp(unet, PLPConfig(rank=4), name="plp")
    before = frozen_parts(unet, "plp")
    learn = {p: (d.down.detach().clone(), d.up.detach().clone()) for p, d in plp_deltas(unet, "plp").items()}
    params = [p for p in unet.parameters() if p.requires_grad]
    assert params and all(".plp." in n for n, p in unet.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.5)
    x, t, e = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 16, 32)
    for _ in range(3):
        loss = unet(x, t, e).sample.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    check_shared_frozen(before, frozen_parts(unet, "plp"), what="before/after training")
    changed = [p for p, d in plp_deltas(unet, "plp").items()
               if not torch.equal(d.down, learn[p][0]) or not torch.equal(d.up, learn[p][1])]
    assert len(changed) == len(learn)


def test_overlap_of_frozen_parts_official_vs_split_rank():
    r = 16
    unet = _unet()
    add_plp(unet, PLPConfig(rank=r, basis_rows=None), name="off")
    add_plp(unet, PLPConfig(rank=r, geometry="split_rank"), name="split")
    off = [frozen_overlap(d) for p, d in plp_deltas(unet, "off").items() if _is_orth(p)]
    split = [frozen_overlap(d) for p, d in plp_deltas(unet, "split").items() if _is_orth(p)]
    # disjoint rows of one tall orthogonal basis are not orthogonal vectors: overlap ~ 1/sqrt(r), as for random ones
    assert 0.4 / math.sqrt(r) < sum(off) / len(off) < 2.5 / math.sqrt(r)
    assert max(split) < 1e-6  # split_rank: A C = 0 exactly
    for p, d in plp_deltas(unet, "split").items():
        if _is_orth(p):
            assert torch.count_nonzero(d.up_frozen) and torch.count_nonzero(d.down_frozen)
            assert torch.count_nonzero(d.delta_weight()[:d.frozen_up_rows, :d.frozen_down_cols]) == 0


def test_basis_too_small_and_bad_config_values_name_the_fix():
    unet = _unet()
    with pytest.raises(ValueError, match="basis_rows"):
        add_plp(unet, PLPConfig(rank=4, basis_rows=64, orth_layers="all"), name="x")
    with pytest.raises(ConfigError, match="adapter.frozen"):
        PLPConfig(frozen=1.0)
    with pytest.raises(ConfigError, match="adapter.geometry"):
        PLPConfig(geometry="nope")


def test_sdxl_targets_cover_every_attention_projection():
    unet = _unet(sdxl=True)
    expected = [n for n, m in unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))
                and isinstance(m, torch.nn.Linear)]
    layers = add_plp(unet, PLPConfig(rank=4, target_modules=SDXL_TARGETS), name="plp")
    assert set(layers) == set(expected) and len(layers) == 32
