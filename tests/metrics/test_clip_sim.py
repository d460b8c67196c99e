"""CLIP image-image / image-text similarity with a tiny random CLIP built from a config and saved to a folder."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from zoo.metrics.clip_sim import (  # noqa: E402
    OPENAI_MEAN, OPENAI_STD, CLIPScorer, clip_image_similarity, clip_text_similarity, preprocess,
)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    from zoo.diffusion.tiny import tiny_tokenizer

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=128, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("clip") / "tiny_clip"
    CLIPModel(cfg).save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path


def _images(n, seed, h=40, w=48):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_preprocessing_is_the_stated_one():
    x = _images(2, 0, 40, 60)
    out = preprocess(x, 32)
    assert out.shape == (2, 3, 32, 32)
    r = F.interpolate(x, size=(32, 48), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)[..., :, 8:40]
    want = (r - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        preprocess(torch.rand(3, 8, 8), 32)


def test_image_image_similarity_from_a_local_folder(clip_dir):
    scorer = CLIPScorer.from_pretrained(clip_dir, batch_size=3)
    a, b = _images(5, 1), _images(4, 2)
    feats = scorer.image_features(a)
    assert feats.shape == (5, 16)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(5))
    self_sim = clip_image_similarity(scorer, a, a)
    torch.testing.assert_close(self_sim["matrix"].diagonal(), torch.ones(5), rtol=0, atol=1e-5)
    res = clip_image_similarity(scorer, a, b)
    assert res["matrix"].shape == (5, 4) and -1 <= res["mean"] <= 1
    assert math.isclose(res["mean"], float(res["per_image"].mean()), rel_tol=1e-6)
    big = CLIPScorer.from_pretrained(clip_dir, batch_size=64)  # batching does not change the numbers
    torch.testing.assert_close(clip_image_similarity(big, a, b)["matrix"], res["matrix"], rtol=1e-5, atol=1e-6)


def test_image_text_similarity_pairs_image_i_with_text_i(clip_dir):
    scorer = CLIPScorer.from_pretrained(clip_dir, batch_size=2)
    imgs = _images(3, 3)
    texts = ["a red dog", "a blue house", "seven"]
    res = clip_text_similarity(scorer, imgs, texts)
    want = (scorer.image_features(imgs) * scorer.text_features(texts)).sum(-1)
    torch.testing.assert_close(res["per_image"], want)
    one = clip_text_similarity(scorer, imgs, ["a red dog"])["per_image"]
    torch.testing.assert_close(one[0], want[0])
    assert not torch.allclose(one[1:], want[1:])
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        clip_text_similarity(scorer, imgs, texts[:2])


def test_missing_folder_names_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        CLIPScorer.from_pretrained(tmp_path / "nope")
