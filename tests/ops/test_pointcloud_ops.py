"""zoo.ops.pointcloud against brute-force numpy: random clouds, integer grids (ties) and duplicated points."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from cuda_ext.pointops import cpu as fast
from zoo.ops import pointcloud as ops

BACKENDS = ["ref", "cpu"]


# ----------------------------------------------------------------------------------------------------- numpy truth
def np_sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 3), (N, 3) -> (M, N) float32, summed as dx*dx + dy*dy + dz*dz."""
    d = a[:, None, :].astype(np.float32) - b[None, :, :].astype(np.float32)
    return d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]


def np_fps(xyz: np.ndarray, npoint: int, start: int = 0, skip_near_origin: bool = False) -> np.ndarray:
    """pointnet2_ops furthest_point_sampling_kernel, one cloud, sequential (first max wins)."""
    n = len(xyz)
    temp = np.full(n, np.inf, dtype=np.float32)
    out, old = [start], start
    for _ in range(1, npoint):
        best, besti = -1.0, 0
        for k in range(n):
            x2, y2, z2 = xyz[k]
            if skip_near_origin and x2 * x2 + y2 * y2 + z2 * z2 <= np.float32(1e-3):
                continue
            d = np_sqdist(xyz[old : old + 1], xyz[k : k + 1])[0, 0]
            temp[k] = min(d, temp[k])
            if temp[k] > best:
                best, besti = temp[k], k
        out.append(besti)
        old = besti
    return np.array(out[:npoint])


