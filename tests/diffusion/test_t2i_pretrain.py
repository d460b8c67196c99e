"""The tiny text-to-image model's parts: captions and word tokenizer, digit composites and the style set, and
the two pre-training recipes end to end at tiny sizes (fake MNIST files) into a loadable diffusers folder."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fake_data import fake_mnist  # noqa: E402
from zoo.diffusion.captions import DIGIT_WORDS, VOCAB_WORDS, caption, prompt, word_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ captions
def test_prompt_and_captions_name_the_digit():
    assert prompt(7) == "a handwritten digit seven"
    rng = random.Random(0)
    for d in range(10):
        texts = {caption(d, rng) for _ in range(50)}
        assert len(texts) > 3 and all(DIGIT_WORDS[d] in t or str(d) in t.split() for t in texts)
    with pytest.raises(ValueError, match="0..9"):
        prompt(10)


def test_word_tokenizer_one_token_per_known_word_and_characters_otherwise():
    tok = word_tokenizer()
    ids = tok("a handwritten digit seven in brick style").input_ids
    assert len(ids) == 2 + 7  # start + 7 words + end
    assert tok.convert_ids_to_tokens(ids[1:-1]) == [w + "</w>" for w in "a handwritten digit seven in brick style".split()]
    assert len(tok("dog").input_ids) == 2 + 3  # unknown word: d, o, g</w>
    assert all(len(tok(w).input_ids) == 3 for w in VOCAB_WORDS if w != "background")
    assert len(tok) == 198  # the vocabulary of the shipped tokenizer (tiny_t2i_mnist was trained with it)
    padded = tok("the number 7", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == tok.model_max_length == 16


# ------------------------------------------------------------------------------------------ digits / style
def test_colour_digits_and_style_set(tmp_path):
    pytest.importorskip("skimage")
    from zoo.data.images.style_digits import ColourDigits, build_style_set, pad_digit, style_images_tensor

    grey = pad_digit(torch.zeros(1, 28, 28))
    assert grey.shape == (1, 32, 32)
    grey[:, 10:20, 12:18] = 1.0
    aug = ColourDigits(p=1.0, seed=0)
    outs = [aug(grey) for _ in range(6)]
    assert all(o.shape == (3, 32, 32) and 0 <= o.min() and o.max() <= 1 for o in outs)
    assert any(not torch.allclose(o[0], o[1]) for o in outs)  # coloured, not grey
    assert torch.equal(ColourDigits(p=0.0)(grey), grey.expand(3, -1, -1))

    root = fake_mnist(tmp_path / "mnist")
    out = build_style_set(tmp_path / "style", "brick", num_images=10, root=root, split="test[:20]")
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == list(range(10))
    assert rows[7]["text"] == "a handwritten digit seven in brick style"
    imgs = style_images_tensor(out)
    assert imgs.shape == (10, 3, 32, 32)
    corner = imgs[:, :, 0, 0]  # background colour of the brick style everywhere
    assert torch.allclose(corner, torch.tensor([0.95, 0.9, 0.75]).expand(10, 3), atol=1 / 255)
    with pytest.raises(ValueError, match="unknown style"):
        build_style_set(tmp_path / "x", "marble", root=root)


# ------------------------------------------------------------------------------------------ recipes
def test_vae_then_unet_recipes_make_a_loadable_pipeline(tmp_path):
    from zoo.cli import run_training
    from zoo.diffusion.generate import generate_digits
    from zoo.diffusion.pipeline import load_pipeline

    repo = Path(__file__).resolve().parents[2]
    root = fake_mnist(tmp_path / "mnist")
    data = [f"data.root={root}", "data.train_split=test[:30]", "data.eval_split=test[30:]", "data.batch_size=4",
            "data.eval_batch_size=8", "trainer.max_steps=2"]
    vae = run_training(str(repo / "configs/t2i/vae.yaml"), data + ["model.block_out_channels=[8,8,8]",
                                                                  "model.norm_num_groups=4"], tmp_path / "vae")
    assert {"psnr", "psnr_colour", "latent_std", "train_latent_std", "scaling_factor"} <= set(vae["final"])
    cfg = json.loads((tmp_path / "vae" / "vae" / "config.json").read_text())
    # the scaling factor is 1 / std of the *training* digits' latents, measured here independently
    from diffusers import AutoencoderKL

    from zoo.data.images.mnist import MNIST
    from zoo.data.images.style_digits import pad_digit

    saved = AutoencoderKL.from_pretrained(str(tmp_path / "vae" / "vae")).eval()
    train = pad_digit(MNIST(root=root, split="test[:30]").data.float().div(255.0)[:, None]).expand(-1, 3, -1, -1)
    with torch.no_grad():
        z = saved.encode(train * 2 - 1).latent_dist.mode()
    assert cfg["scaling_factor"] == pytest.approx(1 / z.double().std().item(), rel=1e-4)
    assert cfg["scaling_factor"] == pytest.approx(vae["final"]["scaling_factor"], rel=1e-6)

    unet = run_training(str(repo / "configs/t2i/unet.yaml"), data + [
        f"model.vae={tmp_path / 'vae' / 'vae'}", "model.block_out_channels=[16,32]", "model.attention_head_dim=8",
        "model.norm_num_groups=8", "model.text_hidden=16", "sample.seeds=[0]", "sample.num_inference_steps=2",
        "trainer.ema_decay=null"], tmp_path / "unet")
    assert np.isfinite(unet["final"]["val_loss"])
    assert (tmp_path / "unet" / "samples.png").is_file()
    pipe = load_pipeline(tmp_path / "unet" / "pipeline")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    names = {n.rsplit(".", 1)[-1] for n, _ in pipe.unet.named_modules()}
    assert {"to_q", "to_k", "to_v"} <= names  # standard diffusers attention: LoRA / SaRA targets
    x = generate_digits(pipe, [3, 4], num_inference_steps=2)
    assert x.shape == (2, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    # the reported numbers of a pipeline (configs/t2i/evaluate.yaml's cell): per-image fidelity saved for the bootstrap
    measured = run_training(str(repo / "configs/t2i/measure.yaml"), [
        f"measure.pretrained={tmp_path / 'unet' / 'pipeline'}", f"measure.mnist_root={root}",
        "measure.split=test[30:]", "measure.per_digit=1", "measure.num_inference_steps=2", "measure.psnr_images=4"],
        tmp_path / "measure")["final"]
    assert measured["images"] == 10 and 0 <= measured["prompt_fidelity"] <= 100
    assert np.isfinite(measured["vae_psnr"]) and 0 <= measured["classifier_top1"] <= 100
    per_image = np.load(tmp_path / "measure" / "per_example.npz")["prompt_fidelity"]
    assert per_image.shape == (10,) and per_image.mean() == pytest.approx(measured["prompt_fidelity"])


def _mnist_reads(monkeypatch) -> list[str]:
    """Record the split of every MNIST dataset built from now on."""
    from zoo.data.images import mnist

    reads: list[str] = []
    original = mnist.MNIST.__init__

    def recording_init(self, root=None, split="train", *args, **kwargs):
        reads.append(split)
        original(self, root, split, *args, **kwargs)

    monkeypatch.setattr(mnist.MNIST, "__init__", recording_init)
    return reads


def test_no_pretraining_stage_reads_the_reported_split(tmp_path, monkeypatch):
    """The shipped pre-training configs of tiny_t2i_mnist and its digit classifier (configs/t2i: VAE, UNet, the
    judge of the generation metrics), run with their own splits on a full-size fake t10k file: every MNIST split any
    of them opens (training, validation, the VAE's scaling factor) is disjoint from the reported ``test[8000:]``,
    and the validation split is the scheme's (zoo/data/splits.py)."""
    from zoo.cli import run_training
    from zoo.config import load_config
    from zoo.data.splits import is_reported_split, split_scheme

    repo = Path(__file__).resolve().parents[2]
    scheme = split_scheme("mnist")
    for name in ("vae", "unet", "classifier"):
        data = load_config(repo / "configs" / "t2i" / f"{name}.yaml")["data"]
        assert (data["train_split"], data["eval_split"]) == (scheme.train, scheme.validation), name
    root = fake_mnist(tmp_path / "mnist", n=10_000)
    reads = _mnist_reads(monkeypatch)
    common = [f"data.root={root}", "data.batch_size=4", "data.eval_images=4", "trainer.max_steps=1"]
    run_training(str(repo / "configs/t2i/vae.yaml"), common + ["model.block_out_channels=[8,8,8]",
                                                               "model.norm_num_groups=4"], tmp_path / "vae")
    run_training(str(repo / "configs/t2i/unet.yaml"), common + [
        f"model.vae={tmp_path / 'vae' / 'vae'}", "model.block_out_channels=[16,32]", "model.attention_head_dim=8",
        "model.norm_num_groups=8", "model.text_hidden=16", "sample.seeds=[0]", "sample.num_inference_steps=1",
        "trainer.ema_decay=null"], tmp_path / "unet")
    run_training(str(repo / "configs/t2i/classifier.yaml"), [f"data.root={root}", "trainer.epochs=1",
                                                             "trainer.max_steps_per_epoch=1"], tmp_path / "classifier")
    assert reads and {scheme.train, scheme.validation} <= set(reads)
    assert not [s for s in reads if is_reported_split("mnist", s)], reads


def test_unet_recipe_needs_a_vae_folder(tmp_path):
    from zoo.config import ConfigError
    from zoo.recipes.t2i_pretrain import T2IUNetConfig, T2IUNetRecipe

    cfg = T2IUNetConfig()
    cfg.model.vae = str(tmp_path)
    with pytest.raises(ConfigError, match="model.vae"):
        T2IUNetRecipe(cfg)


@pytest.mark.slow
def test_two_process_evaluation_matches_one_process(tmp_path):
    """t2i_vae, t2i_unet and sd_finetune evaluated by 2 gloo processes give one process's metrics (5 held-out
    examples in batches of 2: an uneven last batch)."""
    import os
    import subprocess
    import sys

    from zoo.diffusion.t2i import build_vae
    from zoo.diffusion.tiny import save_tiny_pipeline

    repo = Path(__file__).resolve().parents[2]
    root = fake_mnist(tmp_path / "mnist")
    build_vae([8, 8, 8], 1, 4, 4).save_pretrained(str(tmp_path / "vae"))
    pipe = save_tiny_pipeline(tmp_path / "pipe")
    style = tmp_path / "style"
    style.mkdir()
    from PIL import Image

    for i in range(5):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(style / f"{i}.png")
    data = [f"data.root={root}", "data.eval_split=test[30:]", "data.eval_images=5", "data.eval_batch_size=2"]
    cases = {
        "vae": [str(repo / "configs/t2i/vae.yaml"), data + ["model.block_out_channels=[8,8,8]", "model.norm_num_groups=4"]],
        "unet": [str(repo / "configs/t2i/unet.yaml"), data + [
            f"model.vae={tmp_path / 'vae'}", "model.block_out_channels=[16,32]", "model.attention_head_dim=8",
            "model.norm_num_groups=8", "model.text_hidden=16"]],
        "sd": [str(repo / "configs/sara/tiny.yaml"), [f"model.pretrained={pipe}", f"data.root={style}",
                                                     "data.eval_images=5", "data.eval_batch_size=2"]],
    }
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    worker = Path(__file__).with_name("ddp_eval_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in ([sys.executable, str(worker), str(tmp_path)],
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
                 str(tmp_path)]):
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "metrics_1.json").read_text())
    two = json.loads((tmp_path / "metrics_2.json").read_text())
    assert set(one) == set(two) == {"vae", "unet", "sd"}
    for case in one:
        assert one[case].keys() == two[case].keys()
        for k, v in one[case].items():
            assert two[case][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (case, k)
