"""The shipped ``tiny_t2i_mnist`` pipeline: offline loading, shapes, bit-for-bit reproducible CPU samples, the
manifest's checksums, and (slow) its prompt fidelity and VAE reconstruction PSNR measured on MNIST."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from zoo.diffusion import load_pretrained_pipeline, pretrained_pipeline_dir  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")  # no network: everything comes from the shipped folder
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        yield load_pretrained_pipeline("tiny_t2i_mnist")
    finally:
        mp.undo()


def test_loads_offline_with_standard_components(pipe, repo_root):
    assert pretrained_pipeline_dir("tiny_t2i_mnist") == repo_root / "checkpoints" / "tiny_t2i_mnist"
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.float32 and pipe.vae.config.latent_channels == 4
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 8
    names = {n for n, _ in pipe.unet.named_modules()}
    assert any(n.endswith("attn2.to_q") for n in names) and any(n.endswith("attn2.to_out.0") for n in names)
    ids = pipe.tokenizer("a handwritten digit seven").input_ids
    assert len(ids) == 6  # word-level: start, 4 words, end


def test_fixed_seed_sample_is_bit_for_bit_reproducible(pipe):
    from zoo.diffusion.generate import generate_digits

    a = generate_digits(pipe, [7, 1], seed=3, num_inference_steps=5)
    b = generate_digits(pipe, [7, 1], seed=3, num_inference_steps=5)
    c = generate_digits(pipe, [7, 1], seed=4, num_inference_steps=5)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_unknown_name_and_corrupt_file_are_refused(tmp_path, monkeypatch, repo_root):
    with pytest.raises(KeyError, match="tiny_t2i_mnist"):
        load_pretrained_pipeline("tiny_t2i_cifar")
    copy = tmp_path / "tiny_t2i_mnist"
    shutil.copytree(repo_root / "checkpoints" / "tiny_t2i_mnist", copy)
    shutil.copy(repo_root / "checkpoints" / "manifest.yaml", tmp_path / "manifest.yaml")
    (copy / "unet" / "config.json").write_text((copy / "unet" / "config.json").read_text() + "\n")
    monkeypatch.setenv("ZOO_HOME", str(tmp_path))  # looked up first
    assert pretrained_pipeline_dir("tiny_t2i_mnist") == copy
    with pytest.raises(RuntimeError, match="sha256"):
        load_pretrained_pipeline("tiny_t2i_mnist")


@pytest.mark.slow
def test_prompt_fidelity_of_the_shipped_model(pipe):
    """Classifier accuracy on 20 samples per digit (canonical prompt, 25 DDIM steps, guidance 4)."""
    from zoo.diffusion.generate import generate_digits
    from zoo.metrics.generation import load_digit_classifier, prompt_fidelity

    digits = [d for d in range(10) for _ in range(20)]
    images = generate_digits(pipe, digits, seed=0, num_inference_steps=25, guidance_scale=4.0)
    res = prompt_fidelity(load_digit_classifier(), images, digits)
    print(f"prompt fidelity {res['fidelity']:.1f}% per digit {res['per_digit']}")
    assert res["fidelity"] >= 80.0


@pytest.mark.slow
def test_vae_reconstruction_psnr_on_held_out_digits(pipe, shared_data):
    from zoo.data.images.mnist import MNIST
    from zoo.data.images.style_digits import pad_digit
    from zoo.diffusion.t2i import psnr

    if not (shared_data / "mnist").is_dir():
        pytest.skip("no shared MNIST")
    ds = MNIST(root=shared_data / "mnist", split="test[8000:8512]")
    x = pad_digit(ds.data.float().div(255.0)[:, None]).expand(-1, 3, -1, -1)
    with torch.no_grad():
        rec = pipe.vae.decode(pipe.vae.encode(x * 2 - 1).latent_dist.mode()).sample
    value = psnr((rec + 1) / 2, x).mean().item()
    print(f"VAE PSNR {value:.2f} dB")
    assert value >= 25.0
