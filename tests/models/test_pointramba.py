"""PoinTramba: official parameter count and checkpoint layout, ordering/pooling/losses, the model contract (logits,
auxiliary losses, per-layer Mamba features), bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo import create_model
from zoo.models._contract import pop_auxiliary_losses
from zoo.models.pointramba import (
    PoinTramba,
    glr_loss,
    importance_loss,
    importance_pool,
    sequence_order,
)

TINY = "pointramba_tiny"


def _cloud(b: int = 4, n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed))


def official_state_shapes(
    num_classes: int,
    dim: int = 384,
    group_depth: int = 4,
    depth: int = 12,
    d_state: int = 16,
    d_conv: int = 4,
    expand: int = 2,
    mlp_ratio: int = 4,
    proj_dim: int = 256,
    score_hidden: int = 128,
    embed_hidden: int = 128,
    head_hidden: int = 256,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ``PointMambaFormer`` state dict (``--mode_group Attention
    --use_simple_score_predictor``), written out from the official module definitions."""
    sh: dict[str, tuple[int, ...]] = {}

    def lin(name, i, o, bias=True):
        sh[f"{name}.weight"] = (o, i)
        if bias:
            sh[f"{name}.bias"] = (o,)

    def conv(name, i, o):
        sh[f"{name}.weight"] = (o, i, 1)
        sh[f"{name}.bias"] = (o,)

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            sh[f"{name}.{p}"] = (c,)
        sh[f"{name}.num_batches_tracked"] = ()

    def ln(name, c):
        sh[f"{name}.weight"] = (c,)
        sh[f"{name}.bias"] = (c,)

    gd = "group_divider"
    lin(f"{gd}.embedding.0", 3, embed_hidden)
    lin(f"{gd}.embedding.2", embed_hidden, dim)
    sh[f"{gd}.cls_token"] = (1, 1, dim)
    sh[f"{gd}.cls_pos"] = (1, 1, dim)
    lin(f"{gd}.pos_embed.0", 3, embed_hidden)
    lin(f"{gd}.pos_embed.2", embed_hidden, dim)
    for i in range(group_depth):
        b = f"{gd}.blocks.blocks.{i}"
        ln(f"{b}.norm1", dim)
        lin(f"{b}.attn.qkv", dim, 3 * dim, bias=False)
        lin(f"{b}.attn.proj", dim, dim)
        ln(f"{b}.norm2", dim)
        lin(f"{b}.mlp.fc1", dim, mlp_ratio * dim)
        lin(f"{b}.mlp.fc2", mlp_ratio * dim, dim)
    ln(f"{gd}.norm", dim)
    lin(f"{gd}.reduce_dim", 2 * dim, dim)
    for head, out in (("projection", proj_dim), ("cal_imp_score", 1)):
        conv(f"importance_cal_block.{head}.0", dim, score_hidden)
        bn(f"importance_cal_block.{head}.1", score_hidden)
        conv(f"importance_cal_block.{head}.3", score_hidden, out)
    lin("pos_embed.0", 3, embed_hidden)
    lin("pos_embed.2", embed_hidden, dim)
    d_inner, dt_rank = expand * dim, math.ceil(dim / 16)
    for i in range(depth):
        m = f"blocks.layers.{i}.mixer"
        sh[f"{m}.A_log"] = (d_inner, d_state)
        sh[f"{m}.D"] = (d_inner,)
        sh[f"{m}.in_proj.weight"] = (2 * d_inner, dim)
        sh[f"{m}.conv1d.weight"] = (d_inner, 1, d_conv)
        sh[f"{m}.conv1d.bias"] = (d_inner,)
        sh[f"{m}.x_proj.weight"] = (dt_rank + 2 * d_state, d_inner)
        lin(f"{m}.dt_proj", dt_rank, d_inner)
        sh[f"{m}.out_proj.weight"] = (dim, d_inner)
        ln(f"blocks.layers.{i}.norm", dim)
    ln("blocks.norm_f", dim)
    ln("norm", dim)
    lin("cls_head_finetune.0", dim, head_hidden)
    bn("cls_head_finetune.1", head_hidden)
    lin("cls_head_finetune.4", head_hidden, head_hidden)
    bn("cls_head_finetune.5", head_hidden)
    lin("cls_head_finetune.8", head_hidden, num_classes)
    conv("global_projection.0", dim, score_hidden)
    bn("global_projection.1", score_hidden)
    conv("global_projection.3", score_hidden, proj_dim)
    return sh


