"""Fast, memory-bounded PyTorch versions of the point-cloud ops (any device; the CPU path of ``zoo.ops``).

Same numbers as ``cuda_ext.pointops.reference`` (exact ``dx*dx + dy*dy + dz*dz`` distances, the same tie rules),
but:

* FPS keeps the cloud planar (``(3, B, N)``) and reuses two ``(B, N)`` buffers: O(B*N) memory, no N x N matrix,
  ~10 in-place tensor ops per sampled point.
* three_nn is ``knn_fast`` with k = 3; three_interpolate is an autograd Function that never materialises the
  ``(B, N, 3, C)`` gathered block: it accumulates the three weighted gathers into the output, and its backward
  scatters the gradient with ``index_add_`` and recomputes the gathers for the weight gradient.
* KNN and ball query work on chunks of queries so that the distance block stays below ``max_elems`` elements
  (default 2**22, 16 MiB of float32) whatever M and N are. KNN picks candidates with the BLAS distance form and
  re-ranks them exactly (see ``knn_fast``), so it costs about what the usual ``square_distance + topk`` does.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_MAX_ELEMS", "ThreeInterpolate", "ball_query_fast", "furthest_point_sample_fast", "knn_fast",
           "three_interpolate_fast", "three_nn_fast"]

DEFAULT_MAX_ELEMS = 1 << 22


def furthest_point_sample_fast(
    xyz: torch.Tensor, npoint: int, start: torch.Tensor, skip_near_origin: bool = False
) -> torch.Tensor:
    """Furthest point sampling ``(B, N, 3) -> (B, npoint)`` int64; see ``furthest_point_sample_ref`` for the rules."""
    B, N, _ = xyz.shape
    planar = xyz.float().permute(2, 0, 1).contiguous()  # (3, B, N): x, y, z rows are contiguous
    x, y, z = planar[0], planar[1], planar[2]
    flat = planar.view(3, B * N)
    row_offset = torch.arange(B, device=xyz.device) * N
    dist = torch.full((B, N), float("inf"), device=xyz.device)
    d = torch.empty_like(dist)
    t = torch.empty_like(dist)
    if skip_near_origin:
        valid = (x * x + y * y + z * z) > 1e-3
        score = torch.empty_like(dist)
        minus_one = torch.full_like(dist, -1.0)
    out = torch.empty(npoint, B, dtype=torch.long, device=xyz.device)  # row i is contiguous: argmax writes in place
    out[0].copy_(start)
    cur = out[0]
    for i in range(npoint):
        c = flat.index_select(1, row_offset + cur)  # (3, B): coordinates of the last chosen point
        torch.sub(x, c[0, :, None], out=d)
        d.mul_(d)
        torch.sub(y, c[1, :, None], out=t)
        d.add_(t.mul_(t))
        torch.sub(z, c[2, :, None], out=t)
        d.add_(t.mul_(t))
        torch.minimum(dist, d, out=dist)
        if i + 1 == npoint:
            break
        if skip_near_origin:
            torch.where(valid, dist, minus_one, out=score)
            torch.argmax(score, dim=1, out=out[i + 1])
        else:
            torch.argmax(dist, dim=1, out=out[i + 1])  # first index of the maximum
        cur = out[i + 1]
    return out.t().contiguous()


def _planar_sq_dist(q: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor, rz: torch.Tensor) -> torch.Tensor:
    """Exact squared distances of queries ``q (B, c, 3)`` to planar refs ``r* (B, 1, N)`` -> ``(B, c, N)``."""
    d = q[..., 0:1] - rx
    d.mul_(d)
    t = q[..., 1:2] - ry
    d.add_(t.mul_(t))
    torch.sub(q[..., 2:3], rz, out=t)
    d.add_(t.mul_(t))
    return d


def _chunk_size(B: int, N: int, M: int, max_elems: int) -> int:
    return max(1, min(M, max_elems // max(1, B * N)))


def _order_pairs(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the last dim of (vals, idx) by value, ties by index."""
    o = idx.argsort(dim=-1)
    vals, idx = vals.gather(-1, o), idx.gather(-1, o)
    o = vals.argsort(dim=-1, stable=True)
    return vals.gather(-1, o), idx.gather(-1, o)


