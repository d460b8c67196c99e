"""The reported numbers of the shipped tiny text-to-image model (``tiny_t2i_mnist``; the ``t2i_measure`` recipe,
``configs/t2i/evaluate.yaml``, one cell per sampling seed): prompt fidelity, VAE reconstruction PSNR, the digit
classifier's own accuracy, all on the reported split only (:mod:`zoo.data.splits`).

Reference: prompt fidelity as :mod:`zoo.metrics.generation` (a digit classifier on generated digits); the sampler
is diffusers' DDIM (Song et al., ICLR 2021) with classifier-free guidance (Ho & Salimans, 2021).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.diffusion.pretrained import load_named_pipeline

__all__ = ["T2IMeasureSection", "measure_tiny_t2i"]


@dataclass
class T2IMeasureSection:
    """Config section ``measure`` of ``t2i_measure``."""

    pretrained: str = "tiny_t2i_mnist"  # a shipped pipeline name or a diffusers folder
    split: str = "test[8000:]"  # the reported split
    per_digit: int = 20  # prompt fidelity: images per digit (canonical prompt), sampling seeds from ``seed``
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    batch_size: int = 100
    psnr_images: int = 512  # VAE PSNR: the first N digits of ``split``
    colour_seed: int = 4321  # of the colour composites (as the VAE's evaluation)
    mnist_root: str | None = None
    classifier: str | None = None  # default: the shipped convnet_small_mnist32


def measure_tiny_t2i(m: T2IMeasureSection, seed: int, out_dir: Path) -> dict[str, Any]:
    """The shipped model's reported numbers on the reported split (``configs/t2i/evaluate.yaml``; one cell per sampling
    seed ``seed``; ``per_example.npz`` into ``out_dir``): ``prompt_fidelity`` — the digit classifier's accuracy (%) on
    ``per_digit`` images per digit of the canonical prompt (25 DDIM steps, guidance 4; image ``(k, d)`` from the noise
    of seed ``seed + 1000 k + d``); ``vae_psnr`` / ``vae_psnr_colour`` — reconstruction PSNR (dB, posterior mode) of the
    first ``psnr_images`` grey digits of ``split`` and of their colour composites; ``classifier_top1`` — the digit
    classifier's accuracy on every digit of ``split`` (its own reported number). The last three do not depend on the
    seed; the prompt fidelity's per-image values are saved (``per_example.npz``) for the summary's bootstrap over
    images. The module's split rule holds here too: only ``m.split`` is read."""
    import numpy as np

    from zoo.data.images.mnist import MNIST
    from zoo.data.images.style_digits import ColourDigits, pad_digit
    from zoo.diffusion.generate import collate_items, generate_step
    from zoo.diffusion.style_eval import generation_items
    from zoo.diffusion.t2i import psnr
    from zoo.metrics.generation import classifier_logits_features, load_digit_classifier
    from zoo.studies import save_per_example

    pipe = load_named_pipeline(m.pretrained)
    classifier = load_digit_classifier(m.classifier)
    step = generate_step(num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale)
    items = generation_items("", m.per_digit, seed)
    hits = []
    with torch.no_grad():
        for start in range(0, len(items), m.batch_size):
            out = step(pipe, collate_items(items[start:start + m.batch_size]))
            pred = classifier_logits_features(classifier, out["images"])[0].argmax(1)
            hits.append(100.0 * (pred == out["digit"]).double())
    fidelity = torch.cat(hits)
    ds = MNIST(root=m.mnist_root, split=m.split)
    grey = pad_digit(ds.data.float().div(255.0)[:, None]).expand(-1, 3, -1, -1)
    top1 = 100.0 * (classifier_logits_features(classifier, grey)[0].argmax(1) == ds.targets).double()
    x = grey[:m.psnr_images]
    colour = ColourDigits(1.0, seed=m.colour_seed)
    xc = torch.stack([colour(img[:1]) for img in x])
    vae = pipe.vae.eval()
    with torch.no_grad():
        rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample
        rec_c = vae.decode(vae.encode(xc * 2 - 1).latent_dist.mode()).sample
    p_grey, p_colour = psnr((rec + 1) / 2, x), psnr((rec_c + 1) / 2, xc)
    save_per_example(out_dir, {"prompt_fidelity": fidelity}, example_id=np.arange(len(fidelity)))
    return {"prompt_fidelity": fidelity.mean().item(), "vae_psnr": p_grey.double().mean().item(),
            "vae_psnr_colour": p_colour.double().mean().item(), "classifier_top1": top1.mean().item(),
            "per_digit": {str(d): fidelity[d::10].mean().item() for d in range(10)},
            "images": len(fidelity), "split": m.split}