def np_knn(ref: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np_sqdist(query, ref)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


def np_ball_query(radius: float, nsample: int, xyz: np.ndarray, new_xyz: np.ndarray) -> np.ndarray:
    """query_ball_point_kernel: first nsample indices inside (d2 < r^2), padded with the first, zeros if none."""
    out = np.zeros((len(new_xyz), nsample), dtype=np.int64)
    d = np_sqdist(new_xyz, xyz)
    for j in range(len(new_xyz)):
        cnt = 0
        for k in range(len(xyz)):
            if cnt >= nsample:
                break
            if d[j, k] < np.float32(radius * radius):
                if cnt == 0:
                    out[j, :] = k
                out[j, cnt] = k
                cnt += 1
    return out


# ----------------------------------------------------------------------------------------------------- inputs
def clouds(kind: str, B: int = 2, N: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(B, N, 3, generator=g)
    if kind == "grid":  # integer coordinates: many exactly equal distances
        return torch.randint(-2, 3, (B, N, 3), generator=g).float()
    if kind == "duplicates":  # every point appears three times
        base = torch.randn(B, N // 3, 3, generator=g)
        x = base.repeat(1, 3, 1)
        return x[:, torch.randperm(x.shape[1], generator=g)]
    raise ValueError(kind)


KINDS = ["random", "grid", "duplicates"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("ZOO_KERNEL", request.param)
    return request.param


# ----------------------------------------------------------------------------------------------------- FPS
@pytest.mark.parametrize("kind", KINDS)
def test_fps_matches_bruteforce(backend, kind):
    x = clouds(kind)
    idx = ops.furthest_point_sample(x, 20)
    assert idx.shape == (2, 20) and idx.dtype == torch.long
    for b in range(2):
        np.testing.assert_array_equal(idx[b].numpy(), np_fps(x[b].numpy(), 20))


def test_fps_start_index_and_tensor_start(backend):
    x = clouds("grid")
    idx = ops.furthest_point_sample(x, 12, start_idx=torch.tensor([5, 17]))
    assert idx[:, 0].tolist() == [5, 17]
    np.testing.assert_array_equal(idx[1].numpy(), np_fps(x[1].numpy(), 12, start=17))
    idx3 = ops.furthest_point_sample(x, 12, start_idx=3)
    np.testing.assert_array_equal(idx3[0].numpy(), np_fps(x[0].numpy(), 12, start=3))


def test_fps_random_start_is_seeded(backend):
    x = clouds("random", B=4)
    a = ops.furthest_point_sample(x, 8, random_start=True, generator=torch.Generator().manual_seed(3))
    b = ops.furthest_point_sample(x, 8, random_start=True, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    for i in range(4):
        np.testing.assert_array_equal(a[i].numpy(), np_fps(x[i].numpy(), 8, start=int(a[i, 0])))


def test_fps_prefix_property_and_all_points(backend):
    x = clouds("random", N=30)
    full = ops.furthest_point_sample(x, 30)
    assert sorted(full[0].tolist()) == list(range(30))  # distinct points: a permutation
    torch.testing.assert_close(ops.furthest_point_sample(x, 7), full[:, :7])


def test_fps_more_samples_than_points_repeats_zero(backend):
    x = clouds("random", N=5)
    idx = ops.furthest_point_sample(x, 8)
    np.testing.assert_array_equal(idx[0].numpy(), np_fps(x[0].numpy(), 8))
    assert idx[:, 5:].eq(0).all()


def test_fps_pointnet2_near_origin_rule(backend):
    x = clouds("grid", N=40)  # contains (0, 0, 0) points
    assert (x.abs().sum(-1) == 0).any()
    idx = ops.furthest_point_sample(x, 15, skip_near_origin=True)
    for b in range(2):
        np.testing.assert_array_equal(idx[b].numpy(), np_fps(x[b].numpy(), 15, skip_near_origin=True))
        chosen = x[b, idx[b, 1:]]
        assert ((chosen**2).sum(-1) > 1e-3).all()


def test_fps_uses_o_n_memory_path_for_large_clouds():
    x = torch.randn(2, 8192, 3)
    idx = fast.furthest_point_sample_fast(x, 64, torch.zeros(2, dtype=torch.long))
    assert idx.shape == (2, 64) and len(set(idx[0].tolist())) == 64


def test_fps_half_precision_input(backend):
    x = clouds("random").half()
    np.testing.assert_array_equal(ops.furthest_point_sample(x, 10)[0].numpy(), np_fps(x[0].float().numpy(), 10))


def test_fps_bad_inputs_name_the_problem(monkeypatch):
    with pytest.raises(ValueError, match=r"xyz must have shape \(B, N, 3\), got \(10, 3\)"):
        ops.furthest_point_sample(torch.randn(10, 3), 4)
    with pytest.raises(ValueError, match="start_idx must be in"):
        ops.furthest_point_sample(torch.randn(1, 10, 3), 4, start_idx=10)
    monkeypatch.setenv("ZOO_KERNEL", "bogus")
    with pytest.raises(ValueError, match=r"ZOO_KERNEL='bogus': 'bogus' is not a kernel backend; valid backends: "
                                         r"ref, cpu, triton, mamba_ssm"):
        ops.furthest_point_sample(torch.randn(1, 10, 3), 4)


# ----------------------------------------------------------------------------------------------------- KNN
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 5, 48])
def test_knn_matches_bruteforce(backend, kind, k):
    ref = clouds(kind)
    query = torch.cat([clouds(kind, N=12, seed=1), ref[:, :6]], dim=1)  # some queries sit on reference points
    dist, idx = ops.knn(ref, query, k)
    assert dist.shape == idx.shape == (2, 18, k) and idx.dtype == torch.long and dist.dtype == torch.float32
    for b in range(2):
        d_np, i_np = np_knn(ref[b].numpy(), query[b].numpy(), k)
        np.testing.assert_array_equal(idx[b].numpy(), i_np)
        np.testing.assert_array_equal(dist[b].numpy(), d_np)
    assert (dist[:, 12:, 0] == 0).all()  # a query on a reference point has distance exactly 0


@pytest.mark.parametrize("precision", ["highest", "high"])  # matmul-form candidates on the CPU, or exact ones
@pytest.mark.parametrize("kind", ["offset", "clustered"])
def test_knn_candidate_pass_is_exact_on_hard_clouds(kind, precision):
    """Far from the origin / many near-ties: the cheap candidate distances must never change the answer."""
    g = torch.Generator().manual_seed(7)
    if kind == "offset":  # tiny cloud far away: |q|^2 + |r|^2 - 2qr cancels catastrophically without centring
        ref = torch.randn(2, 300, 3, generator=g) * 1e-2 + 1000.0
    else:  # a wide cloud plus a tight cluster with near-equal distances
        ref = torch.cat([torch.randn(2, 200, 3, generator=g) * 50, 1 + torch.randn(2, 100, 3, generator=g) * 1e-4], 1)
    query = torch.cat([ref[:, ::7], ref[:, -20:] + 1e-5], dim=1)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        dist, idx = fast.knn_fast(ref, query, 9, max_elems=3000)
    finally:
        torch.set_float32_matmul_precision(old)
    for b in range(2):
        d_np, i_np = np_knn(ref[b].numpy(), query[b].numpy(), 9)
        np.testing.assert_array_equal(idx[b].numpy(), i_np)
        np.testing.assert_array_equal(dist[b].numpy(), d_np)


@pytest.mark.parametrize("kind", KINDS)
def test_knn_chunked_equals_unchunked(kind):
    ref, query = clouds(kind, N=60), clouds(kind, N=33, seed=2)
    whole = fast.knn_fast(ref, query, 7, max_elems=1 << 30)
    for max_elems in (1, 100, 500):  # 1 query per chunk, a few, ...
        chunked = fast.knn_fast(ref, query, 7, max_elems=max_elems)
        torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_knn_same_set_as_pointmamba_knn_point():
    ref, query = clouds("random", N=64), clouds("random", N=16, seed=5)
    sqrdists = torch.cdist(query.double(), ref.double()) ** 2  # knn_point: topk of square_distance, unsorted
    theirs = sqrdists.topk(8, dim=-1, largest=False).indices.sort(-1).values
    _, ours = ops.knn(ref, query, 8)
    torch.testing.assert_close(ours.sort(-1).values, theirs)


def test_knn_bad_inputs():
    with pytest.raises(ValueError, match=r"k must be in \[1, N=10\]"):
        ops.knn(torch.randn(1, 10, 3), torch.randn(1, 4, 3), 11)
    with pytest.raises(ValueError, match="query has batch size 2 but the point cloud has 1"):
        ops.knn(torch.randn(1, 10, 3), torch.randn(2, 4, 3), 3)


# ----------------------------------------------------------------------------------------------------- ball query
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("radius,nsample", [(0.5, 4), (1.0, 8), (1.5, 64), (100.0, 5)])
def test_ball_query_matches_bruteforce(backend, kind, radius, nsample):
    xyz = clouds(kind)
    new_xyz = torch.cat([clouds(kind, N=10, seed=3) * 2, xyz[:, :4]], dim=1)  # far queries + on-point queries
    idx = ops.ball_query(radius, nsample, xyz, new_xyz)
    assert idx.shape == (2, new_xyz.shape[1], nsample) and idx.dtype == torch.long
    for b in range(2):
        np.testing.assert_array_equal(
            idx[b].numpy(), np_ball_query(radius, nsample, xyz[b].numpy(), new_xyz[b].numpy())
        )


def test_ball_query_empty_ball_gives_zeros_and_chunking_is_exact():
    xyz = clouds("grid", N=30)
    far = torch.full((2, 3, 3), 50.0)
    assert ops.ball_query(0.5, 4, xyz, far).eq(0).all()
    q = clouds("grid", N=21, seed=4)
    whole = fast.ball_query_fast(1.2, 6, xyz, q, max_elems=1 << 30)
    torch.testing.assert_close(fast.ball_query_fast(1.2, 6, xyz, q, max_elems=40), whole, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------- gather / group
def test_gather_and_group_points_index_like_numpy():
    x = torch.randn(2, 20, 5, requires_grad=True)
    idx = torch.randint(0, 20, (2, 7))
    out = ops.gather_points(x, idx)
    np.testing.assert_array_equal(
        out.detach().numpy(), np.stack([x[b].detach().numpy()[idx[b].numpy()] for b in range(2)])
    )
    gidx = torch.randint(0, 20, (2, 4, 3))
    grouped = ops.group_points(x, gidx)
    assert grouped.shape == (2, 4, 3, 5)
    np.testing.assert_array_equal(
        grouped.detach().numpy(), np.stack([x[b].detach().numpy()[gidx[b].numpy()] for b in range(2)])
    )
    grouped.sum().backward()
    counts = torch.zeros(2, 20).scatter_add_(1, gidx.reshape(2, -1), torch.ones(2, 12))
    torch.testing.assert_close(x.grad, counts[..., None].expand(-1, -1, 5))
    with pytest.raises(ValueError, match=r"idx must have shape \(B=2, M, K\)"):
        ops.group_points(x, idx)


def test_fps_knn_group_is_pointbert_patching():
    xyz = clouds("random", N=64)
    neighborhood, center = ops.fps_knn_group(xyz, num_group=8, group_size=5)
    assert neighborhood.shape == (2, 8, 5, 3) and center.shape == (2, 8, 3)
    torch.testing.assert_close(center, ops.gather_points(xyz, ops.furthest_point_sample(xyz, 8)))
    assert neighborhood[:, :, 0].abs().max() == 0  # each center is its own nearest neighbour


# ----------------------------------------------------------------------------------------------------- Triton
def _load_triton_module(monkeypatch):
    """A fresh copy of cuda_ext/pointops/triton.py decorated under TRITON_INTERPRET=1 (runs on CPU tensors)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import cuda_ext.pointops

    path = Path(cuda_ext.pointops.__file__).with_name("triton.py")
    spec = importlib.util.spec_from_file_location("_pointops_triton_interpreted", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.triton
@pytest.mark.parametrize("kind", ["random", "grid"])
def test_triton_fps_interpreted_matches_bruteforce(monkeypatch, kind):
    tri = _load_triton_module(monkeypatch)
    x = clouds(kind, N=40)
    start = torch.tensor([0, 7])
    for tiles in ({}, {"max_single_tile": 16, "tile": 16}):  # register-resident and streaming kernels
        idx = tri.furthest_point_sample_triton(x, 10, start, **tiles)
        for b in range(2):
            np.testing.assert_array_equal(idx[b].numpy(), np_fps(x[b].numpy(), 10, start=int(start[b])))
    idx = tri.furthest_point_sample_triton(x, 8, start, skip_near_origin=True, max_single_tile=16, tile=16)
    np.testing.assert_array_equal(idx[0].numpy(), np_fps(x[0].numpy(), 8, skip_near_origin=True))


# ----------------------------------------------------------------------------------------------------- GPU
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("N", [1024, 8192, 20000])
def test_gpu_fps_matches_cpu(N):
    x = torch.randn(4, N, 3)
    cpu_idx = ops.furthest_point_sample(x, 256)
    gpu_idx = ops.furthest_point_sample(x.cuda(), 256)
    torch.testing.assert_close(gpu_idx.cpu(), cpu_idx)


@pytest.mark.gpu
@gpu
def test_gpu_knn_and_ball_query_match_cpu():
    ref, query = torch.randn(4, 8192, 3), torch.randn(4, 512, 3)
    d_cpu, i_cpu = ops.knn(ref, query, 16)
    d_gpu, i_gpu = ops.knn(ref.cuda(), query.cuda(), 16)
    torch.testing.assert_close(d_gpu.cpu(), d_cpu)
    torch.testing.assert_close(i_gpu.cpu(), i_cpu)
    torch.testing.assert_close(
        ops.ball_query(0.3, 32, ref.cuda(), query.cuda()).cpu(), ops.ball_query(0.3, 32, ref, query)
    )


# ----------------------------------------------------------------------------------------------------- three_nn /
# three_interpolate (PointNet++ feature propagation) against numpy brute force
def np_three_nn(unknown: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pointnet2 three_nn_kernel for one cloud: scan known points in index order, strict < insertions."""
    d = np_sqdist(unknown, known)
    out_d = np.full((len(unknown), 3), np.inf, dtype=np.float32)
    out_i = np.zeros((len(unknown), 3), dtype=np.int64)
    for n in range(len(unknown)):
        best = [(np.inf, 0)] * 3
        for m in range(len(known)):
            for slot in range(3):
                if d[n, m] < best[slot][0]:
                    best.insert(slot, (d[n, m], m))
                    best = best[:3]
                    break
        out_d[n] = [b[0] for b in best]
        out_i[n] = [b[1] for b in best]
    return out_d, out_i


def np_three_interpolate(features: np.ndarray, idx: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """features (M, C), idx (N, 3), weight (N, 3) -> (N, C), one cloud, written as loops."""
    out = np.zeros((len(idx), features.shape[1]), dtype=np.float64)
    for n in range(len(idx)):
        for k in range(3):
            out[n] += weight[n, k] * features[idx[n, k]]
    return out


def np_three_interpolate_grads(features, idx, weight, grad_out):
    """(grad_features (M, C), grad_weight (N, 3)) of sum(grad_out * three_interpolate), one cloud, as loops."""
    gf = np.zeros_like(features, dtype=np.float64)
    gw = np.zeros(idx.shape, dtype=np.float64)
    for n in range(len(idx)):
        for k in range(3):
            gf[idx[n, k]] += weight[n, k] * grad_out[n]
            gw[n, k] = (grad_out[n] * features[idx[n, k]]).sum()
    return gf, gw


THREE_BACKENDS = ["ref", "cpu"]


@pytest.mark.parametrize("backend", THREE_BACKENDS)
@pytest.mark.parametrize("kind", ["random", "grid", "duplicates"])
def test_three_nn_matches_bruteforce(monkeypatch, backend, kind):
    monkeypatch.setenv("ZOO_KERNEL", backend)
    unknown = clouds(kind, B=3, N=37, seed=1)
    known = clouds(kind, B=3, N=12, seed=2) if kind != "duplicates" else unknown[:, :12].repeat(1, 2, 1)
    dist, idx = ops.three_nn(unknown, known)
    assert dist.shape == idx.shape == (3, unknown.shape[1], 3)
    assert dist.dtype == torch.float32 and idx.dtype == torch.long
    for b in range(3):
        want_d, want_i = np_three_nn(unknown[b].numpy(), known[b].numpy())
        np.testing.assert_array_equal(idx[b].numpy(), want_i)
        np.testing.assert_array_equal(dist[b].numpy(), want_d)


def test_three_nn_duplicated_known_points_take_the_first_copy():
    """PoinTramba's BIO sequence holds each centre twice: the nearest centre fills two slots, the lower copy first."""
    centres = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]]])
    known = torch.cat([centres, centres.flip(1)], dim=1)  # positions 0..2, then 3..5 reversed
    dist, idx = ops.three_nn(torch.tensor([[[0.4, 0.0, 0.0]]]), known)
    assert idx.tolist() == [[[0, 5, 1]]]
    torch.testing.assert_close(dist, torch.tensor([[[0.16, 0.16, 0.36]]]))


@pytest.mark.parametrize("squared", [True, False])
def test_interpolation_weights_formula(squared):
    d = torch.tensor([[[0.0, 0.25, 4.0], [1.0, 1.0, 1.0]]])
    w = ops.interpolation_weights(d, squared=squared)
    base = d if squared else d.sqrt()
    want = (1 / (base + 1e-8)) / (1 / (base + 1e-8)).sum(-1, keepdim=True)
    torch.testing.assert_close(w, want)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2))
    assert torch.allclose(w[0, 1], torch.full((3,), 1 / 3))


