"""The WideResNet of zoo/models/wide_resnet.py: RobustBench's key layout and forward (the reference's block, with
its pre-activated shortcut, written out here), RobustBench checkpoints load through checkpoint_filter_fn, sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.models.wide_resnet import WideResNet, checkpoint_filter_fn


class _RefBlock(nn.Module):
    """RobustBench / TRADES ``BasicBlock`` (``wide_resnet.py``), as written there."""

    def __init__(self, i, o, stride):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(i), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(o), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.equalInOut = i == o
        self.convShortcut = (not self.equalInOut) and nn.Conv2d(i, o, 1, stride, 0, bias=False) or None

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class _RefGroup(nn.Module):
    def __init__(self, n, i, o, stride):
        super().__init__()
        self.layer = nn.Sequential(*[_RefBlock(i if k == 0 else o, o, stride if k == 0 else 1) for k in range(n)])

    def forward(self, x):
        return self.layer(x)


class _RefWRN(nn.Module):
    def __init__(self, depth, k, num_classes=10):
        super().__init__()
        c, n = [16, 16 * k, 32 * k, 64 * k], (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)
        self.block1, self.block2, self.block3 = _RefGroup(n, c[0], c[1], 1), _RefGroup(n, c[1], c[2], 2), \
            _RefGroup(n, c[2], c[3], 2)
        self.bn1, self.relu, self.fc, self.c = nn.BatchNorm2d(c[3]), nn.ReLU(inplace=True), nn.Linear(c[3], num_classes), c[3]

    def forward(self, x):
        out = self.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(F.avg_pool2d(out, 8).view(-1, self.c))


@pytest.mark.parametrize("depth,k", [(10, 2), (16, 1)])
def test_robustbench_layout_and_forward(depth, k):
    torch.manual_seed(0)
    ref = _RefWRN(depth, k)
    for m in ref.modules():  # non-trivial statistics, so that the BatchNorm placement matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    # a RobustBench checkpoint: {"state_dict": ...} saved from a DataParallel model
    checkpoint = {"state_dict": {f"module.{key}": v for key, v in ref.state_dict().items()}}
    ours = WideResNet(depth, k)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(checkpoint_filter_fn(checkpoint, ours))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=1e-5, atol=1e-5)


def test_registered_sizes_and_checkpoint_path(tmp_path):
    assert {"wrn16_1", "wrn10_2", "wrn28_10"} <= set(zoo.list_models("wrn*"))
    assert sum(p.numel() for p in zoo.create_model("wrn16_1").parameters()) == 175_066
    src = zoo.create_model("wrn10_2").eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "Standard.pt")
    dst = zoo.create_model("wrn10_2", checkpoint_path=str(tmp_path / "Standard.pt")).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


@pytest.mark.slow
def test_wrn28_10_is_robustbench_standard_size():
    model = zoo.create_model("wrn28_10")
    assert sum(p.numel() for p in model.parameters()) == 36_479_194


def test_bad_depth_names_the_rule():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=12)