def _exact_rows(ref: torch.Tensor, q: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact KNN of single queries ``q (R, 3)`` in clouds ``ref[b]`` over the whole row -> ``(R, k), (R, k)``.

    ``topk(k + 1)`` of the exact distances; only rows tied across the cut get a stable sort of the whole row.
    """
    diff = q[:, None, :] - ref[b]  # (R, N, 3)
    d = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
    N = d.shape[1]
    if k == N:
        v, i = torch.sort(d, dim=-1, stable=True)
        return v, i
    v, i = torch.topk(d, k + 1, dim=-1, largest=False, sorted=True)
    tied = v[:, k] == v[:, k - 1]
    v, i = v[:, :k].contiguous(), i[:, :k].contiguous()
    if bool(tied.any()):
        sv, si = torch.sort(d[tied], dim=-1, stable=True)
        v[tied], i[tied] = sv[:, :k], si[:, :k]
    return _order_pairs(v, i)


def _use_matmul(t: torch.Tensor) -> bool:
    """Matmul-form candidates only where float32 matmul is IEEE float32 (CPU, 'highest' precision)."""
    return t.device.type == "cpu" and torch.get_float32_matmul_precision() == "highest"


def knn_fast(
    ref: torch.Tensor, query: torch.Tensor, k: int, max_elems: int = DEFAULT_MAX_ELEMS
) -> tuple[torch.Tensor, torch.Tensor]:
    """K nearest neighbours by squared distance, ``(B, N, 3), (B, M, 3) -> (B, M, k), (B, M, k)``.

    Exact, and equal to ``knn_ref`` (distance ascending, ties by lowest index), in two passes per chunk of
    queries: (1) candidates: the ``k`` (+ up to 8 spare) smallest of a cheap distance (on the CPU the BLAS form
    ``|q|^2 + |r|^2 - 2 q.r`` on centred coordinates; elsewhere the exact form) by ``topk``, and the cheap
    distance of the best non-candidate; (2) exact ``dx*dx + dy*dy + dz*dz`` distances of the candidates, sorted
    by (distance, index). A row is accepted when its exact k-th distance is below anything a non-candidate can
    have (the best non-candidate's cheap distance minus a float32 error bound of the cheap form); the rare others
    (ties or near-ties across the cut) are redone exactly over the whole row.
    """
    B, N, _ = ref.shape
    M = query.shape[1]
    ref, q = ref.float(), query.float()
    use_mm = _use_matmul(ref)
    # a few spare candidates widen the gap to the best non-candidate (fewer exact re-dos), as long as topk stays
    # on its fast partial-sort path (k * 64 <= N on the CPU)
    kc = min(N, k + min(8, max(0, N // 64 - k)))
    center = ref.mean(dim=1, keepdim=True)
    rc, qc = ref - center, q - center  # centring shrinks the matmul form's rounding error
    r2 = (rc * rc).sum(-1, keepdim=True)  # (B, N, 1)
    rmax = r2.amax(dim=(1, 2)).sqrt()[:, None]  # (B, 1)
    rhs = torch.cat([-2 * rc, torch.ones_like(r2), r2], dim=-1).transpose(1, 2) if use_mm else None  # (B, 5, N)
    planar = ref.permute(2, 0, 1).contiguous()
    rx, ry, rz = planar[0][:, None], planar[1][:, None], planar[2][:, None]  # (B, 1, N)
    eps = torch.finfo(torch.float32).eps
    batch_of = torch.arange(B, device=ref.device)[:, None]
    dist_out = torch.empty(B, M, k, device=ref.device)
    idx_out = torch.empty(B, M, k, dtype=torch.long, device=ref.device)
    step = _chunk_size(B, N, M, max_elems)
    for m0 in range(0, M, step):
        qs, qcs = q[:, m0 : m0 + step], qc[:, m0 : m0 + step]  # (B, c, 3)
        c = qs.shape[1]
        if use_mm:
            q2 = (qcs * qcs).sum(-1, keepdim=True)  # (B, c, 1)
            lhs = torch.cat([qcs, q2, torch.ones_like(q2)], dim=-1)  # (B, c, 5) . (B, 5, N): |q|^2 + |r|^2 - 2 q.r
            approx = torch.bmm(lhs, rhs)
            # |approx - exact float32 distance| <= ~11 eps (|q| + |r|)^2 (gamma_5 dot product, |q|^2 and |r|^2
            # roundings, one rounding per exact difference); 24 leaves a margin
            bound = 24 * eps * (q2[..., 0].sqrt() + rmax) ** 2
        else:
            approx = _planar_sq_dist(qs, rx, ry, rz)  # already exact
            bound = torch.zeros(B, c, device=ref.device)
        if kc < N:
            cand = torch.topk(approx, kc, dim=-1, largest=False, sorted=False).indices  # (B, c, kc)
            cut = approx.scatter_(-1, cand, float("inf")).amin(dim=-1)  # cheap value of the best non-candidate
        else:
            cand = torch.arange(N, device=ref.device).expand(B, c, N)
            cut = torch.full((B, c), float("inf"), device=ref.device)
        del approx
        pts = ref[batch_of[..., None], cand]  # (B, c, kc, 3)
        diff = qs[:, :, None, :] - pts
        exact = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
        vals, idx = _order_pairs(exact, cand)
        vals, idx = vals[..., :k].contiguous(), idx[..., :k].contiguous()  # exact k nearest among candidates
        bad = vals[..., -1] >= cut - bound  # a non-candidate might tie or beat the k-th: redo the row exactly
        if bool(bad.any()):
            b, j = bad.nonzero(as_tuple=True)
            vals[b, j], idx[b, j] = _exact_rows(ref, qs[b, j], b, k)
        dist_out[:, m0 : m0 + step] = vals
        idx_out[:, m0 : m0 + step] = idx
    return dist_out, idx_out


def ball_query_fast(
    radius: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor, max_elems: int = DEFAULT_MAX_ELEMS
) -> torch.Tensor:
    """pointnet2 ball query ``(B, N, 3), (B, M, 3) -> (B, M, nsample)`` int64, chunked over queries."""
    B, N, _ = xyz.shape
    M = new_xyz.shape[1]
    planar = xyz.float().permute(2, 0, 1).contiguous()
    rx, ry, rz = planar[0][:, None], planar[1][:, None], planar[2][:, None]
    q = new_xyz.float()
    r2 = float(radius) * float(radius)
    take = min(nsample, N)
    order = torch.arange(N, device=xyz.device, dtype=torch.int32)
    sentinel = torch.tensor(N, device=xyz.device, dtype=torch.int32)
    out = torch.empty(B, M, nsample, dtype=torch.long, device=xyz.device)
    step = _chunk_size(B, N, M, max_elems)
    for m0 in range(0, M, step):
        d = _planar_sq_dist(q[:, m0 : m0 + step], rx, ry, rz)
        keys = torch.where(d < r2, order, sentinel)  # (B, c, N) int32: own index inside the ball, N outside
        first_k = torch.topk(keys, take, dim=-1, largest=False, sorted=True).values.long()
        first = first_k[..., :1]
        first = torch.where(first == N, torch.zeros_like(first), first)
        chunk = out[:, m0 : m0 + step]
        chunk[..., :take] = torch.where(first_k == N, first.expand_as(first_k), first_k)
        if take < nsample:
            chunk[..., take:] = first
    return out


def three_nn_fast(unknown: torch.Tensor, known: torch.Tensor, max_elems: int = DEFAULT_MAX_ELEMS
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3 nearest ``known (B, M, 3)`` of every ``unknown (B, N, 3)`` -> ``(sq_dist, idx)`` ``(B, N, 3)``,
    exactly ``three_nn_ref`` (it is :func:`knn_fast` with k = 3: chunked, exact, ties to the lower index)."""
    return knn_fast(known, unknown, 3, max_elems=max_elems)


def _gather_rows(features: torch.Tensor, idx_k: torch.Tensor) -> torch.Tensor:
    """``features (B, M, C)``, ``idx_k (B, N)`` -> ``(B, N, C)``."""
    return torch.gather(features, 1, idx_k[..., None].expand(-1, -1, features.shape[-1]))


class ThreeInterpolate(torch.autograd.Function):
    """``three_interpolate`` with an O(B*N*C) memory forward and backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        w = weight.to(features.dtype)
        out = _gather_rows(features, idx[..., 0]) * w[..., 0:1]
        for k in range(1, idx.shape[-1]):
            out.addcmul_(_gather_rows(features, idx[..., k]), w[..., k:k + 1])
        ctx.save_for_backward(features, idx, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        features, idx, weight = ctx.saved_tensors
        B, M, C = features.shape
        N, K = idx.shape[1], idx.shape[2]
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:
            w = weight.to(grad_out.dtype)
            flat = (idx + torch.arange(B, device=idx.device)[:, None, None] * M).reshape(B * N, K)
            acc = torch.zeros(B * M, C, device=grad_out.device, dtype=torch.float32)
            g = grad_out.reshape(B * N, C)
            for k in range(K):
                acc.index_add_(0, flat[:, k], (g * w.reshape(B * N, K)[:, k:k + 1]).float())
            grad_features = acc.view(B, M, C).to(features.dtype)
        if ctx.needs_input_grad[2]:
            grad_weight = torch.stack(
                [(grad_out * _gather_rows(features, idx[..., k])).sum(-1) for k in range(K)], dim=-1
            ).to(weight.dtype)
        return grad_features, None, grad_weight


def three_interpolate_fast(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``features (B, M, C), idx (B, N, 3), weight (B, N, 3) -> (B, N, C)``, the numbers of
    ``three_interpolate_ref`` (same sum order: k = 0, 1, 2), differentiable w.r.t. ``features`` and ``weight``."""
    return ThreeInterpolate.apply(features, idx, weight)
