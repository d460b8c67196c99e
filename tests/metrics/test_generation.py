"""Generation metrics on hand-made inputs: Fréchet distance, style distances, prompt fidelity."""
from __future__ import annotations

import pytest
import torch

from zoo.metrics.generation import (colour_stats, feature_stats, frechet_distance, patch_gram, prompt_fidelity,
                                    style_distance)


def test_frechet_identical_sets_is_zero_and_shift_grows():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    d1 = frechet_distance(a, a + 0.5)
    d2 = frechet_distance(a, a + 1.0)
    assert d1 == pytest.approx(8 * 0.25, rel=1e-6)  # a pure mean shift adds ||Δμ||² exactly
    assert d2 > d1 > 0


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    # Σ1 = I, Σ2 = 4 I in D dims: Tr(I + 4I - 2·2I) = D
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(20000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(a, b) == pytest.approx(3.0, rel=0.05)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError, match="frechet_distance"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(torch.randn(1, 3))


def test_style_distance_zero_for_identical_and_grows_with_colour_and_texture():
    g = torch.Generator().manual_seed(0)
    style = torch.rand(6, 3, 16, 16, generator=g)
    same = style_distance(style, style)
    assert same["gram"] == pytest.approx(0.0, abs=1e-12) and same["colour"] == pytest.approx(0.0, abs=1e-12)
    tinted = (style * torch.tensor([1.0, 0.5, 0.5]).view(1, 3, 1, 1))
    flat = style.mean((2, 3), keepdim=True).expand_as(style)  # same colour means, no texture
    d_tint, d_flat = style_distance(tinted, style), style_distance(flat, style)
    assert d_tint["colour"] > 0.05 and d_tint["gram"] > 0.01
    assert d_flat["gram"] > 0.0 and d_flat["colour"] > 0.0  # the std part of the colour statistics sees it
    assert style_distance(style * 0.9, style)["gram"] < d_tint["gram"]


def test_patch_gram_and_colour_stats_shapes():
    x = torch.rand(2, 3, 8, 8)
    assert patch_gram(x).shape == (27, 27)
    assert colour_stats(x).shape == (2, 6)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        patch_gram(torch.rand(2, 1, 8, 8))


class _Oracle(torch.nn.Module):
    """A 'classifier' reading the digit from the mean brightness of the red channel (for exact expectations)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward_features(self, x):
        return x[:, 0].mean((1, 2), keepdim=False)[:, None]

    def forward_head(self, f, pre_logits=False):
        if pre_logits:
            return f
        centres = torch.arange(10, dtype=f.dtype) / 10 + 0.05
        return -(f - centres).abs()


def test_prompt_fidelity_counts_correct_digits():
    digits = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    images = (digits.float() / 10 + 0.05).view(10, 1, 1, 1).expand(10, 3, 4, 4).clone()
    res = prompt_fidelity(_Oracle(), images, digits)
    assert res["fidelity"] == pytest.approx(100.0)
    wrong = digits.clone()
    wrong[:3] = (wrong[:3] + 1) % 10
    res = prompt_fidelity(_Oracle(), images, wrong)
    assert res["fidelity"] == pytest.approx(70.0)
    assert res["per_digit"][3] == pytest.approx(50.0) and res["per_digit"][1] == 0.0  # 3: prompted twice, right once
    with pytest.raises(ValueError, match="10 images but 9 digits"):
        prompt_fidelity(_Oracle(), images, digits[:9])


def test_stroke_mask_turns_a_styled_digit_into_a_plain_one():
    from zoo.metrics.generation import stroke_mask

    digit = torch.zeros(1, 1, 16, 16)
    digit[..., 4:12, 7:9] = 1.0  # a '1'
    plain = digit.expand(1, 3, -1, -1)
    bg = torch.tensor([0.9, 0.8, 0.6]).view(1, 3, 1, 1)
    styled = digit * torch.tensor([0.8, 0.3, 0.2]).view(1, 3, 1, 1) + (1 - digit) * bg
    assert torch.allclose(stroke_mask(plain), plain)
    assert torch.allclose(stroke_mask(styled), plain, atol=1e-6)


def test_stroke_style_sees_the_strokes_colour_and_texture_not_their_shape():
    from zoo.metrics.generation import stroke_style_distance, stroke_style_stats

    g = torch.Generator().manual_seed(0)

    def draw(shape_slices, colour, texture=0.0, n=4):
        out = torch.zeros(n, 3, 16, 16)
        for i in range(n):
            mask = torch.zeros(16, 16)
            mask[shape_slices] = 1.0
            fill = colour.view(3, 1, 1) * (1 - texture + texture * torch.rand(1, 16, 16, generator=g))
            out[i] = mask * fill
        return out

    red = torch.tensor([0.9, 0.3, 0.2])
    bar = (slice(3, 13), slice(7, 9))  # a '1'
    blob = (slice(2, 14), slice(2, 14))  # a big blob: 7x the area
    # hand-computed: solid strokes of one colour -> mean = the colour, std = 0
    torch.testing.assert_close(stroke_style_stats(draw(bar, red))[0], torch.cat([red, torch.zeros(3)]).double())
    style = draw(bar, red, texture=0.5)
    assert stroke_style_distance(style, style) == pytest.approx(0.0, abs=1e-12)
    # the same style on another shape is close; the same shape in white, or untextured, is far
    other_shape = stroke_style_distance(draw(blob, red, texture=0.5), style)
    white = stroke_style_distance(draw(bar, torch.ones(3), texture=0.5), style)
    flat = stroke_style_distance(draw(bar, red), style)
    assert other_shape < 0.03 and white > 0.4 and flat > 0.05
    # while the whole-image colour statistics move with the stroke area
    assert style_distance(draw(blob, red, texture=0.5), style)["colour"] > 10 * other_shape
