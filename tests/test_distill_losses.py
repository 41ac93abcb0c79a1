"""Each distillation loss against its formula, written out independently in float64 NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.losses import (
    attribute_distillation_loss,
    embedding_distillation_loss,
    feature_hint_loss,
    hinton_kd_loss,
    make_hint_adapter,
    masked_bce_with_logits,
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    t = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    return s, t


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_hinton_kd_matches_formula(logits, T):
    s, t = logits
    p = _softmax(t.numpy() / T)
    q = _softmax(s.numpy() / T)
    expected = T**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    got = hinton_kd_loss(s, t, temperature=T)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_hinton_kd_zero_when_equal_and_positive_otherwise(logits):
    s, t = logits
    assert hinton_kd_loss(t, t, temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert hinton_kd_loss(s, t).item() > 0.01


def test_hinton_kd_mixes_hard_labels_and_ignores_unknown(logits):
    s, t = logits
    labels = torch.tensor([0, 4, -100, 2, -100, 1])
    w, T = 0.3, 2.0
    known = labels.numpy() != -100
    q = _softmax(s.numpy())
    ce = -np.mean(np.log(q[known, labels.numpy()[known]]))
    kd = hinton_kd_loss(s, t, temperature=T).item()
    got = hinton_kd_loss(s, t, temperature=T, labels=labels, hard_weight=w).item()
    assert got == pytest.approx((1 - w) * kd + w * ce, rel=1e-5)
    # No known label: the hard term is 0 and the result is the scaled soft term.
    none = torch.full((6,), -100)
    assert hinton_kd_loss(s, t, temperature=T, labels=none, hard_weight=w).item() == pytest.approx((1 - w) * kd, rel=1e-6)


def test_hinton_kd_gradient_is_scaled_difference_of_probabilities(logits):
    """d/ds [T^2 KL(p_T || q_T)] = T (q_T - p_T) / batch: the T^2 factor keeps gradients O(1/T)."""
    s, t = logits
    T = 4.0
    s = s.clone().requires_grad_(True)
    hinton_kd_loss(s, t, temperature=T).backward()
    expected = T * (_softmax(s.detach().numpy() / T) - _softmax(t.numpy() / T)) / s.shape[0]
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_attribute_distillation_matches_per_attribute_cross_entropy(logits, T):
    s, t = logits
    p = _sigmoid(t.numpy() / T)
    q = _sigmoid(s.numpy() / T)
    expected = T**2 * np.mean(-(p * np.log(q) + (1 - p) * np.log(1 - q)))
    assert attribute_distillation_loss(s, t, temperature=T).item() == pytest.approx(expected, rel=1e-5)


def test_attribute_distillation_minimum_is_the_teacher(logits):
    _, t = logits
    t = t / 3.0  # moderate logits: the minimiser is reached in few steps
    s = torch.zeros_like(t, requires_grad=True)
    opt = torch.optim.SGD([s], lr=50.0)
    for _ in range(300):
        opt.zero_grad()
        attribute_distillation_loss(s, t).backward()
        opt.step()
    np.testing.assert_allclose(torch.sigmoid(s.detach()).numpy(), torch.sigmoid(t).numpy(), atol=0.01)


def test_attribute_distillation_hard_labels_masked(logits):
    s, t = logits
    labels = torch.tensor(np.where(np.random.default_rng(0).random((6, 5)) < 0.5, 1.0, 0.0))
    labels[0, :] = float("nan")
    labels[2, 3] = float("nan")
    known = ~np.isnan(labels.numpy())
    q = _sigmoid(s.numpy())
    y = labels.numpy()
    bce = -np.mean((y * np.log(q) + (1 - y) * np.log(1 - q))[known])
    soft = attribute_distillation_loss(s, t).item()
    got = attribute_distillation_loss(s, t, labels=labels, hard_weight=0.25).item()
    assert got == pytest.approx(0.75 * soft + 0.25 * bce, rel=1e-5)
    assert masked_bce_with_logits(s, labels).item() == pytest.approx(bce, rel=1e-5)
    assert masked_bce_with_logits(s, torch.full_like(labels, float("nan"))).item() == 0.0


def test_embedding_loss_is_mean_squared_distance():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 16, generator=g), torch.randn(7, 16, generator=g)
    expected = np.mean(np.sum((s.numpy() - t.numpy()) ** 2, axis=1))
    assert embedding_distillation_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert embedding_distillation_loss(s, t).item() == pytest.approx(16 * torch.nn.functional.mse_loss(s, t).item(),
                                                                      rel=1e-5)
    sn = s.numpy() / np.linalg.norm(s.numpy(), axis=1, keepdims=True)
    tn = t.numpy() / np.linalg.norm(t.numpy(), axis=1, keepdims=True)
    expected_n = np.mean(np.sum((sn - tn) ** 2, axis=1))
    assert embedding_distillation_loss(s, t, normalize=True).item() == pytest.approx(expected_n, rel=1e-5)
    # For unit vectors the squared distance is 2 - 2 cos.
    cos = np.sum(sn * tn, axis=1)
    assert expected_n == pytest.approx(np.mean(2 - 2 * cos), rel=1e-6)


def test_teacher_gets_no_gradient(logits):
    s, t = logits
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    (hinton_kd_loss(s, t) + attribute_distillation_loss(s, t) + embedding_distillation_loss(s, t)).backward()
    assert t.grad is None and s.grad is not None


def test_feature_hint_loss_formula_with_adapter_and_resize():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 4, 4, 4, generator=g)
    t = torch.randn(2, 6, 8, 8, generator=g)
    adapter = make_hint_adapter(4, 6)
    got = feature_hint_loss(s, t, adapter)
    up = torch.nn.functional.interpolate(adapter(s), size=(8, 8), mode="bilinear", align_corners=False)
    assert got.item() == pytest.approx(((up - t) ** 2).mean().item(), rel=1e-5)
    same = torch.randn(2, 6, 8, 8, generator=g)
    assert feature_hint_loss(same, t).item() == pytest.approx(((same - t) ** 2).mean().item(), rel=1e-6)
    got.backward()
    assert adapter.weight.grad is not None


@pytest.mark.parametrize("call", [
    lambda: hinton_kd_loss(torch.zeros(2, 3), torch.zeros(2, 4)),
    lambda: hinton_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0),
    lambda: hinton_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), hard_weight=0.5),
    lambda: attribute_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), hard_weight=1.5),
    lambda: attribute_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), labels=torch.zeros(2, 2), hard_weight=0.5),
    lambda: embedding_distillation_loss(torch.zeros(2, 3), torch.zeros(3, 3)),
    lambda: feature_hint_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4)),
])
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_losses_are_finite_for_extreme_logits():
    s = torch.tensor([[80.0, -80.0, 0.0]])
    t = torch.tensor([[-90.0, 90.0, 0.0]])
    for v in (hinton_kd_loss(s, t, temperature=2.0), attribute_distillation_loss(s, t)):
        assert math.isfinite(v.item())
