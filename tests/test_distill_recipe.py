"""The default learning-rate recipe of distill.train (distill/recipe.py): the rule, and when it applies."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from distill import recipe
from distill import train as distill_train
from distill.recipe import MAX_LR, REFERENCE_LR, apply_recipe, default_lr, default_warmup_iters
from tasks.engine import EngineConfig


def test_reference_point_and_scaling():
    assert default_lr(64, 1.0) == pytest.approx(REFERENCE_LR)
    assert default_lr(256, 1.0) == pytest.approx(2 * REFERENCE_LR)  # square root of the batch
    assert default_lr(64, 0.5) == pytest.approx(2 * REFERENCE_LR)   # 1 / alpha
    assert default_lr(16, 0.25) == pytest.approx(default_lr(64, 0.5))
    assert default_lr(32, 0.5, world_size=2) == pytest.approx(default_lr(64, 0.5))  # the total batch counts


def test_issue_setting_and_cap():
    assert default_lr(64, 0.25) == pytest.approx(0.016)  # the issue's run: batch 64, 0.25 MobileNet
    assert default_lr(1024, 0.25) == MAX_LR
    assert all(default_lr(b, a) <= MAX_LR for b in (1, 16, 64, 4096) for a in (0.1, 0.25, 0.5, 1.0))
    assert default_lr(1, 1.0) > 0


def test_rule_reproduces_the_embedded_default():
    """configs/distill/default.yaml's hand-set lr is a point of the rule (the rule's reference)."""
    cfg = yaml.safe_load(distill_train.DEFAULT_CONFIG.read_text())
    train, model = cfg["train"], cfg["model"]
    assert default_lr(train["batch_size"], model["alpha"], optimizer=train["optimizer"]) == pytest.approx(train["lr"])


def test_other_optimizers_keep_the_old_default():
    assert default_lr(64, 0.25, optimizer="sgd") == recipe.FALLBACK_LR
    assert default_warmup_iters("rmsprop") == 0 and default_warmup_iters("adamw") == recipe.WARMUP_ITERS


@pytest.mark.parametrize("kw", [{"batch_size": 0, "alpha": 1.0}, {"batch_size": 2.0, "alpha": 1.0},
                                {"batch_size": True, "alpha": 1.0}, {"batch_size": 8, "alpha": 0.0},
                                {"batch_size": 8, "alpha": -1.0}, {"batch_size": 8, "alpha": math.nan},
                                {"batch_size": 8, "alpha": "0.5"}, {"batch_size": 8, "alpha": 1.0, "world_size": 0}])
def test_bad_arguments_name_the_value(kw):
    with pytest.raises(ValueError, match="must be"):
        default_lr(**kw)


def _resolve(argv, tmp_path=None, yaml_cfg=None):
    """distill.train's config for ``argv`` (with a teacher and images so no embedded default is built)."""
    argv = ["--teacher", "torchscript:t.pt", "--data-root", "imgs", *argv]
    if yaml_cfg is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(yaml_cfg))
        argv = ["--config", str(path), *argv]
    return distill_train.resolve_config(distill_train.build_parser().parse_args(argv))


def test_applies_only_without_an_lr(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = _resolve(["--alpha", "0.25"])
    assert cfg.train.lr == pytest.approx(0.016) and cfg.train.warmup_iters == recipe.WARMUP_ITERS
    cfg = _resolve(["--alpha", "0.25", "--lr", "0.002"])
    assert cfg.train.lr == 0.002 and cfg.train.warmup_iters == 0
    for yaml_cfg in ({"train": {"lr": 0.002}}, {"train": {"lr": 0.002, "warmup_iters": 7}}):
        cfg = _resolve([], tmp_path, yaml_cfg)
        assert cfg.train.lr == 0.002 and cfg.train.warmup_iters == yaml_cfg["train"].get("warmup_iters", 0)


def test_a_given_warmup_is_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = _resolve(["--warmup-iters", "0"])
    assert cfg.train.warmup_iters == 0 and cfg.train.lr == pytest.approx(REFERENCE_LR)
    cfg = _resolve([], tmp_path, {"train": {"warmup_iters": 5}})
    assert cfg.train.warmup_iters == 5 and cfg.train.lr == pytest.approx(REFERENCE_LR)


def test_the_total_batch_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = _resolve(["--batch-size", "16", "--alpha", "1.0"])
    assert cfg.train.lr == pytest.approx(REFERENCE_LR)  # 16 x 4 = 64 images per step


def test_other_optimizers_without_lr(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = _resolve(["--optimizer", "sgd"])
    assert cfg.train.lr == recipe.FALLBACK_LR and cfg.train.warmup_iters == 0


def test_embedded_default_keeps_its_own_lr():
    """The embedded default sets lr and warmup in its YAML: the recipe leaves them alone."""
    assert apply_recipe(EngineConfig(lr=0.004, warmup_iters=50), 0.5, lr_given=True, warmup_given=True) is None
    train = yaml.safe_load(distill_train.DEFAULT_CONFIG.read_text())["train"]
    assert train["lr"] == 0.004 and train["warmup_iters"] == 50


def test_cli_run_records_the_recipe(tmp_path, monkeypatch):
    """A one-epoch distill.train run without --lr trains at the recipe's rate and writes it to config.yaml."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    torch.set_num_threads(1)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(teacher, torch.zeros(1, 3, 32, 32)), str(tmp_path / "t.pt"))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}))
    out = tmp_path / "run"
    distill_train.main(["--teacher", f"torchscript:{tmp_path / 't.pt'}", "--data-root", str(images), "--alpha",
                        "0.25", "--resolution", "32", "--epochs", "1", "--batch-size", "4", "--output-dir", str(out),
                        "--device", "cpu"])
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["train"]["lr"] == pytest.approx(default_lr(4, 0.25))
    assert written["train"]["warmup_iters"] == recipe.WARMUP_ITERS
    # the saved config names the lr, so running it again does not re-derive it
    again = distill_train.resolve_config(distill_train.build_parser().parse_args(["--config", str(out / "config.yaml")]))
    assert again.train.lr == written["train"]["lr"]
