"""zoo/models/_contract.py: auxiliary losses through wrappers, block indices, the recipe's use, DDP with the losses."""
from __future__ import annotations

import copy
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from zoo import create_model
from zoo.models._contract import feature_take_indices, pop_auxiliary_losses, tie_to_output, unwrap_model

TINY = "pointramba_tiny"


class _Wrapper(nn.Module):
    """Stands in for DDP / accelerate (``.module``) or ``torch.compile`` (``._orig_mod``)."""

    def __init__(self, inner: nn.Module, attr: str):
        super().__init__()
        setattr(self, attr, inner)
        self.attr = attr

    def forward(self, x):
        return getattr(self, self.attr)(x)


def _cloud(b=2, n=64):
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("attrs", [("module",), ("_orig_mod",), ("_orig_mod", "module")])
def test_pop_goes_through_wrappers(attrs):
    model = create_model(TINY, num_classes=3).train()
    wrapped = model
    for attr in attrs:
        wrapped = _Wrapper(wrapped, attr)
    assert unwrap_model(wrapped) is model
    wrapped(_cloud())
    losses = pop_auxiliary_losses(wrapped)
    assert set(losses) == {"glr", "importance"} and pop_auxiliary_losses(wrapped) == {}


def test_model_without_the_method_has_no_losses_and_bad_returns_are_named():
    assert pop_auxiliary_losses(nn.Linear(2, 2)) == {}

    class Bad(nn.Module):
        def auxiliary_losses(self):
            return [torch.zeros(())]

    with pytest.raises(TypeError, match=r"Bad.auxiliary_losses\(\) must return a dict of tensors, got list"):
        pop_auxiliary_losses(_Wrapper(Bad(), "module"))


def test_kept_losses_do_not_travel_with_copies():
    """An EMA copy (deepcopy) or a pickle of a model right after a training forward carries no live graph."""
    model = create_model(TINY, num_classes=3).train()
    model(_cloud())
    twin = copy.deepcopy(model)
    assert twin.auxiliary_losses() == {}
    assert pickle.loads(pickle.dumps(model)).auxiliary_losses() == {}
    assert set(model.auxiliary_losses()) == {"glr", "importance"}  # the original keeps its own


def test_tie_is_identity_in_value_and_gradient():
    out = torch.randn(3, 4, requires_grad=True)
    aux = (out.detach() * 0 + torch.ones(()).requires_grad_()).sum()
    tied = tie_to_output(out, {"a": aux})
    assert torch.equal(tied, out) and tied is not out
    tied.sum().backward()
    assert torch.equal(out.grad, torch.ones(3, 4))
    with torch.no_grad():
        assert tie_to_output(out, {"a": aux}) is out
    assert tie_to_output(out, {}) is out


@pytest.mark.parametrize("indices,expected", [(None, [0, 1, 2, 3]), (1, [3]), (3, [1, 2, 3]), ([0, 2], [0, 2]),
                                              ([-1, 0], [3, 0]), ((1,), [1])])
def test_feature_take_indices(indices, expected):
    assert feature_take_indices(4, indices) == (expected, max(expected))


@pytest.mark.parametrize("indices,match", [(0, "last 0 blocks"), (5, "last 5 blocks"), ([4], "block index 4"),
                                           ([-5], "block index -5"), ([], "empty list")])
def test_feature_take_indices_errors(indices, match):
    with pytest.raises(ValueError, match=match):
        feature_take_indices(4, indices)


def test_classify_recipe_adds_the_auxiliary_losses_and_refuses_dict_outputs():
    from zoo.models._contract import split_model_output
    from zoo.recipes.classify import ClassifyConfig, ClassifyRecipe

    recipe = ClassifyRecipe(ClassifyConfig(model={"name": TINY, "num_classes": 3}))
    model = _Wrapper(create_model(TINY, num_classes=3).train(), "module")  # as the Trainer passes it (DDP)
    losses = recipe.training_step(model, (_cloud(), torch.tensor([0, 2])))
    assert set(losses) == {"loss", "ce", "glr", "importance"}
    torch.testing.assert_close(losses["loss"].detach(), losses["ce"] + losses["glr"] + losses["importance"])
    assert losses["loss"].requires_grad and pop_auxiliary_losses(model) == {}
    with pytest.raises(TypeError, match=r"forward returned dict, expected the logits tensor.*auxiliary_losses\(\)"):
        split_model_output({"logits": torch.zeros(2, 3)}, model)
    model.module.train()(_cloud())
    logits = recipe.predict(model, _cloud())  # predict drops what a train-mode forward kept
    assert logits.shape == (2, 3) and pop_auxiliary_losses(model) == {}


_DDP_WORKER = r"""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, os.environ["ZOO_REPO"])
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
from zoo import create_model
from zoo.models._contract import pop_auxiliary_losses
torch.manual_seed(0)
model = create_model("pointramba_tiny", num_classes=3).train()
ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=sys.argv[1] == "1")
x = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(rank + 1))
for _ in range(2):
    logits = ddp(x)
    (logits.pow(2).mean() + sum(pop_auxiliary_losses(ddp).values())).backward()
grad = model.global_projection[0].weight.grad
grads = [torch.zeros_like(grad) for _ in range(2)]
dist.all_gather(grads, grad)
assert grad.abs().sum() > 0 and torch.equal(grads[0], grads[1]), "aux-loss gradients not synchronised"
dist.barrier()
dist.destroy_process_group()
# Every check has run; skip interpreter finalisation, where gloo's worker threads can still hold tensors and abort
# the process ("terminate called without an active exception", pytorch/pytorch#179291) after a passing run.
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("find_unused", ["0", "1"])
def test_ddp_synchronises_auxiliary_loss_gradients(find_unused, tmp_path):
    """Two gloo processes: the auxiliary losses kept by the wrapped forward train the projection heads, with and
    without find_unused_parameters (which, without the tie to the logits, fails with 'marked ready twice')."""
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "ZOO_REPO": repo, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), find_unused]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("name, shape", [("pointnet_tiny", (2, 64, 3)), ("pointramba_tiny", (2, 64, 3)),
                                         ("convnet_tiny", (2, 1, 28, 28))])
def test_float64_input_is_a_clear_error(name, shape):
    model = create_model(name, num_classes=3).eval()
    with pytest.raises(TypeError, match=r"torch.float32 weights but got torch.float64 input.*\.float\(\)"):
        model(torch.randn(*shape, dtype=torch.float64))
    assert model(torch.randn(*shape)).shape == (2, 3)
