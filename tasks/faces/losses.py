"""Losses for face embeddings: FaceNet triplets, batch-hard triplets, margin softmax, distillation.

* ``triplet_semihard_loss``: FaceNet (Schroff et al. 2015, Sections 3.1-3.2): squared L2 distances of
  L2-normalised embeddings, margin alpha = 0.2, *all* anchor-positive pairs of the batch, each with an
  online semi-hard negative: the closest negative that is still farther than the positive
  (``d_ap < d_an``). When an anchor has no such negative, the farthest negative is used (it is the
  least-violating one), so early batches still produce a gradient that pushes identities apart.
* ``triplet_batch_hard_loss``: Hermans et al. 2017, "In Defense of the Triplet Loss": per anchor the
  farthest positive and the closest negative, Euclidean (not squared) distances, hinge or soft margin.
  From a random start it can collapse every embedding to one point (all distances 0, loss stuck at
  the margin); ``collapse_score`` measures that.
* ``MarginSoftmax``: CosFace (Wang et al. 2018, ``s * (cos - m)``) and ArcFace (Deng et al. 2019,
  ``s * cos(theta + m)``) over a learned identity-centre matrix; the modern alternative to triplets.
* ``embedding_distill_loss``: the distillation term of MobileNets Section 4.7, the squared difference
  to the teacher's embedding (``distill.losses.embedding_distillation_loss``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses import embedding_distillation_loss

__all__ = [
    "LOSSES",
    "MarginSoftmax",
    "collapse_score",
    "embedding_distill_loss",
    "pairwise_distances",
    "triplet_batch_hard_loss",
    "triplet_semihard_loss",
]

# names accepted by --loss (combined with "+", e.g. "distill+semihard")
LOSSES = ("semihard", "batchhard", "cosface", "arcface", "distill")

_EPS = 1e-12


def _check(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [B, D], got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels must be [B] with B={embeddings.shape[0]}, got shape {tuple(labels.shape)}")


def pairwise_distances(embeddings: Tensor, squared: bool = True) -> Tensor:
    """``[B, B]`` (squared) Euclidean distances; exact zeros on the diagonal.

    The square root is taken of ``max(d2, eps)`` off the diagonal so its gradient stays finite when two
    embeddings coincide (the collapsed state batch-hard mining can fall into).
    """
    e = embeddings.float()
    sq = (e * e).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * e @ e.t()).clamp_min(0.0)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    d2 = d2.masked_fill(eye, 0.0)
    if squared:
        return d2
    return torch.sqrt(d2.clamp_min(_EPS)).masked_fill(eye, 0.0)


def _zero(embeddings: Tensor) -> Tensor:
    # keeps the graph connected (DDP and the engine expect a differentiable scalar)
    return embeddings.sum() * 0.0


def triplet_semihard_loss(
    embeddings: Tensor, labels: Tensor, margin: float = 0.2, squared: bool = True
) -> Tensor:
    """FaceNet's triplet loss with online semi-hard negatives (see the module docstring).

    Args:
        embeddings: ``[B, D]`` (L2-normalised for FaceNet's setting).
        labels: ``[B]`` integer identity labels.
        margin: alpha of FaceNet's Eq. 1.
        squared: squared Euclidean distances (FaceNet) or plain ones.

    Returns:
        Mean hinge ``max(d_ap - d_an + margin, 0)`` over all anchor-positive pairs (0 without any).
    """
    _check(embeddings, labels)
    d = pairwise_distances(embeddings, squared)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    if not pos.any():
        return _zero(embeddings)
    neg = ~same
    a, p = pos.nonzero(as_tuple=True)
    d_ap = d[a, p]  # [T]
    d_an = d[a]  # [T, B] rows of the anchors
    neg_rows = neg[a]
    inf = torch.tensor(float("inf"), device=d.device, dtype=d.dtype)
    # semi-hard: closest negative farther than the positive
    outside = neg_rows & (d_an > d_ap[:, None])
    semi = torch.where(outside, d_an, inf).min(1).values
    # fallback: farthest negative (all negatives are closer than the positive)
    far = torch.where(neg_rows, d_an, -inf).max(1).values
    chosen = torch.where(outside.any(1), semi, far)
    valid = neg_rows.any(1)
    if not valid.any():
        return _zero(embeddings)
    loss = F.relu(d_ap - chosen + margin)[valid]
    return loss.mean()


def triplet_batch_hard_loss(
    embeddings: Tensor, labels: Tensor, margin: float = 0.2, soft: bool = False, squared: bool = False
) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017).

    Args:
        embeddings: ``[B, D]``.
        labels: ``[B]`` integer identity labels.
        margin: hinge margin (ignored with ``soft``).
        soft: soft margin ``softplus(d_ap - d_an)`` instead of the hinge.
        squared: squared distances (Hermans et al. use plain Euclidean ones).

    Returns:
        Mean over anchors that have at least one positive and one negative (0 if none has).
    """
    _check(embeddings, labels)
    d = pairwise_distances(embeddings, squared)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return _zero(embeddings)
    inf = torch.tensor(float("inf"), device=d.device, dtype=d.dtype)
    hardest_pos = torch.where(pos, d, -inf).max(1).values
    hardest_neg = torch.where(neg, d, inf).min(1).values
    gap = (hardest_pos - hardest_neg)[valid]
    return (F.softplus(gap) if soft else F.relu(gap + margin)).mean()


@torch.no_grad()
def collapse_score(embeddings: Tensor) -> float:
    """Mean distance of L2-normalised embeddings to their mean direction's point, in [0, 1].

    About 1 for embeddings spread over the sphere, 0 when everything sits on one point.
    """
    e = F.normalize(embeddings.float(), dim=1)
    return float((e - e.mean(0, keepdim=True)).norm(dim=1).mean())


class MarginSoftmax(nn.Module):
    """CosFace / ArcFace classification over learned identity centres.

    Args:
        embedding_dim: embedding size.
        num_classes: training identities.
        kind: "cosface" (additive cosine margin) or "arcface" (additive angular margin).
        scale: logit scale ``s``.
        margin: ``m`` (CosFace 0.35, ArcFace 0.5 in their papers).
    """

    def __init__(self, embedding_dim: int, num_classes: int, kind: str = "cosface", scale: float = 30.0,
                 margin: float | None = None):
        super().__init__()
        if kind not in ("cosface", "arcface"):
            raise ValueError(f"margin softmax kind must be 'cosface' or 'arcface', got {kind!r}")
        if num_classes < 2:
            raise ValueError(f"margin softmax needs at least 2 training identities, got {num_classes}")
        self.kind = kind
        self.scale = float(scale)
        self.margin = float(margin if margin is not None else (0.35 if kind == "cosface" else 0.5))
        if not (self.scale > 0 and 0 <= self.margin < 1.5):
            raise ValueError(f"invalid margin softmax scale={scale} / margin={margin}")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scaled cosine logits with the margin applied to each sample's own class."""
        _check(embeddings, labels)
        if labels.min() < 0 or labels.max() >= self.weight.shape[0]:
            raise ValueError(f"labels must be in [0, {self.weight.shape[0]}), got range "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        cos = F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        if self.kind == "cosface":
            target = cos - self.margin
        else:
            # cos(theta + m); past theta = pi - m the curve turns back up, so use the CosFace-like
            # linear continuation there (as the ArcFace reference does) to keep it monotone
            theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
            target = torch.where(theta + self.margin < math.pi, torch.cos(theta + self.margin),
                                 cos - self.margin * math.sin(self.margin))
        return self.scale * torch.where(onehot, target, cos)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)


def embedding_distill_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Squared difference between student and teacher embeddings (MobileNets Section 4.7).

    The mean over the batch of ``||s - t||^2``: ``distill.losses.embedding_distillation_loss``, the
    one definition the distillation module and this task share (the teacher side gets no gradient).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student embeddings {tuple(student.shape)} and teacher embeddings "
                         f"{tuple(teacher.shape)} differ in shape")
    return embedding_distillation_loss(student, teacher)