def _interp_inputs(B=2, N=29, M=7, C=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, M, C, generator=g, dtype=dtype)
    idx = torch.randint(0, M, (B, N, 3), generator=g)
    idx[:, :4] = 2  # several points share a known point: colliding gradient scatters
    weight = torch.rand(B, N, 3, generator=g, dtype=dtype)
    return features, idx, weight


@pytest.mark.parametrize("backend", THREE_BACKENDS)
@pytest.mark.parametrize("sizes", [dict(B=2, N=29, M=7, C=5), dict(B=1, N=3, M=3, C=1), dict(B=3, N=50, M=13, C=33)])
def test_three_interpolate_values_and_gradients_match_bruteforce(monkeypatch, backend, sizes):
    monkeypatch.setenv("ZOO_KERNEL", backend)
    features, idx, weight = _interp_inputs(**sizes)
    features.requires_grad_()
    weight.requires_grad_()
    out = ops.three_interpolate(features, idx, weight)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    out.backward(g)
    for b in range(sizes["B"]):
        f, i, w = features[b].detach().numpy(), idx[b].numpy(), weight[b].detach().numpy()
        np.testing.assert_allclose(out[b].detach().numpy(), np_three_interpolate(f, i, w), rtol=1e-5, atol=1e-6)
        gf, gw = np_three_interpolate_grads(f, i, w, g[b].numpy())
        np.testing.assert_allclose(features.grad[b].numpy(), gf, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(weight.grad[b].numpy(), gw, rtol=1e-5, atol=1e-5)


def test_three_interpolate_fast_path_passes_gradcheck():
    features, idx, weight = _interp_inputs(B=2, N=9, M=4, C=3, dtype=torch.float64)
    features.requires_grad_()
    weight.requires_grad_()
    assert torch.autograd.gradcheck(fast.three_interpolate_fast, (features, idx, weight))


def test_three_interpolate_and_three_nn_bad_inputs():
    f, idx, w = _interp_inputs()
    with pytest.raises(ValueError, match=r"features must have shape \(B, M, C\), got \(7, 5\)"):
        ops.three_interpolate(f[0], idx, w)
    with pytest.raises(ValueError, match=r"idx must have shape \(B=2, N, 3\), got \(2, 29, 2\)"):
        ops.three_interpolate(f, idx[..., :2], w[..., :2])
    with pytest.raises(ValueError, match=r"weight must have the shape of idx"):
        ops.three_interpolate(f, idx, w[:, :5])
    with pytest.raises(ValueError, match=r"idx values must be in \[0, M=7\), got min 0 max 9"):
        ops.three_interpolate(f, torch.where(idx == 2, 9, idx), w)
    with pytest.raises(ValueError, match=r"at least 3 known points.*M=2"):
        ops.three_nn(torch.randn(1, 5, 3), torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r"batch size 2 but the point cloud has 1"):
        ops.three_nn(torch.randn(1, 5, 3), torch.randn(2, 4, 3))


def _load_triton_interpolate(monkeypatch):
    """A fresh copy of cuda_ext/pointops/triton_interpolate.py decorated under TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import cuda_ext.pointops

    path = Path(cuda_ext.pointops.__file__).with_name("triton_interpolate.py")
    spec = importlib.util.spec_from_file_location("_pointops_triton_interpolate_interpreted", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.triton
@pytest.mark.parametrize("kind", ["random", "grid", "duplicates"])
def test_triton_three_nn_interpreted_matches_bruteforce(monkeypatch, kind):
    tri = _load_triton_interpolate(monkeypatch)
    unknown = clouds(kind, B=2, N=21, seed=3)
    known = clouds(kind, B=2, N=9, seed=4) if kind != "duplicates" else unknown[:, :6].repeat(1, 2, 1)
    dist, idx = tri.three_nn_triton(unknown, known, block=16)  # 2 blocks, the second partly masked
    for b in range(2):
        want_d, want_i = np_three_nn(unknown[b].numpy(), known[b].numpy())
        np.testing.assert_array_equal(idx[b].numpy(), want_i)
        np.testing.assert_array_equal(dist[b].numpy(), want_d)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_three_interpolate_interpreted_values_and_gradients(monkeypatch, dtype):
    tri = _load_triton_interpolate(monkeypatch)
    features, idx, weight = _interp_inputs(B=2, N=37, M=7, C=19)
    features = features.to(dtype).requires_grad_()
    weight = weight.to(dtype).requires_grad_()
    out = tri.three_interpolate_triton(features, idx, weight)
    assert out.dtype == dtype
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    out.backward(g)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
    for b in range(2):
        f, i, w = features[b].detach().double().numpy(), idx[b].numpy(), weight[b].detach().double().numpy()
        np.testing.assert_allclose(out[b].detach().double().numpy(), np_three_interpolate(f, i, w), **tol)
        gf, gw = np_three_interpolate_grads(f, i, w, g[b].double().numpy())
        np.testing.assert_allclose(features.grad[b].double().numpy(), gf, **tol)
        np.testing.assert_allclose(weight.grad[b].double().numpy(), gw, **tol)


@pytest.mark.gpu
@gpu
def test_gpu_three_nn_and_interpolate_match_cpu():
    unknown, known = torch.randn(4, 2048, 3), torch.randn(4, 256, 3)
    d_cpu, i_cpu = ops.three_nn(unknown, known)
    d_gpu, i_gpu = ops.three_nn(unknown.cuda(), known.cuda())
    torch.testing.assert_close(d_gpu.cpu(), d_cpu)
    torch.testing.assert_close(i_gpu.cpu(), i_cpu)
    f = torch.randn(4, 256, 96, requires_grad=True)
    w = ops.interpolation_weights(d_cpu).requires_grad_()
    out = ops.three_interpolate(f, i_cpu, w)
    out.square().sum().backward()
    fg, wg = f.detach().cuda().requires_grad_(), w.detach().cuda().requires_grad_()
    out_g = ops.three_interpolate(fg, i_cpu.cuda(), wg)
    out_g.square().sum().backward()
    torch.testing.assert_close(out_g.cpu(), out.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fg.grad.cpu(), f.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wg.grad.cpu(), w.grad, rtol=1e-4, atol=1e-4)
