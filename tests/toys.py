"""A tiny deterministic model and dataset, registered under ``toy_*`` names, for engine and tool tests.

No dropout and no batch norm, so that multi-process and accumulated runs match single-process ones exactly.
"""
from __future__ import annotations

import torch
from torch import nn

from zoo.data.registry import DATASETS, register_dataset
from zoo.hub import PretrainedCfg, build_model_with_cfg
from zoo.registry import _MODELS, register_model

default_cfgs = {"toy_mlp": PretrainedCfg(num_classes=3, classifier="head", input_size=(8,))}


class ToyMLP(nn.Module):
    """(B, in_dim) -> (B, num_classes): Linear-GELU-LayerNorm-Linear."""

    def __init__(self, num_classes: int = 3, in_dim: int = 8, hidden: int = 32):
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2:
            raise ValueError(f"ToyMLP expects (B, in_dim), got {tuple(x.shape)}")
        return self.head(self.body(x))


class ToyBlobs(torch.utils.data.Dataset):
    """``n`` Gaussian blobs in 8-d around one-hot centres of 3 classes; split-seeded."""

    classes = ["a", "b", "c"]

    def __init__(self, root=None, split: str = "train", n: int = 96):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.x = torch.randn(n, 8, generator=g) + 4.0 * nn.functional.one_hot(self.y, 8).float()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


if "toy_mlp" not in _MODELS._entries:
    @register_model
    def toy_mlp(pretrained=False, **kwargs):
        """Toy MLP for tests."""
        return build_model_with_cfg(ToyMLP, "toy_mlp", pretrained, **kwargs)

if "toy_blobs" not in DATASETS._entries:
    register_dataset("toy_blobs")(ToyBlobs)

TOY_CONFIG = """\
recipe: classify
seed: 0
model: {name: toy_mlp}
data: {name: toy_blobs, batch_size: 16, kwargs: {n: 96}}
optim: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.0001}
schedule: {name: cosine, warmup_epochs: 1}
trainer: {epochs: 4, tensorboard: false}
"""
