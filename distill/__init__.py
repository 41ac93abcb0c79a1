"""Distillation (MobileNets paper, Sections 4.5 and 4.7): shrink a large teacher into a MobileNet.

* ``distill.teachers.load_teacher(spec, ...)`` loads a TorchScript, ``torch.export``, ONNX, timm or
  user-module teacher behind one interface that converts a student batch for it.
* ``distill.losses``: Hinton KD, per-attribute distillation, embedding distillation, feature hints.
* ``python -m distill.train``: train a MobileNet student on a teacher's outputs over unlabeled images.
"""

from distill.losses import (
    attribute_distillation_loss,
    embedding_distillation_loss,
    feature_hint_loss,
    hinton_kd_loss,
)
from distill.teachers import Teacher, TeacherOutputError, load_teacher

__all__ = [
    "Teacher",
    "TeacherOutputError",
    "attribute_distillation_loss",
    "embedding_distillation_loss",
    "feature_hint_loss",
    "hinton_kd_loss",
    "load_teacher",
]
