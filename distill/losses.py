"""Distillation losses (MobileNets paper, Sections 4.5 and 4.7; Hinton et al. 2015 is the paper's [9]).

Each loss is a plain function of student and teacher outputs:

* :func:`hinton_kd_loss` - classification: KL(softmax(t/T) || softmax(s/T)) * T^2, optionally mixed
  with cross-entropy on hard labels.
* :func:`attribute_distillation_loss` - independent binary attributes (Section 4.5): the teacher's
  per-attribute probabilities are soft targets of a per-attribute binary cross-entropy, averaged
  over attributes; the paper measures "emulation quality" with the same per-attribute cross-entropy.
* :func:`embedding_distillation_loss` - embeddings (Section 4.7): the squared difference of student
  and teacher embeddings.
* :func:`feature_hint_loss` - optional FitNets-style hint: mean squared difference of an
  intermediate student map (through a learnt 1x1 adapter) and a teacher map.

Unknown hard labels are masked: ``-100`` (``ignore_index``) for classes, NaN for attributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "attribute_distillation_loss",
    "embedding_distillation_loss",
    "feature_hint_loss",
    "hinton_kd_loss",
    "make_hint_adapter",
    "masked_bce_with_logits",
]


def _check_pair(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student output {tuple(student.shape)} and teacher output "
                         f"{tuple(teacher.shape)} must have the same shape")
    if student.dim() != 2:
        raise ValueError(f"{what}: expected [batch, width] outputs, got {tuple(student.shape)}")


def _check_mix(temperature: float, hard_weight: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= hard_weight <= 1.0:
        raise ValueError(f"hard_weight must be in [0, 1], got {hard_weight}")


def hinton_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    hard_weight: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    """Knowledge distillation for classification (Hinton et al. 2015).

    loss = (1 - w) * T^2 * mean_batch KL(softmax(t / T) || softmax(s / T)) + w * CE(s, labels)

    The T^2 factor keeps the soft-target gradients on the scale of the hard-label ones when T
    changes. Samples whose label is ``ignore_index`` do not enter the cross-entropy; when no sample
    has a label the hard term is 0.

    Args:
        student_logits, teacher_logits: [B, C].
        temperature: T > 0.
        labels: [B] class indices (or ``ignore_index``); needed when ``hard_weight > 0``.
        hard_weight: w in [0, 1].
        ignore_index: label value meaning "unknown".

    Returns:
        Scalar loss.
    """
    _check_pair(student_logits, teacher_logits, "hinton_kd_loss")
    _check_mix(temperature, hard_weight)
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    kd = F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True)
    kd = kd * temperature**2
    if hard_weight == 0.0:
        return kd
    if labels is None:
        raise ValueError("hinton_kd_loss: hard_weight > 0 needs labels")
    labels = labels.long()
    if (labels != ignore_index).any():
        hard = F.cross_entropy(student_logits.float(), labels, ignore_index=ignore_index)
    else:
        hard = student_logits.sum() * 0.0  # keeps the graph connected
    return (1.0 - hard_weight) * kd + hard_weight * hard


def masked_bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy averaged over the known (non-NaN) entries of ``targets``; 0 if none is."""
    known = ~torch.isnan(targets)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits.float()[known], targets.float()[known])


def attribute_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    hard_weight: float = 0.0,
) -> Tensor:
    """Per-attribute distillation for independent binary attributes (Section 4.5).

    With p = sigmoid(t / T) the teacher's probability of each attribute and q = sigmoid(s / T) the
    student's:

        soft = T^2 * mean_{batch, attributes} -[p log q + (1 - p) log(1 - q)]
        loss = (1 - w) * soft + w * BCE(s, labels)   (BCE over known labels only)

    At T = 1 the soft term is the paper's "per-attribute cross-entropy averaged over all attributes".

    Args:
        student_logits, teacher_logits: [B, A] logits.
        temperature: T > 0.
        labels: [B, A] with 1, 0 or NaN (unknown); needed when ``hard_weight > 0``.
        hard_weight: w in [0, 1].

    Returns:
        Scalar loss.
    """
    _check_pair(student_logits, teacher_logits, "attribute_distillation_loss")
    _check_mix(temperature, hard_weight)
    p = torch.sigmoid(teacher_logits.detach().float() / temperature)
    soft = F.binary_cross_entropy_with_logits(student_logits.float() / temperature, p) * temperature**2
    if hard_weight == 0.0:
        return soft
    if labels is None:
        raise ValueError("attribute_distillation_loss: hard_weight > 0 needs labels")
    if labels.shape != student_logits.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match the logits {tuple(student_logits.shape)}")
    return (1.0 - hard_weight) * soft + hard_weight * masked_bce_with_logits(student_logits, labels)


def embedding_distillation_loss(student: Tensor, teacher: Tensor, *, normalize: bool = False) -> Tensor:
    """Squared difference of embeddings (Section 4.7: "minimizing the squared differences of the
    output of FaceNet and MobileNet").

        loss = mean_batch || s - t ||^2      (summed over the embedding dimensions)

    This is ``D`` times ``F.mse_loss(s, t)`` for D-dimensional embeddings; summing over dimensions
    keeps the scale independent of D (unit-norm embeddings give values in [0, 4]).

    Args:
        student, teacher: [B, D] embeddings.
        normalize: L2-normalise both first (compare directions only, as for cosine retrieval).

    Returns:
        Scalar loss.
    """
    _check_pair(student, teacher, "embedding_distillation_loss")
    s = student.float()
    t = teacher.detach().float()
    if normalize:
        s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    return (s - t).pow(2).sum(dim=1).mean()


def make_hint_adapter(student_channels: int, teacher_channels: int) -> nn.Module:
    """A 1x1 convolution mapping a student map to the teacher's channel count (trained with the student)."""
    if student_channels < 1 or teacher_channels < 1:
        raise ValueError(f"channel counts must be >= 1, got {student_channels} -> {teacher_channels}")
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=True)


def feature_hint_loss(student_map: Tensor, teacher_map: Tensor, adapter: nn.Module | None = None) -> Tensor:
    """Hint loss on intermediate maps (e.g. from ``forward_intermediates``).

        loss = mean over elements of (resize(adapter(s)) - t)^2

    The adapted student map is resized bilinearly to the teacher map's height and width when they
    differ (teacher and student may run at different resolutions).

    Args:
        student_map: [B, Cs, Hs, Ws].
        teacher_map: [B, Ct, Ht, Wt].
        adapter: maps Cs -> Ct channels (:func:`make_hint_adapter`); ``None`` when Cs == Ct.

    Returns:
        Scalar loss.
    """
    if student_map.dim() != 4 or teacher_map.dim() != 4:
        raise ValueError(f"feature_hint_loss expects [B, C, H, W] maps, got {tuple(student_map.shape)} and "
                         f"{tuple(teacher_map.shape)}")
    s = adapter(student_map) if adapter is not None else student_map
    t = teacher_map.detach()
    if s.shape[0] != t.shape[0] or s.shape[1] != t.shape[1]:
        raise ValueError(f"feature_hint_loss: student map {tuple(s.shape)} (after the adapter) does not match the "
                         f"teacher map {tuple(t.shape)} in batch or channels")
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    return F.mse_loss(s.float(), t.float())