TINY_SHAPES = dict(dim=32, group_depth=1, depth=2, d_state=8, proj_dim=32, score_hidden=16, embed_hidden=16,
                   head_hidden=32)


def _random_official_checkpoint(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(100)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(s, generator=g) + 0.5
        else:
            sd[k] = torch.randn(s, generator=g) * 0.2
    return {"base_model": {"module." + k: v for k, v in sd.items()}, "epoch": 300}


# ---------------------------------------------------------------------------------------------------------------
# Full-size model: parameter count and official layout (built, not run)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes,expected", [(15, 19_501_072), (40, 19_507_497)])
def test_full_model_parameter_count_and_official_layout(num_classes, expected):
    model = create_model("pointramba", num_classes=num_classes)
    assert sum(p.numel() for p in model.parameters()) == expected
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_state_shapes(num_classes)
    # the three official-but-unused tensors are kept (count, checkpoints) and frozen
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"group_divider.cls_token", "group_divider.cls_pos", "group_divider.reduce_dim.weight",
                      "group_divider.reduce_dim.bias"}
    assert model.num_features == 384 and model.num_classes == num_classes
    assert model.pretrained_cfg.classifier == "cls_head_finetune.8"


def test_full_model_forward_once():
    """One eval forward of the paper configuration (1024 points): 2 x 256 tokens through the Mamba stack."""
    torch.manual_seed(0)
    model = create_model("pointramba", num_classes=15).eval()
    with torch.no_grad():
        inter = model.forward_parts(_cloud(1, 1024))
        logits = model.forward_head(inter["pooled"])
    assert inter["group_tokens"].shape == (1, 256, 384)
    assert inter["order"].shape == (1, 512) and inter["tokens"].shape == (1, 512, 384)
    assert logits.shape == (1, 15) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["pointramba_small", "pointramba_tiny"])
