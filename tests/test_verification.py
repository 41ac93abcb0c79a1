"""Verification metrics (eval/verification.py) against scikit-learn and brute force; LFW pairs files."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from datasets.faces import read_pairs, write_pairs
from eval.verification import (
    best_threshold,
    kfold_accuracy,
    make_folds,
    pair_scores,
    plot_roc,
    roc_curve,
    tar_at_far,
    verification_report,
)


def _scores(n: int = 3000, seed: int = 0, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    s = rng.normal(size=n) + 1.5 * y
    if ties:  # rounding creates many tied scores, the case where ROC code usually goes wrong
        s = np.round(s, 1)
    return s, y


@pytest.mark.parametrize("ties", [True, False])
def test_roc_matches_sklearn(ties):
    s, y = _scores(ties=ties)
    far, tar, thr = roc_curve(s, y)
    sk_far, sk_tar, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(far, sk_far)
    np.testing.assert_allclose(tar, sk_tar)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert np.isinf(thr[0])


def test_auc_matches_sklearn():
    s, y = _scores()
    rep = verification_report(s, y)
    assert rep.auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("far", [1e-1, 1e-2, 1e-3])
def test_tar_at_far_from_sklearn_roc(far):
    s, y = _scores(n=20000, seed=1, ties=False)
    sk_far, sk_tar, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    ok = sk_far <= far
    expected = sk_tar[ok].max()
    t = tar_at_far(s, y, far)
    assert t.tar == pytest.approx(expected)
    assert t.far <= far
    # the threshold reproduces the TAR/FAR it reports
    pred = s >= t.threshold
    assert np.mean(pred[y]) == pytest.approx(t.tar)
    assert np.mean(pred[~y]) == pytest.approx(t.far)
    assert t.resolvable


def test_tar_at_far_unresolvable_is_flagged():
    s, y = _scores(n=300, seed=2)
    t = tar_at_far(s, y, 1e-4)
    assert not t.resolvable and t.far == 0.0
    # TAR at zero false accepts: everything above the best negative
    assert t.tar == pytest.approx(np.mean(s[y] > s[~y].max()))


def test_known_scores_give_known_numbers():
    # 4 positives, 4 negatives; one negative (0.8) outranks two positives
    s = np.array([0.9, 0.85, 0.7, 0.6, 0.8, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    assert tar_at_far(s, y, 0.1).tar == pytest.approx(0.5)  # FAR 0 -> threshold above 0.8
    assert tar_at_far(s, y, 0.25).tar == pytest.approx(1.0)  # one false accept allowed
    thr, acc = best_threshold(s, y)
    assert acc == pytest.approx(7 / 8)
    assert 0.3 < thr < 0.6


def test_best_threshold_is_the_brute_force_optimum():
    s, y = _scores(n=500, seed=3)
    thr, acc = best_threshold(s, y)
    grid = np.unique(np.r_[s - 1e-9, s + 1e-9])
    brute = max(np.mean((s >= t) == y) for t in grid)
    assert acc == pytest.approx(brute)
    assert np.mean((s >= thr) == y) == pytest.approx(acc)


def test_kfold_chooses_threshold_on_the_other_folds():
    s, y = _scores(n=1000, seed=4)
    folds = make_folds(y, 10)
    res = kfold_accuracy(s, y, folds)
    accs = []
    for k in range(10):
        train, test = folds != k, folds == k
        grid = np.unique(s[train])
        cand = np.r_[grid[0] - 1, (grid[1:] + grid[:-1]) / 2, grid[-1] + 1]
        train_acc = np.array([np.mean((s[train] >= t) == y[train]) for t in cand])
        best = np.flatnonzero(train_acc == train_acc.max())
        t = cand[best[len(best) // 2]]
        accs.append(np.mean((s[test] >= t) == y[test]))
        assert res.thresholds[k] == pytest.approx(t)
    assert res.accuracy == pytest.approx(np.mean(accs))
    assert res.std == pytest.approx(np.std(accs))


def test_separable_scores_are_perfect_and_random_ones_are_chance():
    y = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    s = np.where(y, 1.0, 0.0) + np.random.default_rng(0).random(1000) * 0.5
    assert verification_report(s, y).kfold.accuracy == 1.0
    r = verification_report(np.random.default_rng(1).random(1000), y)
    assert 0.4 < r.kfold.accuracy < 0.6
    assert 0.4 < r.auc < 0.6


def test_make_folds_is_balanced():
    y = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    f = make_folds(y, 10)
    for k in range(10):
        assert (f[y] == k).sum() == 30 and (f[~y] == k).sum() == 30


@pytest.mark.parametrize("bad", [
    (np.array([0.1, np.nan]), np.array([1, 0])),
    (np.array([0.1, 0.2]), np.array([1, 0, 1])),
    (np.array([]), np.array([])),
    (np.array([0.1, 0.2]), np.array([2, 0])),
])
def test_bad_inputs_raise(bad):
    with pytest.raises(ValueError):
        roc_curve(*bad)


def test_one_class_raises():
    with pytest.raises(ValueError, match="different-person"):
        verification_report(np.array([0.1, 0.2]), np.array([1, 1]))


def test_pair_scores_is_cosine():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    expected = [x @ z / np.linalg.norm(x) / np.linalg.norm(z) for x, z in zip(a, b)]
    np.testing.assert_allclose(pair_scores(a, b), expected)
    with pytest.raises(ValueError):
        pair_scores(a, b[:3])


def test_roc_png(tmp_path):
    s, y = _scores()
    rep = verification_report(s, y)
    out = plot_roc(rep, tmp_path / "roc.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "10-fold accuracy" in rep.summary() and "TAR @ FAR=1e-04" in rep.summary()


# --------------------------------------------------------------------------------------------------
# LFW pairs.txt


def _lfw_tree(root, names=("Ann_A", "Bob_B", "Cid_C"), n=3):
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(1, n + 1):
            (root / name / f"{name}_{i:04d}.jpg").write_bytes(b"x")


def test_read_lfw_pairs(tmp_path):
    _lfw_tree(tmp_path)
    (tmp_path / "pairs.txt").write_text(
        "2\t1\n"
        "Ann_A\t1\t2\n"
        "Ann_A\t1\tBob_B\t3\n"
        "Cid_C\t2\t3\n"
        "Bob_B\t2\tCid_C\t1\n"
    )
    p = read_pairs(tmp_path / "pairs.txt", tmp_path)
    assert len(p) == 4 and p.num_folds == 2
    assert p.same.tolist() == [True, False, True, False]
    assert p.folds.tolist() == [0, 0, 1, 1]
    assert p.path_a[1].endswith("Ann_A/Ann_A_0001.jpg") and p.path_b[1].endswith("Bob_B/Bob_B_0003.jpg")


def test_single_count_header(tmp_path):
    _lfw_tree(tmp_path)
    (tmp_path / "pairs.txt").write_text("1\nAnn_A 1 3\nAnn_A 2 Cid_C 2\n")
    p = read_pairs(tmp_path / "pairs.txt", tmp_path)
    assert p.num_folds == 1 and p.same.tolist() == [True, False]


def test_missing_image_names_it(tmp_path):
    _lfw_tree(tmp_path)
    (tmp_path / "pairs.txt").write_text("1\t1\nAnn_A\t1\t7\nAnn_A\t1\tBob_B\t1\n")
    with pytest.raises(FileNotFoundError, match="Ann_A_0007") as e:
        read_pairs(tmp_path / "pairs.txt", tmp_path)
    assert "line 2" in str(e.value)


@pytest.mark.parametrize("text, match", [
    ("2\t1\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t3\n", "announces 4"),
    ("1\t1\nAnn_A\t1\tBob_B\t3\nAnn_A\t1\t2\n", "expects a same-person"),
    ("1\t1\nAnn_A\t1\nAnn_A\t1\tBob_B\t3\n", "got 2 fields"),
    ("ten\nAnn_A\t1\t2\n", "header"),
    ("1\t1\nAnn_A\tx\t2\nAnn_A\t1\tBob_B\t3\n", "positive integer"),
])
def test_malformed_pairs_raise(tmp_path, text, match):
    _lfw_tree(tmp_path)
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_pairs(tmp_path / "pairs.txt", tmp_path)


def test_write_pairs_round_trip(tmp_path):
    _lfw_tree(tmp_path)
    folds = [([("Ann_A", 1, 2)], [("Ann_A", 3, "Bob_B", 1)]), ([("Cid_C", 1, 3)], [("Bob_B", 2, "Cid_C", 2)])]
    write_pairs(tmp_path / "pairs.txt", folds)
    p = read_pairs(tmp_path / "pairs.txt", tmp_path)
    assert p.num_folds == 2 and p.same.tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="every fold"):
        write_pairs(tmp_path / "bad.txt", [([("Ann_A", 1, 2)], [])])
