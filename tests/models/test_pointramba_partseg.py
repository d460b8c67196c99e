"""PoinTramba part segmentation: the official layout and checkpoints (``best_model.pth`` as ``main.py`` saves it), the
official model run on the CPU with its CUDA-only imports stubbed, feature propagation, the model contract, bad input."""
from __future__ import annotations

import math
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from official_code import imported_official, official_sources
from zoo import create_model
from zoo.models._contract import pop_auxiliary_losses
from zoo.models.pointramba import glr_loss, importance_loss
from zoo.models.pointramba_partseg import FeaturePropagation, PoinTrambaPartSeg
from zoo.ops import pointcloud as ops

TINY = "pointramba_partseg_tiny"
REPO = Path(__file__).resolve().parents[2]


def _cloud(b: int = 2, n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed))


def official_partseg_state_shapes(
    parts: int = 50, dim: int = 384, group_depth: int = 4, depth: int = 12, fetched: int = 3, d_state: int = 16,
    d_conv: int = 4, expand: int = 2, mlp_ratio: int = 4, proj_dim: int = 256, score_hidden: int = 128,
    embed_hidden: int = 128, label_dim: int = 64, fp_hidden: int | None = None, fp_out: int = 1024,
    head: tuple[int, int] = (512, 256), categories: int = 16,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official part-segmentation ``get_model`` state dict (``--mode_group Attention``,
    ``CalImportance``, ``--mode_map_feature all``), written out from the official module definitions (their widths
    are hard-coded for dim 384 and 3 fetched layers; the arguments generalise them the way our model does)."""
    sh: dict[str, tuple[int, ...]] = {}

    def lin(name, i, o, bias=True):
        sh[f"{name}.weight"] = (o, i)
        if bias:
            sh[f"{name}.bias"] = (o,)

    def conv(name, i, o, bias=True):
        sh[f"{name}.weight"] = (o, i, 1)
        if bias:
            sh[f"{name}.bias"] = (o,)

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            sh[f"{name}.{p}"] = (c,)
        sh[f"{name}.num_batches_tracked"] = ()

    def ln(name, c):
        sh[f"{name}.weight"] = (c,)
        sh[f"{name}.bias"] = (c,)

    def conv_bn_conv(name, i, hidden, o):
        conv(f"{name}.0", i, hidden)
        bn(f"{name}.1", hidden)
        conv(f"{name}.3", hidden, o)

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
    ic = "importance_cal_block"
    conv_bn_conv(f"{ic}.feature_extractor1", dim, score_hidden, 256)  # official: 128 = score_hidden
    conv_bn_conv(f"{ic}.feature_extractor2", 256, 512, dim)
    conv_bn_conv(f"{ic}.projection", dim, score_hidden, proj_dim)
    conv_bn_conv(f"{ic}.cal_imp_score", dim, score_hidden, 1)
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
    conv("label_conv.0", categories, label_dim, bias=False)
    bn("label_conv.1", label_dim)
    fd = fetched * dim
    fp = [fp_hidden or 4 * dim, fp_out]
    conv("propagation_0.mlp_convs.0", fd + 3, fp[0])
    conv("propagation_0.mlp_convs.1", fp[0], fp[1])
    bn("propagation_0.mlp_bns.0", fp[0])
    bn("propagation_0.mlp_bns.1", fp[1])
    conv_bn_conv("global_projection", 2 * fd + label_dim, score_hidden, proj_dim)
    conv("convs1", fp_out + 2 * fd + label_dim, head[0])
    conv("convs2", head[0], head[1])
    conv("convs3", head[1], parts)
    bn("bns1", head[0])
    bn("bns2", head[1])
    return sh


TINY_SHAPES = dict(dim=32, group_depth=1, depth=3, d_state=8, proj_dim=32, score_hidden=16, embed_hidden=16,
                   label_dim=16, fp_hidden=64, fp_out=64, head=(64, 32))


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, scale: float = 0.2) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(100)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(s, generator=g) + 0.5
        else:
            sd[k] = torch.randn(s, generator=g) * scale
    return sd


def _main_py_checkpoint(state: dict, path: Path) -> Path:
    """Save ``state`` the way the official ``main.py`` does (numpy-scalar metrics, optimiser state)."""
    torch.save({
        "epoch": 41, "train_acc": np.float64(0.93), "test_acc": np.float64(0.94), "class_avg_iou": np.float64(0.83),
        "inctance_avg_iou": np.float64(0.85), "model_state_dict": state,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 2e-4, "weight_decay": 0.05, "params": [0]}]},
    }, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Official layout and checkpoints
# ---------------------------------------------------------------------------------------------------------------
def test_full_model_has_the_official_layout_and_parameter_count():
    model = create_model("pointramba_partseg")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_partseg_state_shapes()
    assert sum(p.numel() for p in model.parameters()) == 25_236_659  # the official get_model(50, run.sh config)
    assert model.num_classes == 50 and model.num_categories == 16 and model.fetch_idx == (3, 7, 11)
    assert model.num_features == 1024 + 2 * 1152 + 64 == model.convs1.in_channels


def test_main_py_checkpoint_loads_with_no_missing_or_unexpected_key(tmp_path):
    state = _random_state(official_partseg_state_shapes(**TINY_SHAPES))
    path = _main_py_checkpoint(state, tmp_path / "best_model.pth")
    model = create_model(TINY, checkpoint_path=str(path)).eval()  # strict: any key mismatch raises
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    # a DataParallel-wrapped save ("module." prefixes) and a plain state dict load the same
    wrapped = _main_py_checkpoint({"module." + k: v for k, v in state.items()}, tmp_path / "dp.pth")
    model2 = create_model(TINY, checkpoint_path=str(wrapped)).eval()
    pts, cat = _cloud(2, 64), torch.tensor([0, 4])
    with torch.no_grad():
        torch.testing.assert_close(model2(pts, cat), model(pts, cat), rtol=0, atol=0)


def test_checkpoint_of_another_model_fails_listing_keys(tmp_path):
    state = _random_state(official_partseg_state_shapes(**TINY_SHAPES))
    state["cls_head_finetune.0.weight"] = torch.zeros(3, 3)
    del state["convs2.bias"]
    path = _main_py_checkpoint(state, tmp_path / "best_model.pth")
    with pytest.raises(RuntimeError, match=r"1 missing key\(s\) \['convs2.bias'\].*1 unexpected key\(s\) \['cls_head"):
        create_model(TINY, checkpoint_path=str(path))


def test_checkpoint_with_other_part_count_reinitialises_the_classifier(tmp_path, caplog):
    state = _random_state(official_partseg_state_shapes(**TINY_SHAPES))
    path = _main_py_checkpoint(state, tmp_path / "best_model.pth")
    model = create_model(TINY, checkpoint_path=str(path), num_classes=7)
    assert model.get_classifier().out_channels == 7 and "re-initialised" in caplog.text
    assert torch.equal(model.convs2.weight, state["convs2.weight"])


# ---------------------------------------------------------------------------------------------------------------
# The official model, run on the CPU with its CUDA-only imports stubbed
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def official_module(tmp_path):
    """The official segmentation module, importable on the CPU: pointnet2_ops FPS/gather, KNN_CUDA and mamba_ssm's
    Mamba are replaced by zoo's (same numbers; the Mamba stub is zoo's mixer with mamba-ssm's parameter names)."""
    files = ("part_segmentation/models/pointramba.py", "part_segmentation/models/pointnet2_utils.py")
    sources = official_sources(files, "ZOO_POINTRAMBA_SRC", "xiaoyao3302/PoinTramba")
    if sources is None:
        pytest.skip("the official PoinTramba code is not available offline (set ZOO_POINTRAMBA_SRC to a checkout)")
    from zoo.layers.mamba import Mamba

    sources = {"pointramba_seg_official.py": sources[files[0]], "pointnet2_utils.py": sources[files[1]]}
    logger = types.ModuleType("logger")
    logger.get_missing_parameters_message = logger.get_unexpected_parameters_message = str
    p2u = types.ModuleType("pointnet2_ops.pointnet2_utils")
    p2u.furthest_point_sample = lambda xyz, n: ops.furthest_point_sample(xyz, n).int()
    p2u.gather_operation = lambda f, idx: torch.gather(f, 2, idx.long()[:, None, :].expand(-1, f.shape[1], -1))
    p2 = types.ModuleType("pointnet2_ops")
    p2.pointnet2_utils = p2u

    class KNN:
        def __init__(self, k, transpose_mode=True):
            self.k = k

        def __call__(self, ref, query):
            return ops.knn(ref, query, self.k)

    knn = types.ModuleType("knn_cuda")
    knn.KNN = KNN
    mss = types.ModuleType("mamba_ssm.modules.mamba_simple")
    mss.Mamba = Mamba
    stubs = {"logger": logger, "pointnet2_ops": p2, "pointnet2_ops.pointnet2_utils": p2u, "knn_cuda": knn,
             "mamba_ssm": types.ModuleType("mamba_ssm"), "mamba_ssm.modules": types.ModuleType("mamba_ssm.modules"),
             "mamba_ssm.modules.mamba_simple": mss}
    # FutureWarning: timm.models.layers is deprecated (the official import)
    with imported_official(tmp_path, sources, "pointramba_seg_official", stubs=stubs, quiet=(FutureWarning,)) as module:
        yield module


def _official_config(**over) -> SimpleNamespace:
    """main.py's defaults + cfgs/config.yaml (run.sh passes no other flag)."""
    cfg = dict(trans_dim=384, depth=12, group_size=32, num_group=128, detach_mapping=False,
               detach_score_prediction=False, mode_sort="both", mode_group="Attention",
               use_simple_score_predictor=False, mode_map_feature="all", cat_group_token=False,
               attention_use_cls_token=False, attention_depth=4, attention_drop_path_rate=0.1, attention_num_heads=6,
               rms_norm=False, drop_path=0.2, fetch_idx=[3, 7, 11])
    cfg.update(over)
    return SimpleNamespace(**cfg)


def test_official_model_state_layout_equals_ours(official_module):
    official = official_module.get_model(50, _official_config())
    ours = create_model("pointramba_partseg")
    assert {k: v.shape for k, v in official.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}


def test_official_random_checkpoint_gives_the_official_per_point_logits(official_module, tmp_path):
    """A random official checkpoint (saved as main.py does) in both models: the same per-point log-probabilities.
    The official widths are hard-coded for dim 384 and 3 fetched layers; depth 3 / 16 groups keep it small."""
    cfg = _official_config(depth=3, fetch_idx=[0, 1, 2], num_group=16, group_size=8, attention_depth=1)
    torch.manual_seed(0)
    official = official_module.get_model(50, cfg)
    state = _random_state({k: tuple(v.shape) for k, v in official.state_dict().items()}, seed=1, scale=0.1)
    official.load_state_dict(state, strict=True)
    official.eval()
    path = _main_py_checkpoint(state, tmp_path / "best_model.pth")
    ours = create_model("pointramba_partseg", checkpoint_path=str(path), depth=3, fetch_idx=(0, 1, 2), num_group=16,
                        group_size=8, group_depth=1).eval()
    pts = _cloud(2, 128, seed=3)
    cats = torch.tensor([3, 11])
    with torch.no_grad():
        # main.py feeds points.transpose(2, 1) of a (B, N, 3) batch, and the one-hot category
        seg, patch, glob, imp = official(pts.transpose(1, 2), torch.eye(16)[cats])
        parts = ours.forward_parts(pts, cats)
        our_glob = ours.global_projection(parts["global"].unsqueeze(-1)).squeeze(-1)
    logp = torch.log_softmax(parts["logits"], dim=-1)
    assert seg.shape == logp.shape == (2, 128, 50)
    torch.testing.assert_close(logp, seg, rtol=1e-5, atol=5e-5)  # measured max abs diff ~5e-6 (scale ~4)
    assert torch.equal(logp.argmax(-1), seg.argmax(-1))
    torch.testing.assert_close(parts["patch_proj"], patch, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(our_glob, glob, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["scores"], imp.squeeze(-1), rtol=1e-5, atol=1e-6)
    # the official losses on the official outputs equal our auxiliary losses
    glr = official_module.GLR_loss()(glob, patch)
    cos = F.cosine_similarity(glob.unsqueeze(1).repeat(1, patch.shape[1], 1), patch, dim=2)
    imp_loss = F.smooth_l1_loss(imp.squeeze(-1), cos, reduction="none").sum(-1).mean()
    torch.testing.assert_close(glr_loss(our_glob, parts["patch_proj"]), glr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(importance_loss(parts["scores"], our_glob, parts["patch_proj"]), imp_loss,
                               rtol=1e-4, atol=1e-5)


def test_official_feature_propagation_equals_ours(official_module):
    """The official PointNetFeaturePropagation (channel-first) and ours on the same weights and inputs."""
    torch.manual_seed(0)
    theirs = official_module.PointNetFeaturePropagation(in_channel=3 + 12, mlp=[16, 8]).eval()
    ours = FeaturePropagation(3 + 12, [16, 8]).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    xyz1, xyz2, feats = _cloud(2, 50, seed=1), _cloud(2, 20, seed=2), torch.randn(2, 20, 12)
    with torch.no_grad():
        want = theirs(xyz1.transpose(1, 2), xyz2.transpose(1, 2), xyz1.transpose(1, 2), feats.transpose(1, 2))
        got = ours(xyz1, xyz2, xyz1, feats)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Feature propagation
# ---------------------------------------------------------------------------------------------------------------
def test_feature_propagation_interpolates_by_inverse_squared_distance():
    torch.manual_seed(0)
    fp = FeaturePropagation(3 + 4, [5]).eval()
    xyz1, xyz2 = _cloud(1, 10, seed=1), _cloud(1, 6, seed=2)
    feats = torch.randn(1, 6, 4)
    got = fp.interpolate(xyz1, xyz2, feats)
    d = ((xyz1[0, :, None] - xyz2[0, None]) ** 2).sum(-1)  # (10, 6) squared distances
    want = torch.zeros(10, 4)
    for n in range(10):
        near = torch.argsort(d[n])[:3]
        w = 1 / (d[n, near] + 1e-8)
        want[n] = (w[:, None] * feats[0, near]).sum(0) / w.sum()
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-6)
    out = fp(xyz1, xyz2, xyz1, feats)
    assert out.shape == (1, 5, 10) and (out >= 0).all()
    single = fp.interpolate(xyz1, xyz2[:, :1], feats[:, :1])  # S == 1: the one feature everywhere
    assert torch.equal(single, feats[:, :1].expand(1, 10, 4))


# ---------------------------------------------------------------------------------------------------------------
# Contract
# ---------------------------------------------------------------------------------------------------------------
def test_forward_logits_features_head_and_losses():
    torch.manual_seed(0)
    model = create_model(TINY, glr_weight=0.5, importance_weight=2.0)
    pts, cats = _cloud(3, 96), torch.tensor([0, 7, 15])
    model.eval()
    with torch.no_grad():
        logits = model(pts, cats)
        feats = model.forward_features(pts, cats)
        pre = model.forward_head(feats, pre_logits=True)
        one_hot = model(pts, F.one_hot(cats, 16).float())
    assert logits.shape == (3, 96, 50) and feats.shape == (3, 96, model.num_features) and pre.shape == (3, 96, 32)
    torch.testing.assert_close(model.forward_head(feats), logits)
    torch.testing.assert_close(model.get_classifier()(pre.transpose(1, 2)).transpose(1, 2), logits)
    torch.testing.assert_close(one_hot, logits)
    assert model.auxiliary_losses() == {}
    model.train()
    torch.manual_seed(1)
    out = model(pts, cats)
    losses = pop_auxiliary_losses(model)
    assert set(losses) == {"glr", "importance"}
    torch.manual_seed(1)
    parts = model.forward_parts(pts, cats)
    torch.testing.assert_close(out, parts["logits"])
    glob = model.global_projection(parts["global"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(losses["glr"], 0.5 * glr_loss(glob, parts["patch_proj"]))
    torch.testing.assert_close(losses["importance"], 2.0 * importance_loss(parts["scores"], glob, parts["patch_proj"]))


def test_category_changes_the_logits():
    model = create_model(TINY).eval()
    pts = _cloud(2, 64)
    with torch.no_grad():
        assert not torch.allclose(model(pts, torch.tensor([0, 0])), model(pts, torch.tensor([5, 5])))


def test_backward_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = create_model(TINY).train()
    pts, cats = _cloud(4, 64, seed=2), torch.tensor([0, 1, 2, 3])
    logits = model(pts, cats)
    aux = pop_auxiliary_losses(model)
    target = torch.randint(0, 50, (4, 64))
    (F.cross_entropy(logits.reshape(-1, 50), target.reshape(-1)) + sum(aux.values())).backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert no_grad == []
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["group_divider.cls_pos", "group_divider.cls_token", "group_divider.reduce_dim.bias",
                      "group_divider.reduce_dim.weight"]


def test_intermediates_are_the_official_fetched_features():
    torch.manual_seed(0)
    model = create_model(TINY, depth=4, fetch_idx=(1, 3)).eval()
    pts, cats = _cloud(2, 64), torch.tensor([1, 2])
    with torch.no_grad():
        final, feats = model.forward_intermediates(pts, cats, norm=True)
        raw = model.forward_intermediates(pts, cats, indices=[1, 3], intermediates_only=True)
        early = model.forward_intermediates(pts, cats, indices=[0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(final, model.forward_features(pts, cats))
    assert len(feats) == 4 and all(f.shape == (2, 32, 32) for f in feats)
    torch.testing.assert_close(model.norm(raw[0]), feats[1])
    torch.testing.assert_close(model.norm(raw[1]), feats[3])
    torch.testing.assert_close(model.norm(early[0]), feats[0])


def test_reset_classifier_and_options():
    model = create_model(TINY)
    model.reset_classifier(6)
    assert model.num_classes == 6 and model.eval()(_cloud(2, 64), torch.tensor([0, 1])).shape == (2, 64, 6)
    model.reset_classifier(0)
    assert model(_cloud(2, 64), torch.tensor([0, 1])).shape == (2, 64, 32)
    for kw in (dict(score_predictor="simple"), dict(map_feature="max"), dict(map_feature="ave"),
               dict(ordering="importance"), dict(interpolation_squared=False)):
        m = create_model(TINY, **kw).train()
        assert m(_cloud(2, 64), torch.tensor([0, 1])).shape == (2, 64, 50) and m.auxiliary_losses()
    with pytest.raises(ValueError, match="score_predictor"):
        PoinTrambaPartSeg(score_predictor="mlp")
    with pytest.raises(ValueError, match="map_feature"):
        PoinTrambaPartSeg(map_feature="sum")
    with pytest.raises(ValueError, match="out of range"):
        PoinTrambaPartSeg(depth=3, fetch_idx=(0, 5), trans_dim=16, group_num_heads=2)


@pytest.mark.parametrize(
    "category,match",
    [
        (torch.tensor([0, 16]), r"categories must be in \[0, 16\), got min 0 max 16"),
        (torch.tensor([0]), r"1 categories for a batch of 2"),
        (torch.zeros(2, 10), r"shape \(B=2,\) \(integers\) or \(B=2, 16\) \(one-hot\), got \(2, 10\)"),
        ([0, 1], r"must be a tensor"),
    ],
)
def test_bad_categories_name_the_problem(category, match):
    model = create_model(TINY).eval()
    with pytest.raises((ValueError, TypeError), match=match):
        model(_cloud(2, 64), category)


def test_bad_points_name_the_model():
    model = create_model(TINY).eval()
    with pytest.raises(ValueError, match=r"PoinTrambaPartSeg expects points of shape \(B, N, 3\).*transpose"):
        model(torch.randn(2, 3, 64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"PoinTrambaPartSeg needs at least 16 points"):
        model(torch.randn(2, 10, 3), torch.tensor([0, 1]))