def test_registered_variants_run_at_their_input_size(name):
    model = create_model(name, num_classes=10).eval()
    n = model.pretrained_cfg.num_points
    assert model.pretrained_cfg.input_size == (n, 3)
    with torch.no_grad():
        assert model(_cloud(2, n)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoints
# ---------------------------------------------------------------------------------------------------------------
def test_official_layout_checkpoint_loads_exactly(tmp_path):
    ckpt = _random_official_checkpoint(official_state_shapes(10, **TINY_SHAPES))
    path = tmp_path / "ckpt-best.pth"
    torch.save(ckpt, path)
    # strict: any missing/unexpected key raises inside create_model
    model = create_model(TINY, checkpoint_path=str(path), num_classes=10).eval()
    ref = create_model(TINY, num_classes=10).eval()
    ref.load_state_dict({k[len("module."):]: v for k, v in ckpt["base_model"].items()}, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["base_model"]["module." + k]), k
    pts = _cloud(2, 64)
    with torch.no_grad():
        assert torch.equal(model(pts), ref(pts))


def test_checkpoint_with_other_num_classes_reinitialises_head(tmp_path, caplog):
    path = tmp_path / "ckpt.pth"
    torch.save(_random_official_checkpoint(official_state_shapes(40, **TINY_SHAPES)), path)
    model = create_model(TINY, checkpoint_path=str(path), num_classes=7)
    assert model.get_classifier().out_features == 7
    assert "re-initialised" in caplog.text


def test_checkpoint_of_another_architecture_fails_listing_keys(tmp_path):
    ckpt = _random_official_checkpoint(official_state_shapes(10, **TINY_SHAPES))
    ckpt["base_model"]["module.group_divider.encoder.first_conv.0.weight"] = torch.zeros(128, 3, 1)
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    with pytest.raises(RuntimeError, match="unexpected key"):
        create_model(TINY, checkpoint_path=str(path), num_classes=10)


# ---------------------------------------------------------------------------------------------------------------
# Ordering, pooling and losses on hand-made inputs
# ---------------------------------------------------------------------------------------------------------------
def test_bio_ordering_is_both_sorted_orders_concatenated():
    scores = torch.tensor([[0.3, -0.5, 0.9, 0.1], [2.0, 1.0, -1.0, 0.0]])
    assert sequence_order(scores, "bio").tolist() == [[2, 0, 3, 1, 1, 3, 0, 2], [0, 1, 3, 2, 2, 3, 1, 0]]
    assert sequence_order(scores, "importance").tolist() == [[2, 0, 3, 1], [0, 1, 3, 2]]
    assert sequence_order(scores, "none").tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    rnd = sequence_order(scores, "random")
    assert rnd.shape == (2, 4) and all(sorted(r) == [0, 1, 2, 3] for r in rnd.tolist())
    with pytest.raises(ValueError, match="ordering"):
        sequence_order(scores, "hilbert")


def test_importance_pooling_drops_negative_scores_and_clips_at_one():
    x = torch.tensor([[[100.0, -100.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    scores = torch.tensor([[-0.7, 0.5, 2.0, 0.0]])
    out = importance_pool(x, scores, "importance")
    assert torch.allclose(out, torch.tensor([[0.5 * 1 + 1.0 * 3, 0.5 * 2 + 1.0 * 4]]))
    x2 = x.clone()
    x2[0, 0] = -5e4  # the token with a negative score does not matter
    assert torch.equal(importance_pool(x2, scores, "importance"), out)
    assert torch.allclose(importance_pool(x, scores, "mean"), x.mean(1))
    assert torch.equal(importance_pool(x, scores, "max"), x.max(1)[0])


def test_glr_loss_matches_explicit_formula():
    g = torch.Generator().manual_seed(0)
    B, G, P = 3, 5, 8
    glob = F.normalize(torch.randn(B, P, generator=g), dim=-1)
    patch = F.normalize(torch.randn(B, G, P, generator=g), dim=-1)
    total = 0.0
    for b in range(B):
        for n in range(G):
            logits = 64.0 * glob @ patch[b, n]  # similarity of group (b, n) with every shape's global feature
            total += -torch.log_softmax(logits, 0)[b]
    assert torch.allclose(glr_loss(glob, patch), total / (B * G), atol=1e-5)
    # aligned groups (each equal to its own global feature) give a near-zero loss
    assert glr_loss(glob, glob[:, None].expand(B, G, P).contiguous()) < glr_loss(glob, patch)


def test_importance_loss_matches_explicit_formula_and_target_gradient():
    g = torch.Generator().manual_seed(1)
    B, G, P = 2, 4, 6
    pred = torch.randn(B, G, generator=g) * 2
    glob = F.normalize(torch.randn(B, P, generator=g), dim=-1).requires_grad_()
    patch = F.normalize(torch.randn(B, G, P, generator=g), dim=-1)
    target = (patch * glob.detach()[:, None]).sum(-1)
    diff = (pred - target).abs()
    expected = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum(-1).mean()
    loss = importance_loss(pred, glob, patch)
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert glob.grad is not None and glob.grad.abs().sum() > 0  # official: the target is not detached
    glob.grad = None
    pred.requires_grad_()
    importance_loss(pred, glob, patch, detach_target=True).backward()
    assert glob.grad is None and pred.grad is not None


def test_intra_group_attention_matches_explicit_softmax():
    from zoo.layers.transformer import Attention

    torch.manual_seed(0)
    attn = Attention(12, num_heads=3).eval()
    x = torch.randn(5, 7, 12)
    qkv = attn.qkv(x).reshape(5, 7, 3, 3, 4).permute(2, 0, 3, 1, 4)
    w = (qkv[0] @ qkv[1].transpose(-2, -1) * 4**-0.5).softmax(-1)
    ref = attn.proj((w @ qkv[2]).transpose(1, 2).reshape(5, 7, 12))
    assert torch.allclose(attn(x), ref, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Forward contracts
# ---------------------------------------------------------------------------------------------------------------
def test_forward_gives_logits_in_both_modes_and_keeps_weighted_losses():
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=5, glr_weight=0.5, importance_weight=2.0)
    pts = _cloud(4, 64)
    model.eval()
    with torch.no_grad():
        logits = model(pts)
        parts = model.forward_parts(pts)
    assert logits.shape == (4, 5) and model.auxiliary_losses() == {}
    assert parts["order"].shape == (4, 2 * 16) and parts["tokens"].shape == (4, 32, 32)
    assert torch.allclose(model.forward_head(model.forward_features(pts)), logits)
    model.train()
    torch.manual_seed(1)
    out = model(pts)
    assert isinstance(out, torch.Tensor) and out.shape == (4, 5)
    losses = model.auxiliary_losses()
    assert set(losses) == {"glr", "importance"} and model.auxiliary_losses() == {}
    # the kept losses are already weighted, and belong to that forward (same dropout masks)
    torch.manual_seed(1)
    parts = model.forward_parts(pts)
    torch.testing.assert_close(out, model.forward_head(parts["pooled"]))
    glob = model.global_projection(parts["pooled"].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(losses["glr"], 0.5 * glr_loss(glob, parts["patch_proj"]))
    expected_imp = 2.0 * importance_loss(parts["scores"], glob, parts["patch_proj"])
    assert torch.allclose(losses["importance"], expected_imp)


def test_every_forward_replaces_the_kept_losses():
    model = create_model(TINY, num_classes=3).train()
    model(_cloud(2, 64))
    model.eval()(_cloud(2, 64))  # an eval forward drops the stale training losses
    assert model.auxiliary_losses() == {}


def test_zero_weights_give_no_losses():
    model = create_model(TINY, num_classes=3, glr_weight=0.0, importance_weight=0.0).train()
    model(_cloud(2, 64))
    assert model.auxiliary_losses() == {}
    model = create_model(TINY, num_classes=3, glr_weight=0.0).train()
    model(_cloud(2, 64))
    assert set(model.auxiliary_losses()) == {"importance"}


def _graph_params(t: torch.Tensor) -> set[int]:
    """ids of the leaf tensors reachable from ``t``'s autograd graph (what DDP's unused-parameter search walks)."""
    seen, stack, leaves = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.add(id(fn.variable))
        stack.extend(f for f, _ in fn.next_functions)
    return leaves


def test_logits_graph_reaches_the_auxiliary_loss_parameters():
    """DDP(find_unused_parameters=True) marks a parameter it cannot reach from forward's output as unused and then
    fails when an auxiliary loss gives it a gradient: the logits are tied to the kept losses."""
    model = create_model(TINY, num_classes=3).train()
    logits = model(_cloud(2, 64))
    reached = _graph_params(logits)
    assert all(id(p) in reached for p in model.global_projection.parameters())
    # the tie carries no gradient: the projection gets gradients from the auxiliary losses only
    logits.sum().backward()
    assert all(p.grad is None for p in model.global_projection.parameters())
    assert all(p.grad is not None for p in model.cls_head_finetune.parameters())


def test_backward_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=4).train()
    pts = _cloud(4, 64, seed=3)
    logits = model(pts)
    aux = pop_auxiliary_losses(model)
    assert (model.forward_parts(pts)["scores"] > 0).any()  # else importance pooling blocks the gradient
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + sum(aux.values())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert no_grad == []
    # only the official-but-unused cls token / reduce_dim are frozen, and they get no gradient
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert sorted(frozen) == ["group_divider.cls_pos", "group_divider.cls_token", "group_divider.reduce_dim.bias",
                              "group_divider.reduce_dim.weight"]


def test_group_cls_token_option_trains_the_cls_parameters():
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=2, group_use_cls_token=True).train()
    logits = model(_cloud(2, 64))
    (logits.sum() + sum(model.auxiliary_losses().values())).backward()
    gd = model.group_divider
    assert all(p.requires_grad and p.grad is not None for p in (gd.cls_token, gd.cls_pos, gd.reduce_dim.weight))


# ---------------------------------------------------------------------------------------------------------------
# Per-layer Mamba features (part segmentation)
# ---------------------------------------------------------------------------------------------------------------
def _official_segmentation_features(model: PoinTramba, pts: torch.Tensor, fetch_idx) -> list[torch.Tensor]:
    """The official ``MixerModelForSegmentation.forward`` followed by ``get_model``'s ``self.norm``, written out:
    after each fetched layer ``norm_f(hidden_states + residual)``, then the model's final ``norm``."""
    parts = model.forward_parts(pts)
    order = parts["order"]
    take = lambda t: torch.gather(t, 1, order.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
    hidden = take(parts["group_tokens"]) + take(model.pos_embed(parts["center"]))
    residual, feats = None, []
    for i, layer in enumerate(model.blocks.layers):
        hidden, residual = layer(hidden, residual)
        if i in fetch_idx:
            feats.append(model.norm(model.blocks.norm_f(hidden + residual)))
    return feats


def test_intermediates_are_the_official_segmentation_features():
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=3, depth=4).eval()
    pts = _cloud(2, 64)
    with torch.no_grad():
        want = _official_segmentation_features(model, pts, (1, 3))
        final, feats = model.forward_intermediates(pts, indices=[1, 3], norm=True)
        raw = model.forward_intermediates(pts, indices=[1, 3], intermediates_only=True)
        parts = model.forward_parts(pts)
    assert len(feats) == 2 and all(f.shape == (2, 32, 32) for f in feats)
    for got, ref in zip(feats, want):
        torch.testing.assert_close(got, ref)
    # norm=False: the stack's norm_f only; the last layer, normed, is the token sequence the head pools
    torch.testing.assert_close(model.norm(raw[1]), parts["tokens"])
    assert not torch.allclose(raw[0], feats[0])
    torch.testing.assert_close(final, parts["pooled"])


def test_intermediate_indices_stop_early_and_prune():
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=3, depth=4).eval()
    pts = _cloud(2, 64)
    with torch.no_grad():
        every = model.forward_intermediates(pts, intermediates_only=True)
        assert len(every) == 4
        for indices, expect in ((2, [2, 3]), ([0, -2], [0, 2]), (None, [0, 1, 2, 3])):
            got = model.forward_intermediates(pts, indices=indices, intermediates_only=True)
            assert len(got) == len(expect)
            for g, i in zip(got, expect):
                torch.testing.assert_close(g, every[i])
        final, early = model.forward_intermediates(pts, indices=[1], stop_early=True)
        torch.testing.assert_close(early[0], every[1])
        assert final.shape == (2, 32) and not torch.allclose(final, model.forward_features(pts))
        with pytest.raises(ValueError, match=r"block index 4 is out of range for 4 blocks"):
            model.forward_intermediates(pts, indices=[4])
        assert model.prune_intermediate_layers([1]) == [1]
        assert len(model.blocks.layers) == 2 and model.get_classifier().__class__.__name__ == "Identity"
        torch.testing.assert_close(model.forward_intermediates(pts, intermediates_only=True)[1], every[1])


def test_shipped_weights_keep_the_contract():
    model = create_model("pointramba_small_modelnet10", pretrained=True).eval()
    pts = _cloud(2, 1024)
    with torch.no_grad():
        logits = model(pts)
        final, feats = model.forward_intermediates(pts, norm=True)
        pre = model.forward_head(final, pre_logits=True)
    assert logits.shape == (2, 10) and pre.shape == (2, 256) and len(feats) == 2
    torch.testing.assert_close(model.get_classifier()(pre), logits)
    torch.testing.assert_close(feats[-1], model.forward_parts(pts)["tokens"])


@pytest.mark.parametrize("ordering", ["bio", "importance", "random", "none"])
@pytest.mark.parametrize("pooling", ["importance", "mean", "max"])
def test_ablation_options_run(ordering, pooling):
    model = create_model(TINY, num_classes=3, ordering=ordering, pooling=pooling).eval()
    with torch.no_grad():
        inter = model.forward_parts(_cloud(2, 64))
    assert inter["tokens"].shape[1] == (32 if ordering == "bio" else 16)
    assert model.forward_head(inter["pooled"]).shape == (2, 3)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="ordering"):
        PoinTramba(num_group=4, group_size=4, trans_dim=16, group_num_heads=2, depth=1, ordering="zorder")
    with pytest.raises(ValueError, match="pooling"):
        PoinTramba(num_group=4, group_size=4, trans_dim=16, group_num_heads=2, depth=1, pooling="sum")


def test_reset_classifier():
    model = create_model(TINY, num_classes=10)
    model.reset_classifier(3)
    assert model.num_classes == 3
    assert model.eval()(_cloud(2, 64)).shape == (2, 3)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,match",
    [
        ((2, 3, 64), r"\(B, N, 3\), got \(2, 3, 64\).*transpose"),
        ((64, 3), r"got \(64, 3\).*unsqueeze"),
        ((2, 64, 6), r"got \(2, 64, 6\).*\[\.\.\., :3\]"),
        ((2, 10, 3), r"at least 16 points.*num_group=16.*got N=10"),
    ],
)
def test_bad_point_shapes_raise_clear_errors(shape, match):
    model = create_model(TINY).eval()
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape))


def test_nonfinite_points_name_the_clouds_and_the_fix():
    model = create_model(TINY).eval()
    pts = _cloud(4, 64)
    pts[3, 10, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"PoinTramba: 1 of the 4 point clouds .*batch indices: 3\).*Clean the data"):
        model(pts)


def test_bad_dtype_and_training_batch_of_one():
    model = create_model(TINY)
    with pytest.raises(TypeError, match="floating-point"):
        model.eval()(torch.zeros(2, 64, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 clouds"):
        model.train()(torch.randn(1, 64, 3))
