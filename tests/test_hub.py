"""Pretrained weights: resolution order, sha256, foreign checkpoints, head re-init, key reports, safe loading."""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

import toys  # noqa: F401
from zoo import hub
from zoo.hub import sha256sum
from zoo.registry import create_model


@pytest.fixture
def source():
    torch.manual_seed(0)
    return create_model("toy_mlp")


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_pretrained_from_local_file_with_sha(tmp_path, source, suffix):
    path = tmp_path / f"toy{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(source.state_dict(), str(path))
    model = create_model("toy_mlp", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), sha256=sha256sum(path)))
    assert _same(model, source)


def test_wrong_sha_rejected(tmp_path, source):
    path = tmp_path / "toy.safetensors"
    save_file(source.state_dict(), str(path))
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        create_model("toy_mlp", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), sha256="0" * 64))


def test_explicit_checkpoint_path_is_not_held_to_the_shipped_files_sha(tmp_path, source, monkeypatch):
    """The cfg's sha256 describes the shipped file; a user's own weights load through checkpoint_path (and are
    checked only against a sha256 given in the overlay)."""
    from zoo.registry import get_pretrained_cfg

    path = tmp_path / "mine.safetensors"
    save_file(source.state_dict(), str(path))
    shipped = get_pretrained_cfg("toy_mlp").replace(file="shipped.safetensors", sha256="0" * 64)
    monkeypatch.setattr("zoo.registry.get_pretrained_cfg", lambda name: shipped)
    assert _same(create_model("toy_mlp", checkpoint_path=path), source)
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        create_model("toy_mlp", checkpoint_path=path, pretrained_cfg_overlay=dict(sha256="1" * 64))


def test_resolution_order_zoo_home_then_checkpoints(tmp_path, source, monkeypatch):
    home, ckpts = tmp_path / "home", tmp_path / "ckpts"
    home.mkdir(), ckpts.mkdir()
    monkeypatch.setattr(hub, "CHECKPOINT_DIR", ckpts)
    other = create_model("toy_mlp")
    save_file(other.state_dict(), str(ckpts / "toy.safetensors"))
    overlay = dict(file="toy.safetensors")
    assert _same(create_model("toy_mlp", pretrained=True, pretrained_cfg_overlay=overlay), other)
    save_file(source.state_dict(), str(home / "toy.safetensors"))
    monkeypatch.setenv("ZOO_HOME", str(home))
    assert _same(create_model("toy_mlp", pretrained=True, pretrained_cfg_overlay=overlay), source)
    explicit = tmp_path / "explicit.pt"
    torch.save(other.state_dict(), explicit)
    assert _same(create_model("toy_mlp", checkpoint_path=str(explicit), pretrained_cfg_overlay=overlay), other)


def test_missing_weights_lists_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        create_model("toy_mlp", pretrained=True, pretrained_cfg_overlay=dict(file="absent.safetensors"))
    assert str(tmp_path / "absent.safetensors") in str(err.value) and "checkpoints" in str(err.value)
    with pytest.raises(FileNotFoundError, match="cfg names no file"):
        create_model("toy_mlp", pretrained=True)
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        create_model("toy_mlp", checkpoint_path=str(tmp_path / "nope.pt"))


def test_foreign_checkpoint_through_filter_fn(tmp_path, source):
    # official-code style: {'base_model': {'module.<renamed keys>'}}
    foreign = {"base_model": {f"module.{k.replace('body.', 'encoder.')}": v for k, v in source.state_dict().items()}}
    path = tmp_path / "official.pth"
    torch.save(foreign, path)

    def filter_fn(sd, model):
        return {k.replace("encoder.", "body."): v for k, v in sd.items()}

    model = create_model("toy_mlp")
    hub.load_weights(model, torch.load(path, weights_only=True), model.pretrained_cfg, filter_fn)
    assert _same(model, source)
    with pytest.raises(RuntimeError, match=r"missing key\(s\).*unexpected key\(s\).*encoder"):
        hub.load_weights(create_model("toy_mlp"), torch.load(path, weights_only=True), model.pretrained_cfg)


def test_head_reinitialised_when_num_classes_differs(tmp_path, source, caplog):
    path = tmp_path / "toy.safetensors"
    save_file(source.state_dict(), str(path))
    with caplog.at_level(logging.WARNING):
        model = create_model("toy_mlp", checkpoint_path=str(path), num_classes=7)
    assert "re-initialised" in caplog.text and "head.weight" in caplog.text
    assert model.head.weight.shape == (7, 32)
    assert torch.equal(model.body[0].weight, source.body[0].weight)


def test_non_strict_warns(tmp_path, source, caplog):
    sd = dict(source.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    model = create_model("toy_mlp")
    with caplog.at_level(logging.WARNING):
        hub.load_weights(model, sd, model.pretrained_cfg, strict=False)
    assert "extra.weight" in caplog.text


class _Evil:
    pass


def test_pickled_objects_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "obj": _Evil()}, path)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        create_model("toy_mlp", checkpoint_path=str(path))
