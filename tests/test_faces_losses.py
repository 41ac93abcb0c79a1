"""Triplet mining (semi-hard, batch-hard) against brute-force loops; margin softmax; collapse score."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tasks.faces.losses import (
    MarginSoftmax,
    collapse_score,
    embedding_distill_loss,
    pairwise_distances,
    triplet_batch_hard_loss,
    triplet_semihard_loss,
)


def _batch(p=5, k=4, d=8, seed=0, extra_singletons=2):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)
    # identities with a single image: negatives only, never anchors of a positive pair
    labels = torch.cat([labels, torch.arange(p, p + extra_singletons)])
    emb = F.normalize(torch.randn(len(labels), d, generator=g) + 0.8 * torch.randn(p + extra_singletons, d,
                                                                                    generator=g)[labels], dim=1)
    return emb.double().requires_grad_(True), labels


def _dist(a, b, squared):
    d2 = ((a - b) ** 2).sum()
    return d2 if squared else torch.sqrt(d2)


def _semihard_reference(emb, labels, margin, squared):
    """FaceNet semi-hard mining, one (anchor, positive) at a time."""
    terms = []
    n = len(labels)
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            d_ap = _dist(emb[a], emb[p], squared)
            negs = [(_dist(emb[a], emb[q], squared).item(), q) for q in range(n) if labels[q] != labels[a]]
            if not negs:
                continue
            farther = [(d, q) for d, q in negs if d > d_ap.item()]
            q = min(farther)[1] if farther else max(negs)[1]
            terms.append(torch.clamp(d_ap - _dist(emb[a], emb[q], squared) + margin, min=0))
    return torch.stack(terms).mean()


def _batch_hard_reference(emb, labels, margin, soft, squared):
    terms = []
    n = len(labels)
    for a in range(n):
        pos = [_dist(emb[a], emb[p], squared) for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [_dist(emb[a], emb[q], squared) for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        gap = torch.stack(pos).max() - torch.stack(neg).min()
        terms.append(F.softplus(gap) if soft else torch.clamp(gap + margin, min=0))
    return torch.stack(terms).mean()


def test_pairwise_distances():
    emb, _ = _batch()
    d = pairwise_distances(emb, squared=False)
    torch.testing.assert_close(d, torch.cdist(emb, emb).float(), atol=1e-5, rtol=1e-5)
    assert torch.all(d.diagonal() == 0)


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("margin", [0.2, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semihard_matches_brute_force(squared, margin, seed):
    emb, labels = _batch(seed=seed)
    got = triplet_semihard_loss(emb, labels, margin, squared=squared)
    ref = _semihard_reference(emb, labels, margin, squared)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    g_got, = torch.autograd.grad(got, emb)
    g_ref, = torch.autograd.grad(ref, emb)
    torch.testing.assert_close(g_got.double(), g_ref, atol=1e-5, rtol=1e-4)


def test_semihard_fallback_uses_farthest_negative():
    # anchor 0 and positive 1 far apart; both negatives closer than the positive -> farthest negative
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2])
    loss = triplet_semihard_loss(emb, labels, margin=0.2)
    assert loss.item() == pytest.approx(_semihard_reference(emb, labels, 0.2, True).item())
    # for anchor 0: d_ap = 4, negatives at 2.0 and 0.8 -> farthest is 2.0 -> 4 - 2 + 0.2
    assert loss.item() > 0


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("seed", [0, 3])
def test_batch_hard_matches_brute_force(soft, squared, seed):
    emb, labels = _batch(seed=seed)
    got = triplet_batch_hard_loss(emb, labels, 0.3, soft=soft, squared=squared)
    ref = _batch_hard_reference(emb, labels, 0.3, soft, squared)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    g_got, = torch.autograd.grad(got, emb)
    g_ref, = torch.autograd.grad(ref, emb)
    torch.testing.assert_close(g_got.double(), g_ref, atol=1e-5, rtol=1e-4)


def test_no_positive_pairs_gives_zero_with_graph():
    emb = torch.randn(4, 8, requires_grad=True)
    labels = torch.arange(4)
    for loss in (triplet_semihard_loss(emb, labels), triplet_batch_hard_loss(emb, labels)):
        assert loss.item() == 0.0
        loss.backward()  # differentiable, so DDP and the engine are happy
    assert emb.grad is not None


def test_collapsed_embeddings_sit_at_the_margin_and_are_detected():
    emb = F.normalize(torch.ones(8, 16), dim=1).requires_grad_(True)
    labels = torch.arange(4).repeat_interleave(2)
    assert triplet_batch_hard_loss(emb, labels, margin=0.3).item() == pytest.approx(0.3)
    assert collapse_score(emb) == pytest.approx(0.0, abs=1e-6)
    assert collapse_score(torch.randn(256, 128)) > 0.9
    # collapse is a fixed point: the gradient is (numerically) zero
    g, = torch.autograd.grad(triplet_batch_hard_loss(emb, labels, margin=0.3), emb)
    assert g.abs().max() < 1e-3


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_margin_softmax_logits(kind):
    torch.manual_seed(0)
    head = MarginSoftmax(8, 5, kind=kind, scale=10.0, margin=0.3)
    emb = F.normalize(torch.randn(6, 8), dim=1)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = head.logits(emb, labels)
    cos = emb @ F.normalize(head.weight, dim=1).t()
    for i, y in enumerate(labels.tolist()):
        for j in range(5):
            if j != y:
                assert logits[i, j].item() == pytest.approx(10 * cos[i, j].item(), abs=1e-5)
        c = cos[i, y].item()
        if kind == "cosface":
            expected = c - 0.3
        else:
            th = math.acos(c)
            expected = math.cos(th + 0.3) if th + 0.3 < math.pi else c - 0.3 * math.sin(0.3)
        assert logits[i, y].item() == pytest.approx(10 * expected, abs=1e-4)
    loss = head(emb, labels)
    assert torch.isfinite(loss) and loss > 0


def test_margin_softmax_rejects_bad_labels():
    head = MarginSoftmax(4, 3)
    with pytest.raises(ValueError, match="labels must be in"):
        head(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="kind"):
        MarginSoftmax(4, 3, kind="sphereface")


def test_distill_loss_is_squared_difference():
    s, t = torch.randn(4, 8), torch.randn(4, 8)
    assert embedding_distill_loss(s, t).item() == pytest.approx(((s - t) ** 2).sum(1).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        embedding_distill_loss(s, t[:, :4])


def test_training_loss_warns_once_when_embeddings_collapse(capsys):
    from tasks.faces.config import FacesConfig
    from tasks.faces.train import COLLAPSE_PATIENCE, FaceLoss

    class Constant(torch.nn.Module):  # a collapsed network: every image on one point
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(16))

        def forward(self, x):
            return F.normalize(self.w.expand(len(x), 16), dim=1)

    cfg = FacesConfig()
    cfg.loss.name = "batchhard"
    loss_fn = FaceLoss(cfg)
    batch = (torch.zeros(8, 3, 4, 4), torch.arange(4).repeat_interleave(2))
    for _ in range(COLLAPSE_PATIENCE + 5):
        out = loss_fn(Constant(), batch, torch.device("cpu"))
    assert out["triplet"].item() == pytest.approx(cfg.loss.margin)  # stuck at the margin
    err = capsys.readouterr()
    assert (err.out + err.err).count("embeddings have collapsed") == 1
    assert loss_fn.warned and loss_fn.last_spread < 0.01
