"""Point-cloud transforms (shapes, bounds, determinism, PointMamba formulas), build_transforms and voting."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.data.pointcloud import transforms as T
from zoo.data.pointcloud.voting import predict_with_votes
from zoo.ops.pointcloud import furthest_point_sample, gather_points

ALL = ["normalize", "scale_translate", "rotate", "jitter", "random_dropout", "shuffle",
       {"name": "resample", "num_points": 40}]  # fmt: skip


def cloud(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s if isinstance(s, str) else s["name"])
def test_shapes_single_and_batch_and_determinism(spec):
    t = T.build_transform(spec)
    n_out = 40 if isinstance(spec, dict) else 64
    for x in (cloud(64, 3), cloud(4, 64, 3), cloud(4, 64, 6)):
        y = t(x, generator=gen(1))
        assert y.shape == (*x.shape[:-2], n_out, x.shape[-1]) and y.dtype == x.dtype
        torch.testing.assert_close(t(x, generator=gen(1)), y)  # same seed, same output
    torch.manual_seed(5)
    a = t(cloud(4, 64, 3))
    torch.manual_seed(5)
    torch.testing.assert_close(t(cloud(4, 64, 3)), a)  # global RNG (DataLoader worker seeding) is honoured too


def test_normalize_bounds():
    y = T.NormalizeUnitSphere()(cloud(5, 100, 6))
    torch.testing.assert_close(y[..., :3].mean(1), torch.zeros(5, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[..., :3].norm(dim=-1).amax(1), torch.ones(5))
    torch.testing.assert_close(y[..., 3:], cloud(5, 100, 6)[..., 3:])  # normals untouched
    assert torch.isfinite(T.NormalizeUnitSphere()(torch.zeros(10, 3))).all()  # degenerate cloud: no NaN


def test_scale_translate_bounds_and_per_cloud_parameters():
    x = torch.ones(200, 5, 3)
    y = T.ScaleTranslate()(x, generator=gen())
    per_cloud = y[:, 0]  # for an all-ones cloud: scale + shift
    assert (y == per_cloud[:, None]).all()  # one (scale, shift) per cloud and axis
    assert per_cloud.min() >= 2 / 3 - 0.2 and per_cloud.max() <= 1.5 + 0.2
    assert per_cloud.std(0).min() > 0.1  # clouds get different parameters
    z = T.ScaleTranslate(scale_low=1, scale_high=1, translate_range=0)(cloud(2, 10, 3))
    torch.testing.assert_close(z, cloud(2, 10, 3))


def test_rotate_is_pointmamba_y_rotation():
    x = cloud(3, 50, 6)
    g = gen(7)
    y = T.RotateAxis()(x, generator=g)
    angle = torch.rand(3, generator=gen(7)) * 2 * math.pi
    for b in range(3):
        c, s = math.cos(angle[b]), math.sin(angle[b])
        R = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float32)  # PointcloudRotate
        torch.testing.assert_close(y[b, :, :3], x[b, :, :3] @ R, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y[b, :, 3:], x[b, :, 3:] @ R, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[..., 1], x[..., 1])  # the up axis is unchanged
    torch.testing.assert_close(y[..., :3].norm(dim=-1), x[..., :3].norm(dim=-1))
    for axis in "xz":
        r = T.RotateAxis(axis=axis)(x, generator=gen())
        torch.testing.assert_close(r[..., "xyz".index(axis)], x[..., "xyz".index(axis)])


def test_jitter_is_clipped_and_dropout_keeps_size():
    x = cloud(2, 1000, 3)
    d = T.Jitter(std=0.1, clip=0.05)(x, generator=gen()) - x
    assert d.abs().max() <= 0.05 + 1e-6 and d.abs().max() > 0.04
    y = T.RandomDropout(max_dropout_ratio=0.875)(x, generator=gen())
    dropped = (y != x).any(-1)
    assert y.shape == x.shape and dropped.any()
    assert (y[dropped.nonzero(as_tuple=True)] == x[:, :1].expand_as(x)[dropped.nonzero(as_tuple=True)]).all()


def test_resample_methods():
    x = cloud(3, 300, 3)
    fps = T.Resample(64, "fps")(x)
    torch.testing.assert_close(fps, gather_points(x, furthest_point_sample(x, 64)))
    torch.testing.assert_close(T.Resample(64, "first")(x), x[:, :64])
    rnd = T.Resample(64, "random")(x, generator=gen())
    assert all(len({tuple(p) for p in rnd[b].tolist()}) == 64 for b in range(3))  # without replacement
    pool = gather_points(x, furthest_point_sample(x, 75))  # round(64 * 1200 / 1024) = 75
    fr = T.Resample(64, "fps_random")(x, generator=gen())
    for b in range(3):
        assert {tuple(p) for p in fr[b].tolist()} <= {tuple(p) for p in pool[b].tolist()}
    padded = T.Resample(500, "fps")(x, generator=gen())
    assert padded.shape == (3, 500, 3)
    torch.testing.assert_close(padded[:, :300], x)
    with pytest.raises(ValueError, match="method must be one of"):
        T.Resample(10, "poisson")


def test_shuffle_is_a_permutation():
    x = cloud(2, 100, 4)
    y = T.Shuffle()(x, generator=gen())
    assert not torch.equal(x, y)
    torch.testing.assert_close(y.sort(dim=1).values, x.sort(dim=1).values)


def test_build_transforms_from_config_specs():
    t = T.build_transforms(["normalize", {"name": "scale_translate", "scale_low": 2 / 3, "scale_high": 1.5}, "shuffle"])
    assert [type(s).__name__ for s in t.transforms] == ["NormalizeUnitSphere", "ScaleTranslate", "Shuffle"]
    assert t(cloud(100, 3)).shape == (100, 3)
    assert len(T.build_transforms(None)) == 0 and len(T.build_transforms("jitter")) == 1
    assert set(T.list_transforms()) >= {
        "normalize",
        "scale_translate",
        "rotate",
        "jitter",
        "random_dropout",
        "resample",
        "shuffle",
    }
    with pytest.raises(KeyError, match="Unknown point-cloud transform 'suffle'. Did you mean: shuffle"):
        T.build_transforms(["suffle"])
    with pytest.raises(TypeError, match="transform 'jitter' got an unexpected argument 'sigma'"):
        T.build_transforms([{"name": "jitter", "sigma": 0.1}])
    with pytest.raises(ValueError, match="no 'name' key"):
        T.build_transforms([{"std": 0.1}])
    with pytest.raises(ValueError, match=r"take \(N, C\) or \(B, N, C\) tensors with C >= 3, got \(10, 2\)"):
        T.Jitter()(torch.zeros(10, 2))
    for recipe in T.POINTMAMBA_RECIPES.values():
        for specs in recipe.values():
            T.build_transforms(specs)


def test_voting_averages_logits_over_scale_translate_views():
    weights = torch.randn(3, 5)

    def model(p):  # (B, N, 3) -> (B, 5), depends on the view
        return p.mean(1) @ weights

    x = cloud(4, 300, 3)
    out = predict_with_votes(model, x, num_votes=6, num_points=128, generator=gen(3))
    assert out.shape == (4, 5) and out.dtype == torch.float32
    g = gen(3)  # the same draws by hand: FPS pool of 150 once, then per vote a subset and a ScaleTranslate view
    pool = gather_points(x, furthest_point_sample(x, 150))
    views = []
    for _ in range(6):
        v = gather_points(pool, torch.rand(4, 150, generator=g).argsort(1)[:, :128])
        views.append(model(T.ScaleTranslate()(v, generator=g)))
    torch.testing.assert_close(out, torch.stack(views).mean(0))
    same = predict_with_votes(model, x, num_votes=3, transform=lambda p: p)
    torch.testing.assert_close(same, model(x))
    with pytest.raises(ValueError, match="model must return logits"):
        predict_with_votes(lambda p: p, x, num_votes=1)
