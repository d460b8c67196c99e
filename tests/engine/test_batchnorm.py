"""BatchNorm recalibration: exact averages, eval-mode upstream, state restored, and the classify recipe hook."""
from __future__ import annotations

import torch
from helpers import run_toy
from torch import nn

from zoo.engine.batchnorm import batchnorm_layers, recalibrate_batchnorm


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 6), nn.BatchNorm1d(6))


def test_statistics_are_exact_averages_with_eval_mode_upstream():
    net = _net()
    net.train()
    batches = [torch.randn(8, 4) * (i + 1) for i in range(5)]
    momenta = [bn.momentum for bn in batchnorm_layers(net)]
    used = recalibrate_batchnorm(net, batches, num_batches=3)
    assert used == 3
    # expected: the mean over the 3 batches of the first BN's batch mean / unbiased variance, dropout off
    feats = [net[0](b) for b in batches[:3]]
    bn = net[2]
    torch.testing.assert_close(bn.running_mean, torch.stack([f.mean(0) for f in feats]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0))
    assert int(bn.num_batches_tracked) == 3
    assert net.training and all(m.training for m in net.modules()), "train/eval flags must be restored"
    assert [bn.momentum for bn in batchnorm_layers(net)] == momenta


def test_eval_output_matches_batch_statistics_after_recalibration_on_one_batch():
    net = _net()
    x = torch.randn(64, 4)
    recalibrate_batchnorm(net, [x])
    net.eval()
    # with one batch, eval-mode BN normalises by that batch's (unbiased) statistics
    h = net[0](x)
    expected = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=True) + net[2].eps) * net[2].weight + net[2].bias
    torch.testing.assert_close(net[:3](x), expected, rtol=1e-4, atol=1e-5)


def test_nothing_to_do_leaves_statistics_alone():
    net = _net()
    net(torch.randn(8, 4))  # moves the running stats away from their init
    before = [bn.running_mean.clone() for bn in batchnorm_layers(net)]
    assert recalibrate_batchnorm(net, []) == 0
    assert recalibrate_batchnorm(net, [torch.randn(8, 4)], num_batches=0) == 0
    for b, bn in zip(before, batchnorm_layers(net)):
        torch.testing.assert_close(bn.running_mean, b)
    assert recalibrate_batchnorm(nn.Linear(2, 2), [torch.randn(3, 2)]) == 0


def test_custom_forward_receives_each_batch():
    net = _net()
    seen = []
    recalibrate_batchnorm(net, [(torch.randn(8, 4), 0), (torch.randn(8, 4), 1)],
                          forward=lambda m, b: (seen.append(b[1]), m(b[0])))
    assert seen == [0, 1]


class _ToyBN(nn.Module):
    """(B, 8) -> (B, 3) with a BatchNorm, for the recipe hook test."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def test_classify_recipe_recalibrates_before_evaluation_and_saves_the_statistics(tmp_path, monkeypatch):
    from zoo.recipes.classify import ClassifyRecipe

    monkeypatch.setattr(ClassifyRecipe, "build_model", lambda self: _ToyBN())
    run_toy(tmp_path, tmp_path / "run", ["trainer.epochs=2", "eval.bn_recalibration_batches=2"])
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert int(last["model"]["body.1.num_batches_tracked"]) == 2  # reset, then exactly two batches
    # the same two seeded batches of un-augmented training data, recomputed by hand
    model = _ToyBN()
    model.load_state_dict(last["model"])
    from toys import ToyBlobs

    from zoo.data.loader import build_loader

    loader = build_loader(ToyBlobs(split="train", n=96), 16, shuffle=True, seed=0)
    recalibrate_batchnorm(model, (x for x, _ in loader), num_batches=2)
    torch.testing.assert_close(model.body[1].running_mean, last["model"]["body.1.running_mean"])
    torch.testing.assert_close(model.body[1].running_var, last["model"]["body.1.running_var"])
