"""The one config scheme (tasks.config) and flag vocabulary (tasks.flags)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest
import yaml

from tasks.config import build_section, config_to_dict, deep_merge, load_config
from tasks.engine import EngineConfig
from tasks.flags import COMMON_TRAIN_FLAGS, add_alias, flag_overrides, train_parser


@dataclass
class Model:
    backbone: str = "mobilenet_v1"
    alpha: float = 1.0
    resolution: int | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.alpha > 0:
            raise ValueError(f"model.alpha={self.alpha!r}: must be > 0")


@dataclass
class Data:
    root: str | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    workers: int = 0


@dataclass
class Toy:
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    train: EngineConfig = field(default_factory=EngineConfig)

    def validate(self):
        if self.model.resolution is not None and self.model.resolution % 2:
            raise ValueError(f"model.resolution={self.model.resolution} must be even")


def test_yaml_then_overrides_then_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {alpha: 0.5}\ntrain: {epochs: 3, lr: 0.1}\n")
    cfg = load_config(Toy, path, overrides={"train": {"lr": 0.01}, "data": {"root": "imgs"}})
    assert (cfg.model.alpha, cfg.train.epochs, cfg.train.lr, cfg.data.root) == (0.5, 3, 0.01, "imgs")
    assert isinstance(cfg.train, EngineConfig) and cfg.data.mean == (0.5, 0.5, 0.5)


def test_round_trip_reproduces_the_config(tmp_path):
    cfg = load_config(Toy, None, overrides={"model": {"alpha": 0.25, "resolution": 128}, "train": {"milestones": [2]}})
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    again = load_config(Toy, saved)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize("data,match", [
    ({"modle": {}}, r"unknown key 'modle' \(did you mean 'model'\?\)"),
    ({"train": {"lr_rate": 0.1}}, r"c.yaml: train: unknown key 'lr_rate' \(did you mean 'lr'\?\)|unknown key 'lr_rate'"),
    ({"train": {"epochs": "ten"}}, r"train.epochs='ten': expected an integer"),
    ({"train": {"epochs": 0}}, r"epochs=0"),
    ({"model": {"alpha": -1}}, r"model.alpha=-1"),
    ({"model": {"resolution": 1.5}}, r"model.resolution=1.5"),
    ({"data": {"mean": [1, 2]}}, r"data.mean=\[1, 2\]: expected 3 values"),
    ({"model": {"resolution": 33}}, r"must be even"),
    ({"model": "big"}, r"model: expected a mapping"),
])
def test_bad_values_name_the_key_and_value(tmp_path, data, match):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=match) as info:
        load_config(Toy, path)
    assert "c.yaml" in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(Toy, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping at the top level"):
        load_config(Toy, tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("model: {alpha: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(Toy, tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="is a folder"):
        load_config(Toy, tmp_path)


def test_ints_become_floats_and_bools_are_not_numbers():
    assert build_section(Model, {"alpha": 1}, "m").alpha == 1.0
    assert isinstance(build_section(Model, {"alpha": 1}, "m").alpha, float)
    with pytest.raises(ValueError, match="expected a number"):
        build_section(Model, {"alpha": True}, "m")


def test_deep_merge_keeps_other_keys():
    assert deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}


def test_common_flags_map_to_one_key_each():
    p = train_parser("prog", "test")
    args = p.parse_args(["--data-root", "imgs", "--alpha", "0.5", "--resolution", "128", "--epochs", "4",
                         "--lr", "0.01", "--batch-size", "8", "--amp", "--workers", "2"])
    assert flag_overrides(args) == {
        "data": {"root": "imgs", "workers": 2},
        "model": {"alpha": 0.5, "resolution": 128},
        "train": {"epochs": 4, "lr": 0.01, "batch_size": 8, "amp": True},
    }
    assert flag_overrides(p.parse_args([])) == {}  # nothing given: the config decides
    keys = [key for key, _, _ in COMMON_TRAIN_FLAGS.values()]
    assert len(keys) == len(set(keys))


def test_old_spellings_warn_and_set_the_new_flag():
    p = train_parser("prog", "test")
    add_alias(p, "--images", "--data-root")
    with pytest.warns(FutureWarning, match="--images is deprecated; use --data-root"):
        args = p.parse_args(["--images", "x"])
    assert args.data_root == "x"
    assert "--images" not in p.format_help()


def test_epochs_zero_is_a_user_error(tmp_path):
    with pytest.raises(ValueError, match="epochs=0"):
        load_config(Toy, None, overrides=flag_overrides(argparse.Namespace(epochs=0)))


@dataclass
class WithOwnDefaults:
    train: EngineConfig = field(default_factory=lambda: EngineConfig(optimizer="adamw", lr=0.004, epochs=7))


def test_a_partial_section_keeps_the_tasks_own_defaults():
    cfg = load_config(WithOwnDefaults, None, overrides={"train": {"epochs": 2}})
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.epochs) == ("adamw", 0.004, 2)
    assert load_config(WithOwnDefaults, None).train.optimizer == "adamw"
