"""The rotation pretext task: rotations are exact, the training batch pairs each image with its rotation class, and
the per-image hit fraction counts the predicted rotations."""
from __future__ import annotations

import torch

from zoo.distill.rotation import NUM_ROTATIONS, random_rotations, rotate, rotation_hits


class RotationOracle(torch.nn.Module):
    """Predicts the rotation of images whose unrotated top-left pixel is the brightest (from where that pixel is)."""

    def forward(self, x):
        corners = torch.stack([x[:, 0, 0, 0], x[:, 0, -1, 0], x[:, 0, -1, -1], x[:, 0, 0, -1]], 1)
        return torch.nn.functional.one_hot(corners.argmax(1), NUM_ROTATIONS).float()


class AlwaysZero(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), NUM_ROTATIONS).float()


def _images(n=5):
    x = torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 0.5
    x[:, 0, 0, 0] = 1.0
    return x


def test_rotate_and_random_rotations():
    x = _images()
    k = torch.tensor([0, 1, 2, 3, 1])
    r = rotate(x, k)
    for i in range(5):
        assert torch.equal(r[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    torch.manual_seed(3)
    xr, kr = random_rotations(x)
    assert kr.shape == (5,) and int(kr.min()) >= 0 and int(kr.max()) < NUM_ROTATIONS
    assert torch.equal(xr, rotate(x, kr))
    assert torch.equal(RotationOracle()(xr).argmax(1), kr)  # the oracle reads the rotation back


def test_rotation_hits_is_the_fraction_of_rotations_predicted():
    x = _images()
    assert torch.equal(rotation_hits(RotationOracle(), x), torch.ones(5))
    assert torch.equal(rotation_hits(AlwaysZero(), x), torch.full((5,), 0.25))  # right on the unrotated image only
