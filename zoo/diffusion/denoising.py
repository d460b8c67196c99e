"""The denoising objective of latent diffusion training and its fixed-noise validation loss, shared by the
``sd_finetune`` / ``b4m`` recipes (Stable Diffusion UNets) and ``t2i_unet`` (the tiny MNIST model).

Training (diffusers' ``train_text_to_image.py``): :func:`add_training_noise` draws the noise (optionally offset)
and a random DDPM timestep per example and noises the latents; the UNet predicts :func:`prediction_target`
(the noise, or the velocity for ``v_prediction``); the loss is the MSE, optionally Min-SNR weighted
(:func:`min_snr_weights`).

Validation: :func:`fixed_noise_loss` — the MSE per example at ``n`` evenly spaced timesteps
(:func:`eval_timesteps`) with noise that depends only on the example's index in the evaluation set
(:func:`example_noise`): the noise a one-process evaluation draws batch by batch (a generator seeded per batch of
``batch_size`` examples), looked up per example, so an evaluation split over several processes gives the same
per-example losses. The evaluation sets carry each example's index (:class:`WithIndex`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["WithIndex", "add_training_noise", "prediction_target", "min_snr_weights", "denoising_mse",
           "eval_timesteps", "example_noise", "fixed_noise_loss"]


class WithIndex(Dataset):
    """``dataset``'s items (dicts) with their position added as ``"index"`` (for per-example evaluation noise)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "index": index}


def add_training_noise(scheduler: Any, latents: torch.Tensor, noise_offset: float = 0.0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(noisy latents, noise, timesteps)`` for ``latents (B, C, h, w)``: Gaussian noise (plus
    ``noise_offset ·`` a per-channel constant, diffusers' ``--noise_offset``) and a uniform DDPM timestep ``(B,)``
    per example, drawn in that order from torch's global generator."""
    noise = torch.randn_like(latents)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=latents.device,
                                                   dtype=latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
    return scheduler.add_noise(latents, noise, t), noise, t


def prediction_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet predicts: the noise (``epsilon``) or the velocity ``α_t ε − σ_t x₀`` (``v_prediction``)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction_type '{kind}' (epsilon or v_prediction)")


def min_snr_weights(scheduler: Any, t: torch.Tensor, gamma: float | None) -> torch.Tensor | None:
    """Min-SNR-γ loss weights ``(B,)``: ``min(SNR_t, γ) / SNR_t`` (epsilon) or ``/ (SNR_t + 1)`` (v); None
    without ``gamma``. Reference: Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy",
    ICCV 2023; diffusers ``training_utils.compute_snr``."""
    if not gamma:
        return None
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t)
    w = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    return w / snr if scheduler.config.prediction_type == "epsilon" else w / (snr + 1)


def denoising_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss: mean squared error in float32, per-example weighted by ``weights (B,)`` when given."""
    if weights is None:
        return F.mse_loss(pred.float(), target.float())
    per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.dim())))
    return (per * weights.to(per.device)).mean()


def eval_timesteps(scheduler: Any, n: int) -> torch.Tensor:
    """``max(1, n)`` evenly spaced integer timesteps over ``[0, T − 1]``."""
    return torch.linspace(0, scheduler.config.num_train_timesteps - 1, max(1, n)).round().long()


def example_noise(indices: torch.Tensor, shape: Sequence[int], num_draws: int, batch_size: int, num_examples: int,
                  block_seed: Callable[[int], int]) -> torch.Tensor:
    """``(num_draws, len(indices), *shape)`` float32 noise of the evaluation examples ``indices``: example ``j``
    gets row ``j mod batch_size`` of the ``num_draws`` draws ``randn(n_b, *shape)`` that a generator seeded
    ``block_seed(b)`` makes for its block ``b = j // batch_size`` of ``n_b`` examples (the last block may be
    short) — what a one-process evaluation in batches of ``batch_size`` draws, whatever batch the example is in."""
    indices = torch.as_tensor(indices).long().cpu()
    out = torch.empty(num_draws, len(indices), *shape)
    blocks = indices // batch_size
    for b in blocks.unique().tolist():
        n_b = min(batch_size, num_examples - b * batch_size)
        gen = torch.Generator().manual_seed(block_seed(b))
        draws = torch.stack([torch.randn((n_b, *shape), generator=gen) for _ in range(num_draws)])
        rows = (blocks == b).nonzero().squeeze(1)
        out[:, rows] = draws[:, indices[rows] - b * batch_size]
    return out


def fixed_noise_loss(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler: Any,
                     latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Per-example validation loss ``(B,)``: the mean over ``timesteps`` of the MSE between
    ``denoise(noisy (B, C, h, w), t (B,))`` and :func:`prediction_target`, the latents noised with
    ``noise[k] (B, C, h, w)`` at ``timesteps[k]``."""
    total = torch.zeros(latents.shape[0], device=latents.device)
    for k, t_val in enumerate(timesteps.tolist()):
        eps = noise[k].to(latents.device, latents.dtype)
        t = torch.full((latents.shape[0],), t_val, device=latents.device, dtype=torch.long)
        pred = denoise(scheduler.add_noise(latents, eps, t), t)
        target = prediction_target(scheduler, latents, eps, t)
        total += F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.dim())))
    return total / len(timesteps)
