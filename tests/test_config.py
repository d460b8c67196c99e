"""Config loading: _base_ chains, _delete_, overrides, validation errors, dump and reload."""
from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from zoo.config import ConfigError, dump_config, load_config, parse_override, validate_config
from zoo.recipes.classify import ClassifyConfig


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture
def chain(tmp_path):
    write(tmp_path / "_base_" / "runtime.yaml", {"seed": 1, "trainer": {"epochs": 10, "log_every": 5}})
    write(tmp_path / "_base_" / "optim.yaml", {"optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999]}})
    write(tmp_path / "family" / "mid.yaml", {"_base_": ["../_base_/runtime.yaml", "../_base_/optim.yaml"], "trainer": {"epochs": 20}})
    return write(tmp_path / "family" / "top.yaml", {"_base_": "mid.yaml", "recipe": "classify", "optim": {"lr": 3e-4},
                                                   "model": {"name": "pointnet", "num_classes": 10}})


def test_base_chain_merges_in_order(chain):
    cfg = load_config(chain)
    assert cfg.seed == 1 and cfg.trainer.epochs == 20 and cfg.trainer.log_every == 5
    assert cfg.optim.lr == 3e-4 and cfg.optim.name == "adamw" and list(cfg.optim.betas) == [0.9, 0.999]
    assert "_base_" not in cfg


def test_delete_replaces_instead_of_merging(tmp_path):
    write(tmp_path / "base.yaml", {"model": {"name": "a", "depth": 3}})
    top = write(tmp_path / "top.yaml", {"_base_": "base.yaml", "model": {"_delete_": True, "name": "b"}})
    assert OmegaConf.to_container(load_config(top).model) == {"name": "b"}


def test_overrides_parse_yaml_values_and_create_keys(chain):
    cfg = load_config(chain, ["trainer.epochs=3", "optim.betas=[0.8,0.9]", "model.extra.flag=true", "output_dir=null", "optim.name=sgd"])
    assert cfg.trainer.epochs == 3 and list(cfg.optim.betas) == [0.8, 0.9]
    assert cfg.model.extra.flag is True and cfg.output_dir is None and cfg.optim.name == "sgd"


@pytest.mark.parametrize("bad", ["trainer.epochs", "=3", "trainer..epochs=3", "a.b=[1,"])
def test_bad_override_syntax(bad):
    with pytest.raises(ConfigError, match="Bad override"):
        parse_override(bad)


def test_override_into_value_is_error(chain):
    with pytest.raises(ConfigError, match="'seed' is a value"):
        load_config(chain, ["seed.x=1"])


def test_missing_file_and_missing_base(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    top = write(tmp_path / "top.yaml", {"_base_": "gone.yaml"})
    with pytest.raises(FileNotFoundError, match=r"gone.yaml.*named as _base_ by"):
        load_config(top)


def test_base_cycle_detected(tmp_path):
    write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_invalid_yaml_names_file(tmp_path):
    path = write(tmp_path / "broken.yaml", "trainer: {epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


def test_validation_unknown_key_names_closest(chain):
    with pytest.raises(ConfigError, match=r"Unknown config key 'trainer.epoch'\. Did you mean 'trainer.epochs'\?"):
        validate_config(load_config(chain, ["trainer.epoch=3"]), ClassifyConfig)
    with pytest.raises(ConfigError, match=r"Unknown config key 'optimizer'.*Did you mean 'optim'"):
        validate_config(load_config(chain, ["optimizer.lr=1"]), ClassifyConfig)


def test_validation_type_error_names_key(chain):
    with pytest.raises(ConfigError, match="trainer.epochs"):
        validate_config(load_config(chain, ["trainer.epochs=many"]), ClassifyConfig)


def test_validation_fills_defaults_and_returns_dataclass(chain):
    cfg = validate_config(load_config(chain), ClassifyConfig)
    assert isinstance(cfg, ClassifyConfig)
    assert cfg.trainer.epochs == 20 and cfg.trainer.grad_accum_steps == 1 and cfg.model["num_classes"] == 10


def test_dump_and_reload_gives_same_config(chain, tmp_path):
    cfg = load_config(chain, ["trainer.epochs=7"])
    dumped = dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert OmegaConf.to_container(load_config(dumped)) == OmegaConf.to_container(cfg)


def test_data_resolver(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    path = write(tmp_path / "c.yaml", "data: {root: '${data:modelnet10}'}\n")
    assert load_config(path).data.root == str(tmp_path / "modelnet10")


def test_require_paths_names_the_key_what_and_how(tmp_path):
    from types import SimpleNamespace

    from zoo.config import require_paths

    (tmp_path / "f.txt").write_text("x")
    section = SimpleNamespace(run=str(tmp_path), file=str(tmp_path / "f.txt"), missing=None)
    require_paths(section, "runs", ("run",), directory=True)
    require_paths(section, "runs", ("run", "file"))  # a file is an existing path
    with pytest.raises(ConfigError, match=r"runs.file must be a run directory \(studies set it with \$\{stage:NAME\}"):
        require_paths(section, "runs", ("file",), directory=True, what="a run directory")
    with pytest.raises(ConfigError, match=r"^select.missing must be an existing path, got None$"):
        require_paths(section, "select", ("missing",), hint=None)
