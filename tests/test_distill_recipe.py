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
from distill.cli import build_engine_config, parse_with_config
from distill.recipe import MAX_LR, REFERENCE_LR, apply_recipe, default_lr, default_warmup_iters


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
    assert default_lr(cfg["batch_size"], cfg["alpha"], optimizer=cfg["optimizer"]) == pytest.approx(cfg["lr"])


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


def _parse(argv, tmp_path=None, yaml_cfg=None):
    parser = distill_train.build_parser()
    if yaml_cfg is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(yaml_cfg))
        argv = ["--config", str(path), *argv]
    return parse_with_config(parser, argv)


def test_applies_only_without_an_lr(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args, engine, explicit = _parse(["--alpha", "0.25"])
    assert args.lr is None
    note = apply_recipe(args, engine, explicit)
    assert args.lr == pytest.approx(0.016) and args.warmup_iters == recipe.WARMUP_ITERS and "0.016" in note

    args, engine, explicit = _parse(["--alpha", "0.25", "--lr", "0.002"])
    assert apply_recipe(args, engine, explicit) is None and args.lr == 0.002 and args.warmup_iters == 0

    for cfg in ({"lr": 0.003}, {"engine": {"lr": 0.003}}):  # the YAML's lr, either place, wins
        args, engine, explicit = _parse([], tmp_path, cfg)
        assert apply_recipe(args, engine, explicit) is None


def test_given_warmup_is_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args, engine, explicit = _parse(["--warmup-iters", "0"])
    apply_recipe(args, engine, explicit)
    assert args.warmup_iters == 0 and args.lr == pytest.approx(REFERENCE_LR)
    for cfg in ({"warmup_iters": 7}, {"engine": {"warmup_iters": 7}}):
        args, engine, explicit = _parse([], tmp_path, cfg)
        apply_recipe(args, engine, explicit)
        resolved = build_engine_config(args, engine, explicit, metric="teacher_agreement", metric_mode="max")
        assert resolved.warmup_iters == 7 and resolved.lr == pytest.approx(REFERENCE_LR)


def test_world_size_from_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    args, engine, explicit = _parse(["--batch-size", "16", "--alpha", "1.0"])
    apply_recipe(args, engine, explicit)
    assert args.lr == pytest.approx(REFERENCE_LR)  # 16 x 4 = 64 images per step


def test_embedded_default_keeps_its_own_lr(tmp_path):
    """The embedded default sets lr and warmup in its YAML: the recipe leaves them alone."""
    args, engine, explicit = parse_with_config(distill_train.build_parser(), [],
                                               default_config=distill_train.DEFAULT_CONFIG)
    assert apply_recipe(args, engine, explicit) is None
    assert args.lr == 0.004 and engine["warmup_iters"] == 50


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
    distill_train.main(["--teacher", f"torchscript:{tmp_path / 't.pt'}", "--images", str(images), "--alpha", "0.25",
                        "--resolution", "32", "--epochs", "1", "--batch-size", "4", "--output-dir", str(out),
                        "--device", "cpu"])
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["lr"] == pytest.approx(default_lr(4, 0.25)) == written["engine"]["lr"]
    assert written["engine"]["warmup_iters"] == recipe.WARMUP_ITERS
