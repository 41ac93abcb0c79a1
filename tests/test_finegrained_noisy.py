"""The paper's two stages: noisy web pretraining, then fine-tuning on the train list (tasks.finegrained.train)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datasets.synthetic_finegrained import write_synthetic_dogs
from tasks.checkpoint import load_model
from tasks.finegrained import train as fg_train

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--alpha", "0.25", "--resolution", "64", "--batch-size", "16", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def dogs(tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy_dogs")
    write_synthetic_dogs(root, num_breeds=4, train_per_breed=30, test_per_breed=20, image_size=72, seed=2,
                         web_per_breed=120, web_planted=4)
    return root


@pytest.fixture(scope="module")
def staged(tmp_path_factory, dogs):
    out = tmp_path_factory.mktemp("staged") / "run"
    summary = fg_train.main(["--data-root", str(dogs), "--noisy-data-root", str(dogs / "web"), "--noisy-epochs", "15",
                             "--epochs", "8", "--compare-clean-only", *SMALL, "--output-dir", str(out)])
    return out, summary


def test_stages_are_reported_and_the_web_copies_removed(staged):
    out, summary = staged
    assert set(summary["stages"]) == {"web_pretrain", "finetune", "clean_only"}
    web = summary["web"]
    assert (web["removed_exact_duplicates"], web["removed_near_duplicates"]) == (4, 4)
    assert web["removed_by_split"]["test"] == 8 and web["kept"] == 4 * 120
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["stages"] == summary["stages"] and on_disk["gain_top1"] == pytest.approx(summary["gain_top1"])
    assert summary["gain_top1"] == pytest.approx(summary["stages"]["finetune"]["top1"] -
                                                 summary["stages"]["clean_only"]["top1"])
    assert summary["metrics"]["top1"] == summary["stages"]["finetune"]["top1"]  # the run's model is stage 2's
    _, meta = load_model(out / "best.pt")
    assert meta["stage"] == "finetune"
    assert load_model(out / "web_pretrain" / "best.pt")[1]["stage"] == "web_pretrain"
    assert summary["stages"]["web_pretrain"]["train_samples"] == 4 * 120
    assert summary["stages"]["finetune"]["train_samples"] == summary["stages"]["clean_only"]["train_samples"] == 4 * 27


def test_noisy_pretraining_beats_clean_only(staged):
    """Asserted loosely here; benchmarks/finegrained.py measures it on the default set.

    27 clean images per breed against 120 web ones (35 % wrong): the regime where pretraining pays. On an
    AMD EPYC (2026-12-02): stage 1 48.7 %, stage 2 55.0 %, clean-only 26.3 % (chance 25 %). With 90 web
    images and 6 stage-1 epochs stage 2 reached 50.0 % on an Intel machine but 43.8 % there: too close."""
    _, summary = staged
    s = summary["stages"]
    assert s["finetune"]["top1"] > 0.25 + 0.15, s  # chance 0.25
    assert summary["gain_top1"] > 0.05, s


def test_resume_continues_the_unfinished_stage(tmp_path, staged, capsys):
    out, summary = staged
    (out / "clean_only" / "summary.json").unlink()  # as if killed after clean-only's last epoch was saved
    again = fg_train.main(["--config", str(out / "config.yaml"), "--output-dir", str(out),
                           "--resume", str(out / "clean_only" / "last.pt")])
    printed = capsys.readouterr().out
    assert "web_pretrain: finished before" in printed and "finetune: finished before" in printed
    assert again["stages"]["finetune"] == summary["stages"]["finetune"]
    assert again["stages"]["clean_only"]["top1"] == pytest.approx(summary["stages"]["clean_only"]["top1"])


@pytest.mark.parametrize("flags, needle", [
    (["--noisy-epochs", "0"], "noisy.epochs=0"),
    (["--dedupe-distance", "300"], "noisy.dedupe_distance=300"),
    (["--noisy-lr", "-1"], "noisy.lr=-1"),
])
def test_bad_noisy_settings_are_named(dogs, flags, needle):
    args = fg_train.build_parser().parse_args(["--data-root", str(dogs), "--noisy-data-root", str(dogs / "web"),
                                               *flags])
    with pytest.raises(ValueError, match=needle):
        fg_train.resolve_config(args)


def test_compare_clean_only_needs_a_web_set(tmp_path, dogs):
    with pytest.raises(ValueError, match="needs a web set"):
        fg_train.resolve_config(fg_train.build_parser().parse_args(["--data-root", str(dogs), "--compare-clean-only"]))
